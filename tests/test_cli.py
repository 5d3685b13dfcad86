"""The command line against the fake servers: one prompt, a saved pipeline, batches with resume, and each failure."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from haystack_integrations.generators.hugging_face_api import cli
from haystack_integrations.generators.hugging_face_api.cli import ScaleUpProgress, main, scale_up_progress
from tests.fakes import FakeOpenAI, FakeTGI, Fault

PACKAGE_LOGGER = "haystack_integrations.generators.hugging_face_api"

TEXT = "Natural Language Processing is a field."


def test_one_prompt_streams_to_stdout(tgi: FakeTGI, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", tgi.url, "--max-new-tokens", "3", "--stop", " Processing"]) == 0
    assert capsys.readouterr().out == "Natural Language\n"
    body = tgi.requests[-1].json
    assert tgi.requests[-1].path == "/generate_stream"
    assert body["parameters"]["max_new_tokens"] == 3
    assert body["parameters"]["stop"] == [" Processing"]


def test_json_output_has_replies_and_meta(tgi: FakeTGI, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["What is NLP?", "--url", tgi.url, "--json", "--generation-kwargs", '{"seed": 3}']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replies"] == [TEXT]
    assert result["meta"][0]["finish_reason"] == "stop"
    assert tgi.requests[-1].json["parameters"]["seed"] == 3


def test_pipeline_with_query_time_parameters(tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "components:\n  llm:\n    type: haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator\n"
        f"    init_parameters:\n      api_type: text_generation_inference\n      api_params:\n        url: {tgi.url}\n"
        "      generation_kwargs:\n        max_new_tokens: 5\nconnections: []\n"
    )
    assert main(["What is NLP?", "--pipeline", str(pipeline), "--max-new-tokens", "2", "--no-stream"]) == 0
    assert capsys.readouterr().out == "Natural Language\n"
    assert tgi.requests[-1].json["parameters"]["max_new_tokens"] == 2


def test_missing_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hello"])
    assert exited.value.code == 2
    assert "--url" in capsys.readouterr().err


def write_prompts(path: Path, count: int) -> None:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(count)))


def read_output(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_answers_every_prompt_once(tgi: FakeTGI, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 30)
    code = main(
        [
            "--batch",
            str(prompts),
            "--output",
            str(output),
            "--url",
            tgi.url,
            "--concurrency",
            "4",
            "--max-new-tokens",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    records = read_output(output)
    # In the order they were answered: the id says which prompt each record answers.
    assert sorted(r["id"] for r in records) == sorted(f"p{i}" for i in range(30))
    assert all(r["reply"] == "Natural Language" for r in records)
    assert all(list(r)[:2] == ["id", "fingerprint"] for r in records)
    assert all(r["meta"]["usage"]["completion_tokens"] == 2 for r in records)


def test_batch_records_failures_and_resume_retries_only_them(tgi: FakeTGI, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 10)
    for _ in range(3):
        tgi.faults.append(Fault.status(422, body={"error": "Input validation error", "error_type": "validation"}))
    args = ["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--concurrency", "1", "--no-progress"]
    assert main(args) == 1
    first = read_output(output)
    failed = [r["id"] for r in first if "error" in r]
    assert len(failed) == 3
    assert all(r["error"]["type"] == "ValidationError" for r in first if "error" in r)
    generate_calls = sum(1 for r in tgi.requests if r.method == "POST")

    assert main(args) == 0
    second = read_output(output)
    assert all("reply" in r for r in second)
    assert len(second) == 10
    # Only the three failures were asked again.
    assert sum(1 for r in tgi.requests if r.method == "POST") - generate_calls == 3


def test_batch_resumes_after_an_interruption_with_a_torn_line(tgi: FakeTGI, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 12)
    args = ["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--no-progress"]
    assert main(args) == 0
    complete = read_output(output)
    # Simulate a kill after 5 answers, in the middle of writing the 6th line.
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:5]) + "\n" + lines[5][:17])
    before = sum(1 for r in tgi.requests if r.method == "POST")
    assert main(args) == 0
    assert sum(1 for r in tgi.requests if r.method == "POST") - before == 7
    final = read_output(output)
    assert final[:5] == complete[:5]  # kept as written, the torn line cut off
    assert sorted(final, key=lambda r: str(r["id"])) == sorted(complete, key=lambda r: str(r["id"]))


def test_batch_keeps_ids_as_given_and_numbers_lines_without_id(tgi: FakeTGI, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(
        '{"id": 7, "prompt": "a"}\n"just a prompt"\n{"prompt": "b", "generation_kwargs": {"max_new_tokens": 1}}\n'
    )
    assert main(["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--no-progress"]) == 0
    records = {json.dumps(r["id"]): r for r in read_output(output)}
    assert sorted(records) == ["2", "3", "7"]  # 7 as the number it was, lines 2 and 3 numbered
    assert records["3"]["reply"] == "Natural"


# --- failures: one or two lines on stderr, a non-zero exit code -----------------------------------


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


def test_server_down(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hi", "--url", closed_port_url()]) == 1
    error, hint = stderr_lines(capsys)  # exactly two lines: no retry warnings, no traceback
    assert error.startswith("error: ")
    assert "connect" in error
    assert hint == "hint: check that the server is running and reachable at --url (or the pipeline's url)"


def test_timeout(tgi: FakeTGI, capsys: pytest.CaptureFixture[str]) -> None:
    tgi.faults.extend([Fault.delay(3)] * 4)
    assert main(["hi", "--url", tgi.url, "--protocol", "tgi", "--timeout", "0.3"]) == 1
    error, hint = stderr_lines(capsys)
    assert error.startswith("error: ")
    assert "timed out" in error
    assert hint.startswith("hint: the server took longer than the timeout")
    assert "--timeout" in hint


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "hint: no token was sent: set HF_TOKEN for Hugging Face hosts, or give --token-env VAR"),
        (404, "hint: check --url (the server's base URL) and --model"),
        (400, "hint: the server refused the request"),
    ],
)
def test_http_error(tgi: FakeTGI, capsys: pytest.CaptureFixture[str], status: int, hint: str) -> None:
    tgi.faults.append(Fault.status(status, {"error": f"refused with {status}"}))
    assert main(["hi", "--url", tgi.url, "--protocol", "tgi", "--no-stream"]) == 1
    error, printed_hint = stderr_lines(capsys)
    assert error.startswith("error: ")
    assert f"HTTP {status}" in error
    assert f"refused with {status}" in error  # the server's own message
    assert printed_hint.startswith(hint)


def test_verbose_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hi", "--url", closed_port_url(), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") or "Traceback (most recent call last)" in err
    assert "APIConnectionError" in err
    assert err.splitlines()[-2].startswith("error: ")  # the short message still ends the output
    assert err.splitlines()[-1].startswith("hint: ")


def test_a_bad_parameter_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hi", "--url", "ftp://example"]) == 1
    (error,) = stderr_lines(capsys)
    assert error.startswith("error: ")
    assert "--url must be an http(s) URL" in error  # the flag the user typed


def test_a_parameter_the_protocol_cannot_honour(openai_server: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["hi", "--url", openai_server.url, "--protocol", "chat", "--generation-kwargs", '{"typical_p": 0.5}'])
    assert code == 1
    (error,) = stderr_lines(capsys)
    assert error.startswith("error: ")
    assert "typical_p" in error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{bad", "argument --generation-kwargs: not valid JSON (Expecting property name"),
        ("[1, 2]", "argument --generation-kwargs: expected a JSON object"),
    ],
)
def test_bad_json_in_a_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str], value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hi", "--url", "http://127.0.0.1:1", "--generation-kwargs", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hf-api-generate")
    assert f"hf-api-generate: error: {message}" in err


def test_missing_batch_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["--batch", str(missing), "--output", str(tmp_path / "out.jsonl"), "--url", "http://127.0.0.1:1"]) == 1
    assert stderr_lines(capsys) == [f"error: cannot read --batch {missing}: No such file or directory"]


def test_batch_file_that_is_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "prompts.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert main(["--batch", str(binary), "--output", str(tmp_path / "out.jsonl"), "--url", "http://127.0.0.1:1"]) == 1
    (error,) = stderr_lines(capsys)
    assert error.startswith(f"error: cannot read --batch {binary}: 'utf-8' codec can't decode")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"prompt": "a"}\n{bad\n', ":2: not JSON (Expecting property name enclosed in double quotes"),
        ('{"prompt": "a"}\n\n[1]\n', ':3: expected {"prompt": "..."} or a JSON string'),
        ('{"prompt": "a", "generation_kwargs": [1]}\n', ":1: generation_kwargs must be a JSON object, got [1]"),
        ('{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n', ":2: duplicate id '1'"),
    ],
)
def test_bad_batch_line_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, message: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(lines)
    assert main(["--batch", str(prompts), "--output", str(tmp_path / "out.jsonl"), "--url", "http://127.0.0.1:1"]) == 1
    error = stderr_lines(capsys)[0]
    assert error.startswith(f"error: {prompts}{message}")


def test_output_in_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 2)
    output = tmp_path / "no" / "such" / "out.jsonl"
    assert main(["--batch", str(prompts), "--output", str(output), "--url", "http://127.0.0.1:1"]) == 1
    assert stderr_lines(capsys) == [f"error: cannot write --output {output}: No such file or directory"]


def test_batch_against_a_server_that_is_down_fails_once_not_once_per_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 3)
    assert main(["--batch", str(prompts), "--output", str(output), "--url", closed_port_url(), "--no-progress"]) == 1
    error, hint = stderr_lines(capsys)
    assert error.startswith("error: GET http://127.0.0.1:")
    assert "could not connect" in error
    assert hint.startswith("hint: check that the server is running")
    assert read_output(output) == []  # nothing recorded: the rerun asks everything


def test_batch_records_prompts_that_fail_and_says_so(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 3)
    tgi.faults.extend([Fault.status(422, {"error": "Input validation error", "error_type": "validation"})] * 3)
    args = ["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--no-progress"]
    assert main([*args, "--protocol", "tgi"]) == 1
    summary, error, hint = stderr_lines(capsys)
    assert summary == f"0/3 answered, 3 failed (rerun the command to retry them; {output} has each error)"
    assert error.startswith("first error: ") and "HTTP 422" in error
    assert hint.startswith("hint: the server refused the request")
    assert [record["error"]["type"] for record in read_output(output)] == ["ValidationError"] * 3


def test_missing_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "pipeline.yaml"
    assert main(["hi", "--pipeline", str(missing)]) == 1
    assert stderr_lines(capsys) == [f"error: cannot read --pipeline {missing}: No such file or directory"]


def test_pipeline_file_that_is_not_a_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "pipeline.yaml"
    broken.write_text("components: [unclosed\n")
    assert main(["hi", "--pipeline", str(broken)]) == 1
    error, hint = stderr_lines(capsys)
    assert error.startswith(f"error: --pipeline {broken} is not a pipeline Haystack can load: ")
    assert hint.startswith("hint: check the file is a pipeline saved by Haystack")


def test_failure_inside_a_pipeline_reports_the_generators_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "components:\n  llm:\n    type: haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator\n"
        f"    init_parameters:\n      api_type: text_generation_inference\n      api_params:\n"
        f"        url: {closed_port_url()}\nconnections: []\n"
    )
    assert main(["hi", "--pipeline", str(pipeline)]) == 1
    error, hint = stderr_lines(capsys)
    assert error.startswith("error: ")
    assert "Component name" not in error  # Haystack's wrapper is peeled off
    assert "connect" in error
    assert hint.startswith("hint: check that the server is running")


def test_interrupted(tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_one", interrupt)
    assert main(["hi", "--url", tgi.url]) == 130
    assert stderr_lines(capsys) == ["interrupted"]


def test_scale_up_lines_are_notes_for_a_single_prompt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_one(*args: object) -> int:
        logger = logging.getLogger(PACKAGE_LOGGER + "._retry")
        logger.warning("Attempt 1 failed; retrying in 1 s")  # hidden without --verbose
        logger.warning("The endpoint is scaling up", extra={"hf_scale_up": "waiting", "hf_scale_up_seconds": 300})
        return 0

    monkeypatch.setattr(cli, "_run_one", run_one)
    assert main(["hi", "--url", "http://127.0.0.1:1"]) == 0
    assert stderr_lines(capsys) == ["note: The endpoint is scaling up"]


def test_the_generators_warnings_are_hidden_unless_verbose() -> None:
    """The CLI restores the package's logger as it found it."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handlers, propagate = list(logger.handlers), logger.propagate
    main(["hi", "--url", "ftp://example"])
    assert logger.handlers == handlers
    assert logger.propagate == propagate


