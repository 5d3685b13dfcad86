"""End-to-end tests of the embedded local model server (real `transformers serve`, SmolLM2-135M on CPU).

The first run converts the GGUF model (~20-30 s); later runs reuse the cached folder. Each server start costs ~5 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haystack_integrations.generators.hugging_face_api import local_model
from haystack_integrations.generators.hugging_face_api.local_model import (
    MODEL_NAME,
    LocalModelServer,
    find_gguf,
    is_prepared,
    prepare_model,
)

pytestmark = pytest.mark.e2e

MODULE = "haystack_integrations.generators.hugging_face_api.local_model"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return prepare_model()


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[LocalModelServer]:
    with LocalModelServer(port=_free_port(), model_dir=model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LocalModelServer) -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must not intercept requests to 127.0.0.1.
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as http:
        yield http


def _sse_events(response: httpx.Response) -> list[str]:
    """The payloads of `data: ` lines; any other non-empty line fails the test."""
    payloads = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payloads.append(line[len("data: ") :])
    return payloads


def test_find_gguf_locates_the_packaged_file() -> None:
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_import_stays_light() -> None:
    """Importing the module must not pull torch or transformers (run as a file: the package __init__ may)."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    command = [sys.executable, "-P", "-c", code, str(Path(local_model.__file__))]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_prepare_is_idempotent(model_dir: Path) -> None:
    started = time.monotonic()
    again = prepare_model()
    elapsed = time.monotonic() - started
    assert again == model_dir
    assert elapsed < 1.0
    assert is_prepared(model_dir)
    assert (model_dir / ".prepared.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert not list(model_dir.parent.glob(f".{MODEL_NAME}.build-*"))


def test_prepare_cli_reports_the_cached_folder(model_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", MODULE, "prepare", "--cache-dir", str(model_dir.parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert str(model_dir) in out.stdout


def test_health_and_models(server: LocalModelServer, client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME] == [server.model_id]


def test_completion_returns_text(client: httpx.Client) -> None:
    response = client.post(
        "/v1/completions", json={"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 8}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["text"].strip()
    assert choice["finish_reason"] in {"length", "stop"}
    assert body["model"] == MODEL_NAME
    assert body["usage"]["completion_tokens"] <= 8


def _stream(client: httpx.Client, path: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**request, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = _sse_events(response)
    assert "[DONE]" not in payloads
    return [json.loads(p) for p in payloads]


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream_shape(client: httpx.Client, include_usage: bool) -> None:
    """
    Pins the facts of the locked `transformers serve` (5.25, docs/local-model.md): no `data: [DONE]`; the finish
    reason in an event of its own; usage only when asked, in an extra last event with `choices: []`.
    """
    request: dict[str, Any] = {"prompt": "The capital of France is", "max_tokens": 4}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    events = _stream(client, "/v1/completions", request)
    usage_events = [e for e in events if "usage" in e]
    if include_usage:
        assert usage_events == [events[-1]]
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        events = events[:-1]
    else:
        assert usage_events == []
    assert "".join(e["choices"][0]["text"] for e in events).strip()
    assert all("finish_reason" not in e["choices"][0] for e in events[:-1])
    assert events[-1]["choices"] == [{"index": 0, "text": "", "finish_reason": "length"}]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_shape(client: httpx.Client, include_usage: bool) -> None:
    """The chat stream of the locked release: role first, one delta per token, then as for completions."""
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request["max_tokens"] = 4
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    events = _stream(client, "/v1/chat/completions", request)
    usage_events = [e for e in events if "usage" in e]
    if include_usage:
        assert usage_events == [events[-1]]
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == {"prompt_tokens": 37, "completion_tokens": 4, "total_tokens": 41}
        events = events[:-1]
    else:
        assert usage_events == []
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert len(events) == 1 + 4 + 1
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[1:-1]).strip()
    assert events[-1]["choices"] == [{"delta": {}, "index": 0, "finish_reason": "length"}]


def test_chat_completion(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()


def test_protocol_quirks(client: httpx.Client) -> None:
    """Behaviour an HTTP client must cope with (see docs/local-model.md)."""
    unknown = client.post("/v1/completions", json={"model": "gpt2", "prompt": "Hi", "max_tokens": 2})
    assert unknown.status_code == 400
    assert "pinned" in unknown.json()["detail"]
    rejected = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "top_k": 5})
    assert rejected.status_code == 422
    stopped = client.post(
        "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 8, "stop": ["."]}
    )
    assert stopped.json()["choices"][0]["finish_reason"] == "stop"
    assert stopped.json()["choices"][0]["text"].endswith(".")  # the stop text is kept


def test_start_on_a_running_server_reuses_it(server: LocalModelServer) -> None:
    second = LocalModelServer(port=server.port, model_dir=None)
    assert second.start(timeout=10) == server.url
    assert second.reused
    second.stop()  # not owned: must leave the shared server running
    assert server.is_running()


def test_stop_terminates_the_process(model_dir: Path) -> None:
    port = _free_port()
    local = LocalModelServer(port=port, model_dir=model_dir)
    url = local.start()
    assert httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200
    process_id = local.pid
    assert process_id is not None
    local.stop()
    assert not local.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(process_id, 0)  # gone and reaped
    assert not _accepts_connections(port)
    local.stop()  # idempotent
