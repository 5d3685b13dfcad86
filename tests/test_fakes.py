"""The fake servers follow the real protocols: checked with raw httpx, the way a client sees them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import itertools
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import (
    DEFAULT_TOKENS,
    PAUSED_BODY,
    PAUSED_HINT,
    UNAVAILABLE_BODY,
    CertificateAuthority,
    EndpointProxy,
    FakeHub,
    FakeOpenAI,
    FakeRouter,
    FakeServer,
    FakeTGI,
    Fault,
    ForwardProxy,
    ServerCertificate,
    TGILimits,
    issue_cert,
    make_ca,
)
from tests.fakes._common import generate, huge_vocab, stream_deltas

FULL_TEXT = "".join(DEFAULT_TOKENS)  # "Natural Language Processing is a field."
PROMPT = "What is NLP?"  # 3 prompt tokens


# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------


def sse_data(body: str) -> list[str]:
    """The payloads of the ``data:`` lines of an SSE body, with or without the space."""
    return [line[5:].lstrip(" ") for line in body.splitlines() if line.startswith("data:")]


def sse_json(body: str) -> list[Any]:
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


def stream_lines(client: httpx.Client, path: str, payload: dict[str, Any]) -> tuple[list[str], Exception | None]:
    """Read a streamed response line by line; return the lines read and the error that ended it, if any."""
    lines: list[str] = []
    try:
        with client.stream("POST", path, json=payload) as response:
            for line in response.iter_lines():
                lines.append(line)
    except httpx.HTTPError as exc:
        return lines, exc
    return lines, None


@pytest.fixture
def tgi() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


@pytest.fixture
def tgi_client(tgi: FakeTGI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tgi.url, timeout=10) as client:
        yield client


@pytest.fixture
def vllm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(model_id="org/model") as server:
        yield server


@pytest.fixture
def vllm_client(vllm: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm.url, timeout=10) as client:
        yield client


MAPPINGS = {
    "org/chat-model": [
        {"provider": "novita", "providerId": "org/chat-model-novita", "status": "staging"},
        {"provider": "together", "providerId": "org/chat-model-turbo", "status": "live", "task": "conversational"},
    ],
    "org/text-model": [{"provider": "hf-inference", "providerId": "org/text-model", "task": "text-generation"}],
}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(MAPPINGS) as server:
        yield server


@pytest.fixture
def router(hub: FakeHub) -> Iterator[FakeRouter]:
    with FakeRouter(models=hub.models) as server:
        yield server


@pytest.fixture
def router_client(router: FakeRouter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=10, headers={"Authorization": "Bearer hf_test"}) as client:
        yield client


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def test_model_runs_the_tokens_then_eos():
    gen = generate(["a", "b"], max_new_tokens=None)
    assert [t.text for t in gen.tokens] == ["a", "b", "</s>"]
    assert gen.tokens[-1].special
    assert gen.finish_reason == "eos"
    assert gen.text == "ab"


def test_model_suffix_stop_needs_a_token_boundary_and_keeps_the_stop_text():
    assert generate(DEFAULT_TOKENS, max_new_tokens=None, stop=[" Lang"]).finish_reason == "eos"
    gen = generate(DEFAULT_TOKENS, max_new_tokens=None, stop=[" Language"])
    assert (gen.text, gen.finish_reason, gen.stop_string) == ("Natural Language", "stop", " Language")


def test_model_substring_stop_cuts_before_the_stop_text():
    gen = generate(DEFAULT_TOKENS, max_new_tokens=None, stop=["Lang"], stop_match="substring", keep_stop_text=False)
    assert (gen.text, len(gen.tokens), gen.finish_reason) == ("Natural ", 2, "stop")


def test_model_length_wins_over_stop_in_tgi_and_loses_in_vllm():
    tgi_like = generate(DEFAULT_TOKENS, max_new_tokens=2, stop=[" Language"])
    vllm_like = generate(
        DEFAULT_TOKENS,
        max_new_tokens=2,
        stop=[" Language"],
        stop_match="substring",
        keep_stop_text=False,
        length_first=False,
    )
    assert tgi_like.finish_reason == "length"
    assert vllm_like.finish_reason == "stop"


def _reference_stop(vocab, stops, how):
    """A naive reading of the engines' stop rules: (number of tokens, text) at the first stop, or None."""
    text = ""
    for n, piece in enumerate(vocab, start=1):
        text += piece
        for stop in stops:
            if how == "suffix" and text.endswith(stop):
                return n, text
            index = text.find(stop, max(0, len(text) - len(piece) - len(stop) + 1))
            if how == "substring" and piece and index != -1:
                return n, text[:index]
    return None


@settings(max_examples=300, deadline=None)
@given(
    vocab=st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), max_size=8),
    stops=st.lists(st.text(alphabet="ab c", min_size=1, max_size=3), max_size=2),
    how=st.sampled_from(["suffix", "substring"]),
)
def test_model_stop_rules_match_a_naive_reading(vocab, stops, how):
    gen = generate(vocab, max_new_tokens=None, stop=stops, stop_match=how, keep_stop_text=how == "suffix")
    expected = _reference_stop(vocab, stops, how)
    if expected is None:
        assert (gen.finish_reason, gen.text) == ("eos", "".join(vocab))
    else:
        assert (gen.finish_reason, len(gen.tokens), gen.text) == ("stop", *expected)


def test_model_memory_stays_linear_for_huge_texts():
    gen = generate(huge_vocab(40 * 1024 * 1024), max_new_tokens=None, stop=["never"], stop_match="substring")
    assert len(gen.text) == 40 * 1024 * 1024


@settings(max_examples=200, deadline=None)
@given(
    vocab=st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), max_size=8),
    stops=st.lists(st.text(alphabet="ab c", min_size=1, max_size=3), max_size=2),
    max_new=st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
)
def test_streamed_deltas_rebuild_the_text_and_never_leak_a_stop_string(vocab, stops, max_new):
    gen = generate(
        vocab, max_new_tokens=max_new, stop=stops, stop_match="substring", keep_stop_text=False, length_first=False
    )
    hold = max((len(s) for s in stops), default=1) - 1
    deltas = list(stream_deltas(gen, hold))
    assert len(deltas) == len(gen.tokens)
    assert "".join(deltas) == gen.text
    if gen.finish_reason == "stop":
        assert gen.stop_string not in gen.text
    assert len(gen.tokens) <= (max_new or len(vocab) + 1)


# --------------------------------------------------------------------------------------------------
# TGI: info routes
# --------------------------------------------------------------------------------------------------


def test_tgi_info_has_the_required_fields(tgi_client: httpx.Client):
    info = tgi_client.get("/info").json()
    required = {
        "model_id",
        "max_concurrent_requests",
        "max_best_of",
        "max_stop_sequences",
        "max_input_tokens",
        "max_total_tokens",
        "validation_workers",
        "max_client_batch_size",
        "router",
        "version",
    }
    assert required <= info.keys()
    assert info["router"] == "text-generation-router"
    assert info["version"] == "3.3.6"
    assert info["max_stop_sequences"] == 4
    assert info["model_pipeline_tag"] == "text-generation"


def test_tgi_health_and_models(tgi: FakeTGI, tgi_client: httpx.Client):
    health = tgi_client.get("/health")
    assert (health.status_code, health.content) == (200, b"")
    assert tgi_client.get("/").status_code == 200
    models = tgi_client.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == tgi.model_id
    tgi.healthy = False
    assert tgi_client.get("/health").json() == {"error": "unhealthy", "error_type": "healthcheck"}


def test_tgi_unknown_route_and_method(tgi_client: httpx.Client):
    assert tgi_client.get("/nope").status_code == 404
    assert tgi_client.get("/generate").status_code == 405


# --------------------------------------------------------------------------------------------------
# TGI: /generate
# --------------------------------------------------------------------------------------------------


def test_tgi_generate_answers_generated_text_and_token_headers(tgi_client: httpx.Client):
    response = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {}})
    assert response.status_code == 200
    assert response.json() == {"generated_text": FULL_TEXT}  # no details unless asked for
    assert response.headers["x-prompt-tokens"] == "3"
    assert response.headers["x-generated-tokens"] == "8"  # 7 tokens + EOS
    assert response.headers["x-compute-type"] == "gpu+optimized"
    assert "x-total-time" in response.headers


