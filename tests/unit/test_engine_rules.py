"""
The engine rules without a socket: telling engines apart, the grammar forms, refusals, bodies, and reading
token details from answers captured from real engines (vLLM 0.32 here; the shapes of the others from their
documentation).
"""

from __future__ import annotations

from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._config import (
    Grammar,
    HFGenerationAPIType,
    check_generation_kwargs,
    parse_api_params,
    parse_grammar,
)
from haystack_integrations.generators.hugging_face_api._engines import (
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    SGLANG,
    TGI,
    TRANSFORMERS,
    UNKNOWN,
    VLLM,
    engine_from_model_card,
    may_be_tgi,
)
from haystack_integrations.generators.hugging_face_api._protocols import (
    ChatProtocol,
    CompletionsProtocol,
    Generation,
    TGIProtocol,
)
from haystack_integrations.generators.hugging_face_api._routing import ProbeAnswer, resolve_url_route
from haystack_integrations.generators.hugging_face_api._structured import (
    StructuredOutputError,
    check_structured_reply,
)

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

# GET /v1/models of the real engines: vLLM 0.32 and transformers serve 5.25 as seen on this machine; the
# others' model cards as their source writes them (ENGINES.md section 7).
VLLM_CARD = {
    "id": "smol",
    "object": "model",
    "created": 1796338471,
    "owned_by": "vllm",
    "root": "/models/SmolLM2-135M-Instruct",
    "parent": None,
    "max_model_len": 2048,
    "permission": [],
}
TRANSFORMERS_CARD = {
    "owned_by": "local",
    "id": "SmolLM2-135M-Instruct",
    "object": "model",
    "created": 0,
    "status": {"value": "loaded"},
}


@pytest.mark.parametrize(
    ("card", "engine"),
    [
        (VLLM_CARD, VLLM),
        ({"id": "m", "owned_by": "sglang", "root": "m", "parent": None}, SGLANG),
        ({"id": "m.gguf", "owned_by": "llamacpp", "meta": {}}, LLAMA_CPP),
        ({"id": "m.gguf", "owned_by": "me", "permissions": []}, LLAMA_CPP_PYTHON),
        (TRANSFORMERS_CARD, TRANSFORMERS),
        ({"id": "org/m", "owned_by": "org/m"}, None),  # TGI's: only /info tells
        ({"id": "gpt-4o", "owned_by": "system"}, None),
        ({}, None),
    ],
)
def test_engines_are_told_apart_by_their_model_cards(card: dict[str, Any], engine: Any) -> None:
    assert engine_from_model_card(card) is engine


def test_a_model_owned_by_itself_may_be_tgi() -> None:
    assert may_be_tgi({"id": "org/m", "owned_by": "org/m"})
    assert not may_be_tgi(VLLM_CARD)


def _settings(**api_params: Any) -> Any:
    return parse_api_params(HFGenerationAPIType.TEXT_GENERATION_INFERENCE, {"url": "http://e.test", **api_params})


def _decide(decision: Any, answers: dict[str, ProbeAnswer]) -> tuple[list[str], Any]:
    asked, probe = [], next(decision)
    try:
        while True:
            asked.append(probe.path)
            probe = decision.send(answers[probe.path])
    except StopIteration as done:
        return asked, done.value


def test_the_engine_comes_from_the_probes_auto_already_makes() -> None:
    asked, route = _decide(
        resolve_url_route(_settings(), "http://e.test"),
        {"/info": ProbeAnswer(404), "/v1/models": ProbeAnswer(200, {"data": [VLLM_CARD]})},
    )
    assert asked == ["/info", "/v1/models"]
    assert route.engine is VLLM and route.model == "smol"
    assert route.fallback is not None and route.fallback.engine is VLLM  # the chat fallback keeps it


def test_a_forced_protocol_on_tgi_asks_info_once_v1_models_hints_at_it() -> None:
    info = {"model_id": "org/m", "max_total_tokens": 4096}
    asked, route = _decide(
        resolve_url_route(_settings(protocol="chat"), "http://e.test"),
        {
            "/v1/models": ProbeAnswer(200, {"data": [{"id": "org/m", "owned_by": "org/m"}]}),
            "/info": ProbeAnswer(200, info),
        },
    )
    assert asked == ["/v1/models", "/info"]
    assert route.engine is TGI and route.protocol.name == "chat"


def test_a_given_model_still_asks_v1_models_for_the_engine() -> None:
    asked, route = _decide(
        resolve_url_route(_settings(protocol="completions", model="adapter-1"), "http://e.test"),
        {"/v1/models": ProbeAnswer(200, {"data": [VLLM_CARD]})},
    )
    assert asked == ["/v1/models"]
    assert route.engine is VLLM and route.model == "adapter-1"


