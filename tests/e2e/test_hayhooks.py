"""The Hayhooks example (examples/hayhooks) served for real: Hayhooks in a subprocess, the local model behind it.

Hayhooks runs `hayhooks run` on a free port with a copy of the example's pipelines folder (so nothing is written into
the repository) and `HF_API_GENERATOR_URL` pointing at the shared local model server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.local_model import MODEL_NAME
from tests.e2e.conftest import BIN, free_port, subprocess_env

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hayhooks"
PIPELINE = "hf_generate"
PROMPT = "The capital of France is"
HAYHOOKS = str(BIN / "hayhooks")


class Hayhooks:
    """`hayhooks run` in its own process group, with its output in a log file."""

    def __init__(self, pipelines_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [HAYHOOKS, "run", "--host", "127.0.0.1", "--port", str(self.port)]
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


@pytest.fixture(scope="module")
def hayhooks(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hayhooks]:
    root = tmp_path_factory.mktemp("hayhooks")
    pipelines = root / "pipelines"
    shutil.copytree(EXAMPLE / "pipelines", pipelines, ignore=shutil.ignore_patterns("__pycache__"))
    server = Hayhooks(pipelines, root / "hayhooks.log", subprocess_env(HF_API_GENERATOR_URL=model_url))
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
    with HuggingFaceAPIGenerator(api_type="text_generation_inference", api_params={"url": model_url}) as component:
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
    assert all(result["meta"][0]["protocol"] == "completions" for result in results)
    two, seven, four = (result["replies"][0] for result in results)
    assert two
    assert four.startswith(two)
    assert seven.startswith(four)


def test_run_with_query_time_generation_kwargs(client: httpx.Client, direct: HuggingFaceAPIGenerator) -> None:
    short = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 3}})
    longer = run(client, {"prompt": PROMPT, "generation_kwargs": {"max_new_tokens": 12}})
    for result, tokens in ((short, 3), (longer, 12)):
        assert set(result) == {"replies", "meta"}
        assert result["replies"][0].strip()
        meta = result["meta"][0]
        assert meta["model"] == MODEL_NAME
        assert meta["protocol"] == "completions"
        assert meta["finish_reason"] == "length"
        assert meta["usage"]["completion_tokens"] == tokens  # max_new_tokens from the request body took effect
    assert "Paris" in longer["replies"][0]
    assert longer["replies"][0].startswith(short["replies"][0])
    assert len(short["replies"][0]) < len(longer["replies"][0])
    # Greedy decoding: Hayhooks answers exactly what the component gives in-process, so the model really ran.
    assert longer["replies"] == direct.run(PROMPT, generation_kwargs={"max_new_tokens": 12})["replies"]


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


def test_a_parameter_the_server_cannot_honour_is_an_error(client: httpx.Client) -> None:
    response = client.post(f"/{PIPELINE}/run", json={"prompt": PROMPT, "generation_kwargs": {"typical_p": 0.5}})
    assert response.status_code == 500
    assert "typical_p" in response.json()["detail"]


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