# --- an Inference Endpoint scaling up, on the batch progress bar -----------------------------------


def test_scale_up_records_show_on_the_progress_bar() -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    child = logging.getLogger(PACKAGE_LOGGER + "._retry")  # records of the package's modules propagate up
    with tqdm(total=3, file=io.StringIO(), unit="prompt") as progress:
        with scale_up_progress(progress) as handler:
            assert handler in logger.handlers
            logger.warning("scaling up", extra={"hf_scale_up": "waiting", "hf_scale_up_seconds": 300})
            assert progress.postfix == "endpoint scaling up, waiting up to 300 s"
            assert "endpoint scaling up, waiting up to 300 s" in str(progress)
            child.warning("an unrelated warning")
            assert progress.postfix == "endpoint scaling up, waiting up to 300 s"
            child.warning("ready", extra={"hf_scale_up": "ready", "hf_scale_up_seconds": 42.5})
            assert not progress.postfix
            assert "scaling up" not in str(progress)
            logger.warning("scaling up", extra={"hf_scale_up": "waiting", "hf_scale_up_seconds": 120})
            assert progress.postfix == "endpoint scaling up, waiting up to 120 s"
            logger.warning("gave up", extra={"hf_scale_up": "gave_up", "hf_scale_up_seconds": 120})
            assert not progress.postfix
        assert handler not in logger.handlers  # detached after the batch


