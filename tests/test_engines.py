"""
Every generation parameter on every engine: sent as that engine's own field, or refused before any request.

Each engine is a strict fake (tests/fakes/engines.py) that takes exactly its engine's documented fields and
records what it made of a request in common terms. Every cell of the rule table is run against it: a cell
that sends must reach the engine as the value asked for, with no field the engine would ignore; a cell that
refuses must raise `ValueError` naming the parameter and the engine, with no request sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._engines import (
    ENGINES,
    RULES,
    Refused,
    Sent,
    Split,
    column_of,
    engine_named,
    matrix_markdown,
)
from tests.fakes import FakeHub, FakeRouter
from tests.fakes.engines import (
    BY_ENGINE,
    JSON_TOKENS,
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    OPENAI,
    REGEX_TOKENS,
    SGLANG,
    TRANSFORMERS,
    VLLM,
    FakeEngine,
    StrictTGI,
    strict_router,
)

PROMPT = "What is in the name of a language?"
TEXT = "Natural Language Processing is a field."
TOKEN = "hf_fake_token_for_tests"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
PATTERN = r"[0-9]{3}-[0-9]{2}"
ADAPTER = "sql-lora"


@dataclass
class Target:
    """One engine reached through one protocol: the fake serving it and how to make a generator for it."""

    column: str
    protocol: str
    server: Any
    make: Callable[..., HuggingFaceAPIGenerator]

    @property
    def engine(self) -> str:
        return {"tgi /v1": "tgi", "tgi": "tgi"}.get(self.column, self.column)

    def posts(self) -> list[Any]:
        return [r for r in self.server.requests if r.method == "POST"]


_PROFILES = BY_ENGINE
TARGETS = [
    ("tgi", "tgi"),
    *[(column, protocol) for column in ("tgi /v1", *_PROFILES) for protocol in ("completions", "chat")],
    ("inference-providers", "completions"),
    ("inference-providers", "chat"),
]


def _url_generator(url: str, protocol: str) -> Callable[..., HuggingFaceAPIGenerator]:
    def make(**kwargs: Any) -> HuggingFaceAPIGenerator:
        api_params = {"url": url, "max_retries": 0, "protocol": "auto" if protocol == "tgi" else protocol}
        return HuggingFaceAPIGenerator("inference_endpoints", api_params, **kwargs)

    return make


@pytest.fixture(params=TARGETS, ids=[f"{column}-{protocol}" for column, protocol in TARGETS])
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    column, protocol = request.param
    with ExitStack() as stack:
        if column in ("tgi", "tgi /v1"):
            server: Any = stack.enter_context(StrictTGI(adapters=[ADAPTER]))
            yield Target(column, protocol, server, _url_generator(server.url, protocol))
        elif column == "inference-providers":
            models = {
                "org/chat": [{"provider": "together", "task": "conversational"}],
                "org/text": [{"provider": "featherless-ai", "task": "text-generation"}],
            }
            hub = stack.enter_context(FakeHub(models))
            server = stack.enter_context(strict_router(FakeRouter(models=hub.models, accepted_tokens=[TOKEN])))
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            monkeypatch.setenv("HF_ROUTER_URL", server.url)
            monkeypatch.setenv("HF_TOKEN", TOKEN)
            model = "org/chat" if protocol == "chat" else "org/text"

            def make(**kwargs: Any) -> HuggingFaceAPIGenerator:
                return HuggingFaceAPIGenerator("serverless_inference_api", {"model": model, "max_retries": 0}, **kwargs)

            yield Target(column, protocol, server, make)
        else:
            server = stack.enter_context(FakeEngine(_PROFILES[column], adapters=[ADAPTER]))
            yield Target(column, protocol, server, _url_generator(server.url, protocol))


# --- each cell of the table, on its engine ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A parameter set for one call, and what the engine must have made of it (in the fakes' common terms)."""

    param: str
    kwargs: dict[str, Any]
    resolved: dict[str, Any]
    reply: str | None = None


