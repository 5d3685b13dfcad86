"""HuggingFaceAPIGenerator end to end: the component, a YAML pipeline and the CLI against the real local model.

The server is `transformers serve` (OpenAI-compatible, no TGI routes), so `protocol: auto` must pick `/v1/completions`.
Decoding is greedy and deterministic: the same prompt and `max_new_tokens` always give the same reply, which lets
tests compare replies across streaming and non-streaming, sync and async, processes and runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from haystack import Pipeline
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.cli import main as cli_main
from haystack_integrations.generators.hugging_face_api.local_model import MODEL_NAME
from tests.e2e.conftest import BIN, free_port, subprocess_env

pytestmark = pytest.mark.e2e

TYPE = "haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator"
PROMPT = "The capital of France is"
CHAT_PROMPT = "What is the capital of France?"
CLI = str(BIN / "hf-api-generate")


def make_generator(url: str, **kwargs: Any) -> HuggingFaceAPIGenerator:
    api_params = {"url": url, **kwargs.pop("api_params", {})}
    return HuggingFaceAPIGenerator(api_type="text_generation_inference", api_params=api_params, **kwargs)


@pytest.fixture(scope="module")
def generator(model_url: str) -> Iterator[HuggingFaceAPIGenerator]:
    with make_generator(model_url) as component:
        yield component


@pytest.fixture(scope="module")
def baseline(generator: HuggingFaceAPIGenerator) -> dict[str, Any]:
    """The non-streaming reply to PROMPT with 12 new tokens: the reference other tests compare against."""
    return generator.run(PROMPT, generation_kwargs={"max_new_tokens": 12})


def check_usage(meta: dict[str, Any], completion_tokens: int | None = None) -> None:
    usage = meta["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if completion_tokens is not None:
        assert usage["completion_tokens"] == completion_tokens


# --- the component --------------------------------------------------------------------------------


def test_run_uses_completions_and_reports_meta(baseline: dict[str, Any]) -> None:
    reply = baseline["replies"][0]
    meta = baseline["meta"][0]
    assert len(baseline["replies"]) == len(baseline["meta"]) == 1
    assert reply.strip()
    assert "Paris" in reply  # the model knows this one; a wrong route or prompt would not produce it
    assert meta["protocol"] == "completions"
    assert meta["route"] == "/v1/completions"
    assert meta["model"] == MODEL_NAME
    assert meta["finish_reason"] == "length"
    assert meta["server_finish_reason"] == "length"
    check_usage(meta, completion_tokens=12)


def test_generation_kwargs_at_run_time_override_init(model_url: str, baseline: dict[str, Any]) -> None:
    with make_generator(model_url, generation_kwargs={"max_new_tokens": 12}) as component:
        short = component.run(PROMPT, generation_kwargs={"max_new_tokens": 4})
    check_usage(short["meta"][0], completion_tokens=4)
    assert short["replies"][0]
    assert baseline["replies"][0].startswith(short["replies"][0])


def test_streaming_chunks_concatenate_to_the_reply(model_url: str, baseline: dict[str, Any]) -> None:
    chunks: list[StreamingChunk] = []
    with make_generator(model_url, streaming_callback=chunks.append) as component:
        result = component.run(PROMPT, generation_kwargs={"max_new_tokens": 12})
    reply = result["replies"][0]
    assert reply == baseline["replies"][0]  # greedy decoding: streaming changes the transport, not the text
    assert len(chunks) >= 3  # one event per token, and the final one
    assert "".join(chunk.content for chunk in chunks) == reply
    assert chunks[0].start is True
    assert all(chunk.start is False for chunk in chunks[1:])
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    assert chunks[-1].finish_reason == "length"
    assert all(chunk.index == 0 for chunk in chunks)
    assert all(chunk.component_info is not None and chunk.component_info.type == TYPE for chunk in chunks)
    meta = result["meta"][0]
    assert meta["finish_reason"] == "length"
    assert meta["protocol"] == "completions"
    assert meta["completion_start_time"]
    check_usage(meta, completion_tokens=12)
    assert chunks[-1].meta["usage"] == meta["usage"]


def pick_stop_words(reply: str) -> tuple[str, str]:
    """A word and a two-word phrase from inside a reply (so both surely occur when the same prompt is sent again)."""
    words = reply.split()
    assert len(words) >= 4, reply
    word, phrase = words[2], f"{words[1]} {words[2]}"
    assert reply.index(word) > 0
    assert phrase in reply, (phrase, reply)
    return word, phrase


def test_stop_word_at_init_ends_the_reply_before_it(model_url: str, baseline: dict[str, Any]) -> None:
    full = baseline["replies"][0]
    word, _ = pick_stop_words(full)
    with make_generator(model_url, stop_words=[word]) as component:
        result = component.run(PROMPT, generation_kwargs={"max_new_tokens": 12})
    reply = result["replies"][0]
    assert word not in reply
    assert reply == full[: full.index(word)]
    assert result["meta"][0]["finish_reason"] == "stop"


def test_stop_phrase_at_run_time_while_streaming(model_url: str, baseline: dict[str, Any]) -> None:
    """A stop phrase spanning several tokens (several stream events) never reaches the callback."""
    full = baseline["replies"][0]
    _, phrase = pick_stop_words(full)
    chunks: list[StreamingChunk] = []
    with make_generator(model_url) as component:
        result = component.run(
            PROMPT, streaming_callback=chunks.append, generation_kwargs={"max_new_tokens": 12, "stop": [phrase]}
        )
    reply = result["replies"][0]
    streamed = "".join(chunk.content for chunk in chunks)
    assert phrase not in reply
    assert reply == full[: full.index(phrase)]
    assert streamed == reply
    assert chunks[-1].finish_reason == "stop"


async def test_run_async_matches_run(model_url: str, baseline: dict[str, Any]) -> None:
    chunks: list[StreamingChunk] = []

    async def collect(chunk: StreamingChunk) -> None:
        chunks.append(chunk)

    component = make_generator(model_url)
    try:
        plain, streamed = await asyncio.gather(
            component.run_async(PROMPT, generation_kwargs={"max_new_tokens": 12}),
            component.run_async(PROMPT, streaming_callback=collect, generation_kwargs={"max_new_tokens": 12}),
        )
    finally:
        await component.aclose()
    assert plain["replies"] == streamed["replies"] == baseline["replies"]
    assert "".join(chunk.content for chunk in chunks) == baseline["replies"][0]
    assert chunks[0].start is True
    assert chunks[-1].finish_reason == "length"
    for result in (plain, streamed):
        assert result["meta"][0]["protocol"] == "completions"
        check_usage(result["meta"][0], completion_tokens=12)


def test_chat_protocol_applies_the_chat_template(model_url: str, generator: HuggingFaceAPIGenerator) -> None:
    with make_generator(model_url, api_params={"protocol": "chat"}) as chat:
        result = chat.run(CHAT_PROMPT, generation_kwargs={"max_new_tokens": 12})
    reply = result["replies"][0]
    meta = result["meta"][0]
    assert reply.strip()
    assert "Paris" in reply
    assert meta["protocol"] == "chat"
    assert meta["route"] == "/v1/chat/completions"
    assert meta["finish_reason"] in {"stop", "length"}
    check_usage(meta)
    assert meta["usage"]["completion_tokens"] <= 12
    # The chat template (with its default system prompt) wraps the prompt: many more prompt tokens than raw text.
    raw = generator.run(CHAT_PROMPT, generation_kwargs={"max_new_tokens": 1})
    assert meta["usage"]["prompt_tokens"] >= raw["meta"][0]["usage"]["prompt_tokens"] + 10


# --- a YAML pipeline ------------------------------------------------------------------------------


def pipeline_yaml(url: str, max_new_tokens: int = 16) -> str:
    return f"""\
