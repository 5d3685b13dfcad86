"""
`hf-api-generate --batch` over replicas (issue 21, point 4): `--url` repeated sends each prompt to one of them, as
the generator's fleet decides; `--concurrency auto` (the default) keeps many prompts started and lets each replica's
adaptive limit decide how many are in flight, a number caps them; the progress bar shows the replicas' figures; a
replica that dies mid-run loses and duplicates no prompt.

Real HTTP against fake servers on 127.0.0.1; the fakes say what they received.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from haystack_integrations.generators.hugging_face_api import cli
from haystack_integrations.generators.hugging_face_api._fleet import FleetStatus
from haystack_integrations.generators.hugging_face_api.cli import BarNotes, fleet_figures, main, scale_up_progress
from tests.fakes import FakeHub, FakeRouter, FakeTGI
from tests.helpers import TEXT, posts
from tests.test_cli_batch import run_scheduler

PACKAGE_LOGGER = "haystack_integrations.generators.hugging_face_api"
#: More than any test sends at once: the fakes then count the generations in flight (`most_in_flight`).
COUNT_IN_FLIGHT = 10_000


@pytest.fixture
def replicas() -> Iterator[list[FakeTGI]]:
    servers = [FakeTGI() for _ in range(3)]
    for server in servers:
        server.max_concurrent = COUNT_IN_FLIGHT
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(count)))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def urls(*servers: FakeTGI) -> list[str]:
    return [argument for server in servers for argument in ("--url", server.url)]


def batch(prompts: Path, output: Path, *servers: FakeTGI) -> list[str]:
    return ["--batch", str(prompts), "--output", str(output), *urls(*servers), "--no-progress"]


def answered_once(records: list[dict[str, Any]], count: int) -> collections.Counter[str]:
    """Every prompt has exactly one record, a reply; returns how many each replica answered."""
    ids = collections.Counter(r["id"] for r in records)
    assert sorted(ids) == sorted(f"p{i}" for i in range(count))
    assert [key for key, seen in ids.items() if seen > 1] == []  # no prompt twice
    assert [r for r in records if "error" in r] == []  # none lost
    assert all(r["reply"] == TEXT for r in records)
    return collections.Counter(r["meta"]["replica"] for r in records)


def stderr_of(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- every replica, every prompt once ---------------------------------------------------------------


def test_a_batch_over_three_replicas_reaches_each_and_answers_every_prompt_once(
    replicas: list[FakeTGI], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 60), tmp_path / "out.jsonl"
    assert main(batch(prompts, output, *replicas)) == 0
    by_replica = answered_once(read_records(output), 60)
    assert set(by_replica) == {server.url for server in replicas}  # each replica answered some
    assert [posts(server) for server in replicas] == [by_replica[server.url] for server in replicas]
    assert sum(posts(server) for server in replicas) == 60  # one request per prompt: none sent twice
    assert stderr_of(capsys).splitlines() == ["60/60 answered, 0 failed"]


def test_one_prompt_goes_to_one_of_several_replicas(
    replicas: list[FakeTGI], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["What's NLP?", *urls(*replicas), "--no-stream"]) == 0
    assert capsys.readouterr().out == TEXT + "\n"
    assert sorted(posts(server) for server in replicas) == [0, 0, 1]


# --- a replica dies mid-run ---------------------------------------------------------------------------


def test_a_replica_killed_mid_run_loses_and_duplicates_no_prompt(
    replicas: list[FakeTGI], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for server in replicas:
        server.token_delay = 0.004  # about 30 ms a reply: the victim has requests in flight when it dies
    victim, survivors = replicas[0], replicas[1:]
    victim_url = victim.url  # a stopped fake has no port to tell
    killed = threading.Event()
    held_at_kill: list[int] = []

    def kill() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (posts(victim) >= 10 and victim.in_flight >= 2):
            time.sleep(0.001)
        held_at_kill.append(victim.in_flight)
        victim.stop()  # the listening socket and every open connection closed: answers in progress are cut
        killed.set()

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 300), tmp_path / "out.jsonl"
    assert main(batch(prompts, output, *replicas)) == 0
    killer.join(timeout=10)
    assert killed.is_set()
    assert held_at_kill[0] >= 2

    by_replica = answered_once(read_records(output), 300)
    # What the victim was asked but never answered was answered by the survivors, each prompt once.
    assert by_replica[victim_url] < posts(victim)
    assert sum(by_replica[server.url] for server in survivors) == 300 - by_replica[victim_url]
    assert all(by_replica[server.url] > 0 for server in survivors)
    assert stderr_of(capsys).splitlines()[-1] == "300/300 answered, 0 failed"


# --- how many in flight -------------------------------------------------------------------------------


def test_a_number_caps_the_prompts_in_flight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 30), tmp_path / "out.jsonl"
    with FakeTGI(token_delay=0.002) as server:
        server.max_concurrent = COUNT_IN_FLIGHT
        assert main([*batch(prompts, output, server), "--concurrency", "3"]) == 0
        assert server.most_in_flight == 3
        assert posts(server) == 30
    assert len(read_records(output)) == 30


def test_auto_starts_many_prompts_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, the batch kept 8 in flight; auto lets the replica's limit decide (64 to begin with)."""
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 100), tmp_path / "out.jsonl"
    with FakeTGI(token_delay=0.01) as server:
        server.max_concurrent = COUNT_IN_FLIGHT
        assert main(batch(prompts, output, server)) == 0
        assert server.most_in_flight > 8
        assert posts(server) == 100
    assert len(read_records(output)) == 100