CASES = [
    Case("max_new_tokens", {"max_new_tokens": 3}, {"max_tokens": 3}, "Natural Language Processing"),
    Case("temperature", {"temperature": 0.7}, {"temperature": 0.7, "sampling": True}),
    Case("top_k", {"top_k": 3}, {"top_k": 3}),
    Case("top_p", {"top_p": 0.9}, {"top_p": 0.9}),
    Case("typical_p", {"typical_p": 0.5}, {"typical_p": 0.5}),
    Case("do_sample", {"do_sample": True}, {"sampling": True}),
    Case("do_sample", {"do_sample": False, "temperature": 0.7}, {"sampling": False}),
    Case("seed", {"seed": 7, "do_sample": True}, {"seed": 7}),
    Case("repetition_penalty", {"repetition_penalty": 1.3}, {"repetition_penalty": 1.3}),
    Case("frequency_penalty", {"frequency_penalty": 0.5}, {"frequency_penalty": 0.5}),
    Case("stop", {"stop": [" field"]}, {"stop": [" field"]}, "Natural Language Processing is a"),
    Case("n", {"n": 2, "do_sample": True}, {}),
    Case("best_of", {"best_of": 2, "do_sample": True}, {"best_of": 2}),
    Case(
        "grammar",
        {"grammar": {"type": "json", "value": SCHEMA}},
        {"constraint": ("json", SCHEMA)},
        "".join(JSON_TOKENS),
    ),
    Case(
        "grammar",
        {"grammar": {"type": "json_schema", "value": {"name": "person", "schema": SCHEMA}}},
        {"constraint": ("json", SCHEMA)},
        "".join(JSON_TOKENS),
    ),
    Case(
        "grammar",
        {"grammar": {"type": "regex", "value": PATTERN}},
        {"constraint": ("regex", PATTERN)},
        "".join(REGEX_TOKENS),
    ),
    Case("details", {"details": True}, {}),
    Case("top_n_tokens", {"top_n_tokens": 2}, {"top_logprobs": 2}),
    Case("decoder_input_details", {"decoder_input_details": True}, {"decoder_input_details": True}),
    Case("truncate", {"truncate": 3}, {"truncate": 3}),
    Case("adapter_id", {"adapter_id": ADAPTER}, {"adapter": ADAPTER}, f"[{ADAPTER}] {TEXT}"),
    Case("watermark", {"watermark": True}, {"watermark": True}),
    Case("return_full_text", {"return_full_text": True}, {}, PROMPT + TEXT),
    Case("validate_schema", {"grammar": {"type": "json", "value": SCHEMA}, "validate_schema": True}, {}),
]


def _cell(target: Target, key: str) -> Any:
    """The table's cell of a parameter on this target."""
    cell = RULES[key][column_of(engine_named(target.engine), target.protocol)]
    if isinstance(cell, Split):
        cell = cell.chat if target.protocol == "chat" else cell.completions
    return cell


def _refusal(target: Target, case: Case) -> Refused | None:
    """What the table says of this case's parameter on this target (value-dependent refusals included)."""
    checked = {"grammar": None}
    for key, value in case.kwargs.items():
        cell = _cell(target, key)
        if isinstance(cell, Refused):
            return cell
        if isinstance(cell, Sent) and cell.refuse is not None:
            from haystack_integrations.generators.hugging_face_api._config import parse_grammar

            checked[key] = parse_grammar(value, key) if key == "grammar" else value
            refused = cell.refuse(checked[key])
            if refused is not None:
                return refused
    return None


