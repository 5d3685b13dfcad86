"""
One HTTP attempt, sans-I/O: the exchange is told what happened on the wire and decides everything else.

In the style of h11, it never touches a socket. A client (urllib3 in `_sync`, aiohttp in `_async`) sends
`exchange.request` and then only reports:

- `receive_head(status, headers)`: a complete response head arrived;
- `receive(data)`: bytes of the body arrived (`b""`: the body ended);
- `fail(failure, detail)`: the connection failed, as the client's exception table names it.

Each report returns the `StreamingChunk`s to hand to the streaming callback: one per server event, the last
one (finish reason and meta) included. Between reports the client asks `next_read()` for the timeout of its
next read, or None when nothing more is wanted; at the end, `outcome` is the `Answer` or the error, and
`reusable` says whether the connection may serve another request.

What is decided here, once for both clients:

- stream or buffer: a streamed request whose answer is server-sent events is fed to its `StreamState`;
  anything else (an error status, JSON to a streamed request, a one-piece answer) is buffered, up to
  `MAX_RESPONSE_BYTES`;
- the timeouts: `head_timeout` until the head (longer than `read_timeout` while an Inference Endpoint's proxy
  may hold the request), `read_timeout` between two reads of the body, and a short drain at the end;
- the classification of a broken answer: anything that fails before a complete head (a reset, a garbage
  status line, cut or unparsable headers) is a connection failure, retried like a refused connection; a
  complete head with a broken body (cut, bad chunked framing) is a cut body, retried until text reached the
  callback and an `IncompleteStreamError` after that (`StreamState`);
- the drain: once a stream is done, the connection is kept only if the body's end arrives (the moment
  aiohttp, too, hands a connection back to its pool). After the server ended the stream, its end marker is
  waited for up to `DRAIN_SECONDS`; otherwise (a stop word, a malformed event) only what has already
  arrived is read, at most `DRAIN_BYTES` either way, and the connection is closed, which also stops a server
  that is still generating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import Enum

from haystack.dataclasses import StreamingChunk

from ._generation import StreamState
from ._http import MAX_RESPONSE_BYTES, Answer, Request, is_event_stream
from .errors import APIConnectionError, APITimeoutError, HuggingFaceAPIError, ResponseFormatError

#: After a stream's last event, how long and how much to read for its end marker.
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 64 * 1024
#: The timeout of a read that should take only what has already arrived.
_ALREADY_ARRIVED = 0.001


class Failure(Enum):
    """What went wrong on the wire, as a client's exception table names it."""

    #: Refused, unreachable, DNS, TLS verification: nothing reached the server.
    CONNECT = "connect"
    #: The proxy refused or failed the connection.
    PROXY = "proxy"
    CONNECT_TIMEOUT = "connect-timeout"
    #: No byte within the wait for the head or for the next read.
    READ_TIMEOUT = "read-timeout"
    #: The connection broke, or what came back is not HTTP.
    BROKEN = "broken"
    #: A body in a `Content-Encoding` that could not be decoded.
    UNDECODABLE = "undecodable"


_NO_CHUNKS: list[StreamingChunk] = []


class _Phase(Enum):
    HEAD = "head"
    BODY = "body"  # buffered
    EVENTS = "events"  # fed to the stream
    DRAIN = "drain"
    DONE = "done"


