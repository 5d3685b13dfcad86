"""
The sans-I/O core driven by hand: route decisions and the core's flows answered with values, no socket
anywhere. What the sync and async clients do is exactly this, with HTTP in between.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import (
    APIConnectionError,
    ProviderResolutionError,
    RedirectError,
)
from haystack_integrations.generators.hugging_face_api._config import HFGenerationAPIType, parse_api_params
from haystack_integrations.generators.hugging_face_api._core import ClientCore, Driver, Resolve, Sleep
from haystack_integrations.generators.hugging_face_api._exchange import Exchange
from haystack_integrations.generators.hugging_face_api._generation import GenerationRequest
from haystack_integrations.generators.hugging_face_api._http import Answer
from haystack_integrations.generators.hugging_face_api._routing import (
    Probe,
    ProbeAnswer,
    resolve_provider_route,
    resolve_url_route,
)

URL = "http://server.test:8080"
TGI_INFO = {"model_id": "org/tgi-model", "max_total_tokens": 4096, "max_stop_sequences": 4}


def settings(**api_params: Any) -> Any:
    """Validated settings for a server of one's own at URL."""
    return parse_api_params(HFGenerationAPIType.TEXT_GENERATION_INFERENCE, {"url": URL, **api_params})


def serverless(model: str) -> Any:
    return parse_api_params(HFGenerationAPIType.SERVERLESS_INFERENCE_API, {"model": model})


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"content-type": "application/json", **(headers or {})}, json.dumps(payload).encode())


# --- the route decisions, answered by hand ---------------------------------------------------------


def test_a_server_answering_info_like_tgi_gets_tgis_native_routes() -> None:
    decision = resolve_url_route(settings(), URL)
    assert next(decision) == Probe("server", "/info")
    with pytest.raises(StopIteration) as decided:
        decision.send(ProbeAnswer(200, TGI_INFO))
    route = decided.value.value
    assert (route.protocol.name, route.model, route.max_stop_sequences) == ("tgi", "org/tgi-model", 4)


def test_a_server_without_info_gets_completions_with_a_chat_fallback_and_the_listed_model() -> None:
    decision = resolve_url_route(settings(), URL)
    assert next(decision) == Probe("server", "/info")
    assert decision.send(ProbeAnswer(404)) == Probe("server", "/v1/models")
    with pytest.raises(StopIteration) as decided:
        decision.send(ProbeAnswer(200, {"data": [{"id": "served-model"}]}))
    route = decided.value.value
    assert route.protocol.name == "completions" and route.model == "served-model"
    assert route.fallback is not None and route.fallback.name == "chat"


def test_protocol_chat_with_a_model_and_an_engine_needs_no_probe() -> None:
    decision = resolve_url_route(settings(protocol="chat", model="m", engine="vllm"), URL)
    with pytest.raises(StopIteration) as decided:
        next(decision)
    assert decided.value.value.protocol.name == "chat"
    assert decided.value.value.engine.name == "vllm"


def test_serverless_picks_a_live_text_generation_provider_from_the_hubs_mapping() -> None:
    decision = resolve_provider_route(serverless("org/m"), has_token=True)
    probe = next(decision)
    assert probe.target == "hub" and probe.path.startswith("/api/models/org/m?")
    mapping = {"inferenceProviderMapping": [
        {"provider": "novita", "providerId": "org/m-novita", "status": "staging", "task": "text-generation"},
        {"provider": "together", "providerId": "org/m-together", "status": "live", "task": "text-generation"},
    ]}  # fmt: skip
    with pytest.raises(StopIteration) as decided:
        decision.send(ProbeAnswer(200, mapping))
    route = decided.value.value
    assert route.protocol.name == "completions" and route.protocol.model == "org/m-together"
    assert route.protocol.generate_path == "/together/v1/completions"


def test_serverless_without_a_token_fails_before_any_probe() -> None:
    with pytest.raises(ProviderResolutionError, match="need a Hugging Face token"):
        next(resolve_provider_route(serverless("org/m"), has_token=False))


# --- the core's flows, answered by hand ---------------------------------------------------------------


def run_by_hand(flow: Any, answers: list[Any]) -> tuple[Any, list[Any]]:
    """
    Answers each Exchange with the next item of `answers` (an Answer, or an error to raise in the flow), and
    each Resolve with the route already resolved.
    """
    driver = Driver(flow)
    effects: list[Any] = []
    effect = driver.start()
    while effect is not None:
        effects.append(effect)
        if isinstance(effect, Resolve):
            effect = driver.send(effect.core.route_state(effect.base).route)
        else:
            effect = driver.send(answers.pop(0) if isinstance(effect, Exchange) else None)
    return driver.result, effects


def test_route_resolution_waits_out_a_503_then_takes_tgis_route() -> None:
    core = ClientCore(settings(), None)
    answers = [json_answer(503, {"error": "loading"}, {"retry-after": "2"}), json_answer(200, TGI_INFO)]
    route, effects = run_by_hand(core.resolution(URL, core.resolutions), answers)
    assert [type(e).__name__ for e in effects] == ["Exchange", "Sleep", "Exchange"]
    assert isinstance(effects[1], Sleep) and effects[1].seconds == 2  # Retry-After
    assert effects[0].request.url == f"{URL}/info"
    assert route.protocol.name == "tgi" and core.route is route