def test_a_server_that_does_not_say_is_unknown() -> None:
    _, route = _decide(
        resolve_url_route(_settings(), "http://e.test"),
        {"/info": ProbeAnswer(404), "/v1/models": ProbeAnswer(404)},
    )
    assert route.engine is UNKNOWN


def test_a_declared_tgi_takes_the_native_route() -> None:
    asked, route = _decide(resolve_url_route(_settings(engine="tgi"), "http://e.test"), {"/info": ProbeAnswer(404)})
    assert asked == ["/info"] and route.protocol.name == "tgi"


@pytest.mark.parametrize(
    ("api_params", "pattern"),
    [
        ({"engine": "ollama"}, r"api_params\['engine'\] must be 'auto' or one of"),
        ({"engine": "vllm", "protocol": "tgi"}, r"'tgi' is TGI's own protocol, but api_params\['engine'\] is 'vllm'"),
    ],
)
def test_engine_setting_is_checked(api_params: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        _settings(**api_params)


def test_engine_setting_is_for_url_types() -> None:
    with pytest.raises(ValueError, match="known by route"):
        HuggingFaceAPIGenerator("serverless_inference_api", {"model": "org/m", "engine": "vllm"})


# --- grammar forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"type": "json", "value": SCHEMA}, Grammar("json", SCHEMA)),
        ({"type": "json_object", "value": SCHEMA}, Grammar("json", SCHEMA)),
        (
            {"type": "json", "value": '{"type": "object", "properties": {}}'},
            Grammar("json", {"type": "object", "properties": {}}),
        ),
        ({"type": "regex", "value": "[a-z]+"}, Grammar("regex", "[a-z]+")),
        (
            {"type": "json_schema", "value": {"name": "person", "schema": SCHEMA, "strict": True}},
            Grammar("json", SCHEMA, "person", True),
        ),
    ],
)
def test_grammar_forms_become_one(given: dict[str, Any], expected: Grammar) -> None:
    assert parse_grammar(given, "g") == expected