def test_auto_keeps_eight_in_flight_for_inference_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a URL there is no fleet to admit requests: auto is the batch's old default, 8 at once."""
    models = {"org/text": [{"provider": "featherless-ai", "task": "text-generation"}]}
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 40), tmp_path / "out.jsonl"
    with FakeHub(models) as hub, FakeRouter(models=hub.models, token_delay=0.005) as router:
        router.max_concurrent = COUNT_IN_FLIGHT
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ROUTER_URL", router.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        argv = ["--batch", str(prompts), "--output", str(output), "--model", "org/text", "--no-progress"]
        assert main(argv) == 0
        assert router.most_in_flight == 8
    assert len(read_records(output)) == 40


@pytest.mark.parametrize("concurrency", [[], ["--concurrency", "auto"]], ids=["default", "auto"])
def test_auto_learns_what_replicas_admit_and_answers_every_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], concurrency: list[str]
) -> None:
    """The servers take 3 generations at once and refuse more (TGI's 429 overloaded), whatever /info says."""
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 120), tmp_path / "out.jsonl"
    with FakeTGI(token_delay=0.002) as first, FakeTGI(token_delay=0.002) as second:
        for server in (first, second):
            server.max_concurrent = 3
        assert main([*batch(prompts, output, first, second), *concurrency]) == 0
        refused = first.refused + second.refused
        assert refused > 0  # the limits were learnt from refusals ...
        assert posts(first) + posts(second) == 120 + refused  # ... each refused request asked again, none twice
    by_replica = answered_once(read_records(output), 120)
    assert set(by_replica) == {first.url, second.url}
    assert stderr_of(capsys).splitlines() == ["120/120 answered, 0 failed"]


# --- --url repeated: checked as one ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("ftp://h", "error: --url must be an http(s) URL such as 'http://localhost:8080', got 'ftp://h'"),
        ("http://user:secret@h", "error: --url must not contain a user name or password"),
        ("http://h/?x=1", "error: --url must be the server's base address without a query or fragment"),
        ("http://127.0.0.1:9/", "error: the 2nd --url repeats 'http://127.0.0.1:9/': each replica once"),
    ],
)
def test_each_url_is_checked_and_the_error_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str, message: str
) -> None:
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 2), tmp_path / "out.jsonl"
    argv = ["--batch", str(prompts), "--output", str(output), "--url", "http://127.0.0.1:9", "--url", second]
    assert main(argv) == 1
    error = stderr_of(capsys).splitlines()[0]
    assert error.startswith(message)
    assert "api_params" not in error and "secret" not in error
    assert not output.exists()  # refused before any file is touched


