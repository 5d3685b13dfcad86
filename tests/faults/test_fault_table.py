"""
One table of server faults, two clients: every row runs against `run` (urllib3) and `run_async` (aiohttp),
each on a fresh server, and both must end the same way: the same outcome (the reply, or the same error
class), the same number of generation requests and connections at the server, the same text delivered to
the streaming callback, the same number of chunks. docs/faults.md names each row by its id.

The faults come from the fakes (tests/fakes), which misbehave as servers do, and, for what an HTTP server
library never sends (garbage status lines, cut heads, broken chunked framing), from `ScriptedServer`, which
answers with exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIError, HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._http import MAX_RESPONSE_BYTES
from tests.fakes import FakeOpenAI, FakeTGI, Fault, TGILimits
from tests.fakes.raw import Reply, ScriptedServer, chunked, sse_head, tgi_events, tgi_json, tgi_stream
from tests.helpers import TEXT, Chunks, posts

TOKENS = ["Natural", " Language", " Processing", " is", " a", " field", "."]


@dataclass(frozen=True)
class Target:
    """Where a row's server listens, and what it saw."""

    url: str
    requests: Callable[[], int]  # generation requests (POSTs) it answered
    connections: Callable[[], int]  # connections it accepted, probes' included
    protocol: str = "tgi"  # the generator's api_params["protocol"] for it


Serve = Callable[[], contextlib.AbstractContextManager[Target]]


@dataclass(frozen=True)
class Row:
    id: str
    serve: Serve
    #: "reply", or the name of the error class both clients raise.
    expect: str
    #: Generation requests the server answered.
    requests: int
    streams: tuple[bool, ...] = (False, True)
    #: For streamed errors: the text that had reached the callback.
    delivered: str = ""
    api_params: dict[str, Any] = field(default_factory=dict)
    prompt: str = "q"
    generation_kwargs: dict[str, Any] | None = None
    #: For streamed replies: the number of chunks (one per server event).
    chunks: int | None = None
    #: Words the error message must contain.
    says: str = ""


@dataclass(frozen=True)
class Observed:
    outcome: str
    requests: int
    connections: int
    delivered: str
    chunks: int
    message: str = field(compare=False, default="")


# --- the servers of the rows ------------------------------------------------------------------------


def tgi(*faults: Fault, **options: Any) -> Serve:
    @contextlib.contextmanager
    def serve() -> Iterator[Target]:
        with FakeTGI(**options) as server:
            server.faults.extend(faults)
            yield Target(server.url, lambda: posts(server), lambda: server.connections_accepted)

    return serve


def openai(*faults: Fault, finish_reason: Any = None, **options: Any) -> Serve:
    @contextlib.contextmanager
    def serve() -> Iterator[Target]:
        with FakeOpenAI(**options) as server:
            server.faults.extend(faults)
            server.engine.finish_reason_override = finish_reason
            yield Target(server.url, lambda: posts(server), lambda: server.connections_accepted, "auto")

    return serve


def scripted(*replies: Reply, then: Reply | None = None) -> Serve:
    @contextlib.contextmanager
    def serve() -> Iterator[Target]:
        with ScriptedServer(replies, then=then) as server:
            yield Target(server.url, lambda: server.connections, lambda: server.connections)

    return serve


@contextlib.contextmanager
def refused() -> Iterator[Target]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield Target(f"http://127.0.0.1:{port}", lambda: 0, lambda: 0)  # nothing listens there now


@contextlib.contextmanager
def unresolvable() -> Iterator[Target]:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "tgi.does-not-exist.invalid":  # fails for this name without asking any DNS server
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield Target("http://tgi.does-not-exist.invalid:8080", lambda: 0, lambda: 0)


def both(status: int, body: Any, **headers: str) -> Fault:
    return Fault.status(status, body, headers=headers)


# Byte-level answers (ScriptedServer): everything breaks before or after a complete response head.
GARBAGE = Reply(b"HELLO WORLD\r\n\r\n")
NO_STATUS_LINE = Reply(b'{"generated_text": "no head at all"}')
CUT_MID_LINE = Reply(b"HTTP/1.1 200 OK\r\nContent-Ty")
CUT_BEFORE_BLANK_LINE = Reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
BAD_HEADER_LINE = Reply(b"HTTP/1.1 200 OK\r\nthis is not a header\r\nContent-Length: 2\r\n\r\n{}")
RESET_AT_ONCE = Reply(b"", end="reset")
BAD_CHUNK_SIZE = Reply(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
)
# A framing error arriving in the same read as the head is lost with it on aiohttp (its parser fails the whole
# read): these come, as from a server that streams, in a later read (docs/faults.md).
STREAM_BAD_FRAMING_AFTER_TEXT = Reply(sse_head() + chunked(tgi_events(TOKENS)[:2], terminator=False), later=b"zz\r\nxx")
STREAM_GARBAGE_AFTER_FINAL = Reply(sse_head() + chunked(tgi_events(TOKENS), terminator=False), later=b"zz\r\ngarbage")