@pytest.mark.parametrize("case", CASES, ids=[f"{c.param}-{i}" for i, c in enumerate(CASES)])
def test_each_parameter_reaches_each_engine_as_its_own_field_or_is_refused_before_any_request(
    target: Target, case: Case
) -> None:
    generator = target.make()
    if _refusal(target, case) is not None:
        with pytest.raises(ValueError, match=r"generation_kwargs\['\w+'\] cannot be honoured by ") as raised:
            generator.run(PROMPT, generation_kwargs=case.kwargs)
        message = str(raised.value)
        assert any(f"generation_kwargs['{key}']" in message for key in case.kwargs)
        assert engine_named(target.engine).title in message
        assert target.posts() == []
        return
    result = generator.run(PROMPT, generation_kwargs=case.kwargs)
    n = case.kwargs.get("n", 1)
    one_request = isinstance(_cell(target, "n"), Sent)  # else a request per reply
    requests = target.posts()
    assert len(requests) == (1 if one_request else n)
    assert len(result["replies"]) == len(result["meta"]) == n
    for request in requests:
        assert request.resolved.get("ignored") == [], f"fields the engine ignores: {request.resolved['ignored']}"
        for key, value in case.resolved.items():
            assert request.resolved.get(key) == value, (key, request.json)
    if n > 1 and one_request:
        assert requests[0].resolved["n"] == n
    if case.reply is not None:
        assert result["replies"] == [case.reply]
    assert {meta["engine"] for meta in result["meta"]} == {target.engine}


def test_greedy_unless_asked_to_sample_on_every_engine(target: Target) -> None:
    target.make().run(PROMPT)
    (request,) = target.posts()
    assert request.resolved["sampling"] is False
    assert request.resolved["ignored"] == []


def test_streaming_asks_for_usage_only_where_the_engine_knows_how(target: Target) -> None:
    chunks: list[Any] = []
    result = target.make().run(PROMPT, streaming_callback=chunks.append)
    assert result["replies"] == ["".join(c.content for c in chunks)] == [TEXT]
    (request,) = target.posts()
    assert request.resolved["ignored"] == []


def test_the_engine_is_learned_with_the_route(target: Target) -> None:
    generator = target.make()
    generator.warm_up()
    assert generator._connection.core.route is not None
    assert generator._connection.core.route.engine.name == target.engine
    assert target.posts() == []


# --- the issue's examples, spelled out -----------------------------------------------------------------


def test_repetition_penalty_reaches_llama_cpp_as_repeat_penalty() -> None:
    with FakeEngine(LLAMA_CPP) as server:
        _url_generator(server.url, "completions")().run(PROMPT, generation_kwargs={"repetition_penalty": 1.3})
    body = server.requests[-1].json
    assert body["repeat_penalty"] == 1.3
    assert "repetition_penalty" not in body


def test_llama_cpp_python_gets_no_repeat_penalty_nobody_asked_for() -> None:
    with FakeEngine(LLAMA_CPP_PYTHON) as server:
        _url_generator(server.url, "chat")().run(PROMPT)
    assert server.requests[-1].json["repeat_penalty"] == 1.0  # its own default is 1.1


def test_best_of_is_refused_on_vllm_naming_the_alternative() -> None:
    with FakeEngine(VLLM) as server, pytest.raises(ValueError, match="use n and pick a reply") as raised:
        _url_generator(server.url, "completions")().run(PROMPT, generation_kwargs={"best_of": 2, "do_sample": True})
    assert str(raised.value).startswith("generation_kwargs['best_of'] cannot be honoured by vLLM")
    assert [r for r in server.requests if r.method == "POST"] == []


@pytest.mark.parametrize(
    ("profile", "protocol", "fields"),
    [
        (VLLM, "completions", {"structured_outputs": {"json": SCHEMA}}),
        (VLLM, "chat", {"structured_outputs": {"json": SCHEMA}}),
        (
            SGLANG,
            "completions",
            {"json_schema": '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'},
        ),
        (
            SGLANG,
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}},
        ),
        (LLAMA_CPP, "completions", {"json_schema": SCHEMA}),
        (LLAMA_CPP, "chat", {"json_schema": SCHEMA}),
        (LLAMA_CPP_PYTHON, "chat", {"response_format": {"type": "json_object", "schema": SCHEMA}}),
        (
            OPENAI,
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}},
        ),
    ],
)
def test_structured_output_is_sent_as_each_engines_own_field(
    profile: Any, protocol: str, fields: dict[str, Any]
) -> None:
    with FakeEngine(profile) as server:
        _url_generator(server.url, protocol)().run(
            PROMPT, generation_kwargs={"grammar": {"type": "json", "value": SCHEMA}}
        )
    body = server.requests[-1].json
    assert {key: body[key] for key in fields} == fields