def test_the_batch_attaches_the_scale_up_display_while_it_runs(
    tgi: FakeTGI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    postfixes: list[str] = []
    original = cli._run_batch_async

    async def run_batch(*args: Any) -> Any:
        logger.warning("scaling up", extra={"hf_scale_up": "waiting", "hf_scale_up_seconds": 300})
        postfixes.extend(h.progress.postfix for h in logger.handlers if isinstance(h, ScaleUpProgress))
        outcome = await original(*args)
        logger.warning("ready", extra={"hf_scale_up": "ready", "hf_scale_up_seconds": 1})
        postfixes.extend(h.progress.postfix or "" for h in logger.handlers if isinstance(h, ScaleUpProgress))
        return outcome

    monkeypatch.setattr(cli, "_run_batch_async", run_batch)
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 1)
    assert main(["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--concurrency", "1"]) == 0
    # The scale-up note, then (ready) only the replica's figures: the bar keeps each part when the other changes.
    waiting, ready = postfixes
    assert waiting.startswith("endpoint scaling up, waiting up to 300 s")
    assert ready == "replicas 1/1 · in flight 0 · waiting 0 · refused 0"
    assert not any(isinstance(h, ScaleUpProgress) for h in logger.handlers)


def test_a_url_with_credentials_is_refused_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeTGI() as server:
        url = server.url.replace("http://", "http://user:PASSWORD@")
        assert main(["hi", "--url", url]) == 1
        assert server.requests == []
    err = capsys.readouterr().err
    assert err.startswith("error: --url must not contain a user name or password")
    assert "--token-env" in err and "PASSWORD" not in err
    assert len(err.strip().splitlines()) <= 2


