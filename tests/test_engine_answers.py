"""
Reading each engine's answers: several replies, token log-probabilities in one shape, constrained replies.

These drive the protocol layer directly against the strict fakes, over real HTTP: the route comes from a
real resolution (`warm_up`), the body from the protocol, the answer from the fake, the reading from the
protocol again. The generator's flow hands out what is read here as `replies`, `meta["tokens"]` and checked
structured replies (see docs/design.md, "Engines").
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator, ResponseFormatError
from haystack_integrations.generators.hugging_face_api._config import check_generation_kwargs
from haystack_integrations.generators.hugging_face_api._engines import derive_seeds, top_tokens_wanted
from haystack_integrations.generators.hugging_face_api._protocols import Generation, Protocol
from haystack_integrations.generators.hugging_face_api._routing import Route
from haystack_integrations.generators.hugging_face_api._sse import SSEDecoder
from haystack_integrations.generators.hugging_face_api._structured import (
    StructuredOutputError,
    check_structured_reply,
)
from tests.fakes.engines import JSON_TOKENS, LLAMA_CPP, LLAMA_CPP_PYTHON, OPENAI, SGLANG, VLLM, FakeEngine, StrictTGI

PROMPT = "What is in the name of a language?"
TEXT = "Natural Language Processing is a field."
WORDS = ["Natural", " Language", " Processing", " is", " a", " field", "."]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def resolve(url: str, protocol: str) -> Route:
    api_params = {"url": url, "max_retries": 0, "protocol": "auto" if protocol == "tgi" else protocol}
    generator = HuggingFaceAPIGenerator("inference_endpoints", api_params)
    generator.warm_up()
    route = generator._connection.core.route
    assert route is not None
    return route


def send(route: Route, kwargs: dict[str, Any], *, stream: bool = False) -> Any:
    """One request as the flow makes it: parameters checked, body built by the protocol. JSON, or SSE payloads."""
    params = check_generation_kwargs({"max_new_tokens": 512, **kwargs}, "generation_kwargs")
    route.check(params, [])
    protocol = route.protocol
    body = protocol.build_body(PROMPT, params, [], stream=stream)
    request = urllib.request.Request(
        route.base_url + protocol.path(stream), json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        raw = answer.read()
    if not stream:
        return json.loads(raw)
    return [json.loads(data) for data in SSEDecoder().feed(raw) if data != b"[DONE]"]


ENGINES = [
    ("tgi", "tgi"),
    ("tgi", "chat"),
    ("vllm", "completions"),
    ("vllm", "chat"),
    ("sglang", "completions"),
    ("sglang", "chat"),
    ("llama.cpp", "completions"),
    ("llama.cpp", "chat"),
    ("llama-cpp-python", "completions"),
    ("llama-cpp-python", "chat"),
    ("unknown", "completions"),
    ("unknown", "chat"),
]
_PROFILES = {
    "vllm": VLLM,
    "sglang": SGLANG,
    "llama.cpp": LLAMA_CPP,
    "llama-cpp-python": LLAMA_CPP_PYTHON,
    "unknown": OPENAI,
}


@pytest.fixture(params=ENGINES, ids=[f"{e}-{p}" for e, p in ENGINES])
def route(request: pytest.FixtureRequest) -> Iterator[Route]:
    engine, protocol = request.param
    with ExitStack() as stack:
        server: Any = stack.enter_context(StrictTGI() if engine == "tgi" else FakeEngine(_PROFILES[engine]))
        route = resolve(server.url, protocol)
        assert route.engine.name == engine
        yield route


# --- token log-probabilities, one shape ----------------------------------------------------------------


def _check_tokens(tokens: list[dict[str, Any]], top: int) -> None:
    assert "".join(t["text"] for t in tokens) == TEXT  # special tokens left out, as from the text
    for token in tokens:
        assert set(token) == {"text", "logprob", "top"}
        assert isinstance(token["logprob"], float) and token["logprob"] <= 0
        alternatives = [alt["logprob"] for alt in token["top"]]
        assert alternatives == sorted(alternatives, reverse=True)
        assert all(set(alt) == {"text", "logprob"} for alt in token["top"])


@pytest.mark.parametrize(("kwargs", "top"), [({"details": True}, 0), ({"top_n_tokens": 2}, 2)])
def test_token_details_in_one_shape_from_every_engine(route: Route, kwargs: dict[str, Any], top: int) -> None:
    wanted = top_tokens_wanted(kwargs)
    assert wanted == top
    (generation,) = route.protocol.parse_generations(send(route, kwargs), None, 1)
    tokens = route.protocol.tokens(generation, wanted)
    _check_tokens(tokens, top)
    if route.engine.name != "tgi" or route.protocol.name != "tgi":  # the TGI fake lists the token alone
        assert all(len(t["top"]) == top for t in tokens)
    assert [t["text"] for t in tokens] == WORDS


@pytest.mark.parametrize("kwargs", [{"details": True}, {"top_n_tokens": 2}])
def test_streamed_token_details_add_up_to_the_one_piece_ones(route: Route, kwargs: dict[str, Any]) -> None:
    protocol: Protocol = route.protocol
    top = top_tokens_wanted(kwargs)
    assert top is not None
    (whole,) = protocol.parse_generations(send(route, kwargs), None, 1)
    streamed = [
        token
        for payload in send(route, kwargs, stream=True)
        for event in protocol.parse_event_choices(payload)
        for token in protocol.tokens(event, top)
    ]
    assert streamed == protocol.tokens(whole, top)


def test_no_token_details_unless_asked(route: Route) -> None:
    (generation,) = route.protocol.parse_generations(send(route, {}), None, 1)
    assert top_tokens_wanted({}) is None
    if route.protocol.name != "tgi":  # TGI's details are always asked for (finish reason, counts)
        assert generation.logprobs is None


def test_tgi_prompt_tokens_with_decoder_input_details() -> None:
    with StrictTGI() as tgi:
        route = resolve(tgi.url, "tgi")
        (generation,) = route.protocol.parse_generations(send(route, {"decoder_input_details": True}), None, 1)
    prefill = route.protocol.prefill(generation)  # type: ignore[attr-defined]
    assert [t["text"] for t in prefill] == PROMPT.split()


@pytest.mark.parametrize(
    "raw",
    [
        {"tokens": ["a"], "token_logprobs": [-0.1, -0.2], "top_logprobs": None},
        {"content": [{"token": "a", "logprob": "high"}]},
        {"content": "a"},
        {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [["a"]]},
        ["a"],
    ],
)
def test_token_details_in_an_undocumented_shape_are_a_format_error(raw: Any) -> None:
    with FakeEngine(VLLM) as server:
        route = resolve(server.url, "completions")
    with pytest.raises(ResponseFormatError):
        route.protocol.tokens(Generation("a", logprobs=raw), 1)


# --- several replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "protocol"), [(VLLM, "completions"), (VLLM, "chat"), (SGLANG, "chat")])
def test_engines_with_n_give_n_replies_in_one_request(profile: Any, protocol: str) -> None:
    with FakeEngine(profile) as server:
        route = resolve(server.url, protocol)
        assert route.protocol.rules.sends_n
        kwargs = {"n": 3, "do_sample": True, "details": True}
        generations = route.protocol.parse_generations(send(route, kwargs), None, 3)
        streamed: dict[int, str] = {}
        for payload in send(route, kwargs, stream=True):
            for event in route.protocol.parse_event_choices(payload):
                streamed[event.index] = streamed.get(event.index, "") + event.text
    assert [g.text for g in generations] == [f"{TEXT} #{i}" for i in range(3)]
    assert [g.index for g in generations] == [0, 1, 2]
    assert {g.finish_reason for g in generations} == {"stop"}
    assert {g.prompt_tokens for g in generations} == {len(PROMPT.split())}
    assert all(route.protocol.tokens(g, 0)[-1]["text"] == f" #{g.index}" for g in generations)
    assert streamed == {i: f"{TEXT} #{i}" for i in range(3)}
    assert len([r for r in server.requests if r.method == "POST"]) == 2  # one request each, for n replies


def test_fewer_replies_than_asked_for_is_a_format_error() -> None:
    with FakeEngine(VLLM) as server:
        route = resolve(server.url, "completions")
        payload = send(route, {"do_sample": True})  # one reply
    with pytest.raises(ResponseFormatError, match="asked for 2 replies and answered 1"):
        route.protocol.parse_generations(payload, None, 2)


@pytest.mark.parametrize(
    ("engine", "protocol"), [("tgi", "tgi"), ("llama.cpp", "chat"), ("llama-cpp-python", "completions")]
)
def test_engines_without_n_get_one_request_per_reply_with_derived_seeds(engine: str, protocol: str) -> None:
    with ExitStack() as stack:
        server: Any = stack.enter_context(StrictTGI() if engine == "tgi" else FakeEngine(_PROFILES[engine]))
        route = resolve(server.url, protocol)
        assert not route.protocol.rules.sends_n
        replies = []
        for seed in derive_seeds(41, 3):
            payload = send(route, {"n": 3, "seed": seed, "do_sample": True})
            replies.append(route.protocol.parse_generation(payload, None).text)
        posts = [r for r in server.requests if r.method == "POST"]
    assert [p.resolved["ignored"] for p in posts] == [[], [], []]  # `n` itself is never sent
    if engine != "tgi":  # the TGI fake's text does not show the seed
        assert replies == [f"{TEXT} #41", f"{TEXT} #42", f"{TEXT} #43"]
    seeds = [p.json["parameters"]["seed"] if engine == "tgi" else p.json["seed"] for p in posts]
    assert seeds == [41, 42, 43]


def test_derived_seeds() -> None:
    assert derive_seeds(None, 2) == [None, None]
    assert derive_seeds(7, 1) == [7]
    assert derive_seeds(2**63 - 1, 2) == [2**63 - 1, 0]


# --- structured output, checked ----------------------------------------------------------------------


def test_a_constrained_reply_is_checked_and_parsed() -> None:
    with FakeEngine(VLLM) as server:
        route = resolve(server.url, "completions")
        kwargs = {"grammar": {"type": "json", "value": SCHEMA}, "validate_schema": True}
        (generation,) = route.protocol.parse_generations(send(route, kwargs), None, 1)
    grammar = check_generation_kwargs(kwargs, "generation_kwargs")["grammar"]
    document = check_structured_reply(
        generation.text, grammar, validate_schema=True, finish_reason="stop", where="POST x", engine="vLLM"
    )
    assert generation.text == "".join(JSON_TOKENS)
    assert document == {"name": "Ada"}


def test_an_unconstrained_reply_is_reported_not_returned() -> None:
    # What a silently ignored field gives: plain text, with a 200.
    grammar = check_generation_kwargs({"grammar": {"type": "json", "value": SCHEMA}}, "g")["grammar"]
    with pytest.raises(
        StructuredOutputError, match=r"not the JSON document asked for .*; vLLM did not constrain it"
    ) as raised:
        check_structured_reply(
            TEXT, grammar, validate_schema=False, finish_reason="stop", where="POST x", engine="vLLM"
        )
    assert raised.value.reply == TEXT
    assert isinstance(raised.value, ResponseFormatError)
