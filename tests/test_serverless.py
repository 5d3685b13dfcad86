"""Inference Providers, resolved through a fake Hub and a fake router (HF_ENDPOINT / HF_ROUTER_URL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from haystack.dataclasses import StreamingChunk
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator, ProviderResolutionError
from tests.fakes import FakeHub, FakeRouter

TEXT = "Natural Language Processing is a field."
TOKEN = "hf_fake_token_for_tests"
MODELS: dict[str, list[dict[str, Any]]] = {
    "org/chat-only": [
        {"provider": "together", "providerId": "org/chat-only-turbo", "task": "conversational"},
        {"provider": "novita", "status": "staging", "task": "conversational"},
    ],
    "org/text-model": [
        {"provider": "novita", "task": "conversational"},
        {"provider": "featherless-ai", "providerId": "org/text-model-fp8", "task": "text-generation"},
    ],
    "org/hf-inference-model": [{"provider": "hf-inference", "task": "text-generation"}],
    "org/staging-only": [{"provider": "together", "status": "staging"}],
    "org/embeddings": [{"provider": "hf-inference", "task": "feature-extraction"}],
}


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeHub, FakeRouter]]:
    with FakeHub(MODELS) as hub, FakeRouter(models=hub.models, accepted_tokens=[TOKEN]) as router:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ROUTER_URL", router.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield hub, router


def make(model: str, **api_params: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("serverless_inference_api", {"model": model, "max_retries": 0, **api_params})


def posts(router: FakeRouter) -> list[Any]:
    return [r for r in router.requests if r.method == "POST"]


def test_construction_contacts_nothing(providers: tuple[FakeHub, FakeRouter]) -> None:
    hub, router = providers
    make("org/chat-only")
    assert hub.requests == [] and router.requests == []


def test_conversational_model_goes_through_router_chat(providers: tuple[FakeHub, FakeRouter]) -> None:
    hub, router = providers
    chunks: list[StreamingChunk] = []
    generator = make("org/chat-only")
    result = generator.run("What's NLP?")
    streamed = generator.run("What's NLP?", streaming_callback=chunks.append)
    assert result["replies"] == streamed["replies"] == [TEXT]
    assert "".join(c.content for c in chunks) == TEXT
    request = posts(router)[0]
    assert request.path == "/v1/chat/completions"
    assert request.json["model"] == "org/chat-only:together"
    assert request.json["messages"] == [{"role": "user", "content": "What's NLP?"}]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert result["meta"][0]["protocol"] == "chat"
    assert result["meta"][0]["usage"]["total_tokens"] > 0
    # The Hub was asked once, with the token.
    hub_calls = [r for r in hub.requests if r.path.startswith("/api/models/")]
    assert len(hub_calls) == 1
    assert hub_calls[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_text_generation_provider_preferred_through_its_completions_route(
    providers: tuple[FakeHub, FakeRouter],
) -> None:
    _, router = providers
    result = make("org/text-model").run("What's NLP?", generation_kwargs={"max_new_tokens": 3})
    request = posts(router)[0]
    assert request.path == "/featherless-ai/v1/completions"
    assert request.json["model"] == "org/text-model-fp8"
    assert request.json["prompt"] == "What's NLP?"
    assert result["replies"] == ["Natural Language Processing"]
    assert result["meta"][0]["finish_reason"] == "length"


def test_hf_inference_uses_tgi_body_without_the_prompt(providers: tuple[FakeHub, FakeRouter]) -> None:
    _, router = providers
    generator = make(
        "org/hf-inference-model",
    )
    result = generator.run("What's NLP?")
    chunks: list[StreamingChunk] = []
    streamed = generator.run("What's NLP?", streaming_callback=chunks.append)
    assert result["replies"] == streamed["replies"] == [TEXT]
    request = posts(router)[0]
    assert request.path == "/hf-inference/models/org/hf-inference-model"
    assert request.json["parameters"]["return_full_text"] is False
    assert posts(router)[1].json["stream"] is True


def test_named_provider_is_used(providers: tuple[FakeHub, FakeRouter]) -> None:
    _, router = providers
    make("org/text-model", provider="novita").run("hi")
    assert posts(router)[0].json["model"] == "org/text-model:novita"


def test_provider_in_model_suffix(providers: tuple[FakeHub, FakeRouter]) -> None:
    _, router = providers
    make("org/text-model:novita").run("hi")
    assert posts(router)[0].json["model"] == "org/text-model:novita"


@pytest.mark.parametrize(
    ("model", "api_params", "message"),
    [
        ("org/unknown", {}, "'org/unknown' was not found on the Hub"),
        ("org/staging-only", {}, "No live Inference Provider serves 'org/staging-only'"),
        ("org/chat-only", {"provider": "groq"}, "Provider 'groq' does not serve 'org/chat-only'"),
        ("org/embeddings", {}, "No provider serves 'org/embeddings' for text generation or chat"),
    ],
)
def test_resolution_errors_name_the_model_and_what_to_do(
    providers: tuple[FakeHub, FakeRouter], model: str, api_params: dict[str, Any], message: str
) -> None:
    _, router = providers
    with pytest.raises(ProviderResolutionError, match=message):
        make(model, **api_params).run("hi")
    assert posts(router) == []


def test_missing_token_is_a_clear_error_before_any_request(
    providers: tuple[FakeHub, FakeRouter], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = providers
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ProviderResolutionError, match="need a Hugging Face token to run 'org/chat-only'"):
        make("org/chat-only").run("hi")
    assert hub.requests == []


def test_explicit_token_and_bill_to(providers: tuple[FakeHub, FakeRouter], monkeypatch: pytest.MonkeyPatch) -> None:
    _, router = providers
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("MY_HF", TOKEN)
    generator = HuggingFaceAPIGenerator(
        "serverless_inference_api", {"model": "org/chat-only", "bill_to": "my-org"}, token=Secret.from_env_var("MY_HF")
    )
    generator.run("hi")
    assert posts(router)[0].headers["x-hf-bill-to"] == "my-org"


async def test_run_async_resolves_too(providers: tuple[FakeHub, FakeRouter]) -> None:
    generator = make("org/chat-only")
    result = await generator.run_async("hi")
    assert result["replies"] == [TEXT]
    await generator.aclose()


def test_list_shaped_mapping_is_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeHub(MODELS, mapping_shape="list") as hub, FakeRouter(models=hub.models, accepted_tokens=[TOKEN]) as router:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ROUTER_URL", router.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert make("org/chat-only").run("hi")["replies"] == [TEXT]


def test_router_policy_suffix_is_passed_to_the_router(providers: tuple[FakeHub, FakeRouter]) -> None:
    _, router = providers
    make("org/text-model:cheapest").run("hi")
    assert posts(router)[0].path == "/v1/chat/completions"
    assert posts(router)[0].json["model"] == "org/text-model:cheapest"
