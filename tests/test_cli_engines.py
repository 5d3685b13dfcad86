"""The command line's flags for issue 19: `-n`, `--json-schema`, `--regex` and `--details`, one prompt and batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api.cli import main
from tests.fakes import FakeTGI
from tests.fakes._common import _logprob
from tests.fakes.engines import JSON_TOKENS, REGEX_TOKENS, VLLM, FakeEngine, StrictTGI
from tests.helpers import TEXT, posts

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
WORDS = ["Natural", " Language", " Processing", " is", " a", " field", "."]


@pytest.fixture
def vllm() -> Iterator[FakeEngine]:
    with FakeEngine(VLLM) as server:
        yield server


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- -n ------------------------------------------------------------------------------------------------


def test_n_prints_each_reply_under_its_number(vllm: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", vllm.url, "-n", "3", "--temperature", "0.7"]) == 0
    out = capsys.readouterr().out
    assert out == "".join(f"--- reply {i} ---\n{TEXT} #{i}\n" for i in range(3))
    assert vllm.requests[-1].json["n"] == 3  # vLLM: one request


def test_n_on_tgi_is_a_request_per_reply_with_derived_seeds(tgi: FakeTGI, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", tgi.url, "-n", "2", "--seed", "7", "--temperature", "0.7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replies"] == [TEXT, TEXT] and len(result["meta"]) == 2
    assert sorted(r.json["parameters"]["seed"] for r in tgi.requests if r.method == "POST") == [7, 8]


def test_n_without_sampling_is_refused_naming_it(vllm: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", vllm.url, "-n", "2"]) == 1
    assert "error: generation_kwargs['n'] is 2, but decoding is greedy" in capsys.readouterr().err
    assert posts(vllm) == 0


# --- --json-schema and --regex ----------------------------------------------------------------------------


def test_json_schema_constrains_the_reply(vllm: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    assert main(["Who?", "--url", vllm.url, "--json-schema", str(schema), "--no-stream"]) == 0
    assert capsys.readouterr().out == "".join(JSON_TOKENS) + "\n"
    assert vllm.requests[-1].json["structured_outputs"] == {"json": SCHEMA}


def test_a_reply_that_is_not_the_json_asked_for_is_an_error(
    vllm: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vllm.engine.json_tokens = ["not", " json"]
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    assert main(["Who?", "--url", vllm.url, "--json-schema", str(schema)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "not json\n"  # streamed as it came; then the call fails
    assert "error: POST " in captured.err and "the reply is not the JSON document asked for" in captured.err


def test_regex_constrains_the_reply(capsys: pytest.CaptureFixture[str]) -> None:
    with StrictTGI() as tgi:
        assert main(["A number:", "--url", tgi.url, "--regex", "[0-9]{3}-[0-9]{2}"]) == 0
    assert capsys.readouterr().out == "".join(REGEX_TOKENS) + "\n"
    assert tgi.requests[-1].json["parameters"]["grammar"] == {"type": "regex", "value": "[0-9]{3}-[0-9]{2}"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "argument --json-schema: cannot read {path}: No such file or directory"),
        ("{not json", "argument --json-schema: {path} is not JSON"),
        ('{"type": 12}', "argument --json-schema: {path} is not a valid JSON schema"),
        ("[1]", "argument --json-schema: {path} must be a JSON schema (a dict), got list"),
    ],
)
def test_a_schema_file_that_cannot_be_used_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    err = usage_error(capsys, ["hi", "--url", "http://127.0.0.1:1", "--json-schema", str(path)])
    assert message.format(path=path) in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--regex", "[0-9"], "argument --regex: not a valid regular expression"),
        (["-n", "0"], "argument -n: must be an integer from 1 to 128, got '0'"),
        (["--seed", "1", "--generation-kwargs", '{"seed": 2}'], "--seed and 'seed' in --generation-kwargs say the"),
        (["--seed", "0", "--generation-kwargs", '{"seed": 2}'], "--seed and 'seed' in --generation-kwargs say the"),
        (["-n", "2", "--generation-kwargs", '{"n": 3}'], "-n and 'n' in --generation-kwargs say the same thing"),
        (
            ["--regex", "a", "--generation-kwargs", '{"grammar": {"type": "regex", "value": "b"}}'],
            "--regex and 'grammar' in --generation-kwargs",
        ),
        (["--details", "--generation-kwargs", '{"details": false}'], "--details and 'details' in --generation-kwargs"),
    ],
)
def test_flags_that_cannot_be_honoured_together_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert f"hf-api-generate: error: {message}" in usage_error(capsys, ["hi", "--url", "http://127.0.0.1:1", *argv])


def test_json_schema_and_regex_are_one_or_the_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    argv = ["hi", "--url", "http://127.0.0.1:1", "--regex", "a", "--json-schema", str(schema)]
    assert "error: argument --json-schema: not allowed with argument --regex" in usage_error(capsys, argv)


# --- --details ---------------------------------------------------------------------------------------------


def tokens_printed(lines: list[str]) -> list[tuple[float, str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith("--- tokens: "))
    return [(float(line.split()[0]), line.split(maxsplit=1)[1].split("  ")[0]) for line in lines[start + 1 :]]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "no-stream"])
def test_details_prints_each_token_with_its_log_probability(
    vllm: FakeEngine, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    argv = ["What is NLP?", "--url", vllm.url, "--details", "--generation-kwargs", '{"top_n_tokens": 2}']
    assert main([*argv] if stream else [*argv, "--no-stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == TEXT
    assert lines[1] == "--- tokens: 7, each with its log-probability and the most likely tokens at its place ---"
    assert tokens_printed(lines) == [(_logprob(word), repr(word)) for word in WORDS]
    assert lines[2].endswith(f"({WORDS[0]!r} {_logprob(WORDS[0]):.4f}, 'alt1' {_logprob(WORDS[0]) - 1:.4f})")


def test_details_with_json_puts_the_tokens_in_meta(vllm: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", vllm.url, "--details", "--json"]) == 0
    (meta,) = json.loads(capsys.readouterr().out)["meta"]
    assert [t["text"] for t in meta["tokens"]] == WORDS
    assert vllm.requests[-1].json["logprobs"] == 1


def test_details_for_several_replies_follow_each(vllm: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", vllm.url, "--details", "-n", "2", "--temperature", "0.7"]) == 0
    out = capsys.readouterr().out
    for index in range(2):
        reply = f"--- reply {index} ---\n{TEXT} #{index}\n--- tokens: 8, "
        assert reply in out
    assert out.index("--- reply 1 ---") > out.index(f"{' #0'!r}")


# --- batches -------------------------------------------------------------------------------------------


def test_a_batch_with_n_records_every_reply_and_is_resumed(vllm: FakeEngine, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second", "generation_kwargs": {"n": 1}}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["--batch", str(prompts), "--output", str(output), "--url", vllm.url, "-n", "2", "--temperature", "0.7"]
    assert main([*argv, "--no-progress"]) == 0
    records: dict[str, Any] = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert records["a"]["replies"] == [f"{TEXT} #0", f"{TEXT} #1"]
    assert [m["finish_reason"] for m in records["a"]["meta"]] == ["stop", "stop"]
    assert "reply" not in records["a"]
    assert records["b"]["reply"] == TEXT and isinstance(records["b"]["meta"], dict)  # one reply: as before
    asked = posts(vllm)
    assert main([*argv, "--no-progress"]) == 0  # both were answered: nothing is asked again
    assert posts(vllm) == asked