def test_token_env_sends_that_token_to_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TGI_KEY", "tgi-key-123456")
    with FakeTGI(api_key="tgi-key-123456") as server:
        assert main(["hi", "--url", server.url, "--token-env", "MY_TGI_KEY", "--no-stream"]) == 0
        assert {r.headers.get("authorization") for r in server.requests} == {"Bearer tgi-key-123456"}


def test_token_env_naming_an_unset_variable_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hi", "--url", "http://127.0.0.1:9", "--token-env", "NOT_SET_ANYWHERE_42"]) == 1
    err = capsys.readouterr().err
    assert "NOT_SET_ANYWHERE_42" in err and "Traceback" not in err


def test_a_batch_against_a_cold_endpoint_says_so_on_its_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes import EndpointProxy

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n" for i in range(3)))
    output = tmp_path / "replies.jsonl"
    with FakeTGI() as server:
        server.endpoint = EndpointProxy(cold_for=1.0, honour_scale_up_header=False)
        argv = ["--batch", str(prompts), "--output", str(output), "--url", server.url]
        assert main([*argv, "--api-type", "inference_endpoints", "--concurrency", "1"]) == 0
    err = capsys.readouterr().err
    assert "endpoint scaling up, waiting up to 300 s" in err  # the bar said it while waiting
    assert "3/3 answered" in err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["reply"] for r in records] == ["Natural Language Processing is a field."] * 3