def test_the_third_url_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["hi", "--url", "http://127.0.0.1:7", "--url", "http://127.0.0.1:8", "--url", "http://127.0.0.1:7/"]
    assert main(argv) == 1
    assert stderr_of(capsys).startswith("error: the 3rd --url repeats 'http://127.0.0.1:7/'")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pipeline", "p.yaml"], "hf-api-generate: error: --url does not apply to --pipeline: the saved"),
        (["--provider", "together"], "hf-api-generate: error: --provider applies to Inference Providers only"),
    ],
)
def test_repeated_urls_where_url_does_not_apply_are_refused_as_one(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hi", "--url", "http://127.0.0.1:7", "--url", "http://127.0.0.1:8", *extra])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_repeated_urls_with_serverless_are_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["hi", "--url", "http://127.0.0.1:7", "--url", "http://127.0.0.1:8"]
    assert main([*argv, "--api-type", "serverless_inference_api"]) == 1
    assert stderr_of(capsys).startswith("error: --url does not apply to 'serverless_inference_api'")


def test_one_url_is_a_string_several_a_list() -> None:
    """api_params["url"] as before for one --url; the replicas' list for several."""
    parse = cli._parser().parse_args
    assert parse(["hi", "--url", "http://a"]).url == "http://a"
    assert parse(["hi", "--url", "http://a", "--url", "http://b", "--url", "http://c"]).url == [
        "http://a",
        "http://b",
        "http://c",
    ]
    assert parse(["hi", "--model", "org/m"]).url is None


# --- resuming: a reply is its replica's -------------------------------------------------------------------


def test_a_reply_is_reused_while_its_replica_is_given(
    replicas: list[FakeTGI], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = replicas
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)

    # One --url, then the same server among replicas: its replies are the same as a run with it alone.
    alone = tmp_path / "alone.jsonl"
    assert main(batch(prompts, alone, first)) == 0
    saved = alone.read_bytes()
    assert main(batch(prompts, alone, third, first, second)) == 0
    assert alone.read_bytes() == saved
    assert sum(posts(server) for server in replicas) == 20

    # Replicas, then the same replicas in another order, or with one more: nothing asked again.
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, first, second)) == 0
    by_replica = answered_once(read_records(output), 20)
    asked = sum(posts(server) for server in replicas)
    assert main(batch(prompts, output, second, third, first)) == 0
    assert sum(posts(server) for server in replicas) == asked

    # The second replica dropped: its replies are asked again (of the first), the first's reused.
    capsys.readouterr()
    assert main(batch(prompts, output, first)) == 0
    assert sum(posts(server) for server in replicas) - asked == by_replica[second.url]
    skipped = by_replica[first.url]
    err = stderr_of(capsys).splitlines()
    assert err[0] == f"resuming {output}: {skipped} answered earlier with the same prompt and settings: skipped"
    records = read_records(output)
    assert len(records) == 20
    assert {r["meta"].get("replica") for r in records} <= {first.url, None}  # one --url: meta names no replica


def test_fingerprints_of_one_url_are_as_before(tmp_path: Path) -> None:
    """Outputs written before replicas existed resume: the fingerprint of one --url is computed as it was."""
    args = cli._parser().parse_args(["--batch", "b", "--output", "o", "--url", "http://h:8080/v1", "--stop", "é"])
    settings = cli._Settings(args, {"max_new_tokens": 5})
    target = json.dumps(
        ["text_generation_inference", "http://h:8080/v1", None, None, "auto", ["é"]], ensure_ascii=False
    )
    merged = {"max_new_tokens": 5, "temperature": 0.5}
    text = json.dumps([target, merged, "a prompt, ünïcode"], sort_keys=True, ensure_ascii=False, default=str)
    before = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    assert settings.fingerprints("a prompt, ünïcode", {"temperature": 0.5}) == (before,)


# --- the progress bar -------------------------------------------------------------------------------------