def test_a_redirect_during_resolution_is_raised_not_probed_around() -> None:
    core = ClientCore(settings(), None)
    with pytest.raises(RedirectError):
        run_by_hand(core.resolution(URL, 0), [Answer(302, {"location": "https://elsewhere.test/info"})])


def test_a_failed_resolution_is_shared_with_a_caller_that_waited_for_it() -> None:
    core = ClientCore(settings(max_retries=0), None)
    ticket = core.resolutions  # read by a second caller before it waits
    with pytest.raises(APIConnectionError):
        run_by_hand(core.resolution(URL, core.resolutions), [APIConnectionError("down")])
    with pytest.raises(APIConnectionError):
        next(core.resolution(URL, ticket))  # no new Exchange: the waiter gets the failure it waited for


def test_generation_falls_back_to_chat_when_completions_is_missing_and_keeps_it() -> None:
    core = ClientCore(settings(), None)
    run_by_hand(core.resolution(URL, 0), [json_answer(404, {}), json_answer(200, {"data": [{"id": "m"}]})])
    request = GenerationRequest("Hi", {"max_new_tokens": 8}, [], False)
    chat = {"choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}], "model": "m"}
    assert core.route is not None
    ([reply], [meta]), effects = run_by_hand(
        core.generation(request, stream=False),
        [json_answer(404, {"error": "no route"}), json_answer(200, chat)],
    )
    exchanges = [e for e in effects if isinstance(e, Exchange)]
    assert [e.request.url for e in exchanges] == [f"{URL}/v1/completions", f"{URL}/v1/chat/completions"]
    assert reply == "Hello" and meta["protocol"] == "chat"
    assert core.route.protocol.name == "chat" and core.route.fallback is None  # kept, once it worked


def test_a_streamed_generations_chunks_come_from_its_exchange_one_per_event_the_last_with_meta() -> None:
    core = ClientCore(settings(protocol="tgi", model="m"), None)
    run_by_hand(core.resolution(URL, 0), [json_answer(200, TGI_INFO)])
    request = GenerationRequest("Hi", {}, [], False)

    def event(text: str, final: bool = False) -> str:
        token = {"id": 1, "text": text, "logprob": 0, "special": False}
        details = {"finish_reason": "eos_token", "generated_tokens": 2} if final else None
        payload = {"index": 1, "token": token, "generated_text": "Hello world" if final else None, "details": details}
        return f"data: {json.dumps(payload)}\n\n"

    assert core.route is not None
    driver = Driver(core.generation(request, stream=True))
    exchange = driver.start()  # the route of the replica admitted is known: no Resolve
    assert isinstance(exchange, Exchange)
    # What a client does: report the head, then the bytes as they came (here both events in one read).
    exchange.receive_head(200, {"content-type": "text/event-stream"})
    chunks = exchange.receive((event("Hello") + event(" world", final=True)).encode())
    assert [c.content for c in chunks] == ["Hello", " world"]
    assert chunks[0].start and chunks[0].finish_reason is None
    assert chunks[1].finish_reason == "stop" and chunks[1].meta["usage"]["completion_tokens"] == 2
    drain = exchange.next_read()  # the server ended the stream: its end marker is read, briefly
    assert drain is not None and 0 < drain <= 1
    assert exchange.receive(b"") == [] and exchange.next_read() is None
    assert exchange.reusable  # the body ended cleanly: the connection may serve another request
    assert driver.send(exchange.outcome) is None
    assert driver.result[0] == ["Hello world"]


def test_an_interrupted_resolution_leaves_no_failure_behind() -> None:
    core = ClientCore(settings(max_retries=0), None)
    with pytest.raises(APIConnectionError):
        run_by_hand(core.resolution(URL, core.resolutions), [APIConnectionError("down")])
    waiter_ticket = core.resolutions - 1  # a caller that queued behind the failed resolution, and waited on
    interrupted = Driver(core.resolution(URL, core.resolutions))
    assert isinstance(interrupted.start(), Exchange)
    interrupted.close()  # cancelled while its probe was in flight
    # The old failure is not handed to the waiter: it resolves for real (its first probe).
    assert isinstance(Driver(core.resolution(URL, waiter_ticket)).start(), Exchange)


def test_a_generation_resolves_the_route_of_the_replica_it_was_admitted_to() -> None:
    core = ClientCore(settings(url=[URL, "http://other.test:8080"], max_retries=0), None)
    driver = Driver(core.generation(GenerationRequest("Hi", {}, [], False), stream=False))
    resolve = driver.start()
    assert isinstance(resolve, Resolve) and resolve.core is core
    assert resolve.base in (URL, "http://other.test:8080")
    assert core.fleet is not None and core.fleet.replica(resolve.base).in_flight == 1  # admitted first
    driver.close()  # abandoned (a cancellation): the slot is given back
    assert core.fleet.replica(resolve.base).in_flight == 0