def test_tgi_generate_details(tgi_client: httpx.Client):
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"details": True}}).json()
    details = body["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["generated_tokens"] == 8
    assert details["seed"] is None
    assert details["prefill"] == []
    assert [t["text"] for t in details["tokens"]] == [*DEFAULT_TOKENS, "</s>"]
    assert details["tokens"][-1]["special"] is True
    assert set(details["tokens"][0]) == {"id", "text", "logprob", "special"}


def test_tgi_generate_honours_max_new_tokens(tgi_client: httpx.Client):
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "details": True}})
    assert body.json()["generated_text"] == "Natural Language"
    assert body.json()["details"]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("stop", "text", "reason"),
    [
        ([" is"], "Natural Language Processing is", "stop_sequence"),  # kept in the text
        (["Processing"], "Natural Language Processing", "stop_sequence"),  # ends with it
        ([" Lang"], FULL_TEXT, "eos_token"),  # never ends a token: no stop
        (["nope", " a"], "Natural Language Processing is a", "stop_sequence"),
    ],
)
def test_tgi_stop_sequences(tgi_client: httpx.Client, stop, text, reason):
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"stop": stop, "details": True}}).json()
    assert (body["generated_text"], body["details"]["finish_reason"]) == (text, reason)


def test_tgi_return_full_text(tgi_client: httpx.Client):
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"return_full_text": True}}).json()
    assert body["generated_text"] == PROMPT + FULL_TEXT


def test_tgi_do_sample_defaults_depend_on_parameters_being_present(tgi: FakeTGI, tgi_client: httpx.Client):
    without = tgi_client.post("/generate", json={"inputs": PROMPT}).json()
    with_empty = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"details": True}}).json()
    assert without == {"generated_text": FULL_TEXT}
    assert [r.resolved["do_sample"] for r in tgi.requests] == [True, False]
    assert with_empty["details"]["seed"] is None  # greedy: no seed
    sampled = tgi_client.post(
        "/generate", json={"inputs": PROMPT, "parameters": {"details": True, "seed": 7, "do_sample": True}}
    )
    assert sampled.json()["details"]["seed"] == 7
    warped = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"details": True, "top_k": 5}})
    assert warped.json()["details"]["seed"] is not None  # a warper makes the shard sample


def test_tgi_max_new_tokens_default(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": None}})
    assert tgi.requests[-1].resolved["max_new_tokens"] == 1024  # min(max_total - input, 1024)


def test_tgi_best_of(tgi_client: httpx.Client):
    params = {"best_of": 2, "do_sample": True, "details": True}
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": params}).json()
    assert len(body["details"]["best_of_sequences"]) == 1
    assert body["details"]["best_of_sequences"][0]["generated_text"] == FULL_TEXT


# --------------------------------------------------------------------------------------------------
# TGI: the compat route
# --------------------------------------------------------------------------------------------------


def test_tgi_compat_prepends_the_prompt_for_text_generation_models(tgi_client: httpx.Client):
    response = tgi_client.post("/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert response.json() == [{"generated_text": PROMPT + "Natural Language Processing"}]


def test_tgi_compat_explicit_return_full_text_false(tgi_client: httpx.Client):
    body = tgi_client.post("/", json={"inputs": PROMPT, "parameters": {"return_full_text": False}}).json()
    assert body == [{"generated_text": FULL_TEXT}]


@pytest.mark.parametrize(
    ("tag", "prepended"), [("text-generation", True), (None, True), ("text2text-generation", False)]
)
def test_tgi_compat_quirk_follows_the_pipeline_tag(tag, prepended):
    with FakeTGI(model_pipeline_tag=tag) as server:
        body = httpx.post(server.url + "/", json={"inputs": PROMPT}).json()
    assert body[0]["generated_text"] == (PROMPT if prepended else "") + FULL_TEXT


def test_tgi_compat_stream(tgi_client: httpx.Client):
    response = tgi_client.post("/", json={"inputs": PROMPT, "stream": True, "parameters": {"max_new_tokens": 2}})
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_json(response.text)
    assert [e["index"] for e in events] == [1, 2]
    assert events[-1]["generated_text"] == PROMPT + "Natural Language"


# --------------------------------------------------------------------------------------------------
# TGI: streams
# --------------------------------------------------------------------------------------------------


def test_tgi_stream_events(tgi_client: httpx.Client):
    response = tgi_client.post("/generate_stream", json={"inputs": PROMPT, "parameters": {"details": True}})
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "[DONE]" not in response.text
    events = sse_json(response.text)
    assert [e["index"] for e in events] == list(range(1, 9))
    assert all("top_tokens" not in e for e in events)  # serde skips the empty list
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["token"] == {**last["token"], "text": "</s>", "special": True}
    assert last["generated_text"] == FULL_TEXT
    assert last["details"] == {"finish_reason": "eos_token", "generated_tokens": 8, "seed": None, "input_length": 3}
    assert "".join(e["token"]["text"] for e in events[:-1]) == FULL_TEXT


def test_tgi_stream_without_details_and_with_full_text(tgi_client: httpx.Client):
    payload = {"inputs": PROMPT, "parameters": {"return_full_text": True, "max_new_tokens": 1}}
    events = sse_json(tgi_client.post("/generate_stream", json=payload).text)
    assert events == [{"index": 1, "token": events[0]["token"], "generated_text": PROMPT + "Natural", "details": None}]


def test_tgi_stream_framing_options():
    with FakeTGI(sse_space=False, keepalive=True, done_marker=True) as server:
        text = httpx.post(server.url + "/generate_stream", json={"inputs": PROMPT}).text
    lines = [line for line in text.split("\n") if line]
    assert lines[0].startswith('data:{"index":1')
    assert lines.count(":") == 7  # a keep-alive comment between each pair of the 8 events
    assert lines[-1] == "data:[DONE]"


def test_tgi_stream_validation_error_is_an_event(tgi_client: httpx.Client):
    response = tgi_client.post("/generate_stream", json={"inputs": PROMPT, "parameters": {"temperature": 0}})
    assert response.status_code == 200
    assert sse_json(response.text) == [
        {"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"}
    ]


def test_tgi_stream_rejects_best_of(tgi_client: httpx.Client):
    payload = {"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": True}}
    events = sse_json(tgi_client.post("/generate_stream", json=payload).text)
    assert events[0]["error"] == "Input validation error: `best_of` != 1 is not supported when streaming tokens"


# --------------------------------------------------------------------------------------------------
# TGI: validation and rejected bodies
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        (
            {"max_new_tokens": 4094},
            "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 3 `inputs` tokens and 4094 `max_new_tokens`",
        ),
    ],
)
def test_tgi_validation_errors(tgi_client: httpx.Client, parameters, message):
    response = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": parameters})
    assert response.status_code == 422
    assert response.json() == {"error": f"Input validation error: {message}", "error_type": "validation"}