def good(stream: bool) -> Reply:
    return tgi_stream(TOKENS) if stream else tgi_json(TEXT)


ROWS: list[Row] = [
    # Status codes and Retry-After.
    Row("503-retry-after", tgi(Fault.unavailable(retry_after=1)), "reply", 2),
    Row("retry-after-over-the-cap", tgi(Fault.unavailable(retry_after=3600)), "ServerError", 1),
    Row("429-then-reply", tgi(Fault.overloaded(), both(429, {"error": "busy"}, **{"Retry-After": "0"})), "reply", 3),
    Row(
        "429-forever",
        tgi(*[both(429, {"error": "Model is overloaded", "error_type": "overloaded"}, **{"Retry-After": "0"})] * 2),
        "OverloadedError",
        2,
        api_params={"max_retries": 1},
    ),
    Row(
        "500-forever",
        tgi(*[both(500, {"error": "boom"}, **{"Retry-After": "0"})] * 3),
        "ServerError",
        3,
        api_params={"max_retries": 2},
        says="boom",
    ),
    Row("413-payload-too-large", tgi(), "PayloadTooLargeError", 1, prompt="x " * 1_100_000),
    Row(
        "prompt-over-the-input-limit",
        tgi(limits=TGILimits(max_input_tokens=10, max_total_tokens=600)),
        "ValidationError",
        1,
        prompt="word " * 50,
        generation_kwargs={"max_new_tokens": 8},
    ),
    Row("redirect", tgi(Fault.redirect(302, "https://elsewhere.test/generate")), "RedirectError", 1),
    # Connections that cannot be made.
    Row(
        "connection-refused", refused, "APIConnectionError", 0, api_params={"max_retries": 1}, says="could not connect"
    ),
    Row("dns-failure", unresolvable, "APIConnectionError", 0, api_params={"max_retries": 0}, says="could not connect"),
    # Connections that break, and streams that end early.
    Row(
        "reset-mid-stream-after-text",
        tgi(Fault.reset(after_events=3)),
        "IncompleteStreamError",
        1,
        streams=(True,),
        delivered="Natural Language Processing",
        says="the connection broke",
    ),
    Row("reset-before-any-text", tgi(Fault.reset(after_events=0, rst=True)), "reply", 2, streams=(True,), chunks=8),
    Row(
        "reset-of-a-one-piece-answer", tgi(Fault.reset(), Fault.close_without_response()), "reply", 3, streams=(False,)
    ),
    Row("stream-without-final-event", tgi(Fault.no_final()), "IncompleteStreamError", 1, (True,), delivered=TEXT),
    Row(
        "openai-stream-without-finish-reason",
        openai(Fault.no_final(after_events=2)),
        "IncompleteStreamError",
        1,
        (True,),
        delivered="Natural Language",
    ),
    Row("stream-ends-before-any-event", tgi(Fault.no_final(after_events=0)), "reply", 2, (True,), chunks=8),
    Row("reset-after-the-final-event", openai(Fault.reset(after_events=8), stream_usage="never"), "reply", 1, (True,)),
    Row("cut-inside-an-event-before-text", tgi(Fault.cut_in_event(after_events=0)), "reply", 2, (True,)),
    Row("cut-inside-an-event-body-ended", tgi(Fault.cut_in_event(after_events=0, clean_end=True)), "reply", 2, (True,)),
    Row(
        "cut-inside-an-event-after-text",
        tgi(Fault.cut_in_event(after_events=2)),
        "IncompleteStreamError",
        1,
        (True,),
        delivered="Natural Language",
    ),
    # Answers that say the generation failed.
    *[
        Row(
            f"finish-reason-{reason}",
            openai(finish_reason=reason),
            "GenerationError",
            1,
            (stream,),
            delivered,
            says=reason,
        )
        for reason in ("abort", "error")
        for stream, delivered in [(False, ""), (True, TEXT)]  # streamed: the text came before the finish reason
    ],
    Row("finish-reason-not-a-string", openai(finish_reason={"type": "stop"}), "reply", 1, (False,)),
    Row(
        "error-event-mid-stream",
        tgi(Fault.error_event(after_events=2, error="Request failed during generation: OOM")),
        "GenerationError",
        1,
        (True,),
        delivered="Natural Language",
        says="OOM",
    ),
    Row(
        "overloaded-event-before-any-text",
        tgi(Fault.error_event(after_events=0, error="Model is overloaded", error_type="overloaded")),
        "reply",
        2,
        (True,),
    ),
    # Answers that do not follow the protocol.
    *[
        Row(f"malformed-event-{name}", tgi(Fault.malformed(1, line)), "ResponseFormatError", 1, (True,), "Natural")
        for name, line in [
            ("not-json", b"data: {not json"),
            ("not-an-object", b'data: ["a list"]'),
            ("wrong-shape", b'data: {"token": 3}'),
        ]
    ],
    Row("malformed-json-answer", tgi(Fault.malformed(line=b"{oops")), "ResponseFormatError", 1, (False,), says="JSON"),
    Row(
        "json-answer-of-the-wrong-shape",
        tgi(both(200, {"text": "wrong shape"})),
        "ResponseFormatError",
        1,
        (False,),
        says="generated_text",
    ),
    Row(
        "stream-answered-with-json",
        openai(both(200, {"choices": [{"text": "one piece", "finish_reason": "stop"}]})),
        "ResponseFormatError",
        1,
        (True,),
        says="not server-sent events",
    ),
    Row(
        "huge-answer",
        tgi(Fault.huge(MAX_RESPONSE_BYTES + 1024 * 1024)),
        "ResponseFormatError",
        1,
        (False,),
        api_params={"max_retries": 0},
        says="more than",
    ),
    Row(
        "slower-than-the-read-timeout",
        tgi(Fault.delay(3), Fault.delay(3)),
        "APITimeoutError",
        1,
        api_params={"timeout": {"read": 0.5}, "max_retries": 1},
        says="timed out",
    ),
    # Bytes that are not HTTP, or not whole: one classification on both stacks (docs/faults.md).
    *[
        Row(f"{name}-{'stream' if stream else 'one-piece'}", serve, expect, n, (stream,), api_params={"max_retries": 2})
        for stream in (False, True)
        for name, serve, expect, n in [
            ("garbage-status-line", scripted(then=GARBAGE), "APIConnectionError", 3),
            ("garbage-once-then-a-reply", scripted(GARBAGE, then=good(stream)), "reply", 2),
            ("no-status-line", scripted(then=NO_STATUS_LINE), "APIConnectionError", 3),
            ("head-cut-mid-line", scripted(then=CUT_MID_LINE), "APIConnectionError", 3),
            ("head-cut-before-its-blank-line", scripted(then=CUT_BEFORE_BLANK_LINE), "APIConnectionError", 3),
            ("header-line-that-does-not-parse", scripted(then=BAD_HEADER_LINE), "APIConnectionError", 3),
            ("reset-at-once", scripted(then=RESET_AT_ONCE), "APIConnectionError", 3),
            ("bad-chunked-framing", scripted(BAD_CHUNK_SIZE, then=good(stream)), "reply", 2),
        ]
    ],
    Row(
        "bad-chunked-framing-after-text",
        scripted(then=STREAM_BAD_FRAMING_AFTER_TEXT),
        "IncompleteStreamError",
        1,
        (True,),
        delivered="Natural Language",
    ),
    Row("garbage-after-the-final-event", scripted(then=STREAM_GARBAGE_AFTER_FINAL), "reply", 1, (True,), chunks=7),
    Row("stream-written-in-one-piece", scripted(then=tgi_stream(TOKENS)), "reply", 1, (True,), chunks=7),
]