class Exchange:
    """One attempt of `request`: yielded by the core's flows, driven by a client, read back by the flow."""

    __slots__ = (
        "_answer",
        "_body",
        "_clock",
        "_drain_until",
        "_drained",
        "_error",
        "_phase",
        "head_at",
        "request",
        "reusable",
        "started",
    )

    def __init__(self, request: Request, stream: StreamState | None, clock: Callable[[], float] = time.monotonic):
        self.request = request
        #: Whether the connection may serve another request (the body was read to its end).
        self.reusable = False
        self._clock = clock
        #: When the attempt began, and when its response head arrived (None until it does): the time to first
        #: byte, and whether a failure came before any byte of the answer.
        self.started = clock()
        self.head_at: float | None = None
        self._phase = _Phase.HEAD
        self._body: _BoundedBody | StreamState | None = stream
        self._answer: Answer | None = None
        self._error: HuggingFaceAPIError | None = None
        self._drain_until = 0.0
        self._drained = 0

    # --- what the client sends with ---------------------------------------------------------------

    @property
    def connect_timeout(self) -> float:
        return self.request.connect_timeout

    @property
    def head_timeout(self) -> float:
        """Seconds to wait for the response head: the longest wait of the exchange."""
        return self.request.first_byte_timeout

    @property
    def read_timeout(self) -> float:
        """Seconds to wait for each read of the body."""
        return self.request.read_timeout

    # --- what the client reports ------------------------------------------------------------------

    def receive_head(self, status: int, headers: Mapping[str, str]) -> None:
        """A complete response head arrived: decides whether the body is streamed or buffered."""
        stream = self._body
        self.head_at = self._clock()
        self._answer = Answer(status, headers)
        if isinstance(stream, StreamState) and status < 300 and is_event_stream(headers):
            self._phase = _Phase.EVENTS
            return
        self._phase = _Phase.BODY
        try:
            self._body = _BoundedBody(self.request, headers)  # refuses a declared length over the limit
        except HuggingFaceAPIError as error:
            self._end(error)

    def receive(self, data: bytes) -> list[StreamingChunk]:
        """Bytes of the body, as they arrived (`b""`: the body ended); returns the chunks they complete."""
        phase = self._phase
        if phase is _Phase.EVENTS:
            stream: StreamState = self._body  # type: ignore[assignment]
            chunks = stream.feed(data)
            if stream.done:
                self._after_stream(stream)
            return chunks
        if phase is _Phase.BODY:
            body: _BoundedBody = self._body  # type: ignore[assignment]
            if data:
                try:
                    body.add(data)
                except HuggingFaceAPIError as error:  # too large
                    self._end(error)
            else:
                assert self._answer is not None
                self._answer = body.answer(self._answer)
                self._end(reusable=True)
        elif phase is _Phase.DRAIN:
            self._drained += len(data)
            if not data:
                self._end(reusable=True)
            elif self._drained > DRAIN_BYTES:
                self._end()
        return _NO_CHUNKS

    def fail(self, failure: Failure, detail: str) -> list[StreamingChunk]:
        """The connection failed (`detail`: the library's words); returns the chunks this still completes."""
        phase = self._phase
        if phase is _Phase.DRAIN:  # the stream had ended: only the connection is lost
            self._end()
            return _NO_CHUNKS
        error = self._error_for(failure, detail)
        if phase is _Phase.EVENTS:
            stream: StreamState = self._body  # type: ignore[assignment]
            chunks = stream.broken(error)  # the final chunk, when the stream was already complete
            self._end(stream.failure)
            return chunks
        self._end(error)
        return _NO_CHUNKS

    # --- what the client asks ---------------------------------------------------------------------

    def next_read(self) -> float | None:
        """The timeout of the next read, in seconds; None when the exchange wants no more bytes."""
        phase = self._phase
        if phase is _Phase.BODY or phase is _Phase.EVENTS:
            return self.request.read_timeout
        if phase is _Phase.DRAIN:
            # Until the deadline, the end marker is waited for; after it, only what has already arrived is read.
            return max(self._drain_until - self._clock(), _ALREADY_ARRIVED)
        return None

    @property
    def outcome(self) -> Answer | HuggingFaceAPIError:
        """The answer (a stream's content is in its `StreamState`), or what the attempt failed with."""
        if self._error is not None:
            return self._error
        assert self._answer is not None, "the exchange has not ended"
        return self._answer

    # --- decisions --------------------------------------------------------------------------------

    def _after_stream(self, stream: StreamState) -> None:
        """
        The stream is done: the connection is kept only when the body's end arrives, which is also when aiohttp
        hands it back to its pool by itself. After the server ended the stream (its final event, `[DONE]`, an
        error event) the end marker is waited for, briefly; otherwise only what has already arrived is read,
        and the connection is closed, which stops a server that is still generating.
        """
        self._error = stream.failure
        if stream.at_eof:
            self._end(reusable=True)
            return
        self._phase = _Phase.DRAIN
        self._drain_until = self._clock() + (DRAIN_SECONDS if stream.ended_by_server else 0.0)

    def _end(self, error: HuggingFaceAPIError | None = None, *, reusable: bool = False) -> None:
        """Ends the exchange; `error` (when given) is its outcome."""
        self._phase = _Phase.DONE
        if error is not None:
            self._error = error
        self.reusable = reusable

    def _error_for(self, failure: Failure, detail: str) -> HuggingFaceAPIError:
        """The package's error for a failure in the current phase: the one place that words them."""
        where = self.request.where
        if failure is Failure.CONNECT_TIMEOUT:
            return APITimeoutError(f"{where} timed out while connecting (see api_params['timeout'])", phase="connect")
        if failure is Failure.READ_TIMEOUT:
            return APITimeoutError(
                f"{where} timed out waiting for the server (see api_params['timeout'])", phase="read"
            )
        if failure is Failure.CONNECT:
            return APIConnectionError(f"{where} could not connect: {detail}")
        if failure is Failure.PROXY:
            return APIConnectionError(f"{where} could not connect through the proxy: {detail}")
        if failure is Failure.UNDECODABLE:
            return ResponseFormatError(f"{where} returned a body that could not be decoded: {detail}")
        if self._phase is _Phase.HEAD:
            return APIConnectionError(
                f"{where} failed: the connection broke before a complete response head ({detail})"
            )
        return APIConnectionError(f"{where} failed: the connection broke while reading the answer ({detail})")


class _BoundedBody:
    """
    A one-piece body (or an error body) as it arrives, refused once over `MAX_RESPONSE_BYTES` by its declared
    length or by what has arrived, so that a huge answer is never held in memory.
    """

    __slots__ = ("_parts", "_received", "_where")

    def __init__(self, request: Request, headers: Mapping[str, str]) -> None:
        self._where = request.where
        self._parts: list[bytes] = []
        self._received = 0
        declared = headers.get("content-length")
        self._check(int(declared) if declared and declared.isdigit() else 0)

    def add(self, part: bytes) -> None:
        self._received += len(part)
        self._check(self._received)
        self._parts.append(part)

    def _check(self, size: int) -> None:
        if size > MAX_RESPONSE_BYTES:
            raise ResponseFormatError(f"{self._where} returned more than {MAX_RESPONSE_BYTES} bytes; refused")

    def answer(self, head: Answer) -> Answer:
        parts = self._parts
        return Answer(head.status, head.headers, parts[0] if len(parts) == 1 else b"".join(parts))