@pytest.mark.parametrize(
    ("given", "pattern"),
    [
        ({"type": "xml", "value": "x"}, r"g\['type'\] must be 'json', 'regex' or 'json_schema'"),
        ({"type": "json"}, "must have the keys 'type' and 'value' only"),
        ({"type": "json", "value": SCHEMA, "strict": True}, "must have the keys 'type' and 'value' only"),
        ({"type": "json", "value": {"type": "objekt"}}, "is not a valid JSON schema"),
        ({"type": "json", "value": "{not json"}, "is a string that is not JSON"),
        ({"type": "json", "value": ["a"]}, r"must be a JSON schema \(a dict\)"),
        ({"type": "json", "value": {"enum": {1, 2}}}, "must hold JSON values only"),
        ({"type": "regex", "value": "(unclosed"}, "is not a valid regular expression"),
        ({"type": "json_schema", "value": SCHEMA}, r"must be \{'schema'"),
        ({"type": "json_schema", "value": {"schema": SCHEMA, "name": "has space"}}, "1-64 letters"),
        ({"type": "json_schema", "value": {"schema": SCHEMA, "strict": "yes"}}, "must be True or False"),
    ],
)
def test_bad_grammars_are_refused_naming_what_is_wrong(given: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_grammar(given, "g")


def test_the_users_grammar_is_copied_not_shared() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    grammar = check_generation_kwargs({"grammar": {"type": "json", "value": schema}}, "g")["grammar"]
    schema["properties"]["b"] = {"type": "integer"}
    assert "b" not in grammar.value["properties"]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": 0}, r"generation_kwargs\['n'\] must be an integer from 1 to 128"),
        ({"n": True}, r"generation_kwargs\['n'\]"),
        ({"validate_schema": "yes"}, r"generation_kwargs\['validate_schema'\] must be True or False"),
        ({"seed": 2**63}, r"generation_kwargs\['seed'\] must be an integer >= 0 and < 2\*\*63"),
        ({"response_format": {}}, r"use 'grammar'"),
        ({"logprobs": True}, r"use 'details'"),
    ],
)
def test_new_generation_kwargs_are_checked(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_generation_kwargs(kwargs, "generation_kwargs")


# --- bodies ------------------------------------------------------------------------------------------


def _params(**kwargs: Any) -> dict[str, Any]:
    return check_generation_kwargs(kwargs, "generation_kwargs")


def test_tgi_native_body_keeps_its_quirks() -> None:
    body = TGIProtocol("m").build_body("p", _params(temperature=0, top_p=1.0, max_new_tokens=5), ["x"], stream=False)
    assert body == {
        "inputs": "p",
        "parameters": {
            "max_new_tokens": 5,
            "do_sample": False,
            "stop": ["x"],
            "return_full_text": False,
            "details": True,
        },
    }


def test_do_sample_false_is_greedy_on_tgi_whatever_else_is_set() -> None:
    body = TGIProtocol("m").build_body("p", _params(do_sample=False, temperature=0.7, top_k=5), [], stream=False)
    assert "temperature" not in body["parameters"] and "top_k" not in body["parameters"]
    assert body["parameters"]["do_sample"] is False


def test_vllm_body_with_everything_it_takes() -> None:
    params = _params(
        max_new_tokens=8,
        temperature=0.5,
        top_k=4,
        seed=3,
        n=2,
        repetition_penalty=1.2,
        truncate=16,
        top_n_tokens=2,
        adapter_id="sql",
        grammar={"type": "regex", "value": "[0-9]+"},
    )
    body = CompletionsProtocol("base", engine=VLLM).build_body("p", params, [], stream=True)
    assert body == {
        "model": "sql",
        "max_tokens": 8,
        "temperature": 0.5,
        "top_k": 4,
        "seed": 3,
        "n": 2,
        "repetition_penalty": 1.2,
        "truncate_prompt_tokens": 16,
        "logprobs": 2,
        "structured_outputs": {"regex": "[0-9]+"},
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": "p",
    }


def test_the_callers_params_are_not_mutated() -> None:
    params = _params(temperature=0, top_p=1.0, details=True)
    before = dict(params)
    TGIProtocol("m").build_body("p", params, [], stream=False)
    ChatProtocol("m", engine=TRANSFORMERS).build_body("p", params, [], stream=False)
    assert params == before


@pytest.mark.parametrize(
    ("protocol", "kwargs", "pattern"),
    [
        (ChatProtocol("m", engine=TRANSFORMERS), {"frequency_penalty": 0.5}, "use repetition_penalty"),
        (
            CompletionsProtocol("m", engine=LLAMA_CPP),
            {"grammar": {"type": "regex", "value": "a"}},
            "not regular expressions",
        ),
        (ChatProtocol("m", engine=UNKNOWN), {"repetition_penalty": 1.1}, r"api_params\['engine'\]"),
        (ChatProtocol("m", engine=TGI), {"top_k": 3}, r"api_params\['protocol'\] = 'tgi'"),
        (
            CompletionsProtocol("m", engine=LLAMA_CPP_PYTHON),
            {"grammar": {"type": "json", "value": SCHEMA}},
            "protocol'] = 'chat'",
        ),
    ],
)
def test_refusals_say_why_and_what_instead(protocol: Any, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as raised:
        protocol.check_parameters(_params(**kwargs))
    assert str(raised.value).startswith(f"generation_kwargs['{next(iter(kwargs))}'] cannot be honoured by ")


# --- token details as real engines sent them --------------------------------------------------------

# vLLM 0.32, /v1/completions with logprobs 2 (greedy); the sampled token is first, then the others.
VLLM_LEGACY = {
    "text_offset": [0, 6],
    "token_logprobs": [-0.2534, -0.39],
    "tokens": [" Paris", "."],
    "top_logprobs": [{" Paris": -0.2534, " the": -2.7534}, {".": -0.39, ",": -1.64}],
}
# vLLM 0.32, /v1/chat/completions with top_logprobs 2 while sampling: the sampled token need not be the likeliest.
VLLM_CHAT = {
    "content": [
        {
            "token": "Al",
            "logprob": -3.62,
            "bytes": [65, 108],
            "top_logprobs": [
                {"token": "Al", "logprob": -3.62, "bytes": [65, 108]},
                {"token": "The", "logprob": -1.62, "bytes": [84, 104, 101]},
            ],
        }
    ]
}


def test_legacy_logprobs_read_into_one_shape() -> None:
    tokens = CompletionsProtocol("m", engine=VLLM).tokens(Generation(" Paris.", logprobs=VLLM_LEGACY), 1)
    assert tokens == [
        {"text": " Paris", "logprob": -0.2534, "top": [{"text": " Paris", "logprob": -0.2534}]},
        {"text": ".", "logprob": -0.39, "top": [{"text": ".", "logprob": -0.39}]},
    ]


def test_chat_logprobs_read_into_one_shape_likeliest_first() -> None:
    (token,) = ChatProtocol("m", engine=VLLM).tokens(Generation("Al", logprobs=VLLM_CHAT), 2)
    assert token == {
        "text": "Al",
        "logprob": -3.62,
        "top": [{"text": "The", "logprob": -1.62}, {"text": "Al", "logprob": -3.62}],
    }


def test_llama_cpp_chat_shaped_logprobs_on_completions_are_read_too() -> None:
    tokens = CompletionsProtocol("m", engine=LLAMA_CPP).tokens(Generation("Al", logprobs=VLLM_CHAT), 0)
    assert tokens == [{"text": "Al", "logprob": -3.62, "top": []}]


def test_tgi_details_leave_special_tokens_out() -> None:
    details = {
        "finish_reason": "eos_token",
        "generated_tokens": 2,
        "tokens": [
            {"id": 5, "text": "Hi", "logprob": -0.5, "special": False},
            {"id": 2, "text": "</s>", "logprob": -0.1, "special": True},
        ],
        "top_tokens": [
            [{"id": 5, "text": "Hi", "logprob": -0.5, "special": False}],
            [{"id": 2, "text": "</s>", "logprob": -0.1, "special": True}],
        ],
    }
    generation = TGIProtocol("m").parse_generation({"generated_text": "Hi", "details": details}, None)
    assert TGIProtocol("m").tokens(generation, 5) == [
        {"text": "Hi", "logprob": -0.5, "top": [{"text": "Hi", "logprob": -0.5}]}
    ]


# --- structured replies --------------------------------------------------------------------------------


def _check(text: str, grammar: Grammar, validate: bool = False, finish: str = "stop") -> Any:
    return check_structured_reply(
        text, grammar, validate_schema=validate, finish_reason=finish, where="POST u", engine="X"
    )


def test_structured_replies() -> None:
    json_grammar = Grammar("json", SCHEMA)
    assert _check('{"name": "Ada"}', json_grammar, validate=True) == {"name": "Ada"}
    assert _check('{"age": 3}', json_grammar) == {"age": 3}  # parsed, not validated unless asked
    with pytest.raises(
        StructuredOutputError, match="does not follow the JSON schema at the document: 'name' is a required"
    ):
        _check('{"age": 3}', json_grammar, validate=True)
    with pytest.raises(StructuredOutputError, match=r"cut by max_new_tokens \(finish_reason 'length'\)"):
        _check('{"name": "Ad', json_grammar, finish="length")
    assert _check("123-45", Grammar("regex", "[0-9]{3}-[0-9]{2}")) is None
    with pytest.raises(StructuredOutputError, match="does not match"):
        _check("123-456", Grammar("regex", "[0-9]{3}-[0-9]{2}"))


# --- helpers the generator's flow calls ----------------------------------------------------------------


def test_requests_for_replies() -> None:
    from haystack_integrations.generators.hugging_face_api._engines import requests_for_replies

    params = {"n": 3, "seed": 10, "do_sample": True}
    assert requests_for_replies(params, sends_n=True) == [params]
    assert requests_for_replies(params, sends_n=False) == [
        {"seed": 10, "do_sample": True},
        {"seed": 11, "do_sample": True},
        {"seed": 12, "do_sample": True},
    ]
    assert requests_for_replies({"n": 2, "do_sample": True}, sends_n=False) == [{"do_sample": True}] * 2
    assert requests_for_replies({"do_sample": True}, sends_n=False) == [{"do_sample": True}]
    assert params == {"n": 3, "seed": 10, "do_sample": True}


def test_tokens_for_meta_only_when_asked_and_never_silently_empty() -> None:
    from haystack_integrations.generators.hugging_face_api import ResponseFormatError
    from haystack_integrations.generators.hugging_face_api._protocols import tokens_for_meta

    protocol = CompletionsProtocol("m", engine=VLLM)
    with_details = Generation(" Paris.", logprobs=VLLM_LEGACY)
    assert tokens_for_meta(protocol, with_details, {}) is None
    assert [t["top"] for t in tokens_for_meta(protocol, with_details, {"details": True}) or []] == [[], []]
    with pytest.raises(ResponseFormatError, match="sent none"):
        tokens_for_meta(protocol, Generation(" Paris."), {"top_n_tokens": 1})


def test_tokens_within_a_reply_cut_at_a_stop_word() -> None:
    from haystack_integrations.generators.hugging_face_api._protocols import tokens_within

    tokens = [{"text": t, "logprob": -1.0, "top": []} for t in ("Hel", "lo", " wor", "ld")]
    assert [t["text"] for t in tokens_within(tokens, len("Hello wo"))] == ["Hel", "lo", " wor"]
    assert tokens_within(tokens, 0) == []
    assert tokens_within(tokens, 100) == tokens
