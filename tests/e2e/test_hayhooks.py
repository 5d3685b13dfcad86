"""The Hayhooks example (examples/hayhooks) served for real: Hayhooks in a subprocess, the local model behind it.

Hayhooks runs `examples/hayhooks/serve.py` (`hayhooks run` plus OpenAI-shaped error bodies) on a free port with a copy
of the example's pipelines folder (so nothing is written into the repository) and `HF_API_GENERATOR_URL` pointing at
the shared local model server. Its `/run` route is called with httpx, its OpenAI-compatible route with the `openai`
client, plain and streamed; one more test runs plain `hayhooks run` to show what changes there (the error body).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.local_model import MODEL_NAME
from tests.e2e.conftest import BIN, free_port, subprocess_env
from tests.fakes.raw import ScriptedServer, chat_stream

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hayhooks"
PIPELINE = "hf_generate"
PROMPT = "What is the capital of France?"
QUESTION = "What's Natural Language Processing?"
HAYHOOKS = str(BIN / "hayhooks")
SERVE = [sys.executable, str(EXAMPLE / "serve.py")]


class Hayhooks:
    """Hayhooks (`serve.py`, or `hayhooks run` itself) in its own process group, with its output in a log file."""

    def __init__(
        self, pipelines_dir: Path, log_path: Path, env: dict[str, str], launcher: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [*(launcher or SERVE), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--pipelines-dir", str(pipelines_dir)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=pipelines_dir.parent,  # Hayhooks reads a .env from its working directory: keep it ours
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        """Poll `GET /status` until the example pipeline is deployed; returns that status."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while True:
                assert self.process.poll() is None, f"hayhooks exited early:\n{self.log()}"
                try:
                    status = client.get("/status")
                    if status.status_code == 200 and PIPELINE in status.json()["pipelines"]:
                        body: dict[str, Any] = status.json()
                        return body
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"hayhooks not ready after {timeout} s:\n{self.log()}"
                time.sleep(0.25)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it hangs. Returns the exit code. Idempotent."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


def start_hayhooks(model_url: str, root: Path, launcher: list[str] | None = None) -> Hayhooks:
    pipelines = root / "pipelines"
    shutil.copytree(EXAMPLE / "pipelines", pipelines, ignore=shutil.ignore_patterns("__pycache__"))
    return Hayhooks(pipelines, root / "hayhooks.log", subprocess_env(HF_API_GENERATOR_URL=model_url), launcher)


@pytest.fixture(scope="module")
def hayhooks(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hayhooks]:
    server = start_hayhooks(model_url, tmp_path_factory.mktemp("hayhooks"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(hayhooks: Hayhooks) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hayhooks.url, timeout=120, trust_env=False) as http:
        yield http


@pytest.fixture(scope="module")
def direct(model_url: str) -> Iterator[HuggingFaceAPIGenerator]:
    """The same component called in-process, to compare with what Hayhooks answers."""
    api_params = {"url": model_url, "protocol": "chat"}  # as in hf_generate.yml
    with HuggingFaceAPIGenerator(api_type="text_generation_inference", api_params=api_params) as component:
        yield component


def run(client: httpx.Client, body: dict[str, Any], pipeline: str = PIPELINE) -> dict[str, Any]:
    response = client.post(f"/{pipeline}/run", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def test_status_lists_the_example_pipeline(client: httpx.Client) -> None:
    status = client.get("/status").json()
    assert status["status"] == "Up!"
    assert status["pipelines"] == [PIPELINE]


async def test_first_requests_arrive_together(hayhooks: Hayhooks) -> None:
    """
    The first requests after deployment race to resolve the server's protocol, and share one component.

    Each must still get its own query-time generation_kwargs.
    """
    bodies = [{"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": n}} for n in (2, 7, 4)]
    async with httpx.AsyncClient(base_url=hayhooks.url, timeout=120, trust_env=False) as http:
        responses = await asyncio.gather(*(http.post(f"/{PIPELINE}/run", json=body) for body in bodies))
    assert [response.status_code for response in responses] == [200, 200, 200], [r.text for r in responses]
    results = [response.json()["result"] for response in responses]
    assert [result["meta"][0]["usage"]["completion_tokens"] for result in results] == [2, 7, 4]
    assert all(result["meta"][0]["protocol"] == "chat" for result in results)
    two, seven, four = (result["replies"][0] for result in results)
    assert two
    assert four.startswith(two)
    assert seven.startswith(four)


def test_run_with_query_time_generation_kwargs(client: httpx.Client, direct: HuggingFaceAPIGenerator) -> None:
    short = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 3}})
    longer = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 7}})
    for result, tokens in ((short, 3), (longer, 7)):
        assert set(result) == {"replies", "meta"}
        assert result["replies"][0].strip()
        meta = result["meta"][0]
        assert meta["model"] == MODEL_NAME
        assert meta["protocol"] == "chat"  # hf_generate.yml: the server applies the model's chat template
        assert meta["finish_reason"] == "length"
        assert meta["usage"]["completion_tokens"] == tokens  # max_new_tokens from the request body took effect
    assert "Paris" in longer["replies"][0]
    assert longer["replies"][0].startswith(short["replies"][0])
    assert len(short["replies"][0]) < len(longer["replies"][0])
    # Greedy decoding: Hayhooks answers exactly what the component gives in-process, so the model really ran.
    assert longer["replies"] == direct.run(PROMPT, generation_kwargs={"max_new_tokens": 7})["replies"]