def test_stop_understands_escapes_as_the_readme_writes_them(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeTGI(tokens=["line one", "\n", "line two"]) as server:
        assert main(["hi", "--url", server.url, "--stop", r"\n", "--no-stream"]) == 0
        assert server.requests[-1].json["parameters"]["stop"] == ["\n"]
    assert capsys.readouterr().out == "line one\n"


@pytest.mark.parametrize(
    ("fault", "hint"),
    [
        (Fault.status(400, {"error": "Bad Request: Invalid state"}), "resume the Inference Endpoint"),
        (Fault.redirect(301, "https://elsewhere.example/info"), "set --url to the address the redirect points to"),
    ],
)
def test_endpoint_and_redirect_failures_have_their_own_hints(
    fault: Fault, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeTGI() as server:
        server.faults_for("GET", "/info").append(fault)
        assert main(["hi", "--url", server.url, "--api-type", "inference_endpoints"]) == 1
    lines = stderr_lines(capsys)
    assert lines[-1] == f"hint: {hint}" or lines[-1].startswith(f"hint: {hint}")


# --- tokens on the command line (issue 20) ---------------------------------------------------------

KEY_FILE = "hf_first_line_of_the_key_file\n# created 2024-05-01 for the batch jobs"
KEY_PIECES = ["hf_first_line_of_the_key_file", "# created 2024-05-01 for the batch jobs", "created 2024"]


@pytest.mark.parametrize("verbose", [False, True])
def test_a_token_that_cannot_be_a_header_is_named_by_its_variable_never_shown(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    monkeypatch.setenv("MY_KEY", KEY_FILE)
    assert main(["hi", "--url", tgi.url, "--token-env", "MY_KEY", *(["--verbose"] if verbose else [])]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: the token in the environment variable MY_KEY cannot be sent in an HTTP header: it contains a line "
        "break (was a file of several lines read into it?). A token is one line of printable ASCII; set it to the "
        "token alone"
    )
    assert not [piece for piece in KEY_PIECES if piece in err]
    assert tgi.requests == []


def test_a_batch_with_a_token_that_cannot_be_a_header_stops_before_any_prompt(
    tgi: FakeTGI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_KEY", KEY_FILE)
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(prompts, 5)
    args = ["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--token-env", "MY_KEY"]
    assert main([*args, "--no-progress"]) == 1
    (error,) = stderr_lines(capsys)
    assert error.startswith("error: the token in the environment variable MY_KEY cannot be sent in an HTTP header")
    assert read_output(output) == []
    assert tgi.requests == []


def test_the_cli_keeps_any_piece_of_a_token_out_of_what_it_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a library puts in a message (http.client quotes a header it refuses), the CLI prints no token."""
    monkeypatch.setenv("HF_TOKEN", KEY_FILE)
    monkeypatch.setenv("MY_KEY", "Basic dXNlcjpzZWNyZXQtcGFzcw==")
    context = cli._Context()
    context.token_vars.add("MY_KEY")
    for text in (
        f"Invalid header value {KEY_FILE.encode()!r}",
        "Invalid header value 'Basic dXNlcjpzZWNyZXQtcGFzcw=='",
    ):
        printed = context.redact(text)
        assert printed.startswith("Invalid header value")
        assert not [p for p in [*KEY_PIECES, "dXNlcjpzZWNyZXQtcGFzcw=="] if p in printed], printed


def test_token_env_hf_token_is_sent_to_the_url_the_user_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_users_own_token_123456")
    with FakeTGI(api_key="hf_users_own_token_123456") as server:
        assert main(["hi", "--url", server.url, "--token-env", "HF_TOKEN", "--no-stream"]) == 0
        assert {r.headers.get("authorization") for r in server.requests} == {"Bearer hf_users_own_token_123456"}


def test_a_401_with_hf_token_withheld_says_why_and_how_to_send_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_users_own_token_123456")
    with FakeTGI(api_key="hf_users_own_token_123456") as server:
        assert main(["hi", "--url", server.url, "--no-stream"]) == 1
        assert {r.headers.get("authorization") for r in server.requests} == {None}
    error, hint = stderr_lines(capsys)
    assert "HTTP 401" in error
    assert hint == (
        "hint: HF_TOKEN is set but was not sent: the default token goes to Hugging Face hosts over https only; to "
        "send it to --url deliberately, pass --token-env HF_TOKEN"
    )


def test_a_401_with_the_chosen_token_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_KEY", "a-wrong-key-123456")
    with FakeTGI(api_key="the-right-key-123456") as server:
        assert main(["hi", "--url", server.url, "--token-env", "MY_KEY", "--no-stream"]) == 1
    _, hint = stderr_lines(capsys)
    assert hint == "hint: check the token in the environment variable MY_KEY and its permissions for this server"


def pipeline_file(path: Path, url: str, *, token: str = "", components: str = "", connections: str = "[]") -> Path:
    path.write_text(
        "components:\n"
        f"{components}"
        f"  llm:\n    type: {cli._NAME}\n    init_parameters:\n      api_type: text_generation_inference\n"
        f"      api_params:\n        url: {url}\n{token}"
        f"connections: {connections}\n"
    )
    return path


def test_a_401_from_a_pipeline_naming_hf_token_explains_the_host_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipeline file may come from anyone: naming HF_TOKEN in it does not send your token to its server."""
    monkeypatch.setenv("HF_TOKEN", "hf_users_own_token_123456")
    token = "      token:\n        type: env_var\n        env_vars: [HF_TOKEN]\n        strict: false\n"
    with FakeTGI(api_key="hf_users_own_token_123456") as server:
        pipeline = pipeline_file(tmp_path / "p.yaml", server.url, token=token)
        assert main(["hi", "--pipeline", str(pipeline), "--no-stream"]) == 1
        assert {r.headers.get("authorization") for r in server.requests} == {None}
        url = server.url
    _, hint = stderr_lines(capsys)
    assert hint == (
        "hint: the pipeline's token names HF_TOKEN, which is sent to Hugging Face hosts only, never to a server a "
        f"pipeline file names (such a file may come from anyone); to send a token to {url} deliberately, "
        "export it under another name and set the component's token to {type: env_var, env_vars: [THAT_NAME]}"
    )


@pytest.mark.parametrize(("value", "state"), [(None, "is not set"), ("  ", "is empty")])
def test_token_env_naming_a_variable_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str | None, state: str
) -> None:
    if value is not None:
        monkeypatch.setenv("MY_KEY", value)
    with FakeTGI() as server:
        assert main(["hi", "--url", server.url, "--token-env", "MY_KEY"]) == 1
        assert server.requests == []
    assert stderr_lines(capsys) == [f"error: --token-env MY_KEY: the environment variable MY_KEY {state}"]


# --- pipelines, stdin, flags (issue 20) ------------------------------------------------------------

BUILDER = "haystack.components.builders.prompt_builder.PromptBuilder"


def builder_pipeline(path: Path, url: str, variable: str) -> Path:
    builder = (
        f"  builder:\n    type: {BUILDER}\n    init_parameters:\n"
        f"      template: 'Answer briefly: {{{{ {variable} }}}}'\n      required_variables: '*'\n"
    )
    connections = "\n- sender: builder.prompt\n  receiver: llm.prompt"
    return pipeline_file(path, url, components=builder, connections=connections)


def test_pipeline_feeds_the_prompt_builder_that_takes_prompt(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = builder_pipeline(tmp_path / "p.yaml", tgi.url, "prompt")
    assert main(["What is NLP?", "--pipeline", str(pipeline), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out == "Natural Language\n"  # streamed through the generator
    assert tgi.requests[-1].json["inputs"] == "Answer briefly: What is NLP?"


def test_pipeline_without_a_prompt_input_says_which_input_and_how_to_map_it(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = builder_pipeline(tmp_path / "p.yaml", tgi.url, "question")
    with pytest.raises(SystemExit) as exited:
        main(["What is NLP?", "--pipeline", str(pipeline)])
    assert exited.value.code == 2
    assert (
        "no component of --pipeline takes an unconnected input 'prompt' (its mandatory inputs: builder.question); "
        "say where the prompt goes with --prompt-input builder.question"
    ) in capsys.readouterr().err
    assert tgi.requests == []

    assert main(["What is NLP?", "--pipeline", str(pipeline), "--prompt-input", "builder.question", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replies"] == [TEXT]
    assert tgi.requests[-1].json["inputs"] == "Answer briefly: What is NLP?"


def test_prompt_input_must_name_an_unconnected_input(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = builder_pipeline(tmp_path / "p.yaml", tgi.url, "question")
    with pytest.raises(SystemExit):
        main(["hi", "--pipeline", str(pipeline), "--prompt-input", "llm.prompt"])
    err = capsys.readouterr().err
    assert "--prompt-input llm.prompt is not an unconnected input of --pipeline (builder.question," in err


def test_component_must_name_a_generator_of_the_pipeline(
    tgi: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = pipeline_file(tmp_path / "p.yaml", tgi.url)
    with pytest.raises(SystemExit) as exited:
        main(["hi", "--pipeline", str(pipeline), "--component", "generator"])
    assert exited.value.code == 2
    assert "--component generator is not a HuggingFaceAPIGenerator of --pipeline (['llm'])" in capsys.readouterr().err


@pytest.mark.parametrize(("stdin", "sent"), [("What is NLP?\n", "What is NLP?"), ("two\nlines\n\n", "two\nlines\n")])
def test_dash_reads_the_prompt_from_stdin(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, sent: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["-", "--url", tgi.url, "--no-stream"]) == 0
    assert tgi.requests[-1].json["inputs"] == sent  # only the line ending echo adds is dropped
    assert capsys.readouterr().out == TEXT + "\n"


def test_an_empty_stdin_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit) as exited:
        main(["-", "--url", "http://127.0.0.1:1"])
    assert exited.value.code == 2
    assert "the prompt read from stdin (-) is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--timeout", "0", "argument --timeout: must be a positive number of seconds, got '0'"),
        ("--timeout", "inf", "argument --timeout: must be a positive number of seconds, got 'inf'"),
        ("--max-new-tokens", "0", "argument --max-new-tokens: must be an integer >= 1, got '0'"),
        ("--temperature", "-1", "argument --temperature: must be a number >= 0 (0 means greedy decoding), got '-1'"),
        ("--seed", "x", "argument --seed: must be an integer >= 0 and < 2**63, got 'x'"),
        ("--concurrency", "0", "argument --concurrency: must be auto or an integer >= 1, got '0'"),
        ("--concurrency", "many", "argument --concurrency: must be auto or an integer >= 1, got 'many'"),
        ("--generation-kwargs", '{"top_k": 0}', "argument --generation-kwargs: 'top_k' must be an integer >= 1, got 0"),
        ("--generation-kwargs", '{"max_tokens": 9}', "argument --generation-kwargs: 'max_tokens' is not a known"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hi", "--url", "http://127.0.0.1:1", flag, value])
    assert exited.value.code == 2
    assert f"hf-api-generate: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hi", "--pipeline", "p.yaml", "--url", "http://h"], "--url does not apply to --pipeline: the saved"),
        (["hi", "--pipeline", "p.yaml", "--timeout", "5"], "--timeout does not apply to --pipeline"),
        (
            ["hi", "--pipeline", "p.yaml", "--token-env", "K"],
            "--token-env does not apply to --pipeline: the saved component has its 'token'",
        ),
        (["hi", "--pipeline", "p.yaml", "--stop", "x"], "--stop does not apply to --pipeline"),
        (["hi", "--url", "http://h", "--component", "llm"], "--component applies to --pipeline only"),
        (["hi", "--url", "http://h", "--prompt-input", "b.q"], "--prompt-input applies to --pipeline only"),
        (["hi", "--url", "http://h", "--output", "o.jsonl"], "--output applies to --batch only"),
        (["hi", "--url", "http://h", "--concurrency", "2"], "--concurrency applies to --batch only"),
        (["hi", "--batch", "b", "--output", "o", "--url", "http://h"], "give a prompt or --batch, not both"),
        (["--batch", "b", "--output", "o", "--url", "http://h", "--json"], "--json does not apply to --batch"),
        (["hi", "--url", "http://h", "--provider", "together"], "--provider applies to Inference Providers only"),
    ],
)
def test_a_flag_that_does_not_apply_is_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"hf-api-generate: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "org/m", "--protocol", "chat"], "error: --protocol applies to URL-based api types"),
        (
            ["--url", "http://h", "--api-type", "serverless_inference_api"],
            "error: --url does not apply to 'serverless_inference_api'",
        ),
    ],
)
def test_a_combination_the_generator_refuses_names_the_flags(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["hi", *argv]) == 1
    (error,) = stderr_lines(capsys)
    assert error.startswith(message)