def test_tgi_input_limits():
    with FakeTGI(limits=TGILimits(max_input_tokens=2, max_total_tokens=10)) as server:
        too_long = httpx.post(server.url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 1}})
        empty = httpx.post(server.url + "/generate", json={"inputs": ""})
    assert too_long.json()["error"] == "Input validation error: `inputs` must have less than 2 tokens. Given: 3"
    assert empty.json()["error"] == "Input validation error: `inputs` cannot be empty"


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"inputs": ', 400, "Failed to parse the request body as JSON: "),
        (
            b'{"inputs": "x", "parameters": {"stop": null}}',
            422,
            "Failed to deserialize the JSON body into the target type: parameters.stop: invalid type: null, "
            "expected a sequence",
        ),
        (
            b'{"inputs": "x", "parameters": {"max_new_tokens": -1}}',
            422,
            "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens: invalid value: "
            "integer `-1`, expected u32",
        ),
        (
            b'{"parameters": {}}',
            422,
            "Failed to deserialize the JSON body into the target type: missing field `inputs`",
        ),
    ],
)
def test_tgi_rejected_bodies_are_plain_text(tgi_client: httpx.Client, content, status, message):
    response = tgi_client.post("/generate", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith(message)


def test_tgi_rejects_missing_content_type_and_huge_bodies(tgi_client: httpx.Client):
    no_type = tgi_client.post("/generate", content=b'{"inputs": "x"}')
    assert (no_type.status_code, no_type.text) == (415, "Expected request with `Content-Type: application/json`")
    huge = tgi_client.post("/generate", json={"inputs": "x " * 1_100_000})
    assert huge.status_code == 413
    assert huge.text == "Failed to buffer the request body: length limit exceeded"
    assert tgi_client.get("/health").status_code == 200  # the connection stays usable


def test_chunked_request_bodies_are_read(tgi: FakeTGI, tgi_client: httpx.Client):
    def body() -> Iterator[bytes]:
        yield b'{"inputs": '
        yield json.dumps(PROMPT).encode()
        yield b"}"

    response = tgi_client.post("/generate", content=body(), headers={"Content-Type": "application/json"})
    assert response.json() == {"generated_text": FULL_TEXT}
    assert tgi.requests[-1].headers["transfer-encoding"] == "chunked"


def test_tgi_api_key():
    with FakeTGI(api_key="secret") as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/generate", json={"inputs": PROMPT}).status_code == 401
        wrong = client.post("/generate", json={"inputs": PROMPT}, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.content) == (401, b"")
        ok = client.post("/generate", json={"inputs": PROMPT}, headers={"Authorization": "bearer secret"})
        assert ok.status_code == 200
        assert client.get("/info").status_code == 200  # info routes stay open


def test_tgi_openai_routes(tgi_client: httpx.Client):
    payload = {"model": "tgi", "prompt": PROMPT, "stop": [" is"], "max_tokens": 10}
    body = tgi_client.post("/v1/completions", json=payload).json()
    assert body["choices"][0]["text"] == "Natural Language Processing is"  # TGI keeps stop text here too
    stream = tgi_client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    )
    assert sse_data(stream.text)[-1] == "[DONE]"


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible (vLLM-like)
# --------------------------------------------------------------------------------------------------


def test_openai_models_health_and_no_info(vllm_client: httpx.Client):
    models = vllm_client.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "org/model"
    assert models["data"][0]["object"] == "model"
    assert vllm_client.get("/health").status_code == 200
    info = vllm_client.get("/info")
    assert (info.status_code, info.json()) == (404, {"detail": "Not Found"})


def test_openai_completion(vllm_client: httpx.Client):
    body = vllm_client.post("/v1/completions", json={"model": "org/model", "prompt": PROMPT}).json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == FULL_TEXT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == 11


def test_openai_max_tokens_and_missing_model(vllm_client: httpx.Client):
    body = vllm_client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).json()
    assert (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == ("Natural Language", "length")


def test_openai_unknown_model(vllm_client: httpx.Client):
    response = vllm_client.post("/v1/completions", json={"model": "other", "prompt": PROMPT})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model `other` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("extra", "text", "stop_reason"),
    [
        ({"stop": " is"}, "Natural Language Processing", " is"),
        ({"stop": ["Lang"]}, "Natural ", "Lang"),  # mid-token: vLLM still stops, and cuts
        ({"stop": ["Lang"], "include_stop_str_in_output": True}, "Natural Lang", "Lang"),
    ],
)
def test_openai_stop_strings(vllm_client: httpx.Client, extra, text, stop_reason):
    choice = vllm_client.post("/v1/completions", json={"prompt": PROMPT, **extra}).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (text, "stop", stop_reason)


def test_openai_keep_stop_text_behaves_like_transformers_serve():
    with FakeOpenAI(keep_stop_text=True) as server:
        kept = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "stop": [" is"]}).json()
        mid_token = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "stop": ["Lang"]}).json()
    assert kept["choices"][0]["text"] == "Natural Language Processing is"
    assert mid_token["choices"][0]["text"] == FULL_TEXT


