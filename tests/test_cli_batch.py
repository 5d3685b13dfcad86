"""
The batch command line treats files as data (issue 20): an output it did not write is never replaced, a reply is
reused only for the same prompt with the same settings, stdout is written and never read back, and memory is
bounded by the concurrency, not by the number of prompts.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import cli
from haystack_integrations.generators.hugging_face_api.cli import main
from tests.fakes import FakeTGI
from tests.helpers import TEXT, posts

NOTES = "Meeting notes, 3 May\n- ship the batch CLI\n"


def write_lines(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


def batch(prompts: Path, output: Path | str, url: str, *extra: str) -> list[str]:
    return ["--batch", str(prompts), "--output", str(output), "--url", url, "--no-progress", *extra]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(4)])


# --- files the CLI did not write are left alone ----------------------------------------------------


def test_a_usage_error_leaves_an_existing_output_untouched(
    prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(NOTES)
    with pytest.raises(SystemExit) as exited:
        main(["--batch", str(prompts), "--output", str(notes)])  # no --url: exit 2
    assert exited.value.code == 2
    assert notes.read_text() == NOTES


def test_an_output_that_is_not_a_replies_file_is_refused_before_any_request(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(NOTES)
    assert main(batch(prompts, notes, tgi.url)) == 1
    error, hint = stderr_lines(capsys)
    assert error == (
        f"error: --output {notes} exists and is not a replies file of hf-api-generate (it does not start with a "
        "record): refusing to replace it"
    )
    assert hint == "hint: choose another --output, or pass --overwrite to replace it"
    assert notes.read_text() == NOTES
    assert tgi.requests == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"id": 1, "name": "not a reply"}\n', "line 1 is not a record of hf-api-generate"),
        ('{"id": 1, "reply": "r"}\n{"id": 2, "note": "mine"}\n', "line 2 is not a record of hf-api-generate"),
        ('{"id": 1, "reply": "r"}\nmy own last line, no newline', "line 2 is not a record of hf-api-generate"),
        ("{", "line 1 is not a record of hf-api-generate"),  # not a torn record: it never had '"id": '
        ("\xff\xfe binary", "it does not start with a record"),
    ],
)
def test_a_file_with_lines_that_are_not_records_is_not_replaced(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, reason: str
) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(content.encode("latin-1"))
    assert main(batch(prompts, output, tgi.url)) == 1
    assert f"({reason})" in stderr_lines(capsys)[0]
    assert output.read_bytes() == content.encode("latin-1")


def test_overwrite_replaces_a_file_that_is_not_a_replies_file(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(NOTES)
    assert main([*batch(prompts, notes, tgi.url), "--overwrite"]) == 0
    assert sorted(r["id"] for r in read_records(notes)) == ["q0", "q1", "q2", "q3"]


@pytest.mark.parametrize("link", ["same path", "symlink", "hard link"])
def test_output_that_is_the_batch_file_is_refused(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    before = prompts.read_bytes()
    output = prompts if link == "same path" else tmp_path / "out.jsonl"
    if link == "symlink":
        output.symlink_to(prompts)
    elif link == "hard link":
        os.link(prompts, output)
    assert main([*batch(prompts, output, tgi.url), "--overwrite"]) == 1
    error, hint = stderr_lines(capsys)
    assert error == f"error: --output {output} is the --batch file: the replies would replace the prompts"
    assert hint == "hint: choose another --output"
    assert prompts.read_bytes() == before
    assert tgi.requests == []


def test_a_symlinked_output_is_followed_and_stays_a_symlink(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "replies.jsonl"
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    assert main(batch(prompts, link, tgi.url)) == 0
    first = read_records(target)
    # A killed run left the file with a failure and a torn record; the resumed pass compacts it (temp + rename).
    lines = target.read_text().splitlines()
    failed = {**json.loads(lines[0]), "error": {"type": "ServerError", "message": "HTTP 503"}}
    del failed["reply"], failed["meta"]
    target.write_text("\n".join([json.dumps(failed), *lines[1:3]]) + "\n" + lines[3][:20])
    target.chmod(0o640)
    assert main(batch(prompts, link, tgi.url)) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(read_records(target), key=lambda r: r["id"]) == sorted(first, key=lambda r: r["id"])
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the rename kept the file's mode
    assert sorted(p.name for p in target.parent.iterdir()) == ["replies.jsonl"]  # no temp file left behind


def test_a_directory_as_output_is_refused(prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(batch(prompts, tmp_path, "http://127.0.0.1:1")) == 1
    assert stderr_lines(capsys)[0] == f"error: --output {tmp_path} is a directory"


def test_the_batch_must_be_a_file_it_can_read_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(batch(Path("/dev/stdin"), tmp_path / "out.jsonl", "http://127.0.0.1:1")) == 1
    (error,) = stderr_lines(capsys)
    assert error == "error: --batch /dev/stdin must be a regular file: it is read twice, checked first, then sent"


# --- stdout: written, never read back --------------------------------------------------------------


def test_output_dash_writes_records_to_stdout_and_resumes_nothing(
    tgi: FakeTGI, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(batch(prompts, "-", tgi.url)) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert sorted(r["id"] for r in records) == ["q0", "q1", "q2", "q3"]
    assert all(r["reply"] == TEXT for r in records)
    assert captured.err.splitlines() == ["4/4 answered, 0 failed"]
    assert main(batch(prompts, "-", tgi.url)) == 0  # nothing to resume from: everything is asked again
    assert posts(tgi) == 8


def test_overwrite_does_not_apply_to_stdout(prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*batch(prompts, "-", "http://127.0.0.1:1"), "--overwrite"])
    assert exited.value.code == 2
    assert "--overwrite does not apply to --output -: nothing is read back or replaced" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["/dev/stdout", "-"])
def test_output_to_stdout_piped_into_another_command_does_not_hang(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, output: str
) -> None:
    """The CLI's stdout is a pipe here: before, it opened /dev/stdout to read it back as an old output, and hung."""
    command = [sys.executable, "-m", "haystack_integrations.generators.hugging_face_api.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HAYSTACK_TELEMETRY_ENABLED": "False"}
    done = subprocess.run(
        [*command, *batch(prompts, output, tgi.url)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["id"] for line in done.stdout.splitlines()) == ["q0", "q1", "q2", "q3"]
    assert done.stderr == "4/4 answered, 0 failed\n"


# --- resume: the same prompt with the same settings only -------------------------------------------


def test_a_different_prompts_file_into_the_same_output_is_refused(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bare strings are numbered by line: yesterday's line 1 is not today's line 1."""
    output = tmp_path / "out.jsonl"
    yesterday = write_lines(tmp_path / "yesterday.jsonl", ["What is NLP?", "What is a token?", "Define GPU."])
    today = write_lines(tmp_path / "today.jsonl", ["Capital of France?", "Capital of Peru?", "Define CPU."])
    assert main(batch(yesterday, output, tgi.url)) == 0
    saved = output.read_bytes()
    capsys.readouterr()
    sent = posts(tgi)

    assert main(batch(today, output, tgi.url)) == 1
    error, hint = stderr_lines(capsys)
    assert error.startswith(f"error: --output {output} holds 3 replies, none of them to these prompts")
    assert hint.startswith("hint: choose another --output, or pass --overwrite")
    assert output.read_bytes() == saved
    assert posts(tgi) == sent


def test_an_edited_prompt_is_asked_again_and_the_rest_reused(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url)) == 0
    first = {r["id"]: r for r in read_records(output)}
    capsys.readouterr()
    sent = posts(tgi)

    items = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(4)]
    items[2]["prompt"] = "question 2, edited"
    items[3]["generation_kwargs"] = {"max_new_tokens": 1}
    write_lines(prompts, items)
    assert main(batch(prompts, output, tgi.url)) == 0
    assert stderr_lines(capsys) == [
        f"resuming {output}: 2 answered earlier with the same prompt and settings: skipped",
        f"resuming {output}: 2 answered earlier with another prompt or other settings: asked again, their old "
        "replies replaced (ids 'q2', 'q3')",
        "4/4 answered, 0 failed",
    ]
    assert posts(tgi) - sent == 2
    assert [r.json["inputs"] for r in tgi.requests if r.method == "POST"][-2:] in (
        ["question 2, edited", "question 3"],
        ["question 3", "question 2, edited"],
    )
    final = {r["id"]: r for r in read_records(output)}
    assert len(read_records(output)) == 4  # one record per id
    assert final["q0"] == first["q0"] and final["q1"] == first["q1"]
    assert final["q2"]["fingerprint"] != first["q2"]["fingerprint"]
    assert final["q3"]["reply"] == "Natural"


def test_changed_generation_flags_make_every_reply_stale(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url, "--max-new-tokens", "2")) == 0
    sent = posts(tgi)
    assert main(batch(prompts, output, tgi.url, "--max-new-tokens", "3")) == 1
    assert "none of them to these prompts with these settings" in capsys.readouterr().err
    assert posts(tgi) == sent
    assert main(batch(prompts, output, tgi.url, "--max-new-tokens", "3", "--overwrite")) == 0
    assert posts(tgi) - sent == 4
    assert {r["reply"] for r in read_records(output)} == {"Natural Language Processing"}


def test_the_same_command_again_sends_nothing(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url, "--stop", " is")) == 0
    saved = output.read_bytes()
    sent = len(tgi.requests)
    capsys.readouterr()
    assert main(batch(prompts, output, tgi.url, "--stop", " is")) == 0
    assert len(tgi.requests) == sent  # not even the route probe
    assert stderr_lines(capsys) == [
        f"resuming {output}: 4 answered earlier with the same prompt and settings: skipped",
        "4/4 answered, 0 failed",
    ]
    assert output.read_bytes() == saved


def test_records_of_ids_the_batch_no_longer_has_are_kept(
    tgi: FakeTGI, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url)) == 0
    capsys.readouterr()
    write_lines(prompts, [{"id": "q0", "prompt": "question 0"}, {"id": "new", "prompt": "a new one"}])
    assert main(batch(prompts, output, tgi.url)) == 0
    assert stderr_lines(capsys) == [
        f"resuming {output}: 1 answered earlier with the same prompt and settings: skipped",
        f"resuming {output}: 3 records of ids that {prompts} does not have: kept",
        "2/2 answered, 0 failed",
    ]
    assert sorted(r["id"] for r in read_records(output)) == ["new", "q0", "q1", "q2", "q3"]


def test_a_torn_record_is_cut_off_but_a_whole_one_without_newline_is_kept(
    tgi: FakeTGI, prompts: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url)) == 0
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:2]))  # killed between the record and its newline
    sent = posts(tgi)
    assert main(batch(prompts, output, tgi.url)) == 0
    assert posts(tgi) - sent == 2
    assert len(read_records(output)) == 4
    assert read_records(output)[:2] == [json.loads(line) for line in lines[:2]]


def test_duplicate_ids_are_found_far_apart_in_a_large_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items: list[Any] = [{"id": i, "prompt": f"p{i}"} for i in range(30_000)]
    items.append({"id": "17", "prompt": "the id of line 18, as a string"})
    prompts = write_lines(tmp_path / "prompts.jsonl", items)
    assert main(batch(prompts, tmp_path / "out.jsonl", "http://127.0.0.1:1")) == 1
    (error,) = stderr_lines(capsys)
    assert error == f"error: {prompts}:30001: duplicate id '17' (first on line 18)"
    assert not (tmp_path / "out.jsonl").exists()


# --- memory: bounded by the concurrency ------------------------------------------------------------


class NoBar:
    def update(self, n: int) -> None:
        pass


def run_scheduler(tmp_path: Path, count: int, concurrency: int) -> tuple[int, int, int]:
    """
    A batch of `count` prompts through the real reading, checking, scheduling and writing, answered at once by
    `ask` instead of a server (a fake server answers ~2000 prompts a second: 200k would take minutes).

    :returns: The peak growth of the interpreter's allocated blocks while it ran, the most prompts in flight at
        once, and how many records were written.
    """
    prompts = tmp_path / f"prompts-{count}.jsonl"
    with prompts.open("w", encoding="utf-8") as file:
        for i in range(count):
            file.write(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n")
    args = cli._parser().parse_args(["--batch", str(prompts), "--output", "o", "--url", "http://127.0.0.1:1"])
    settings = cli._Settings(args, {})
    result = {"replies": [TEXT], "meta": [{"finish_reason": "stop"}]}
    in_flight = most = peak = asked = 0

    async def ask(item: cli.BatchItem) -> dict[str, Any]:
        nonlocal in_flight, most, peak, asked
        in_flight += 1
        asked += 1
        most = max(most, in_flight)
        if asked % 64 == 0:  # it walks every arena of the interpreter: not at each prompt
            peak = max(peak, sys.getallocatedblocks())
        await asyncio.sleep(0)  # let the other workers and the reader run
        in_flight -= 1
        return result

    with (tmp_path / f"out-{count}.jsonl").open("w", encoding="utf-8") as out:
        write = cli._RecordWriter(out, "out")
        baseline = sys.getallocatedblocks()
        survey = cli._survey(prompts, settings, None)
        assert survey.total == count
        asyncio.run(cli._run_batch_async(ask, cli._prompt_items(prompts, settings), write, concurrency, NoBar()))
    return peak - baseline, most, write.written


def test_memory_is_bounded_by_the_concurrency_not_the_number_of_prompts(tmp_path: Path) -> None:
    """
    Before, a task per prompt was made up front (~2 KB each: 456 MB for 200k prompts). Now the prompts are read as
    workers free up: 200k prompts hold no more memory than 20k. Measured in allocated blocks (every Python object
    is at least one), sampled as prompts are answered, because tracemalloc would make 200k prompts take half a minute.
    """
    small, small_most, small_written = run_scheduler(tmp_path, 20_000, 8)
    large, large_most, large_written = run_scheduler(tmp_path, 200_000, 8)
    assert (small_written, large_written) == (20_000, 200_000)
    assert small_most == large_most == 8
    # A task, a coroutine or a record kept per prompt would be >= 180k more blocks here.
    assert large - small < 2_000, (small, large)
    assert large < 20_000, large


def test_an_id_with_a_lone_surrogate_is_written_escaped_and_resumed(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a\\ud800", "prompt": "x"}\n')  # valid JSON, not encodable as UTF-8 once decoded
    output = tmp_path / "out.jsonl"
    assert main(batch(prompts, output, tgi.url)) == 0
    assert '"id": "a\\ud800"' in output.read_text(encoding="utf-8")
    assert main(batch(prompts, output, tgi.url)) == 0
    assert posts(tgi) == 1