CASES = [(row, stream) for row in ROWS for stream in row.streams]


def observe(row: Row, stream: bool, mode: str) -> Observed:
    """Runs the row once with `mode` ("run" or "run_async") on a fresh server."""
    with row.serve() as target:
        api_params = {"url": target.url, "protocol": target.protocol, **row.api_params}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)
        chunks = Chunks() if stream else None
        kwargs = {"streaming_callback": chunks, "generation_kwargs": row.generation_kwargs}

        async def run_async() -> dict[str, Any]:
            try:
                return await generator.run_async(row.prompt, **kwargs)
            finally:
                await generator.close_async()

        try:
            result = generator.run(row.prompt, **kwargs) if mode == "run" else asyncio.run(run_async())
        except HuggingFaceAPIError as error:
            outcome, delivered, message = type(error).__name__, error.delivered_text, str(error)
        else:
            assert result["replies"] == [TEXT]
            outcome, delivered, message = "reply", "", ""
        finally:
            generator.close()
        received = chunks.received if chunks is not None else []
        if outcome != "reply":
            assert "".join(c.content for c in received) == delivered  # the error says what the callback got
            assert all(c.finish_reason is None for c in received)  # no chunk claimed to be the last
        return Observed(outcome, target.requests(), target.connections(), delivered, len(received), message)


@pytest.mark.parametrize(("row", "stream"), CASES, ids=[f"{r.id}-{'stream' if s else 'one-piece'}" for r, s in CASES])
def test_run_and_run_async_end_the_same_way(row: Row, stream: bool) -> None:
    sync, asynchronous = observe(row, stream, "run"), observe(row, stream, "run_async")
    assert sync == asynchronous
    assert (sync.outcome, sync.requests, sync.delivered) == (row.expect, row.requests, row.delivered)
    if row.chunks is not None:
        assert sync.chunks == row.chunks  # one chunk per server event, however the bytes arrived
    if row.says:
        assert row.says in sync.message and row.says in asynchronous.message
    assert "Traceback" not in sync.message


def test_docs_name_every_row_and_only_rows_that_exist() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "faults.md").read_text()
    named = set(re.findall(r"`table: ([a-z0-9-]+)`", doc))
    ids = {row.id for row in ROWS}
    assert named == ids, (sorted(ids - named), sorted(named - ids))