def test_openai_completion_stream(vllm_client: httpx.Client):
    text = vllm_client.post("/v1/completions", json={"prompt": PROMPT, "stream": True, "max_tokens": 3}).text
    data = sse_data(text)
    assert data[-1] == "[DONE]"
    chunks = sse_json(text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Natural Language Processing"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all("usage" not in c for c in chunks)


def test_openai_stream_usage_on_request(vllm_client: httpx.Client):
    payload = {"prompt": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_json(vllm_client.post("/v1/completions", json=payload).text)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "total_tokens": 11, "completion_tokens": 8}


@pytest.mark.parametrize(("mode", "has_usage"), [("always", True), ("never", False)])
def test_openai_stream_usage_modes(mode, has_usage):
    with FakeOpenAI(stream_usage=mode, done_marker=False) as server:
        payload = {"prompt": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
        text = httpx.post(server.url + "/v1/completions", json=payload).text
    assert ("usage" in sse_json(text)[-1]) is has_usage
    assert "[DONE]" not in text


def test_openai_stream_holds_back_possible_stop_text(vllm_client: httpx.Client):
    payload = {"prompt": PROMPT, "stream": True, "stop": ["a f"]}
    chunks = sse_json(vllm_client.post("/v1/completions", json=payload).text)
    pieces = [c["choices"][0]["text"] for c in chunks]
    assert "".join(pieces) == "Natural Language Processing is "
    assert pieces[0] == "Natur"  # the last two characters wait until they cannot start "a f"


def test_openai_chat(vllm_client: httpx.Client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is NLP?"}]
    body = vllm_client.post("/v1/chat/completions", json={"model": "org/model", "messages": messages}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == FULL_TEXT
    assert body["usage"]["prompt_tokens"] == 5


def test_openai_chat_stream(vllm_client: httpx.Client):
    payload = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 2}
    chunks = sse_json(vllm_client.post("/v1/chat/completions", json=payload).text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Natural Language"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"temperature": -1}, "temperature must be non-negative, got -1."),
        ({"top_p": 0}, "top_p must be in (0, 1], got 0."),
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0."),
        ({"repetition_penalty": 0}, "repetition_penalty must be greater than zero, got 0."),
        ({"stream_options": {"include_usage": True}}, "Stream options can only be defined when `stream=True`."),
        (
            {"max_tokens": 5000},
            "This model's maximum context length is 4096 tokens. However, you requested 5003 "
            "tokens (3 in the messages, 5000 in the completion). Please reduce the length of the "
            "messages or completion.",
        ),
    ],
)
def test_openai_bad_requests(vllm_client: httpx.Client, extra, message):
    response = vllm_client.post("/v1/completions", json={"prompt": PROMPT, **extra})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert response.json()["error"]["code"] == 400


def test_openai_accepts_sampling_parameters(vllm_client: httpx.Client):
    params = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3, "repetition_penalty": 1.1}
    assert vllm_client.post("/v1/completions", json={"prompt": PROMPT, **params}).status_code == 200


def test_openai_chat_only_variant_and_base_path():
    with FakeOpenAI(routes={"chat"}, base_path="/endpoint/") as server, httpx.Client(base_url=server.url) as client:
        assert server.api_url == server.url + "/endpoint/v1"
        missing = client.post("/endpoint/v1/completions", json={"prompt": PROMPT})
        assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
        chat = client.post("/endpoint/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 200
        assert client.get("/v1/models").status_code == 404
        assert client.get("/endpoint/v1/models").status_code == 200


# --------------------------------------------------------------------------------------------------
# Hub and router
# --------------------------------------------------------------------------------------------------


def test_hub_serves_the_provider_mapping_keyed_by_provider(hub: FakeHub):
    response = httpx.get(hub.url + "/api/models/org/chat-model", params={"expand[]": "inferenceProviderMapping"})
    body = response.json()
    assert set(body) == {"_id", "id", "inferenceProviderMapping"}
    assert body["inferenceProviderMapping"]["together"] == {
        "isModelAuthor": False,
        "providerId": "org/chat-model-turbo",
        "status": "live",
        "task": "conversational",
    }


def test_hub_list_shape_and_plain_expand(hub: FakeHub):
    hub.mapping_shape = "list"
    body = httpx.get(hub.url + "/api/models/org/text-model", params={"expand": "inferenceProviderMapping"}).json()
    assert body["inferenceProviderMapping"] == [
        {"provider": "hf-inference", "providerId": "org/text-model", "status": "live", "task": "text-generation"}
    ]


def test_hub_model_info_without_expand_and_unknown_models(hub: FakeHub):
    info = httpx.get(hub.url + "/api/models/org/text-model/revision/main").json()
    assert info["pipeline_tag"] == "text-generation"
    assert "inferenceProviderMapping" not in info
    missing = httpx.get(hub.url + "/api/models/org/missing")
    assert (missing.status_code, missing.json()) == (404, {"error": "Repository not found"})
    assert missing.headers["x-error-code"] == "RepoNotFound"


def test_hub_token():
    with FakeHub(MAPPINGS, token="hf_ok") as server:
        assert httpx.get(server.url + "/api/models/org/text-model").status_code == 401
        ok = httpx.get(server.url + "/api/models/org/text-model", headers={"Authorization": "Bearer hf_ok"})
        assert ok.status_code == 200


def test_router_requires_an_hf_token(router: FakeRouter):
    payload = {"model": "org/chat-model", "messages": [{"role": "user", "content": "Hi"}]}
    assert httpx.post(router.url + "/v1/chat/completions", json=payload).status_code == 401
    other = httpx.post(router.url + "/v1/chat/completions", json=payload, headers={"Authorization": "Bearer sk-1"})
    assert other.status_code == 401
    assert "error" in other.json()


def test_router_chat_picks_a_live_conversational_provider(router: FakeRouter, router_client: httpx.Client):
    payload = {"model": "org/chat-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    body = router_client.post("/v1/chat/completions", json=payload).json()
    assert body["choices"][0]["message"]["content"] == "Natural"
    assert body["model"] == "org/chat-model-turbo"
    assert router.requests[-1].resolved["provider"] == "together"
    staging = router_client.post("/v1/chat/completions", json={**payload, "model": "org/chat-model:novita"})
    assert staging.status_code == 200
    assert router.requests[-1].resolved["provider"] == "novita"


def test_router_rejects_unsupported_models(router_client: httpx.Client):
    payload = {"model": "org/chat-model:groq", "messages": [{"role": "user", "content": "Hi"}]}
    response = router_client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_supported"
    response = router_client.post("/v1/chat/completions", json={**payload, "model": "org/text-model"})
    assert response.status_code == 400  # only a text-generation mapping


def test_router_provider_routes(router_client: httpx.Client):
    body = router_client.post("/together/v1/completions", json={"model": "org/chat-model-turbo", "prompt": PROMPT})
    assert body.json()["choices"][0]["text"] == FULL_TEXT
    chat = router_client.post(
        "/together/v1/chat/completions",
        json={"model": "org/chat-model-turbo", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert sse_data(chat.text)[-1] == "[DONE]"
    unknown = router_client.post("/together/v1/completions", json={"model": "org/other", "prompt": PROMPT})
    assert unknown.status_code == 404


def test_router_hf_inference_speaks_tgi_compat(router_client: httpx.Client):
    body = router_client.post("/hf-inference/models/org/text-model", json={"inputs": PROMPT}).json()
    assert body == [{"generated_text": PROMPT + FULL_TEXT}]  # the compat quirk
    stream = router_client.post(
        "/hf-inference/models/org/text-model",
        json={"inputs": PROMPT, "stream": True, "parameters": {"return_full_text": False}},
    )
    assert sse_json(stream.text)[-1]["generated_text"] == FULL_TEXT
    assert "[DONE]" not in stream.text
    assert router_client.post("/hf-inference/models/org/chat-model", json={"inputs": PROMPT}).status_code == 404


def test_router_sees_hub_changes(hub: FakeHub, router: FakeRouter, router_client: httpx.Client):
    hub.models["org/new"] = [{"provider": "groq", "providerId": "new", "status": "live", "task": "conversational"}]
    payload = {"model": "org/new", "messages": [{"role": "user", "content": "Hi"}]}
    assert router_client.post("/v1/chat/completions", json=payload).status_code == 200
    assert any(m["id"] == "org/new" for m in router_client.get("/v1/models").json()["data"])


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


def test_fault_status(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.extend([Fault.unavailable(retry_after=2, body="loading"), Fault.overloaded()])
    first = tgi_client.post("/generate", json={"inputs": PROMPT})
    assert (first.status_code, first.headers["retry-after"], first.text) == (503, "2", "loading")
    second = tgi_client.post("/generate", json={"inputs": PROMPT})
    assert second.status_code == 429
    assert second.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert tgi_client.post("/generate", json={"inputs": PROMPT}).status_code == 200  # the queue is empty again
    assert [r.fault.kind if r.fault else None for r in tgi.requests] == ["status", "status", None]


def test_faults_are_taken_by_posts_only(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.status(500, {"error": "boom", "error_type": "generation"}))
    assert tgi_client.get("/info").status_code == 200
    assert len(tgi.faults) == 1
    assert tgi_client.post("/generate", json={"inputs": PROMPT}).status_code == 500


def test_fault_reset_mid_stream(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.reset(after_events=2))
    lines, error = stream_lines(tgi_client, "/generate_stream", {"inputs": PROMPT})
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(sse_data("\n".join(lines))) == 2
    assert tgi_client.get("/health").status_code == 200  # the server goes on


def test_fault_reset_with_tcp_rst(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.reset(after_events=1, rst=True))
    _, error = stream_lines(tgi_client, "/generate_stream", {"inputs": PROMPT})
    assert isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError))


def test_fault_reset_on_a_json_response(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.reset())
    with pytest.raises(httpx.RemoteProtocolError):
        tgi_client.post("/generate", json={"inputs": PROMPT})


def test_fault_no_final(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.extend([Fault.no_final(), Fault.no_final(after_events=3), Fault.no_final(after_events=100)])
    first = sse_json(tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text)
    assert len(first) == 7
    assert all(e["generated_text"] is None for e in first)
    assert len(sse_json(tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text)) == 3
    assert len(sse_json(tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text)) == 7


def test_fault_no_final_in_openai_streams(vllm: FakeOpenAI, vllm_client: httpx.Client):
    vllm.faults.append(Fault.no_final())
    text = vllm_client.post("/v1/completions", json={"prompt": PROMPT, "stream": True}).text
    assert "[DONE]" not in text
    assert all(c["choices"][0]["finish_reason"] is None for c in sse_json(text))


def test_fault_error_event(tgi: FakeTGI, vllm: FakeOpenAI, tgi_client: httpx.Client, vllm_client: httpx.Client):
    tgi.faults.append(Fault.error_event(after_events=1, error="CUDA out of memory", error_type="generation"))
    events = sse_json(tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text)
    assert len(events) == 2
    assert events[1] == {"error": "CUDA out of memory", "error_type": "generation"}
    vllm.faults.append(Fault.error_event(after_events=1, error="boom", error_type="InternalServerError"))
    text = vllm_client.post("/v1/completions", json={"prompt": PROMPT, "stream": True}).text
    assert sse_json(text)[1] == {
        "error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}
    }
    assert sse_data(text)[-1] == "[DONE]"


def test_fault_malformed_line(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.malformed(after_events=1))
    text = tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text
    data = sse_data(text)
    assert data[1] == "{not json"
    assert json.loads(data[-1])["generated_text"] == FULL_TEXT  # the stream goes on


def test_fault_malformed_json_body(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.malformed(line=b"<html>oops</html>"))
    response = tgi_client.post("/generate", json={"inputs": PROMPT})
    assert (response.status_code, response.text) == (200, "<html>oops</html>")


def test_fault_delay(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.append(Fault.delay(0.3))
    start = time.monotonic()
    assert tgi_client.post("/generate", json={"inputs": PROMPT}).status_code == 200
    assert time.monotonic() - start >= 0.3


def test_fault_huge(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.faults.extend([Fault.huge(100_000), Fault.huge(5_000)])
    body = tgi_client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 5}}).json()
    assert len(body["generated_text"]) == 100_000
    events = sse_json(tgi_client.post("/generate_stream", json={"inputs": PROMPT}).text)
    assert len(events[-1]["generated_text"]) == 5_000


def test_fault_close_without_response(vllm: FakeOpenAI, vllm_client: httpx.Client):
    vllm.faults.append(Fault.close_without_response())
    with pytest.raises(httpx.RemoteProtocolError):
        vllm_client.post("/v1/completions", json={"prompt": PROMPT})
    assert vllm_client.post("/v1/completions", json={"prompt": PROMPT}).status_code == 200


def test_fault_on_hub_gets(hub: FakeHub):
    hub.faults.append(Fault.status(502, "Bad Gateway"))
    assert httpx.get(hub.url + "/api/models/org/text-model").status_code == 502
    assert httpx.get(hub.url + "/api/models/org/text-model").status_code == 200


# --------------------------------------------------------------------------------------------------
# Recording, lifecycle, connections
# --------------------------------------------------------------------------------------------------


def test_requests_are_recorded(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi_client.post("/generate?x=1", json={"inputs": PROMPT}, headers={"X-Test": "yes"})
    tgi_client.post("/generate", content=b"not json", headers={"Content-Type": "application/json"})
    first, second = tgi.requests
    assert (first.method, first.path, first.query) == ("POST", "/generate", {"x": ["1"]})
    assert first.headers["x-test"] == "yes"
    assert first.json == {"inputs": PROMPT}
    assert (second.json, second.body) == (None, b"not json")
    tgi.clear_requests()
    assert tgi.requests == []


def test_tokens_are_mutable(tgi: FakeTGI, tgi_client: httpx.Client):
    tgi.tokens = ["Hello", ",", " world"]
    assert tgi_client.post("/generate", json={"inputs": PROMPT}).json()["generated_text"] == "Hello, world"


def test_token_delay_applies_to_streams_and_json():
    with FakeTGI(tokens=["a", "b"], token_delay=0.05) as server:
        start = time.monotonic()
        httpx.post(server.url + "/generate", json={"inputs": PROMPT})
        assert time.monotonic() - start >= 0.15  # 3 tokens (EOS included)


def test_keep_alive_across_a_stream_and_a_json_answer(tgi: FakeTGI):
    conn = http.client.HTTPConnection("127.0.0.1", tgi.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=headers)
    stream = conn.getresponse()
    assert len(sse_data(stream.read().decode())) == 8
    sock = conn.sock
    conn.request("POST", "/generate", body=json.dumps({"inputs": PROMPT}), headers=headers)
    assert json.loads(conn.getresponse().read())["generated_text"] == FULL_TEXT
    assert conn.sock is sock  # same connection
    conn.close()


def test_stop_closes_the_listening_socket_and_open_connections():
    server = FakeTGI(token_delay=0.2).start()
    port = server.port
    errors: list[Exception | None] = []

    def read_stream() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            errors.append(stream_lines(client, "/generate_stream", {"inputs": PROMPT})[1])

    reader = threading.Thread(target=read_stream)
    reader.start()
    time.sleep(0.3)
    start = time.monotonic()
    server.stop()
    reader.join(timeout=5)
    assert time.monotonic() - start < 2
    assert isinstance(errors[0], httpx.HTTPError)  # cut mid-stream
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.stop()  # idempotent


async def test_concurrent_streams():
    async def one(client: httpx.AsyncClient) -> str:
        response = await client.post("/generate_stream", json={"inputs": PROMPT})
        return sse_json(response.text)[-1]["generated_text"]

    with FakeTGI(token_delay=0.05) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            start = time.monotonic()
            texts = await asyncio.gather(*(one(client) for _ in range(6)))
            elapsed = time.monotonic() - start
    assert texts == [FULL_TEXT] * 6
    assert elapsed < 6 * 8 * 0.05  # served in parallel, not one after the other


# --------------------------------------------------------------------------------------------------
# Stdlib clients for the parts below: http.client, urllib, raw sockets and ssl only
# --------------------------------------------------------------------------------------------------

JSON_HEADERS = {"Content-Type": "application/json"}
SECRET = "Bearer hf_SuperSecretToken123"


def call(
    server: FakeServer,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body). A non-bytes body is JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        all_headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            all_headers = {**JSON_HEADERS, **all_headers}
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw_post(port: int, path: str, payload: Any) -> bytes:
    """POST with ``Connection: close`` over a raw socket; everything the server sent until it closed."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        try:
            while piece := sock.recv(65536):
                received += piece
        except ConnectionResetError:
            pass
    return received


def split_chunks(body: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether it ended with the ``0\\r\\n\\r\\n`` terminator."""
    chunks: list[bytes] = []
    rest = body
    while rest:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, rest == b"\r\n"
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    return chunks, False


def no_proxy_opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """A urllib opener that ignores the environment's proxy settings."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), *handlers)


def wait_until(condition: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_new_options_are_off_by_default(tgi: FakeTGI):
    assert tgi.url.startswith("http://127.0.0.1:")
    assert tgi.endpoint is None
    assert call(tgi, "GET", "/info")[0] == 200
    assert tgi.requests[0].endpoint is None
    assert (tgi.aborted_streams, tgi.tls_errors) == ([], [])


# --------------------------------------------------------------------------------------------------
# Inference Endpoint proxy
# --------------------------------------------------------------------------------------------------


def test_endpoint_scaled_to_zero_answers_503_until_the_replica_is_ready(tgi: FakeTGI):
    endpoint = tgi.endpoint = EndpointProxy(cold_for=0.3, retry_after=2)
    tgi.faults.append(Fault.overloaded())
    assert (endpoint.state, endpoint.ready_at, endpoint.cold_started_at) == ("scaledToZero", None, None)
    before = time.monotonic()
    status, headers, body = call(tgi, "GET", "/info")  # a probe wakes it up too
    assert (status, headers["retry-after"], body.decode()) == (503, "2", UNAVAILABLE_BODY)
    assert endpoint.state == "initializing"
    assert endpoint.cold_started_at is not None and before <= endpoint.cold_started_at <= time.monotonic()
    assert endpoint.ready_at == pytest.approx(endpoint.cold_started_at + 0.3)
    assert call(tgi, "POST", "/generate", {"inputs": PROMPT})[0] == 503
    assert len(tgi.faults) == 1  # answered by the proxy: the engine's fault is still queued
    time.sleep(max(endpoint.ready_at - time.monotonic(), 0) + 0.01)
    assert endpoint.state == "running"
    assert call(tgi, "GET", "/info")[0] == 200
    assert call(tgi, "POST", "/generate", {"inputs": PROMPT})[0] == 429  # the engine's fault, now
    assert (endpoint.unavailable, endpoint.passed, endpoint.holds) == (2, 2, 0)
    assert [r.endpoint for r in tgi.requests] == ["cold", "cold", "passed", "passed"]
    assert [e.action for e in endpoint.events] == ["cold", "cold", "passed", "passed"]


def test_endpoint_holds_requests_with_x_scale_up_timeout_until_ready(vllm: FakeOpenAI):
    endpoint = vllm.endpoint = EndpointProxy(cold_for=0.3)
    answers: dict[str, tuple[int, float]] = {}

    def send(name: str, method: str, path: str, body: Any = None) -> None:
        status = call(vllm, method, path, body, headers={"X-Scale-Up-Timeout": "10"})[0]
        answers[name] = (status, time.monotonic())

    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    threads = [
        threading.Thread(target=send, args=("models", "GET", "/v1/models")),
        threading.Thread(target=send, args=("chat", "POST", "/v1/chat/completions", chat)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    ready = endpoint.ready_at
    assert ready is not None
    assert sorted(answers) == ["chat", "models"]
    for status, answered_at in answers.values():
        assert status == 200
        assert answered_at >= ready  # held, not served before the replica was up
    assert (endpoint.holds, endpoint.unavailable, endpoint.passed) == (2, 0, 2)
    for event in endpoint.events:
        assert (event.action, event.scale_up_timeout) == ("held", "10")
        assert event.at + event.waited == pytest.approx(ready, abs=0.05)
    assert sorted(r.endpoint for r in vllm.requests) == ["held", "held"]


def test_endpoint_hold_times_out_with_a_503(tgi: FakeTGI):
    endpoint = tgi.endpoint = EndpointProxy(cold_for=30, retry_after=1)
    start = time.monotonic()
    status, headers, _ = call(tgi, "POST", "/generate", {"inputs": PROMPT}, headers={"X-Scale-Up-Timeout": "0.2"})
    elapsed = time.monotonic() - start
    assert (status, headers["retry-after"]) == (503, "1")
    assert 0.2 <= elapsed < 1.5
    assert (endpoint.holds, endpoint.hold_timeouts, endpoint.unavailable) == (1, 1, 1)
    assert endpoint.events[0].waited == pytest.approx(0.2, abs=0.1)
    assert tgi.requests[0].endpoint == "hold_timeout"


def test_endpoint_that_ignores_the_scale_up_header(tgi: FakeTGI):
    endpoint = tgi.endpoint = EndpointProxy(cold_for=30, honour_scale_up_header=False)
    start = time.monotonic()
    status, headers, _ = call(tgi, "GET", "/health", headers={"X-Scale-Up-Timeout": "30"})
    assert status == 503
    assert time.monotonic() - start < 1
    assert "retry-after" not in headers
    assert (endpoint.holds, endpoint.unavailable) == (0, 1)


def test_endpoint_paused_until_resumed(vllm: FakeOpenAI):
    endpoint = vllm.endpoint = EndpointProxy(paused=True)
    requests = [
        ("GET", "/health", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/completions", {"prompt": PROMPT}),
        ("PUT", "/v1/models", b""),
        ("DELETE", "/anything", None),
    ]
    start = time.monotonic()
    for method, path, body in requests:
        status, headers, raw = call(vllm, method, path, body, headers={"X-Scale-Up-Timeout": "10"})
        assert (status, headers["content-type"], json.loads(raw)) == (400, "application/json", PAUSED_BODY)
    assert time.monotonic() - start < 2  # a paused endpoint holds nothing
    assert (endpoint.state, endpoint.paused_rejections) == ("paused", 5)
    assert {r.endpoint for r in vllm.requests} == {"paused"}
    endpoint.resume()
    assert endpoint.state == "running"
    assert call(vllm, "GET", "/health")[0] == 200
    # resuming initializes a replica again: cold for a while
    endpoint.pause()
    endpoint.resume(cold_for=0.2)
    assert endpoint.state == "initializing"
    assert call(vllm, "GET", "/health")[0] == 503
    assert call(vllm, "GET", "/health", headers={"X-Scale-Up-Timeout": "5"})[0] == 200
    assert endpoint.state == "running"


def test_endpoint_paused_message_can_be_changed():
    with FakeTGI() as tgi:
        tgi.endpoint = EndpointProxy(paused=True, paused_body=PAUSED_HINT)
        status, _, body = call(tgi, "GET", "/info")
    assert status == 400
    assert "paused" in json.loads(body)["error"]


def test_endpoint_cold_start_clock_starts_at_the_first_request(tgi: FakeTGI):
    endpoint = tgi.endpoint = EndpointProxy()
    assert endpoint.state == "running"
    assert call(tgi, "GET", "/info")[0] == 200
    endpoint.scale_to_zero(cold_for=0.1)
    assert endpoint.state == "scaledToZero"
    time.sleep(0.15)  # longer than a cold start: idle time does not count
    woken = time.monotonic()
    assert call(tgi, "GET", "/info")[0] == 503
    assert endpoint.cold_started_at is not None and endpoint.cold_started_at >= woken


def test_a_self_hosted_server_503_on_get_routes_is_a_fault_not_a_proxy(tgi: FakeTGI):
    tgi.faults_for("GET", "/health").append(Fault.unavailable(retry_after=3, body="loading"))
    status, headers, body = call(tgi, "GET", "/health", headers={"X-Scale-Up-Timeout": "10"})
    assert (status, headers["retry-after"], body) == (503, "3", b"loading")  # no holding without a proxy
    assert call(tgi, "GET", "/health")[0] == 200


# --------------------------------------------------------------------------------------------------
# Faults on any route and method, redirects, cut events, echoed credentials
# --------------------------------------------------------------------------------------------------


def test_faults_for_a_get_route(tgi: FakeTGI):
    tgi.faults_for("GET", "/info").append(Fault.status(503, "down", headers={"Retry-After": "1"}))
    tgi.faults.append(Fault.overloaded())
    status, headers, body = call(tgi, "GET", "/info")
    assert (status, headers["retry-after"], body) == (503, "1", b"down")
    assert call(tgi, "GET", "/info")[0] == 200  # taken once
    assert call(tgi, "GET", "/health")[0] == 200
    assert len(tgi.faults) == 1  # GETs still never take from the general queue
    assert [r.fault.kind if r.fault else None for r in tgi.requests] == ["status", None, None]


def test_route_faults_come_before_the_general_queue(tgi: FakeTGI):
    tgi.faults_for("post", "/generate").append(Fault.status(500, {"error": "boom", "error_type": "generation"}))
    tgi.faults.append(Fault.overloaded())
    assert call(tgi, "POST", "/generate_stream", {"inputs": PROMPT})[0] == 429  # no route queue: the general one
    assert call(tgi, "POST", "/generate", {"inputs": PROMPT})[0] == 500
    assert call(tgi, "POST", "/generate", {"inputs": PROMPT})[0] == 200


def test_slow_info(tgi: FakeTGI):
    tgi.faults_for("GET", "/info").append(Fault.delay(0.3))
    start = time.monotonic()
    status, _, body = call(tgi, "GET", "/info")
    assert (status, json.loads(body)["model_id"]) == (200, tgi.model_id)
    assert time.monotonic() - start >= 0.3


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_fault_redirect_sends_a_location_and_a_reply_shaped_body(tgi: FakeTGI, code: int):
    decoy = {"generated_text": "not the answer"}
    tgi.faults.append(Fault.redirect(code, location="http://elsewhere.test/generate", body=decoy))
    status, headers, body = call(tgi, "POST", "/generate", {"inputs": PROMPT})
    assert (status, headers["location"], headers["content-type"]) == (
        code,
        "http://elsewhere.test/generate",
        "application/json",
    )
    assert json.loads(body) == decoy
    assert tgi.requests[0].fault is not None and tgi.requests[0].fault.kind == "redirect"


def test_fault_redirect_to_a_relative_location_is_followed_by_urllib(tgi: FakeTGI):
    tgi.faults_for("GET", "/health").append(Fault.redirect(302, location="/info"))
    with no_proxy_opener().open(tgi.url + "/health", timeout=5) as response:
        assert response.url == tgi.url + "/info"
        assert json.load(response)["model_id"] == tgi.model_id
    assert [r.path for r in tgi.requests] == ["/health", "/info"]
    tgi.faults.append(Fault.redirect(307, location="/generate"))
    status, headers, body = call(tgi, "POST", "/generate", {"inputs": PROMPT})
    assert (status, headers["location"], headers["content-length"], body) == (307, "/generate", "0", b"")
    with pytest.raises(ValueError, match="redirect"):
        Fault.redirect(200)


STREAM_ROUTES = {
    "tgi": (FakeTGI, "/generate_stream", {"inputs": PROMPT}),
    "openai": (FakeOpenAI, "/v1/completions", {"prompt": PROMPT, "stream": True}),
}


@pytest.mark.parametrize(("flavour", "clean_end"), list(itertools.product(STREAM_ROUTES, [False, True])))
def test_fault_cut_in_event(flavour: str, clean_end: bool):
    fake, path, payload = STREAM_ROUTES[flavour]
    with fake() as server:
        server.faults.append(Fault.cut_in_event(after_events=2, clean_end=clean_end))
        raw = raw_post(server.port, path, payload)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks, terminated = split_chunks(body)
    assert terminated is clean_end
    *complete, cut = chunks
    assert len(complete) == 2
    assert all(c.startswith(b"data: {") and c.endswith(b"}\n\n") for c in complete)
    assert cut.startswith(b"data: {")
    assert b"\n" not in cut
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut[len(b"data: ") :])


def test_fault_cut_in_event_as_http_client_sees_it(tgi: FakeTGI):
    tgi.faults.extend(
        [Fault.cut_in_event(1, clean_end=True), Fault.cut_in_event(1), Fault.cut_in_event(100, clean_end=True)]
    )
    conn = http.client.HTTPConnection("127.0.0.1", tgi.port, timeout=5)
    body = json.dumps({"inputs": PROMPT})
    conn.request("POST", "/generate_stream", body=body, headers=JSON_HEADERS)
    text = conn.getresponse().read().decode()  # a complete HTTP response...
    assert len(sse_data(text)) == 2
    assert not text.endswith("\n")  # ...whose last event never ended
    conn.request("POST", "/generate_stream", body=body, headers=JSON_HEADERS)
    with pytest.raises(http.client.IncompleteRead):
        conn.getresponse().read()
    conn.close()
    _, _, raw = call(tgi, "POST", "/generate_stream", {"inputs": PROMPT})  # fewer events: the final one is cut
    events = raw.decode().split("\n\n")
    assert len(events) == 8
    assert events[-1].startswith('data: {"index":8')


def test_fault_echo_authorization_in_each_servers_error_shape():
    auth = {"Authorization": SECRET}
    with FakeTGI() as tgi, FakeOpenAI() as vllm, FakeHub(MAPPINGS) as hub:
        tgi.faults.append(Fault.echo_authorization())
        status, _, body = call(tgi, "POST", "/generate", {"inputs": PROMPT}, headers=auth)
        assert (status, json.loads(body)) == (
            401,
            {"error": f"Invalid credentials: {SECRET}", "error_type": "authentication"},
        )
        tgi.faults_for("GET", "/info").append(Fault.echo_authorization(500))
        status, _, body = call(tgi, "GET", "/info", headers=auth)
        assert status == 500
        assert SECRET in json.loads(body)["error"]
        vllm.faults.append(Fault.echo_authorization(500, error_type="InternalServerError"))
        status, _, body = call(vllm, "POST", "/v1/completions", {"prompt": PROMPT}, headers=auth)
        assert (status, json.loads(body)) == (
            500,
            {
                "error": {
                    "message": f"Invalid credentials: {SECRET}",
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            },
        )
        hub.faults.append(Fault.echo_authorization(message="Authorization {authorization} is not valid"))
        status, _, body = call(hub, "GET", "/api/models/org/text-model", headers=auth)
        assert (status, json.loads(body)) == (401, {"error": f"Authorization {SECRET} is not valid"})


def test_fault_echo_authorization_in_a_stream():
    auth = {"Authorization": SECRET}
    with FakeTGI() as tgi, FakeOpenAI() as vllm:
        tgi.faults.append(Fault.echo_authorization(stream=True))
        status, headers, body = call(tgi, "POST", "/generate_stream", {"inputs": PROMPT}, headers=auth)
        assert (status, headers["content-type"]) == (200, "text/event-stream")
        assert sse_json(body.decode()) == [{"error": f"Invalid credentials: {SECRET}", "error_type": "authentication"}]
        vllm.faults.append(Fault.echo_authorization(stream=True, error_type="AuthenticationError"))
        chat = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
        status, _, body = call(vllm, "POST", "/v1/chat/completions", chat, headers=auth)
        assert status == 200
        assert sse_json(body.decode())[0]["error"]["message"] == f"Invalid credentials: {SECRET}"
        assert sse_data(body.decode())[-1] == "[DONE]"
        tgi.faults.append(Fault.echo_authorization(stream=True))  # on a route that answers JSON
        status, _, body = call(tgi, "POST", "/generate", {"inputs": PROMPT}, headers=auth)
        assert (status, json.loads(body)["error"]) == (401, f"Invalid credentials: {SECRET}")


# --------------------------------------------------------------------------------------------------
# The client seen from the server: open connections, abandoned streams
# --------------------------------------------------------------------------------------------------


def test_open_connections_counts_client_connections(tgi: FakeTGI):
    assert tgi.open_connections == 0
    conns = [http.client.HTTPConnection("127.0.0.1", tgi.port, timeout=5) for _ in range(3)]
    for conn in conns:
        conn.request("GET", "/health")
        conn.getresponse().read()
    assert tgi.wait_open_connections(3)  # kept alive
    assert tgi.open_connections == 3
    conns[0].close()
    assert tgi.wait_open_connections(2)
    for conn in conns[1:]:
        conn.close()
    assert tgi.wait_open_connections(0)
    assert call(tgi, "GET", "/health", headers={"Connection": "close"})[0] == 200
    assert tgi.wait_open_connections(0)
    assert not tgi.wait_open_connections(5, timeout=0.05)


def test_a_stream_the_client_abandons_is_recorded_with_its_time():
    with FakeTGI(tokens=["tok"] * 60, token_delay=0.05) as tgi:
        conn = http.client.HTTPConnection("127.0.0.1", tgi.port, timeout=5)
        conn.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
        response = conn.getresponse()
        seen = 0
        while seen < 2:
            seen += response.readline().startswith(b"data:")
        closed_at = time.monotonic()
        response.close()
        conn.close()
        aborted = tgi.wait_aborted(timeout=3)
        assert aborted is not None
        assert 0 <= aborted.at - closed_at < 1.0  # the server's writes failed within 1 s of the close
        assert (aborted.method, aborted.path) == ("POST", "/generate_stream")
        assert 2 <= aborted.events < 61
        assert aborted.request is tgi.requests[0]
        assert "Error" in aborted.error  # BrokenPipeError or ConnectionResetError
        assert tgi.wait_open_connections(0)


def test_streams_ended_by_the_server_are_not_counted_as_abandoned():
    with FakeTGI() as tgi:
        tgi.faults.extend([Fault.reset(after_events=1), Fault.cut_in_event(1), Fault.error_event(1)])
        for _ in range(4):
            with contextlib.suppress(http.client.HTTPException):
                call(tgi, "POST", "/generate_stream", {"inputs": PROMPT})
        assert tgi.wait_aborted(timeout=0.2) is None
    # A client that reads nothing: the server is blocked writing a huge stream when stop() cuts it.
    server = FakeTGI().start()
    server.faults.append(Fault.huge(16_000_000))
    body = json.dumps({"inputs": PROMPT}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert wait_until(lambda: len(server.requests) == 1)
        time.sleep(0.3)  # long enough to fill the socket buffers
        server.stop()  # the blocked write fails: not the client's doing
    assert server.aborted_streams == []


# --------------------------------------------------------------------------------------------------
# ForwardProxy
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as server:
        yield server


def test_forward_proxy_forwards_absolute_uri_requests(tgi: FakeTGI, proxy: ForwardProxy):
    base = tgi.url_for("tgi.test")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", base + "/info")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["model_id"]) == (200, tgi.model_id)
    sock = conn.sock
    conn.request("POST", base + "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
    response = conn.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert len(sse_json(response.read().decode())) == 8
    assert conn.sock is sock  # the client's connection to the proxy is kept alive
    conn.close()
    info, stream = proxy.requests
    assert (info.method, info.target, info.host, info.port, info.status) == (
        "GET",
        base + "/info",
        "tgi.test",
        tgi.port,
        200,
    )
    assert info.upstream == ("127.0.0.1", tgi.port)
    assert (stream.method, stream.status) == ("POST", 200)
    upstream = tgi.requests[0]
    assert (upstream.method, upstream.path, upstream.headers["host"]) == ("GET", "/info", f"tgi.test:{tgi.port}")
    assert tgi.requests[1].json == {"inputs": PROMPT}


def test_forward_proxy_streams_events_as_the_server_writes_them(proxy: ForwardProxy):
    with FakeTGI(tokens=["a"] * 4, token_delay=0.1) as tgi:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        data = json.dumps({"inputs": PROMPT}).encode()
        request = urllib.request.Request(tgi.url_for("tgi.test") + "/generate_stream", data=data, headers=JSON_HEADERS)
        start = time.monotonic()
        with opener.open(request, timeout=5) as response:
            first = response.readline()
            first_at = time.monotonic() - start
            rest = response.read()
            total = time.monotonic() - start
    assert first.startswith(b'data: {"index":1')
    assert len(sse_data((first + rest).decode())) == 5
    assert total >= 0.5  # 5 tokens, 0.1 s each
    assert first_at < total - 0.2  # the first event came through long before the end


def test_forward_proxy_requires_basic_auth_when_asked(tgi: FakeTGI):
    with ForwardProxy(auth=("user", "s3cret")) as proxy:
        base = tgi.url_for("tgi.test")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", base + "/info")
        response = conn.getresponse()
        response.read()
        assert (response.status, response.getheader("Proxy-Authenticate")) == (407, 'Basic realm="fake-proxy"')
        conn.request("GET", base + "/info", headers={"Proxy-Authorization": proxy.proxy_authorization()})
        assert conn.getresponse().status == 200
        conn.close()
        tunnel = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        tunnel.set_tunnel("tgi.test", tgi.port)
        with pytest.raises(OSError, match="407"):
            tunnel.request("GET", "/info")
        tunnel.close()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.authenticated_url}))
        with opener.open(base + "/health", timeout=5) as answer:
            assert answer.status == 200
    assert [r.status for r in proxy.requests] == [407, 200, 407, 200]
    assert "proxy-authorization" not in proxy.requests[0].headers
    assert proxy.requests[1].headers["proxy-authorization"] == proxy.proxy_authorization()
    assert proxy.requests[3].headers["proxy-authorization"] == proxy.proxy_authorization()  # urllib, from the URL
    assert all("proxy-authorization" not in r.headers for r in tgi.requests)  # never passed on


def test_forward_proxy_connect_tunnel(tgi: FakeTGI, proxy: ForwardProxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.set_tunnel("tgi.test", tgi.port)
    conn.request("GET", "/info")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["model_id"]) == (200, tgi.model_id)
    conn.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
    assert len(sse_json(conn.getresponse().read().decode())) == 8
    assert tgi.open_connections == 1  # one tunnel, kept alive
    conn.close()
    assert tgi.wait_open_connections(0)  # closing the client's end closes the tunnel
    (record,) = proxy.requests
    assert (record.method, record.target, record.status, record.upstream) == (
        "CONNECT",
        f"tgi.test:{tgi.port}",
        200,
        ("127.0.0.1", tgi.port),
    )
    assert [r.headers["host"] for r in tgi.requests] == [f"tgi.test:{tgi.port}"] * 2


def test_forward_proxy_errors_and_port_mapping(tgi: FakeTGI):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    with ForwardProxy(ports={"xyz.endpoints.huggingface.cloud": tgi.port}) as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        with opener.open("http://xyz.endpoints.huggingface.cloud/info", timeout=5) as response:
            assert json.load(response)["model_id"] == tgi.model_id
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"http://nothing.test:{closed_port}/info", timeout=5)
        assert refused.value.code == 502
        refused.value.close()
        assert call(proxy, "GET", "/not-a-proxy-request")[0] == 400  # type: ignore[arg-type]
    assert [r.status for r in proxy.requests] == [200, 502, 400]
    assert proxy.requests[0].upstream == ("127.0.0.1", tgi.port)


def test_forward_proxy_passes_a_cut_stream_on(tgi: FakeTGI, proxy: ForwardProxy):
    tgi.faults.append(Fault.reset(after_events=2))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request(
        "POST", tgi.url_for("tgi.test") + "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS
    )
    response = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert len(sse_data(cut.value.partial.decode())) == 2
    conn.close()


def test_forward_proxy_stop_closes_tunnels():
    with FakeTGI() as tgi:
        proxy = ForwardProxy().start()
        port = proxy.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"CONNECT tgi.test:{tgi.port} HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(1024) == b"HTTP/1.1 200 Connection established\r\n\r\n"
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: tgi.test\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            assert tgi.wait_open_connections(1)
            proxy.stop()
            assert tgi.wait_open_connections(0)  # the tunnel's upstream side is closed
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""  # and so is the client's side
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        proxy.stop()  # idempotent


# --------------------------------------------------------------------------------------------------
# TLS with a local CA
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, ServerCertificate]:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    return ca, issue_cert(ca, ["127.0.0.1", "tgi.test"])


def test_tls_fake_is_verified_with_the_local_ca_only(certs: tuple[CertificateAuthority, ServerCertificate]):
    ca, cert = certs
    with FakeTGI(tls=cert) as tgi:
        assert tgi.url == f"https://127.0.0.1:{tgi.port}"
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        conn = http.client.HTTPSConnection("127.0.0.1", tgi.port, context=context, timeout=5)
        conn.request("GET", "/info")
        assert json.loads(conn.getresponse().read())["model_id"] == tgi.model_id
        conn.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
        assert len(sse_json(conn.getresponse().read().decode())) == 8
        conn.close()
        refused = http.client.HTTPSConnection("127.0.0.1", tgi.port, context=ssl.create_default_context(), timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            refused.request("GET", "/info")
        refused.close()
        with (
            socket.create_connection(("127.0.0.1", tgi.port), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match=r"other\.test"),
        ):
            context.wrap_socket(raw, server_hostname="other.test")  # the name is checked too
        with (
            socket.create_connection(("127.0.0.1", tgi.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="tgi.test") as tls,  # the other name it has
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert len(tgi.requests) == 2  # nothing got through the refused handshakes
        assert wait_until(lambda: len(tgi.tls_errors) >= 2)


@pytest.mark.parametrize("form", ["paths", "context"])
def test_tls_option_takes_paths_or_a_context(certs: tuple[CertificateAuthority, ServerCertificate], form: str):
    ca, cert = certs
    tls = (cert.cert_path, cert.key_path) if form == "paths" else cert.server_context()
    with FakeOpenAI(tls=tls) as vllm:
        assert vllm.api_url.startswith("https://")
        with no_proxy_opener(urllib.request.HTTPSHandler(context=ca.client_context())).open(
            vllm.url + "/v1/models", timeout=5
        ) as response:
            assert json.load(response)["object"] == "list"


def test_tls_through_the_forward_proxy(certs: tuple[CertificateAuthority, ServerCertificate], proxy: ForwardProxy):
    ca, cert = certs
    with FakeTGI(tls=cert) as tgi:
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ca.client_context(), timeout=5)
        conn.set_tunnel("tgi.test", tgi.port)  # the certificate is checked against tgi.test
        conn.request("POST", "/generate", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
        assert json.loads(conn.getresponse().read()) == {"generated_text": FULL_TEXT}
        conn.close()
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=ca.client_context())
        )
        with opener.open(tgi.url_for("tgi.test") + "/info", timeout=5) as response:
            assert response.status == 200
        assert [(r.method, r.target) for r in proxy.requests] == [("CONNECT", f"tgi.test:{tgi.port}")] * 2
        assert [r.headers["host"] for r in tgi.requests] == [f"tgi.test:{tgi.port}"] * 2


# --------------------------------------------------------------------------------------------------
# No leaks
# --------------------------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_new_machinery_leaves_no_threads_or_sockets(certs: tuple[CertificateAuthority, ServerCertificate]):
    ca, cert = certs
    threads_before, fds_before = set(threading.enumerate()), _open_fds()
    with FakeTGI(tls=cert, tokens=["x"] * 40, token_delay=0.02) as tgi, ForwardProxy() as proxy:
        tgi.endpoint = EndpointProxy(cold_for=0.1)
        held = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ca.client_context(), timeout=5)
        held.set_tunnel("tgi.test", tgi.port)
        held.request("GET", "/info", headers={"X-Scale-Up-Timeout": "5"})  # held through a tunnel
        assert held.getresponse().read()
        held.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT}), headers=JSON_HEADERS)
        response = held.getresponse()
        response.readline()  # ... and left open mid-stream when everything stops
        # a tunnel nobody uses, and a request still held when its server stops
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        idle.sendall(f"CONNECT tgi.test:{tgi.port} HTTP/1.1\r\n\r\n".encode())
        plain = FakeTGI().start()
        plain.endpoint = EndpointProxy(cold_for=30)
        waiting = threading.Thread(
            target=_quiet, args=(call, plain, "GET", "/health"), kwargs={"headers": {"X-Scale-Up-Timeout": "30"}}
        )
        waiting.start()
        assert wait_until(lambda: len(plain.requests) == 1)
        plain.stop()  # wakes the held request up
        waiting.join(3)
        assert not waiting.is_alive()
    response.close()
    held.close()
    idle.close()
    gc.collect()
    assert wait_until(lambda: not set(threading.enumerate()) - threads_before, timeout=3)
    assert wait_until(lambda: _open_fds() <= fds_before, timeout=3)


def _quiet(function: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        function(*args, **kwargs)