components:
  llm:
    type: {TYPE}
    init_parameters:
      api_type: text_generation_inference
      api_params:
        url: {url}
      generation_kwargs:
        max_new_tokens: {max_new_tokens}
connections: []
"""


def test_yaml_pipeline_with_query_time_generation_kwargs(model_url: str, baseline: dict[str, Any]) -> None:
    pipeline = Pipeline.loads(pipeline_yaml(model_url))
    short = pipeline.run({"llm": {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 3}}})["llm"]
    longer = pipeline.run({"llm": {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 12}}})["llm"]
    check_usage(short["meta"][0], completion_tokens=3)
    check_usage(longer["meta"][0], completion_tokens=12)
    assert longer["replies"] == baseline["replies"]
    assert short["replies"][0]
    assert longer["replies"][0].startswith(short["replies"][0])
    assert len(short["replies"][0]) < len(longer["replies"][0])
    # Saved and loaded again, it still runs the same way.
    again = Pipeline.loads(pipeline.dumps())
    assert again.run({"llm": {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 3}}})["llm"] == short


# --- the command line -----------------------------------------------------------------------------


def test_cli_in_process_json(model_url: str, baseline: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([PROMPT, "--url", model_url, "--max-new-tokens", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replies"] == baseline["replies"]
    assert result["meta"][0]["protocol"] == "completions"
    check_usage(result["meta"][0], completion_tokens=12)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=subprocess_env(), check=False
    )


def test_cli_subprocess_streams_the_reply(model_url: str, baseline: dict[str, Any]) -> None:
    done = run_cli(PROMPT, "--url", model_url, "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    assert done.stdout == baseline["replies"][0] + "\n"


def test_cli_subprocess_stop_word(model_url: str, baseline: dict[str, Any]) -> None:
    full = baseline["replies"][0]
    word, _ = pick_stop_words(full)
    done = run_cli(PROMPT, "--url", model_url, "--max-new-tokens", "12", "--stop", word)
    assert done.returncode == 0, done.stderr
    assert word not in done.stdout
    assert done.stdout == full[: full.index(word)] + "\n"


def test_cli_subprocess_pipeline(model_url: str, baseline: dict[str, Any], tmp_path: Path) -> None:
    saved = tmp_path / "pipeline.yaml"
    saved.write_text(pipeline_yaml(model_url, max_new_tokens=3), encoding="utf-8")
    default = run_cli(PROMPT, "--pipeline", str(saved))  # streams, with the saved max_new_tokens (3)
    overridden = run_cli(PROMPT, "--pipeline", str(saved), "--max-new-tokens", "12", "--json")
    assert default.returncode == 0, default.stderr
    assert overridden.returncode == 0, overridden.stderr
    result = json.loads(overridden.stdout)
    assert result["replies"] == baseline["replies"]
    check_usage(result["meta"][0], completion_tokens=12)
    short = default.stdout.removesuffix("\n")
    assert short
    assert baseline["replies"][0].startswith(short)
    assert len(short) < len(baseline["replies"][0])


# --- batch, interrupted and resumed ---------------------------------------------------------------


class RecordingProxy:
    """
    A reverse proxy in front of the model server that records the prompt of every completion request it receives.

    It shows which prompts a batch run really sent, whatever the output file says.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=upstream, timeout=120, trust_env=False)
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def take(self) -> list[str]:
        """The prompts received since the last call."""
        with self._lock:
            taken, self.prompts = self.prompts, []
        return taken

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST" and self.path.endswith("/completions"):
                    with proxy._lock:
                        proxy.prompts.append(json.loads(body)["prompt"])
                headers = {"content-type": self.headers.get("Content-Type", "application/json")}
                answer = proxy._client.request(self.command, self.path, content=body, headers=headers)
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:  # the client was killed while waiting: nobody to answer
                    self.close_connection = True

            do_GET = _forward
            do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of the lines fully written (a line torn by the kill has no newline yet)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def test_cli_batch_resumes_after_sigkill(model_url: str, tmp_path: Path) -> None:
    topics = ["France", "Italy", "Spain", "Germany", "Japan", "Canada", "Egypt", "Peru", "India", "Kenya", "Chile"]
    prompts = [{"id": f"q{i}", "prompt": f"The capital of {topic} is"} for i, topic in enumerate(topics)]
    prompts.append({"id": "q11", "prompt": "Water boils at", "generation_kwargs": {"max_new_tokens": 4}})
    by_id = {item["id"]: item["prompt"] for item in prompts}
    batch_in = tmp_path / "prompts.jsonl"
    batch_out = tmp_path / "replies.jsonl"
    batch_in.write_text("".join(json.dumps(item) + "\n" for item in prompts), encoding="utf-8")

    with RecordingProxy(model_url) as proxy:
        command = [CLI, "--batch", str(batch_in), "--output", str(batch_out), "--url", proxy.url]
        command += ["--concurrency", "2", "--max-new-tokens", "8", "--no-progress"]

        first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(complete_records(batch_out)) < 3:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the batch wrote nothing"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        time.sleep(0.5)  # let the proxy record anything the killed process had already sent
        sent_first = proxy.take()
        before = complete_records(batch_out)
        assert 3 <= len(before) < len(prompts)
        assert all("reply" in record for record in before)
        answered_before = {record["id"] for record in before}
        assert {by_id[key] for key in answered_before} <= set(sent_first)

        second = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr
        sent_second = proxy.take()

    final = [json.loads(line) for line in batch_out.read_text(encoding="utf-8").splitlines()]
    assert sorted(record["id"] for record in final) == sorted(by_id)  # each prompt once, in the order answered
    assert all(record["reply"].strip() and "error" not in record for record in final)
    final_by_id = {record["id"]: record for record in final}
    assert all(final_by_id[record["id"]] == record for record in before)  # kept as written before the kill
    # The rerun asked for exactly the prompts that had no answer yet, each once.
    assert sorted(sent_second) == sorted(by_id[key] for key in by_id if key not in answered_before)
    assert f"{len(prompts)}/{len(prompts)} answered, 0 failed" in second.stderr
    skipped = f"resuming {batch_out}: {len(before)} answered earlier with the same prompt and settings: skipped"
    assert skipped in second.stderr.splitlines()
    # The per-prompt generation_kwargs were applied.
    assert final_by_id["q11"]["meta"]["usage"]["completion_tokens"] == 4
    assert all(final_by_id[key]["meta"]["usage"]["completion_tokens"] <= 8 for key in by_id)
    assert "Paris" in final_by_id["q0"]["reply"]