def test_run_without_generation_kwargs_uses_the_yaml_ones(client: httpx.Client) -> None:
    result = run(client, {"prompt": PROMPT})
    assert "Paris" in result["replies"][0]
    assert result["meta"][0]["finish_reason"] == "stop"  # the model ended its answer well within max_new_tokens: 128


def test_stop_words_in_the_request(client: httpx.Client) -> None:
    full = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 12}})["replies"][0]
    word = full.split()[2]
    stopped = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 12, "stop": [word]}})
    assert stopped["replies"][0] == full[: full.index(word)]
    assert stopped["meta"][0]["finish_reason"] == "stop"


def test_request_schema(client: httpx.Client) -> None:
    """`prompt` is required, `generation_kwargs` optional (the wrapper's signature becomes the request model)."""
    schema = client.get("/openapi.json").json()
    operation = schema["paths"][f"/{PIPELINE}/run"]["post"]
    reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    assert set(model["properties"]) == {"prompt", "generation_kwargs"}
    assert model["required"] == ["prompt"]
    missing = client.post(f"/{PIPELINE}/run", json={"generation_kwargs": {"max_new_tokens": 2}})
    assert missing.status_code == 422


def test_a_parameter_the_server_cannot_honour_is_a_client_error(client: httpx.Client) -> None:
    response = client.post(f"/{PIPELINE}/run", json={"prompt": PROMPT, "generation_kwargs": {"truncate": 8}})
    assert response.status_code == 400
    assert "truncate" in response.json()["detail"]  # the generator's message, in Hayhooks' {"detail": ...}
    assert "Traceback" not in response.text


def test_the_yaml_alone_deploys_with_deploy_yaml(
    hayhooks: Hayhooks, client: httpx.Client, model_url: str, tmp_path: Path
) -> None:
    """The example YAML, with its `url` edited, deploys without the wrapper (`hayhooks pipeline deploy-yaml`)."""
    definition = yaml.safe_load((EXAMPLE / "pipelines" / PIPELINE / f"{PIPELINE}.yml").read_text(encoding="utf-8"))
    definition["components"]["llm"]["init_parameters"]["api_params"]["url"] = model_url
    edited = tmp_path / "hf_generate.yml"
    edited.write_text(yaml.safe_dump(definition), encoding="utf-8")
    env = subprocess_env(HAYHOOKS_HOST="127.0.0.1", HAYHOOKS_PORT=str(hayhooks.port))
    command = [HAYHOOKS, "pipeline", "deploy-yaml", "--name", "hf_generate_yaml", "--no-save-file", str(edited)]
    deployed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "successfully deployed" in deployed.stdout
    # A YAML deployment answers with the component's outputs, and every declared input must be sent.
    result = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 4}}, pipeline="hf_generate_yaml")
    assert result["llm"]["replies"][0].strip()
    assert result["llm"]["meta"][0]["usage"]["completion_tokens"] == 4
    wrapped = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 4}})
    assert result["llm"]["replies"] == wrapped["replies"]


