"""The command line against the fake TGI server: one prompt, a saved pipeline, batches with resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haystack_integrations.generators.hugging_face_api.cli import main
from tests.fakes import FakeTGI, Fault

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


def test_batch_answers_everything_in_input_order(tgi: FakeTGI, tmp_path: Path) -> None:
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
    assert [r["id"] for r in records] == [f"p{i}" for i in range(30)]
    assert all(r["reply"] == "Natural Language" for r in records)
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
    assert read_output(output) == complete


def test_batch_keeps_ids_as_given_and_numbers_lines_without_id(tgi: FakeTGI, tmp_path: Path) -> None:
    prompts, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(
        '{"id": 7, "prompt": "a"}\n"just a prompt"\n{"prompt": "b", "generation_kwargs": {"max_new_tokens": 1}}\n'
    )
    assert main(["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--no-progress"]) == 0
    records = read_output(output)
    assert [r["id"] for r in records] == [7, 2, 3]
    assert records[2]["reply"] == "Natural"
