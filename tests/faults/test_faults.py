"""
The fault suite: one test per row of the table in docs/faults.md. Each fault is produced by a fake
server on 127.0.0.1 and the test checks exactly what the user gets.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import (
    APIConnectionError,
    APITimeoutError,
    GenerationError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    OverloadedError,
    PayloadTooLargeError,
    ResponseFormatError,
    ServerError,
    ValidationError,
)
from haystack_integrations.generators.hugging_face_api._http import MAX_RESPONSE_BYTES
from tests.fakes import FakeOpenAI, FakeTGI, Fault, TGILimits
from tests.helpers import TEXT, Chunks, posts


def make(url: str, **api_params: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("text_generation_inference", {"url": url, **api_params})


@pytest.mark.parametrize("stream", [False, True])
def test_503_with_retry_after_is_retried_after_the_wait(tgi: FakeTGI, stream: bool) -> None:
    tgi.faults.append(Fault.unavailable(retry_after=1))
    started = time.monotonic()
    result = make(tgi.url).run("q", streaming_callback=Chunks() if stream else None)
    assert result["replies"] == [TEXT]
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured
    assert posts(tgi) == 2


def test_429_overloaded_is_retried(tgi: FakeTGI) -> None:
    tgi.faults.extend([Fault.overloaded(), Fault.status(429, {"error": "busy"}, headers={"Retry-After": "0"})])
    assert make(tgi.url).run("q")["replies"] == [TEXT]
    assert posts(tgi) == 3


def test_persistent_500_gives_up_after_max_retries(tgi: FakeTGI) -> None:
    tgi.faults.extend([Fault.status(500, {"error": "boom"}, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(ServerError) as raised:
        make(tgi.url, max_retries=2).run("q")
    assert raised.value.status_code == 500
    assert raised.value.server_message == "boom"
    assert posts(tgi) == 3


def test_retry_after_longer_than_the_cap_is_not_waited_for(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.unavailable(retry_after=3600))
    started = time.monotonic()
    with pytest.raises(ServerError) as raised:
        make(tgi.url).run("q")
    assert raised.value.retry_after == 3600
    assert time.monotonic() - started < 5


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.
    with pytest.raises(APIConnectionError, match="could not connect"):
        make(f"http://127.0.0.1:{port}", max_retries=1).run("q")


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver is the operating system's; make it fail for this name without asking any DNS server.
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "tgi.does-not-exist.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(APIConnectionError, match="could not connect"):
        make("http://tgi.does-not-exist.invalid:8080", max_retries=0).run("q")


def test_reset_mid_stream_is_not_retried_and_says_what_was_delivered(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.reset(after_events=3))
    chunks = Chunks()
    with pytest.raises(IncompleteStreamError) as raised:
        make(tgi.url).run("q", streaming_callback=chunks)
    assert raised.value.delivered_text == chunks.text == "Natural Language Processing"
    assert "27 characters had already reached the streaming callback" in str(raised.value)
    assert "the connection broke" in str(raised.value)
    assert isinstance(raised.value.__cause__, APIConnectionError)  # why it ended early
    assert posts(tgi) == 1  # no retry: it would repeat the chunks


def test_reset_before_any_text_is_retried(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.reset(after_events=0, rst=True))
    chunks = Chunks()
    assert make(tgi.url).run("q", streaming_callback=chunks)["replies"] == [TEXT]
    assert chunks.text == TEXT
    assert posts(tgi) == 2


def test_reset_of_a_one_piece_answer_is_retried(tgi: FakeTGI) -> None:
    tgi.faults.extend([Fault.reset(), Fault.close_without_response()])
    assert make(tgi.url).run("q")["replies"] == [TEXT]
    assert posts(tgi) == 3


def test_stream_without_final_event(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.no_final())
    chunks = Chunks()
    with pytest.raises(IncompleteStreamError) as raised:
        make(tgi.url).run("q", streaming_callback=chunks)
    assert raised.value.delivered_text == chunks.text == TEXT
    assert all(c.finish_reason is None for c in chunks.received)


def test_openai_stream_without_finish_reason() -> None:
    with FakeOpenAI() as server:
        server.faults.append(Fault.no_final(after_events=2))
        with pytest.raises(IncompleteStreamError):
            make(server.url).run("q", streaming_callback=Chunks())


def test_error_event_mid_stream(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.error_event(after_events=2, error="Request failed during generation: OOM"))
    chunks = Chunks()
    with pytest.raises(GenerationError) as raised:
        make(tgi.url).run("q", streaming_callback=chunks)
    assert raised.value.server_message == "Request failed during generation: OOM"
    assert raised.value.delivered_text == chunks.text == "Natural Language"


def test_overloaded_error_event_before_any_text_is_retried(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.error_event(after_events=0, error="Model is overloaded", error_type="overloaded"))
    assert make(tgi.url).run("q", streaming_callback=Chunks())["replies"] == [TEXT]
    assert posts(tgi) == 2


def test_overloaded_forever_raises_overloaded(tgi: FakeTGI) -> None:
    tgi.faults.extend(
        [Fault.status(429, {"error": "Model is overloaded", "error_type": "overloaded"}, headers={"Retry-After": "0"})]
        * 2
    )
    with pytest.raises(OverloadedError):
        make(tgi.url, max_retries=1).run("q")


@pytest.mark.parametrize("line", [b"data: {not json", b'data: ["a list"]', b'data: {"token": 3}'])
def test_malformed_stream_event(tgi: FakeTGI, line: bytes) -> None:
    tgi.faults.append(Fault.malformed(after_events=1, line=line))
    with pytest.raises(ResponseFormatError):
        make(tgi.url).run("q", streaming_callback=Chunks())


def test_malformed_json_answer(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.malformed(line=b"{oops"))
    with pytest.raises(ResponseFormatError, match="invalid JSON"):
        make(tgi.url).run("q")


def test_json_answer_without_generated_text(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.status(200, {"text": "wrong shape"}))
    with pytest.raises(ResponseFormatError, match="generated_text"):
        make(tgi.url).run("q")


@pytest.mark.parametrize("stream", [False, True])
def test_server_slower_than_the_read_timeout(tgi: FakeTGI, stream: bool) -> None:
    tgi.faults.extend([Fault.delay(3), Fault.delay(3)])
    generator = make(tgi.url, timeout={"read": 0.5}, max_retries=1)
    generator.warm_up()
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="timed out"):
        generator.run("q", streaming_callback=Chunks() if stream else None)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_huge_answer_is_refused_not_buffered(tgi: FakeTGI, mode: str) -> None:
    from tests.helpers import call

    tgi.faults.append(Fault.huge(MAX_RESPONSE_BYTES + 1024 * 1024))
    with pytest.raises(ResponseFormatError, match="more than"):
        call(make(tgi.url, max_retries=0), mode, None)


def test_413_payload_too_large_is_not_retried(tgi: FakeTGI) -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        make(tgi.url).run("x " * 1_100_000)  # over TGI's 2 MB body limit
    assert raised.value.status_code == 413
    assert posts(tgi) == 1


def test_prompt_over_the_servers_input_limit_is_a_validation_error() -> None:
    # Counting tokens needs the server's tokenizer, so this is the server's check, surfaced precisely.
    with FakeTGI(limits=TGILimits(max_input_tokens=10, max_total_tokens=600)) as server:
        with pytest.raises(ValidationError, match="input") as raised:
            make(server.url, max_retries=3).run("word " * 50, generation_kwargs={"max_new_tokens": 8})
        assert raised.value.status_code == 422
        assert posts(server) == 1  # a validation error is not retried


def test_stream_cut_before_any_text_is_retried(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.no_final(after_events=0))
    chunks = Chunks()
    assert make(tgi.url).run("q", streaming_callback=chunks)["replies"] == [TEXT]
    assert chunks.text == TEXT
    assert posts(tgi) == 2


def test_stream_meta_names_the_stream_route(tgi: FakeTGI) -> None:
    meta = make(tgi.url).run("q", streaming_callback=Chunks())["meta"][0]
    assert meta["route"] == "/generate_stream"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_answered_with_json_is_a_format_error_not_a_cut_stream(mode: str) -> None:
    from tests.helpers import call

    with FakeOpenAI() as server:
        generator = make(server.url)
        generator.warm_up()
        server.faults.append(Fault.status(200, {"choices": [{"text": "one piece", "finish_reason": "stop"}]}))
        with pytest.raises(ResponseFormatError, match="not server-sent events") as raised:
            call(generator, mode, Chunks())
        assert "application/json" in str(raised.value) and "one piece" in str(raised.value)  # what it sent
        assert posts(server) == 1  # a server that does not stream will not start on a retry