# --- the OpenAI-compatible route, with the openai client ------------------------------------------------


def openai_client(url: str) -> openai.OpenAI:
    # No retries (a failure must show at once); no proxy for loopback traffic.
    http = openai.DefaultHttpxClient(trust_env=False)
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120, http_client=http)


@pytest.fixture(scope="module")
def oai(hayhooks: Hayhooks) -> Iterator[openai.OpenAI]:
    with openai_client(hayhooks.url) as client:
        yield client


@pytest.fixture(scope="module")
def plain_answer(oai: openai.OpenAI) -> str:
    """The reply to QUESTION with 16 new tokens: the reference of the OpenAI tests."""
    completion = oai.chat.completions.create(
        model=PIPELINE, messages=[{"role": "user", "content": QUESTION}], max_tokens=16
    )
    content = completion.choices[0].message.content
    assert content is not None
    return content


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def test_models_lists_the_pipeline(oai: openai.OpenAI) -> None:
    assert PIPELINE in [model.id for model in oai.models.list()]


def test_chat_completion_with_max_tokens(
    oai: openai.OpenAI, plain_answer: str, direct: HuggingFaceAPIGenerator
) -> None:
    completion = oai.chat.completions.create(model=PIPELINE, messages=user(QUESTION), max_tokens=16)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == PIPELINE
    assert choice.message.role == "assistant"
    assert choice.message.content == plain_answer
    assert choice.finish_reason == "length"  # max_tokens took effect...
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16  # ...exactly
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16
    assert "Natural Language Processing" in plain_answer
    # The message became the generator's prompt, max_tokens its max_new_tokens: the component in-process agrees.
    assert [plain_answer] == direct.run(QUESTION, generation_kwargs={"max_new_tokens": 16})["replies"]