def test_tgi_gets_its_grammar_natively_and_on_its_chat_route_only() -> None:
    grammar = {"type": "regex", "value": PATTERN}
    with StrictTGI() as tgi:
        native = _url_generator(tgi.url, "tgi")().run(PROMPT, generation_kwargs={"grammar": grammar})
        chat = _url_generator(tgi.url, "chat")().run(PROMPT, generation_kwargs={"grammar": grammar})
        with pytest.raises(ValueError, match="apply no grammar on /v1/completions; TGI's native routes take it"):
            _url_generator(tgi.url, "completions")().run(PROMPT, generation_kwargs={"grammar": grammar})
    assert native["replies"] == chat["replies"] == ["".join(REGEX_TOKENS)]
    posts = [r for r in tgi.requests if r.method == "POST"]
    assert posts[0].json["parameters"]["grammar"] == grammar
    assert posts[1].json["response_format"] == grammar
    assert len(posts) == 2


def test_tgi_refuses_a_schema_without_properties_before_asking() -> None:
    with StrictTGI() as tgi, pytest.raises(ValueError, match="top-level 'properties'"):
        _url_generator(tgi.url, "tgi")().run(
            PROMPT, generation_kwargs={"grammar": {"type": "json", "value": {"type": "array"}}}
        )
    assert [r for r in tgi.requests if r.method == "POST"] == []


def test_an_unknown_engine_gets_the_openai_api_only_and_is_told_how_to_name_its_engine() -> None:
    with FakeEngine(OPENAI) as server:
        generator = _url_generator(server.url, "completions")()
        with pytest.raises(ValueError, match=r"api_params\['engine'\] = 'vllm'"):
            generator.run(PROMPT, generation_kwargs={"top_k": 5})
        assert generator.run(PROMPT, generation_kwargs={"top_p": 0.5, "seed": 1})["replies"] == [TEXT + " #1"]


def test_a_declared_engine_spares_the_probes_and_is_believed() -> None:
    with FakeEngine(OPENAI) as server:
        api_params = {"url": server.url, "model": "fake-org/fake-model", "protocol": "chat", "engine": "vllm"}
        generator = HuggingFaceAPIGenerator("inference_endpoints", api_params)
        generator.warm_up()
        assert server.requests == []
        assert generator._connection.core.route is not None and generator._connection.core.route.engine.name == "vllm"


def test_transformers_serve_samples_only_when_told_through_generation_config() -> None:
    # transformers serve ignores temperature and top_p unless generate() is told to sample.
    with FakeEngine(TRANSFORMERS) as server:
        _url_generator(server.url, "chat")().run(PROMPT, generation_kwargs={"temperature": 0.7, "top_k": 4})
    body = server.requests[-1].json
    assert body["temperature"] == 0.7
    assert body["generation_config"] == '{"top_k": 4, "do_sample": true}'


def test_n_above_one_without_sampling_is_refused_everywhere() -> None:
    with FakeEngine(VLLM) as server, pytest.raises(ValueError, match="greedy and would give the same reply 3 times"):
        _url_generator(server.url, "completions")().run(PROMPT, generation_kwargs={"n": 3})


def test_validate_schema_needs_a_json_grammar() -> None:
    with FakeEngine(VLLM) as server, pytest.raises(ValueError, match=r"validate_schema.*needs"):
        _url_generator(server.url, "completions")().run(PROMPT, generation_kwargs={"validate_schema": True})


# --- the README shows the table ----------------------------------------------------------------------


def test_readme_matrix_is_the_rule_table() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- engine matrix: generated from _engines.RULES -->\n") + len(
        "<!-- engine matrix: generated from _engines.RULES -->\n"
    )
    end = readme.index("<!-- end of engine matrix -->")
    assert readme[start:end] == matrix_markdown(), "README's matrix differs from the table: paste matrix_markdown()"


def test_every_row_has_every_column_and_every_engine_a_column() -> None:
    from haystack_integrations.generators.hugging_face_api._engines import COLUMNS

    assert all(set(row) == set(COLUMNS) for row in RULES.values())
    assert {column_of(engine, "chat") for engine in ENGINES} <= set(COLUMNS)