def test_the_fleet_figures_read_replicas_in_flight_waiting_refused() -> None:
    status = FleetStatus(
        replicas=4, serving=3, in_flight=96, waiting=812, refused=12, unreachable=2, limits=(32.0, 32.0, 32.0, 1.0)
    )
    assert fleet_figures(status) == "replicas 3/4 · in flight 96 · waiting 812 · refused 12"


def test_the_bar_keeps_the_scale_up_note_and_the_fleet_figures_together() -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    with tqdm(total=3, file=io.StringIO(), unit="prompt") as progress:
        notes = BarNotes(progress)
        with scale_up_progress(progress, notes):
            notes.set(fleet="replicas 2/2 · in flight 4 · waiting 0 · refused 0")
            logger.warning("scaling up", extra={"hf_scale_up": "waiting", "hf_scale_up_seconds": 300})
            assert progress.postfix == (
                "endpoint scaling up, waiting up to 300 s · replicas 2/2 · in flight 4 · waiting 0 · refused 0"
            )
            notes.set(fleet="replicas 1/2 · in flight 0 · waiting 7 · refused 3")
            assert progress.postfix == (
                "endpoint scaling up, waiting up to 300 s · replicas 1/2 · in flight 0 · waiting 7 · refused 3"
            )
            logger.warning("ready", extra={"hf_scale_up": "ready", "hf_scale_up_seconds": 3})
            assert progress.postfix == "replicas 1/2 · in flight 0 · waiting 7 · refused 3"
            assert "replicas 1/2 · in flight 0 · waiting 7 · refused 3" in str(progress)


def test_the_bar_shows_the_replicas_while_the_batch_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 40), tmp_path / "out.jsonl"
    with FakeTGI(token_delay=0.01) as first, FakeTGI(token_delay=0.01) as second:
        second.max_concurrent = 2  # refuses some: the figure counts them
        argv = ["--batch", str(prompts), "--output", str(output), *urls(first, second)]
        assert main(argv) == 0
        refused = second.refused
    captured = capsys.readouterr()
    assert captured.out == ""  # the bar is on stderr only
    bars = captured.err.replace("\r", "\n")
    assert "replicas 2/2 · in flight " in bars
    assert " · waiting " in bars
    # The last figures, after the run: nothing in flight or waiting, every refusal counted.
    assert f"replicas 2/2 · in flight 0 · waiting 0 · refused {refused}" in bars
    assert captured.err.splitlines()[-1] == "40/40 answered, 0 failed"


def test_the_command_as_the_fleet_benchmark_runs_it(tmp_path: Path) -> None:
    """`hf-api-generate --batch prompts.jsonl --output out.jsonl --url U1 ... --url U4 --max-new-tokens N`: exit 0,
    the bar on stderr only, every prompt once."""
    prompts, output = write_prompts(tmp_path / "prompts.jsonl", 80), tmp_path / "out.jsonl"
    servers = [FakeTGI(token_delay=0.001).start() for _ in range(4)]
    try:
        command = [sys.executable, "-m", "haystack_integrations.generators.hugging_face_api.cli"]
        command += ["--batch", str(prompts), "--output", str(output), *urls(*servers), "--max-new-tokens", "128"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HAYSTACK_TELEMETRY_ENABLED": "False"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert "replicas 4/4" in done.stderr
        assert done.stderr.splitlines()[-1] == "80/80 answered, 0 failed"
        assert all(posts(server) > 0 for server in servers)
    finally:
        for server in servers:
            server.stop()
    answered_once(read_records(output), 80)


def test_memory_with_auto_is_bounded_by_the_prompts_started_not_the_file(tmp_path: Path) -> None:
    """auto starts up to 1024 prompts: 60k prompts hold no more memory than 12k (see test_cli_batch.py)."""
    small, small_most, small_written = run_scheduler(tmp_path, 12_000, cli._AUTO_STARTED)
    large, large_most, large_written = run_scheduler(tmp_path, 60_000, cli._AUTO_STARTED)
    assert (small_written, large_written) == (12_000, 60_000)
    assert small_most == large_most == 1024
    assert large - small < 2_000, (small, large)  # a task or record kept per prompt would be >= 48k blocks more