def test_streamed_chat_completion(oai: openai.OpenAI, plain_answer: str) -> None:
    stream = oai.chat.completions.create(
        model=PIPELINE,
        messages=user(QUESTION),
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert "".join(deltas) == plain_answer  # streaming changes the transport, not the text
    assert len([delta for delta in deltas if delta]) >= 8  # token by token, not one piece
    assert [reason for reason in finish_reasons if reason] == ["length"]  # one finish_reason, on the last chunk
    assert finish_reasons[-1] == "length"
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == PIPELINE for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    usage = chunks[-1].usage
    assert usage is not None
    assert not chunks[-1].choices
    assert usage.completion_tokens == 16


def test_stop_as_a_string_and_as_a_list(oai: openai.OpenAI, plain_answer: str) -> None:
    word = plain_answer.split()[3]
    expected = plain_answer[: plain_answer.index(word)]
    plain = oai.chat.completions.create(model=PIPELINE, messages=user(QUESTION), max_tokens=16, stop=word)
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].finish_reason == "stop"
    stream = oai.chat.completions.create(
        model=PIPELINE, messages=user(QUESTION), max_tokens=16, stop=[word, "never seen"], stream=True
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_last_user_message_is_the_prompt(oai: openai.OpenAI) -> None:
    alone = oai.chat.completions.create(model=PIPELINE, messages=user(PROMPT), max_tokens=7, seed=1)
    conversation: list[Any] = [
        {"role": "system", "content": "You only speak German."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},  # content parts work too
    ]
    within = oai.chat.completions.create(model=PIPELINE, messages=conversation, max_tokens=7, seed=1)
    assert "Paris" in (alone.choices[0].message.content or "")
    assert within.choices[0].message.content == alone.choices[0].message.content


REFUSED = [
    pytest.param({"n": 2}, "n", "unsupported_value", id="n"),
    pytest.param({"logprobs": True}, "logprobs", "unsupported_value", id="logprobs"),
    pytest.param({"extra_body": {"typical_p": 0.5}}, "typical_p", "unsupported_parameter", id="unknown-field"),
    # These two pass the wrapper and are refused by the generator itself, before any request to the model server.
    pytest.param({"max_tokens": 0}, "max_tokens", "invalid_value", id="max_tokens=0"),
    pytest.param({"temperature": "hot"}, "temperature", "invalid_value", id="temperature-not-a-number"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("kwargs", "param", "code"), REFUSED)
def test_a_parameter_the_generator_cannot_honour_is_an_openai_error(
    oai: openai.OpenAI, kwargs: dict[str, Any], param: str, code: str, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model=PIPELINE, messages=user(PROMPT), stream=stream, **kwargs)
    error = raised.value
    assert error.status_code == 400
    assert error.param == param
    assert error.code == code
    assert error.type == "invalid_request_error"
    assert isinstance(error.body, dict)
    assert error.body["message"]


def test_the_error_body_has_openais_shape(client: httpx.Client) -> None:
    body = {"model": PIPELINE, "messages": user(PROMPT), "logprobs": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "logprobs=True is not supported by this pipeline (one prompt in, one text out)",
            "type": "invalid_request_error",
            "param": "logprobs",
            "code": "unsupported_value",
        }
    }
    no_user = client.post(
        "/v1/chat/completions", json={"model": PIPELINE, "messages": [{"role": "system", "content": "x"}]}
    )
    assert no_user.status_code == 400
    assert no_user.json()["error"]["param"] == "messages"


def test_plain_hayhooks_run_serves_the_route_and_wraps_the_error(tmp_path: Path) -> None:
    """
    With `hayhooks run` itself, the OpenAI route works the same, but errors come as {"detail": {"error": ...}}.

    Its model server is down (a port nothing listens on): the failure is a 502 naming it, streamed or not.
    """
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_hayhooks(dead, tmp_path, launcher=[HAYHOOKS, "run"])
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as http:
            refused = http.post(
                "/v1/chat/completions", json={"model": PIPELINE, "messages": user(PROMPT), "logprobs": True}
            )
            assert refused.status_code == 400
            assert refused.json()["detail"]["error"]["param"] == "logprobs"
            for stream in (False, True):
                down = http.post(
                    "/v1/chat/completions", json={"model": PIPELINE, "messages": user(PROMPT), "stream": stream}
                )
                assert down.status_code == 502, down.text
                error = down.json()["detail"]["error"]
                assert error["code"] == "model_server_unreachable"
                assert "unreachable" in error["message"]
                assert "Traceback" not in down.text
    finally:
        server.stop()


def test_stops_cleanly(hayhooks: Hayhooks) -> None:
    """Last in this module: SIGTERM shuts Hayhooks down gracefully and frees the port."""
    code = hayhooks.stop()
    log = hayhooks.log()
    # uvicorn shuts down, then re-raises the signal it caught so the exit status tells why it ended.
    assert code in {0, -signal.SIGTERM}, log
    shutdown = log[log.index("Shutting down") :]
    assert "Application shutdown complete" in shutdown
    assert "Finished server process" in shutdown
    assert "Traceback" not in shutdown
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{hayhooks.url}/status", timeout=5, trust_env=False)


def test_a_stream_the_engine_writes_in_one_piece_reaches_an_openai_client_token_by_token(tmp_path: Path) -> None:
    # An engine (or a buffering proxy) whose whole stream arrives in one read: still one chunk per token,
    # through the generator's callback, Hayhooks' SSE route and the openai client.
    tokens = [f" word{i}" for i in range(12)]
    with ScriptedServer(then=chat_stream(tokens)) as engine:
        server = start_hayhooks(engine.url, tmp_path)
        try:
            server.wait_ready()
            with openai_client(server.url) as oai:
                stream = oai.chat.completions.create(model=PIPELINE, messages=user("q"), stream=True)
                deltas = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
        finally:
            server.stop()
    assert [delta for delta in deltas if delta] == tokens
