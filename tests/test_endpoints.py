"""
Inference Endpoints as they behave (issue 10): scaled to zero, paused, and a self-hosted server's 503
for contrast. The fakes put an Inference Endpoint's proxy (`EndpointProxy`) in front of a TGI-style or
vLLM-style engine, over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import (
    BadRequestError,
    EndpointNotReadyError,
    EndpointPausedError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    ServerError,
)
from tests.fakes import EndpointProxy, FakeOpenAI, FakeServer, FakeTGI, Fault
from tests.helpers import MODE_IDS, MODES, TEXT, Chunks, call, posts

COLD = 0.7  # seconds a cold start takes in these tests


@pytest.fixture(params=["tgi", "vllm"])
def engine(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """The engine behind the endpoint: TGI's native protocol, or an OpenAI-compatible vLLM."""
    server: FakeServer = FakeTGI() if request.param == "tgi" else FakeOpenAI()
    with server:
        yield server


def endpoint(server: FakeServer, **api_params: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("inference_endpoints", {"url": server.url, **api_params})


@pytest.mark.parametrize("honoured", [True, False], ids=["proxy-holds", "proxy-answers-503"])
@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_an_endpoint_scaled_to_zero_is_waited_out(
    engine: FakeServer, honoured: bool, mode: str, streamed: bool
) -> None:
    engine.endpoint = proxy = EndpointProxy(cold_for=COLD, honour_scale_up_header=honoured)
    chunks = Chunks() if streamed else None
    started = time.monotonic()
    result = call(endpoint(engine, max_retries=0), mode, chunks)  # the wait is not a retry: none are needed
    assert result["replies"] == [TEXT]
    assert time.monotonic() - started >= COLD * 0.9
    if chunks is not None:
        assert chunks.text == TEXT
    if honoured:
        assert proxy.holds >= 1 and proxy.unavailable == 0  # X-Scale-Up-Timeout made the proxy hold it
    else:
        assert proxy.unavailable >= 1  # 503s, waited out with backoff
    # Every request, the route probes included, asked the proxy to hold it.
    assert {r.headers.get("x-scale-up-timeout") for r in engine.requests} == {"300"}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("honoured", [True, False], ids=["proxy-holds", "proxy-answers-503"])
def test_the_wait_is_bounded_by_scale_up_timeout(tgi: FakeTGI, mode: str, honoured: bool) -> None:
    tgi.endpoint = EndpointProxy(cold_for=60, honour_scale_up_header=honoured)
    started = time.monotonic()
    with pytest.raises(EndpointNotReadyError) as raised:
        call(endpoint(tgi, scale_up_timeout=2), mode, None)
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4
    assert "did not become ready in 2 s" in str(raised.value)
    assert raised.value.status_code == 503
    assert {r.headers.get("x-scale-up-timeout") for r in tgi.requests} == {"2"}


def test_the_wait_is_logged_when_it_starts_and_when_it_ends(tgi: FakeTGI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    tgi.endpoint = EndpointProxy(cold_for=COLD, honour_scale_up_header=False)
    assert endpoint(tgi).run("q")["replies"] == [TEXT]
    events = [(r.levelno, getattr(r, "hf_scale_up", None)) for r in caplog.records if hasattr(r, "hf_scale_up")]
    assert events == [(logging.WARNING, "waiting"), (logging.WARNING, "ready")]
    assert "scaling up (HTTP 503); waiting up to 300 s" in caplog.text
    assert "is ready after" in caplog.text


def test_giving_up_is_logged_too(tgi: FakeTGI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    tgi.endpoint = EndpointProxy(cold_for=60, honour_scale_up_header=False)
    with pytest.raises(EndpointNotReadyError):
        endpoint(tgi, scale_up_timeout=1).run("q")
    assert [getattr(r, "hf_scale_up", None) for r in caplog.records if hasattr(r, "hf_scale_up")] == [
        "waiting",
        "gave_up",
    ]


async def test_waiting_never_blocks_the_event_loop(tgi: FakeTGI) -> None:
    tgi.endpoint = EndpointProxy(cold_for=1.5, honour_scale_up_header=False)
    generator = endpoint(tgi)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        assert (await generator.run_async("q"))["replies"] == [TEXT]
    finally:
        tick.cancel()
        await generator.close_async()
    assert len(gaps) > 20 and max(gaps) < 0.3


def test_scale_up_timeout_0_turns_the_wait_off(tgi: FakeTGI) -> None:
    tgi.endpoint = EndpointProxy(cold_for=60, honour_scale_up_header=False)
    started = time.monotonic()
    with pytest.raises(ServerError) as raised:
        endpoint(tgi, scale_up_timeout=0, max_retries=1).run("q")
    assert not isinstance(raised.value, EndpointNotReadyError)
    assert time.monotonic() - started < 5  # the ordinary retry budget: quick
    assert all("x-scale-up-timeout" not in r.headers for r in tgi.requests)


def test_a_self_hosted_server_answering_503_keeps_the_ordinary_retry_budget(tgi: FakeTGI) -> None:
    # Nobody waits minutes for a TGI of their own that is down: a 503 is an ordinary transient error there.
    tgi.faults_for("GET", "/info").extend([Fault.unavailable(retry_after=None)] * 3)
    started = time.monotonic()
    with pytest.raises(ServerError) as raised:
        HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url, "max_retries": 2}).run("q")
    assert not isinstance(raised.value, EndpointNotReadyError)
    assert [r.path for r in tgi.requests] == ["/info"] * 3
    assert time.monotonic() - started < 5
    assert all("x-scale-up-timeout" not in r.headers for r in tgi.requests)


def test_scale_up_timeout_is_for_inference_endpoints_only() -> None:
    with pytest.raises(ValueError, match=r"scale_up_timeout'\] applies to api_type 'inference_endpoints'"):
        HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://h", "scale_up_timeout": 5})
    for bad in (-1, float("inf"), "300"):
        with pytest.raises((ValueError, TypeError), match="scale_up_timeout"):
            HuggingFaceAPIGenerator("inference_endpoints", {"url": "http://h", "scale_up_timeout": bad})


def test_text_that_reached_the_callback_is_never_delivered_twice(tgi: FakeTGI) -> None:
    tgi.endpoint = EndpointProxy(cold_for=COLD, honour_scale_up_header=False)
    tgi.faults.append(Fault.reset(after_events=2))
    chunks = Chunks()
    with pytest.raises(IncompleteStreamError) as raised:
        endpoint(tgi).run("q", streaming_callback=chunks)
    assert raised.value.delivered_text == chunks.text == "Natural Language"
    assert posts(tgi) >= 1
    assert tgi.requests[-1].method == "POST" and tgi.requests[-1].fault is not None  # no attempt after it


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_paused_endpoint_is_named_at_once(engine: FakeServer, mode: str, streamed: bool) -> None:
    engine.endpoint = proxy = EndpointProxy(paused=True)
    started = time.monotonic()
    with pytest.raises(EndpointPausedError) as raised:
        call(endpoint(engine), mode, Chunks() if streamed else None)
    assert time.monotonic() - started < 1
    message = str(raised.value)
    assert "paused" in message and "resume" in message
    assert raised.value.server_message == "Bad Request: Invalid state"  # the proxy's own words, kept
    assert raised.value.status_code == 400
    assert proxy.paused_rejections == 1  # no retries, no fallback probing (/v1/models) after /info
    assert [r.path for r in engine.requests] == ["/info"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_endpoint_paused_after_warm_up_is_named_at_once(tgi: FakeTGI, mode: str) -> None:
    generator = endpoint(tgi)
    generator.warm_up()
    tgi.endpoint = EndpointProxy(paused=True)
    with pytest.raises(EndpointPausedError):
        call(generator, mode, None)
    assert posts(tgi) == 1


def test_invalid_state_from_a_self_hosted_server_is_just_a_bad_request(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.status(400, {"error": "Bad Request: Invalid state"}))
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url})
    with pytest.raises(BadRequestError) as raised:
        generator.run("q")
    assert not isinstance(raised.value, EndpointPausedError)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_held_request_may_outlast_the_read_timeout_but_the_stream_may_not(tgi: FakeTGI, mode: str) -> None:
    from haystack_integrations.generators.hugging_face_api import APITimeoutError

    tgi.endpoint = EndpointProxy(cold_for=1.5, honour_scale_up_header=True)
    generator = endpoint(tgi, timeout={"read": 0.5}, max_retries=0)
    chunks = Chunks()
    # The proxy holds the request for 1.5 s: longer than the read timeout, within scale_up_timeout.
    assert call(generator, mode, chunks)["replies"] == [TEXT]
    # Once an answer has started, the read timeout is the usual one again: a stalled stream fails.
    tgi.token_delay = 1.0
    with pytest.raises(APITimeoutError) as raised:
        call(generator, mode, Chunks())
    assert raised.value.phase == "read"


def test_a_proxy_saying_retry_after_0_is_not_flooded(tgi: FakeTGI) -> None:
    tgi.endpoint = proxy = EndpointProxy(cold_for=2.5, retry_after=0, honour_scale_up_header=False)
    assert endpoint(tgi).run("q")["replies"] == [TEXT]
    assert proxy.unavailable <= 4  # at least a second between two requests: not dozens a second
