"""Shared machinery of the fake inference servers.

Every fake in this package is a real HTTP/1.1 server on 127.0.0.1 (ephemeral port), built on the
standard library only, so that tests and benchmarks talk to it through a real socket. This module holds
what the fakes have in common, top to bottom:

* the deterministic "model": a fixed list of tokens, then an end-of-sequence token, cut short by
  ``max_new_tokens`` / ``max_tokens`` or by a stop string, with the matching rules of the real engines;
* request recording (:class:`RecordedRequest`);
* fault injection (:class:`Fault`, :class:`FaultQueue`), on POSTs by default or on any method and path
  (:meth:`FakeServer.faults_for`);
* response writing, including chunked transfer encoding and Server-Sent Events written by hand so that a
  fault can cut a stream anywhere (:class:`Exchange`, :class:`SSEStream`);
* observation of the client from the server side: open connections, streams the client abandoned
  (:class:`AbortedStream`);
* the server lifecycle (:class:`FakeServer`), over plain HTTP or TLS (``tls=``, see ``tls.py``).

An Inference Endpoint's proxy can be put in front of any fake (``server.endpoint``, see ``endpoint.py``).

Prompt token counting: the fakes have no tokenizer, so a prompt counts ``len(prompt.split())`` tokens
(whitespace-separated words). Generated tokens are the strings of ``server.tokens``, one per step.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from .tls import TLSConfig, server_context

# --------------------------------------------------------------------------------------------------
# The deterministic model
# --------------------------------------------------------------------------------------------------

DEFAULT_TOKENS: tuple[str, ...] = ("Natural", " Language", " Processing", " is", " a", " field", ".")
"""What every fake generates unless told otherwise: one string per token, in order."""

EOS_TEXT = "</s>"
EOS_ID = 2  # llama-family convention; any fixed id would do


def count_prompt_tokens(text: str) -> int:
    """Number of tokens the fakes charge for a prompt: its whitespace-separated words."""
    return len(text.split())


def token_id(text: str) -> int:
    """A stable id for a token string (the same string always gets the same id, never EOS_ID)."""
    return 100 + zlib.crc32(text.encode()) % 32000


def _logprob(text: str) -> float:
    # Deterministic, plausible-looking log-probability in [-1.05, -0.05].
    return -round(0.05 + (zlib.crc32(text.encode()) % 101) / 100, 4)


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token, as TGI's ``Token`` schema describes it."""

    id: int
    text: str
    logprob: float
    special: bool = False

    @classmethod
    def of(cls, text: str) -> GeneratedToken:
        return cls(token_id(text), text, _logprob(text))

    @classmethod
    def eos(cls) -> GeneratedToken:
        return cls(EOS_ID, EOS_TEXT, -0.01, special=True)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


FinishReason = Literal["length", "eos", "stop"]


@dataclass
class Generation:
    """The outcome of one generation.

    ``text`` is the final text as the engine returns it (special tokens skipped, already cut at a stop
    string when the engine cuts); the text each token added is ``piece(token)``.
    """

    tokens: list[GeneratedToken]
    text: str
    finish_reason: FinishReason
    stop_string: str | None = None

    @staticmethod
    def piece(token: GeneratedToken) -> str:
        return "" if token.special else token.text


def generate(
    vocab: Sequence[str],
    *,
    max_new_tokens: int | None,
    stop: Sequence[str] = (),
    stop_match: Literal["suffix", "substring"] = "suffix",
    keep_stop_text: bool = True,
    length_first: bool = True,
) -> Generation:
    """Run the fake model: the strings of ``vocab`` one per step, then EOS.

    The engine rules this reproduces:

    * ``stop_match="suffix"`` (TGI, transformers): generation stops when the decoded text *ends with* a
      stop string; a stop string that does not end on a token boundary never stops it.
    * ``stop_match="substring"`` (vLLM): generation stops when a stop string appears anywhere in the text
      added by the last token (or straddling its start); the text is then cut before the stop string, or
      after it when ``keep_stop_text``.
    * ``length_first`` (TGI): the length limit is checked before EOS and stop strings, so reaching
      ``max_new_tokens`` on the token that completes a stop string finishes with ``length``. vLLM checks
      stop strings last and lets them win (``length_first=False``).

    Memory stays linear in the text (the ``huge`` fault generates tens of megabytes): stop strings are
    looked for in a bounded tail of the text, never in copies of all of it.
    """
    stop = [s for s in stop if s]
    window = max((len(s) for s in stop), default=0)
    tokens: list[GeneratedToken] = []
    pieces: list[str] = []
    length = 0  # characters generated so far
    tail = ""  # the last characters of the text, enough to find a stop string ending in the new piece
    step = 0

    def done(reason: FinishReason, cut: int | None = None, stop_string: str | None = None) -> Generation:
        text = "".join(pieces)
        return Generation(tokens, text if cut is None else text[:cut], reason, stop_string)

    while True:
        token = GeneratedToken.of(vocab[step]) if step < len(vocab) else GeneratedToken.eos()
        step += 1
        tokens.append(token)
        added = Generation.piece(token)
        pieces.append(added)
        length += len(added)
        at_limit = max_new_tokens is not None and len(tokens) >= max_new_tokens
        if length_first and at_limit:
            return done("length")
        if token.special:
            return done("eos")
        if stop and added:
            tail = (tail + added)[-(window + len(added)) :]
            matched = _match_stop(tail, added, stop, stop_match, keep_stop_text)
            if matched is not None:
                stop_string, cut_in_tail = matched
                return done("stop", length - len(tail) + cut_in_tail, stop_string)
        if at_limit:
            return done("length")


def _match_stop(tail: str, added: str, stop: Sequence[str], how: str, keep: bool) -> tuple[str, int] | None:
    """The stop string found at the end of the text, and where to cut ``tail`` (an index into it)."""
    for stop_string in stop:
        if how == "suffix":
            if tail.endswith(stop_string):
                return stop_string, len(tail) if keep else len(tail) - len(stop_string)
            continue
        # Search only where the new text could have completed a match, like vLLM's detokenizer.
        index = tail.find(stop_string, max(0, len(tail) - len(added) - len(stop_string) + 1))
        if index != -1:
            return stop_string, index + len(stop_string) if keep else index
    return None


def huge_vocab(nbytes: int, token_size: int = 1024) -> list[str]:
    """Tokens whose concatenation is exactly ``nbytes`` ASCII characters (for :meth:`Fault.huge`)."""
    full, rest = divmod(max(nbytes, 0), token_size)
    vocab = ["x" * token_size] * full
    if rest:
        vocab.append("x" * rest)
    return vocab


# --------------------------------------------------------------------------------------------------
# Request recording
# --------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the fake received it.

    ``headers`` has lower-cased names. ``json`` is the parsed body, or ``None`` when the body is empty or
    not JSON (``body`` always has the raw bytes). ``resolved`` holds what the server made of the request
    after applying its defaults (e.g. TGI's effective ``do_sample`` and ``return_full_text``), and
    ``fault`` the fault that was applied to it, if any. ``endpoint`` says what the Inference Endpoint proxy
    in front of the server (``server.endpoint``) did with the request: ``None`` without a proxy, else
    ``"passed"``, ``"held"`` (held until the replica was ready, then served), ``"cold"`` (503 while
    cold), ``"hold_timeout"`` (held, then 503) or ``"paused"`` (400). A request the proxy answered never
    reached the engine: it took no fault.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    fault: Fault | None = None
    resolved: dict[str, Any] = field(default_factory=dict)
    received_at: float = field(default_factory=time.monotonic)
    endpoint: str | None = None


@dataclass(frozen=True)
class AbortedStream:
    """A streamed response whose writes failed because the client went away (see
    :attr:`FakeServer.aborted_streams`).

    ``events`` is the number of events written to the socket before the failing write (written is not
    received: the last ones may have been lost), ``at`` the ``time.monotonic()`` of the failure, ``error``
    the ``OSError`` it raised (e.g. ``BrokenPipeError``), ``request`` the recorded request.
    """

    method: str
    path: str
    events: int
    at: float
    error: str
    request: RecordedRequest


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------

FaultKind = Literal[
    "status",
    "redirect",
    "reset",
    "no_final",
    "error_event",
    "malformed",
    "cut_in_event",
    "echo_authorization",
    "delay",
    "huge",
    "close_without_response",
]
_STREAM_FAULTS = frozenset({"reset", "no_final", "error_event", "malformed", "cut_in_event", "echo_authorization"})


@dataclass(frozen=True)
class Fault:
    """Something going wrong with one response. Build them with the classmethods.

    When they act:

    * ``status``, ``redirect``, ``delay``, ``close_without_response`` and ``echo_authorization`` (unless
      ``stream``) act before the route runs (like a proxy or an overloaded server in front of the engine).
    * ``reset``, ``no_final``, ``error_event``, ``malformed``, ``cut_in_event`` act on the stream of
      Server-Sent Events, after ``after_events`` events. If the stream has fewer events, they act where it
      would have ended. On a non-streamed (JSON) response, ``reset`` sends the headers and half the body
      then closes the connection, ``malformed`` sends ``line`` as the body; ``no_final``, ``error_event``
      and ``cut_in_event`` do nothing.
    * ``huge`` replaces the generated tokens of the request with ``nbytes`` of text (1 KiB per token,
      ignoring the length limit), giving a valid but huge response.

    Which request takes a fault: see :class:`FaultQueue` and :meth:`FakeServer.faults_for`.
    """

    kind: FaultKind
    code: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    after_events: int | None = None
    error: str = ""
    error_type: str = ""
    line: bytes = b""
    seconds: float = 0.0
    nbytes: int = 0
    rst: bool = False
    clean_end: bool = False
    stream: bool = False

    @classmethod
    def status(
        cls,
        code: int,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Fault:
        """Answer with HTTP ``code`` instead of running the route. A mapping/list body is sent as JSON,
        a str as text/plain, bytes as given; ``content_type`` overrides the guess."""
        if isinstance(body, (Mapping, list)):
            raw, guessed = json_bytes(body), "application/json"
        elif isinstance(body, str):
            raw, guessed = body.encode(), "text/plain; charset=utf-8"
        else:
            raw, guessed = body or b"", "application/octet-stream"
        all_headers = dict(headers or {})
        if raw or content_type:
            all_headers.setdefault("Content-Type", content_type or guessed)
        return cls("status", code=code, body=raw, headers=tuple(all_headers.items()))

    @classmethod
    def redirect(
        cls,
        code: int = 302,
        location: str = "/",
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer ``code`` (301, 302, 303, 307 or 308) with ``Location: location`` instead of running the
        route. ``location`` is sent as given: absolute (``http://elsewhere/...``) or relative (``/info``).
        ``body`` is sent like :meth:`status` does (a mapping or list as JSON): a reply-shaped JSON body
        checks that a client never reads a 3xx body as the answer."""
        if code not in (301, 302, 303, 307, 308):
            raise ValueError(f"not a redirect status: {code}")
        answer = cls.status(code, body, headers={**(headers or {}), "Location": location})
        return replace(answer, kind="redirect")

    @classmethod
    def overloaded(cls) -> Fault:
        """TGI's answer when its queue is full: 429 ``{"error": "Model is overloaded", ...}``."""
        return cls.status(429, {"error": "Model is overloaded", "error_type": "overloaded"})

    @classmethod
    def unavailable(cls, retry_after: int | None = 1, body: str = "") -> Fault:
        """503, e.g. a scaled-to-zero Inference Endpoint, with an optional ``Retry-After``."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls.status(503, body or None, headers=headers)

    @classmethod
    def reset(cls, after_events: int = 0, *, rst: bool = False) -> Fault:
        """Write ``after_events`` events then close the connection without the chunked terminator.
        ``rst=True`` closes with a TCP reset instead of a clean FIN."""
        return cls("reset", after_events=after_events, rst=rst)

    @classmethod
    def no_final(cls, after_events: int | None = None) -> Fault:
        """End the stream properly (terminator, no error) after ``after_events`` events or just before
        the final event, whichever comes first; the final event and any ``[DONE]`` are never sent."""
        return cls("no_final", after_events=after_events)

    @classmethod
    def error_event(
        cls, after_events: int = 0, error: str = "Request failed during generation", error_type: str = "generation"
    ) -> Fault:
        """After ``after_events`` events, send one error event in the server's own error shape, then end."""
        return cls("error_event", after_events=after_events, error=error, error_type=error_type)

    @classmethod
    def malformed(cls, after_events: int = 0, line: bytes = b"data: {not json") -> Fault:
        """After ``after_events`` events, write ``line`` (plus a blank line) then carry on normally."""
        return cls("malformed", after_events=after_events, line=line)

    @classmethod
    def cut_in_event(cls, after_events: int = 0, *, clean_end: bool = False) -> Fault:
        """After ``after_events`` complete events, write the first half of the next ``data:`` line (its
        prefix and half its JSON: no newline, no blank line), as one complete HTTP chunk, then stop.

        ``clean_end=False`` closes the connection without the chunked terminator (a dead connection);
        ``clean_end=True`` ends the chunked body properly with ``0\\r\\n\\r\\n``, so the HTTP layer sees a
        complete response whose last SSE event never ended. A stream with no more than ``after_events``
        events has its final event cut (or its ``[DONE]`` line, when it has no final token event)."""
        return cls("cut_in_event", after_events=after_events, clean_end=clean_end)

    @classmethod
    def echo_authorization(
        cls,
        status: int = 401,
        *,
        stream: bool = False,
        message: str = "Invalid credentials: {authorization}",
        error_type: str = "authentication",
    ) -> Fault:
        """A careless server that puts the credentials it got into its error message.

        ``message`` with ``{authorization}`` replaced by the request's full ``Authorization`` header value
        (empty when there is none) goes into the server's own error shape (:meth:`FakeServer.error_body`:
        TGI ``{"error", "error_type"}``, OpenAI ``{"error": {"message", ...}}``, Hub ``{"error"}``).

        ``stream=False``: answer ``status`` with that body before the route runs (any method).
        ``stream=True``: let the route run; a stream answers 200 and then carries the error as its first
        event, in the stream's error shape (then ``[DONE]`` where the stream has one); a route that answers
        JSON answers ``status`` with the error body instead."""
        return cls("echo_authorization", code=status, stream=stream, error=message, error_type=error_type)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep ``seconds`` before answering (before the status line), then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def huge(cls, nbytes: int) -> Fault:
        """Answer validly with a generated text of ``nbytes`` characters."""
        return cls("huge", nbytes=nbytes)

    @classmethod
    def close_without_response(cls) -> Fault:
        """Read the request, then close the connection without a byte of response."""
        return cls("close_without_response")


class FaultQueue:
    """Thread-safe FIFO of faults.

    ``server.faults`` is taken from by each request whose method is in ``server.fault_methods`` (POSTs by
    default, GETs on :class:`~tests.fakes.hub.FakeHub`); :meth:`FakeServer.faults_for` gives one queue per
    method and path, taken from first by the requests it names.
    """

    def __init__(self) -> None:
        self._items: deque[Fault] = deque()
        self._lock = threading.Lock()

    def append(self, fault: Fault) -> None:
        with self._lock:
            self._items.append(fault)

    def extend(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._items.extend(faults)

    def pop(self) -> Fault | None:
        """The oldest fault, or ``None`` when the queue is empty."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# --------------------------------------------------------------------------------------------------
# Writing responses
# --------------------------------------------------------------------------------------------------


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the way serde_json and pydantic write it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class ResponseAborted(Exception):
    """Raised inside a route when the connection is gone (fault or client); the server just stops."""


class Exchange:
    """One request being answered: what came in, and the ways to answer it.

    A route must answer exactly once: :meth:`send` (and its JSON / text helpers) or :meth:`open_sse`.
    Body and stream faults are applied here, so routes do not need to know about them.
    """

    def __init__(self, server: FakeServer, handler: _Handler, record: RecordedRequest, json_error: str | None):
        self.server = server
        self.record = record
        self.json_error = json_error  # why ``record.json`` is None although a body was sent
        self._handler = handler
        self.responded = False
        self.sse: SSEStream | None = None  # the stream, once :meth:`open_sse` has started one
        self._closed_by_server = False

    # What came in -------------------------------------------------------------------------------
    @property
    def fault(self) -> Fault | None:
        """The fault this request took (set once the Inference Endpoint proxy, if any, let it through)."""
        return self.record.fault

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def path(self) -> str:
        return self.record.path

    @property
    def headers(self) -> dict[str, str]:
        return self.record.headers

    @property
    def json(self) -> Any:
        return self.record.json

    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer ...`` header (scheme matched case-insensitively)."""
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def echoed_message(self, fault: Fault) -> str:
        """The message of an ``echo_authorization`` fault, with this request's Authorization header in it."""
        return fault.error.replace("{authorization}", self.headers.get("authorization", ""))

    # Answering ----------------------------------------------------------------------------------
    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a complete response with a Content-Length (faults ``reset``/``malformed`` apply, and
        ``echo_authorization`` with ``stream=True`` replaces the answer with its error)."""
        fault = self.fault
        if fault is not None and fault.kind == "malformed":
            body = fault.line
        if fault is not None and fault.kind == "echo_authorization" and fault.stream:
            error = self.server.error_body(self.echoed_message(fault), fault.error_type, fault.code)
            status, body, content_type = fault.code, json_bytes(error), "application/json"
        self._start(status, content_type, headers, {"Content-Length": str(len(body))})
        if fault is not None and fault.kind == "reset":
            self._write(body[: len(body) // 2])
            self.abort(rst=fault.rst)
            raise ResponseAborted
        self._write(body)

    def send_json(self, status: int, obj: Any, *, headers: Mapping[str, str] | None = None) -> None:
        self.send(status, json_bytes(obj), content_type="application/json", headers=headers)

    def send_text(self, status: int, text: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.send(status, text.encode(), content_type="text/plain; charset=utf-8", headers=headers)

    def open_sse(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        error_event: Callable[[str, str], Any] | None = None,
        done_marker: bool | None = None,
    ) -> SSEStream:
        """Start a 200 ``text/event-stream`` response with chunked transfer encoding.

        ``error_event(error, error_type)`` builds the payload of an injected ``error_event`` fault in this
        server's shape; ``done_marker`` (default: the server's option) ends the stream with ``[DONE]``.
        """
        base = {"Cache-Control": "no-cache", "Transfer-Encoding": "chunked"}
        marker = self.server.done_marker if done_marker is None else done_marker
        self.sse = SSEStream(self, error_event=error_event, done_marker=marker)
        self._start(200, "text/event-stream", headers, base)
        return self.sse

    def abort(self, *, rst: bool = False) -> None:
        """Close the connection now, mid-response if need be: FIN by default, TCP reset with ``rst``."""
        handler = self._handler
        handler.close_connection = True
        self._closed_by_server = True
        sock = handler.connection
        with contextlib.suppress(OSError):
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            else:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # TCP level, also under TLS (no close_notify)

    # Low level ----------------------------------------------------------------------------------
    def _start(
        self,
        status: int,
        content_type: str | None,
        headers: Mapping[str, str] | None,
        framing: Mapping[str, str],
    ) -> None:
        if self.responded:
            raise RuntimeError("this request was already answered")
        self.responded = True
        handler = self._handler
        handler.send_response(status)
        if content_type:
            handler.send_header("Content-Type", content_type)
        for name, value in {**(headers or {}), **framing}.items():
            handler.send_header(name, value)
        if handler.close_connection:
            handler.send_header("Connection", "close")
        try:
            handler.end_headers()
        except OSError as exc:
            self._write_failed(exc)
            raise ResponseAborted from exc

    def _write(self, data: bytes) -> None:
        try:
            self._handler.wfile.write(data)
        except OSError as exc:  # the client went away, or a fault closed the socket
            self._write_failed(exc)
            raise ResponseAborted from exc

    def _write_failed(self, exc: OSError) -> None:
        self._handler.close_connection = True
        if self.sse is not None and not self._closed_by_server and not self.server.stopping:
            record = self.record
            aborted = AbortedStream(record.method, record.path, self.sse.events, time.monotonic(), repr(exc), record)
            self.server._record_aborted(aborted)


class SSEStream:
    """Server-Sent Events over a chunked response, one HTTP chunk per event, with faults applied.

    The server options shape the framing: ``sse_space`` writes ``data: {...}`` (TGI >= 2.1, vLLM) rather
    than ``data:{...}`` (older TGI); ``keepalive`` writes an SSE comment line (``:`` plus
    ``keepalive_comment``) between events; ``token_delay`` sleeps before each token event.
    """

    def __init__(self, exchange: Exchange, *, error_event: Callable[[str, str], Any] | None, done_marker: bool):
        self._ex = exchange
        self._server = exchange.server
        self._error_event = error_event
        self._done_marker = done_marker
        self.events = 0  # events written so far, injected ones excluded
        self.ended = False
        self._malformed_written = False

    def event(self, payload: Any, *, final: bool = False, token: bool = True) -> bool:
        """Write one ``data:`` event (a JSON value, or a str written as is).

        ``final`` marks the last event of a complete stream (for ``no_final`` and ``cut_in_event``);
        ``token`` says the event carries a generated token (``token_delay`` applies). Returns False once
        the stream has been ended or cut, so a route can stop producing events.
        """
        if self.ended:
            return False
        if self._apply_fault(final=final):
            return False
        if token and self._server.token_delay and not self._server.sleep(self._server.token_delay):
            self._ex.abort()
            raise ResponseAborted
        if self.events and self._server.keepalive:
            self._chunk(b":" + self._server.keepalive_comment.encode() + b"\n\n")
        data = payload if isinstance(payload, str) else json_bytes(payload).decode()
        fault = self._ex.fault
        if fault is not None and fault.kind == "cut_in_event" and (self.events >= (fault.after_events or 0) or final):
            self._cut(data)
            return False
        self._chunk(self._data_line(data))
        self.events += 1
        return True

    def close(self) -> None:
        """End the stream: pending faults first, then ``[DONE]`` when configured, then the terminator."""
        if self.ended:
            return
        if self._apply_fault(final=True, at_end=True):
            return
        if self._done_marker:
            self._chunk(self._data_line("[DONE]"))
        self._finish()

    # Internals ----------------------------------------------------------------------------------
    def _apply_fault(self, *, final: bool, at_end: bool = False) -> bool:
        """Apply the exchange's stream fault if its time has come; True when the stream is over."""
        fault = self._ex.fault
        if fault is None or fault.kind not in _STREAM_FAULTS:
            return False
        if fault.kind == "cut_in_event":  # cut in event() when due; here only if the stream ends first
            if at_end:
                self._cut("[DONE]" if self._done_marker else None)
                return True
            return False
        if fault.kind == "echo_authorization":
            if not fault.stream:
                return False
            self._end_with_error(self._ex.echoed_message(fault), fault.error_type)
            return True
        due = fault.after_events is not None and self.events >= fault.after_events
        if fault.kind == "no_final":
            if due or final:
                self._finish()
                return True
            return False
        if not (due or at_end):
            return False
        if fault.kind == "malformed":
            if not self._malformed_written:
                self._malformed_written = True
                self._chunk(fault.line + b"\n\n")
            return False
        if fault.kind == "reset":
            self.ended = True
            self._ex.abort(rst=fault.rst)
            raise ResponseAborted
        self._end_with_error(fault.error, fault.error_type)  # error_event
        return True

    def _end_with_error(self, error: str, error_type: str) -> None:
        payload = (self._error_event or _default_error_event)(error, error_type)
        self._chunk(self._data_line(json_bytes(payload).decode()))
        if self._done_marker:
            self._chunk(self._data_line("[DONE]"))
        self._finish()

    def _cut(self, data: str | None) -> None:
        """The ``cut_in_event`` fault: half of the event whose payload is ``data``, then the end."""
        fault = self._ex.fault
        assert fault is not None
        self.ended = True
        if data is not None:
            prefix = "data: " if self._server.sse_space else "data:"
            self._chunk((prefix + data[: max(len(data) // 2, 1)]).encode())
        if fault.clean_end:
            self._ex._write(b"0\r\n\r\n")
            return
        self._ex.abort()
        raise ResponseAborted

    def _data_line(self, data: str) -> bytes:
        prefix = "data: " if self._server.sse_space else "data:"
        return f"{prefix}{data}\n\n".encode()

    def _chunk(self, data: bytes) -> None:
        self._ex._write(b"%X\r\n%s\r\n" % (len(data), data))

    def _finish(self) -> None:
        self.ended = True
        self._ex._write(b"0\r\n\r\n")


def _default_error_event(error: str, error_type: str) -> dict[str, str]:
    return {"error": error, "error_type": error_type}


# --------------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Reads one request at a time (keep-alive) and hands it to the fake server."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            # The handshake runs here, in the connection's own thread, not in the accept loop.
            try:
                self.connection.do_handshake()
            except (OSError, ValueError) as exc:  # e.g. the client refused the certificate
                self.server.fake._record_tls_error(exc)
                self.close_connection = True
                return
        super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def send_response(self, code: int, message: str | None = None) -> None:
        # BaseHTTPRequestHandler.send_response minus the `Server:` header, which TGI does not send.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _serve(self) -> None:
        try:
            self.server.fake._serve(self)
        except ResponseAborted:
            self.close_connection = True
        except OSError:  # the peer vanished
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def read_body(self, limit: int | None) -> bytes | None:
        """The request body (Content-Length or chunked), or None when it exceeds ``limit`` bytes.

        An oversized body is still read to its end (and dropped): answering before the client has sent
        it all would make the kernel reset the connection, and the client could miss the 413.
        """
        parts: list[bytes] = []
        size = 0
        for piece in self._body_pieces():
            size += len(piece)
            if limit is None or size <= limit:
                parts.append(piece)
        return b"".join(parts) if limit is None or size <= limit else None

    def _body_pieces(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                length = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield self.rfile.read(length)
                self.rfile.readline(65537)
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = self.rfile.read(min(remaining, 1 << 16))
            if not piece:
                return
            remaining -= len(piece)
            yield piece


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: tests open hundreds of connections at once
    # stop() closes every connection itself, then joins the handler threads for a bounded time
    # (join_handlers); a handler stuck past that is a daemon and cannot hold the process.
    block_on_close = False

    def __init__(self, fake: FakeServer, tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", fake.fixed_port or 0), _Handler)
        self.fake = fake
        if tls_context is not None:
            # Accepted sockets are wrapped without a handshake, which each handler does (_Handler.handle).
            self.socket = tls_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._handlers: list[threading.Thread] = []
        self.accepted = 0  # every connection since the start

    def process_request(self, request: Any, client_address: Any) -> None:
        """ThreadingMixIn's, keeping the threads (the live ones) for :meth:`join_handlers`."""
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name=f"{self.fake.name}-conn"
        )
        thread.daemon = True
        with self._connections_lock:
            self._handlers = [t for t in self._handlers if t.is_alive()]
            self._handlers.append(thread)
        thread.start()

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)
            self.accepted += 1
        self.fake._notify()
        if self.fake._stopping.is_set():  # accepted while stop() was closing the others
            self.close_connections()

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)
        self.fake._notify()

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)  # TCP level: also right for TLS sockets
            with contextlib.suppress(OSError):
                conn.close()
        self.fake._notify()

    def join_handlers(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the handler threads (their sockets are closed)."""
        deadline = time.monotonic() + timeout
        with self._connections_lock:
            threads = list(self._handlers)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or (isinstance(error, ValueError) and self.fake._stopping.is_set()):
            return  # connections cut by faults, clients or stop() are expected here
        super().handle_error(request, client_address)


Route = tuple[str, "re.Pattern[str]", Callable[..., None]]


class ServedInThread:
    """Starting and stopping a threaded server on 127.0.0.1 in a daemon thread (the fakes, the forward proxy).

    Subclasses make the server in :meth:`_new_server`; it must offer ``close_connections()`` and
    ``join_handlers(timeout)`` besides socketserver's ``serve_forever`` / ``shutdown`` / ``server_close``.
    """

    _server: Any = None
    _thread: threading.Thread | None = None

    def __init__(self) -> None:
        self._stopping = threading.Event()  # set while stopping: wakes handlers that sleep

    def _new_server(self) -> Any:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = self._new_server()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open connection (idempotent), and wait for the
        connection threads (2 s at most)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        server.join_handlers(timeout=2)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._server.server_address[1])


class FakeServer(ServedInThread):
    """Base class of the fakes: lifecycle, recording, faults, routing.

    Usable as a context manager or with :meth:`start` / :meth:`stop`. Subclasses declare routes with
    :meth:`route` in ``__init__`` and may override :meth:`not_found` / :meth:`method_not_allowed`.

    Options common to all fakes:

    * ``tokens``: the text the model generates, one string per token (mutable later via ``.tokens``);
    * ``sse_space`` (``data: `` vs ``data:``), ``keepalive`` / ``keepalive_comment`` (SSE comment lines
      between events), ``token_delay`` (seconds before each generated token, streamed or not),
      ``done_marker`` (end streams with ``data: [DONE]``);
    * ``tls``: serve https instead of http: an ``ssl.SSLContext`` (server side), a
      :class:`~tests.fakes.tls.ServerCertificate` from :func:`~tests.fakes.tls.issue_cert`, or a
      ``(cert_file, key_file)`` pair. ``url`` then starts with ``https://``; failed handshakes are in
      ``tls_errors``.

    Attributes, all off by default: ``faults`` and :meth:`faults_for` (faults), ``endpoint`` (an
    :class:`~tests.fakes.endpoint.EndpointProxy` in front of every route). What the server saw of the
    client: ``requests``, ``open_connections`` / :meth:`wait_open_connections`, ``aborted_streams`` /
    :meth:`wait_aborted`.
    """

    fault_methods: frozenset[str] = frozenset({"POST"})
    max_body_bytes: int | None = None

    def __init__(
        self,
        tokens: Iterable[str] | None = None,
        *,
        sse_space: bool = True,
        keepalive: bool = False,
        keepalive_comment: str = "",
        token_delay: float = 0.0,
        done_marker: bool = False,
        tls: TLSConfig | None = None,
    ) -> None:
        self.tokens: list[str] = list(DEFAULT_TOKENS if tokens is None else tokens)
        self.sse_space = sse_space
        self.keepalive = keepalive
        self.keepalive_comment = keepalive_comment
        self.token_delay = token_delay
        self.done_marker = done_marker
        self.faults = FaultQueue()
        self.tls = tls
        #: An Inference Endpoint proxy in front of every route (``EndpointProxy``), or None.
        self.endpoint: Any = None
        #: A busy engine: generation requests beyond this many at once are refused with ``busy_fault``
        #: (TGI's 429 ``overloaded`` unless set), as a continuous-batching engine past its queue limit.
        self.max_concurrent: int | None = None
        self.busy_fault: Fault | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.refused = 0
        self.tls_errors: list[str] = []  # handshakes that failed (e.g. the client refused the certificate)
        self._route_faults: dict[tuple[str, str], FaultQueue] = {}
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._aborted: list[AbortedStream] = []
        self._observed = threading.Condition()  # notified on connection and aborted-stream changes
        self._routes: list[Route] = []
        super().__init__()

    #: The port to listen on when (re)started; None: any free port.
    fixed_port: int | None = None

    # Lifecycle (start, stop, context manager, port: ServedInThread) ------------------------------
    def restart(self) -> None:
        """Starts again on the same port after `stop()` (a replica that died and came back)."""
        if self._server is None and self.fixed_port is None:
            raise RuntimeError("restart() needs the server to have run once; call it after stop()")
        self.start()

    def stop(self) -> None:
        if self._server is not None:
            self.fixed_port = self.port  # a restart comes back at the same address
        super().stop()

    @property
    def port(self) -> int:
        if self._server is None and self.fixed_port is not None:
            return self.fixed_port  # stopped: the address it had (and comes back at)
        return super().port

    def _new_server(self) -> _HTTPServer:
        return _HTTPServer(self, None if self.tls is None else server_context(self.tls))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with ``tls``; no trailing slash)."""
        return self.url_for("127.0.0.1")

    def url_for(self, host: str) -> str:
        """The server's URL under another host name, e.g. ``url_for("tgi.test")`` for a client that goes
        through a :class:`~tests.fakes.proxy.ForwardProxy` (which sends every name to 127.0.0.1)."""
        return f"{'https' if self.tls is not None else 'http'}://{host}:{self.port}"

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; False when the sleep was cut short by stop()."""
        return not self._stopping.wait(seconds)

    # Recording ----------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    # The client, seen from the server ---------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """How many client connections are open to the server right now.

        A connection counts from the moment its handler thread starts (just after the accept, so a few
        milliseconds after the client's connect() returned) until the server has seen it close: use
        :meth:`wait_open_connections` rather than reading this right after opening or closing one.
        """
        httpd = self._server
        return httpd.open_connections if httpd is not None else 0

    @property
    def connections_accepted(self) -> int:
        """How many client connections the server accepted since it started (probes' included)."""
        httpd = self._server
        return httpd.accepted if httpd is not None else 0

    def wait_open_connections(self, count: int, timeout: float = 2.0) -> bool:
        """Wait until exactly ``count`` connections are open; False if that did not happen in time."""
        with self._observed:
            return self._observed.wait_for(lambda: self.open_connections == count, timeout)

    @property
    def aborted_streams(self) -> list[AbortedStream]:
        """Streams whose writes failed because the client went away (not those cut by a fault or by
        stop()), oldest first. The server only finds out when it next writes: with ``token_delay``, within
        about two token delays of the client closing (the first write after the close may still
        succeed)."""
        with self._observed:
            return list(self._aborted)

    def wait_aborted(self, timeout: float = 5.0, count: int = 1) -> AbortedStream | None:
        """Wait until ``count`` streams have been aborted by their client; the ``count``-th, or None."""
        with self._observed:
            if not self._observed.wait_for(lambda: len(self._aborted) >= count, timeout):
                return None
            return self._aborted[count - 1]

    def _record_aborted(self, aborted: AbortedStream) -> None:
        with self._observed:
            self._aborted.append(aborted)
            self._observed.notify_all()

    def _record_tls_error(self, error: BaseException) -> None:
        with self._observed:
            self.tls_errors.append(repr(error))

    def _notify(self) -> None:
        with self._observed:
            self._observed.notify_all()

    # Faults -------------------------------------------------------------------------------------
    def faults_for(self, method: str, path: str) -> FaultQueue:
        """The fault queue of one method and path (exact path, query string excluded), created on first use.

        A request takes its fault from this queue first; when it is empty, from ``faults`` as before (if
        the method is in ``fault_methods``). Any method can have one, so ``faults_for("GET", "/info")``
        makes a failing or slow ``/info`` without touching the generation routes::

            tgi.faults_for("GET", "/info").append(Fault.status(503, "down", headers={"Retry-After": "1"}))
        """
        key = (method.upper(), path)
        with self._requests_lock:
            return self._route_faults.setdefault(key, FaultQueue())

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._requests_lock:
            queue = self._route_faults.get((method, path))
        fault = queue.pop() if queue is not None else None
        if fault is None and method in self.fault_methods:
            fault = self.faults.pop()
        return fault

    def error_body(self, message: str, error_type: str, status: int) -> Any:
        """This server's error shape, for faults that build an error (TGI's; other fakes override)."""
        return {"error": message, "error_type": error_type}

    # Routing ------------------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Callable[..., None]) -> None:
        """Register ``handler(exchange, **groups)`` for ``method`` and a full-match path regex."""
        self._routes.append((method, re.compile(pattern), handler))

    def not_found(self, ex: Exchange) -> None:
        ex.send(404)

    def method_not_allowed(self, ex: Exchange) -> None:
        ex.send(405)

    def payload_too_large(self, ex: Exchange) -> None:
        ex.send_text(413, "Failed to buffer the request body: length limit exceeded")

    def _dispatch(self, ex: Exchange) -> None:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(ex.path)
            if match is None:
                continue
            if method != ex.method:
                allowed = True
                continue
            handler(ex, **match.groupdict())
            return
        (self.method_not_allowed if allowed else self.not_found)(ex)

    # One request --------------------------------------------------------------------------------
    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = handler.read_body(self.max_body_bytes)
        record = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body or b"",
        )
        json_error = None
        if body:
            try:
                record.json = json.loads(body)
            except ValueError as exc:
                json_error = str(exc)
        with self._requests_lock:
            self._requests.append(record)
        ex = Exchange(self, handler, record, json_error)
        endpoint = self.endpoint
        if endpoint is not None and not endpoint.admit(ex):
            return  # the proxy in front answered (or the server is stopping)
        if body is None:  # over the size limit
            self.payload_too_large(ex)
            return
        if record.method == "POST":  # generations in flight are counted; past `max_concurrent`, refused
            with self._requests_lock:
                busy = self.max_concurrent is not None and self.in_flight >= self.max_concurrent
                if busy:
                    self.refused += 1
                else:
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if busy:
                fault = self.busy_fault or Fault.overloaded()
                ex.send(fault.code, fault.body, headers=dict(fault.headers))
                return
            try:
                self._answer(ex, record)
            finally:
                with self._requests_lock:
                    self.in_flight -= 1
            return
        self._answer(ex, record)

    def _answer(self, ex: Exchange, record: RecordedRequest) -> None:
        record.fault = fault = self._take_fault(record.method, record.path)
        if fault is not None and fault.kind == "delay" and not self.sleep(fault.seconds):
            ex.abort()
            return
        if fault is not None and fault.kind == "close_without_response":
            ex.abort()
            return
        if fault is not None and fault.kind in ("status", "redirect"):
            ex.send(fault.code, fault.body, headers=dict(fault.headers))
            return
        if fault is not None and fault.kind == "echo_authorization" and not fault.stream:
            ex.send_json(fault.code, self.error_body(ex.echoed_message(fault), fault.error_type, fault.code))
            return
        self._dispatch(ex)
        if not ex.responded:
            raise RuntimeError(f"{type(self).__name__}: no response for {ex.method} {ex.path}")

    # Helpers for subclasses ---------------------------------------------------------------------
    def vocab_for(self, ex: Exchange) -> list[str]:
        """The tokens to generate for this request (honours the ``huge`` fault)."""
        fault = ex.fault
        if fault is not None and fault.kind == "huge":
            return huge_vocab(fault.nbytes)
        return list(self.tokens)

    def limit_for(self, ex: Exchange, max_new_tokens: int | None) -> int | None:
        """The length limit to generate with: none at all under the ``huge`` fault."""
        fault = ex.fault
        return None if fault is not None and fault.kind == "huge" else max_new_tokens

    def compute_pause(self, generation: Generation) -> None:
        """Non-streamed answers take as long as their tokens would have taken to stream."""
        if self.token_delay and not self.sleep(self.token_delay * len(generation.tokens)):
            raise ResponseAborted


def stream_deltas(generation: Generation, hold: int) -> Iterator[str]:
    """The text each token adds to a stream, holding back ``hold`` trailing characters until the last
    token (vLLM does this when stop strings are set, so that a stop string never leaks). The deltas add
    up to ``generation.text``."""
    text = generation.text
    sent = produced = 0
    last = len(generation.tokens) - 1
    for i, token in enumerate(generation.tokens):
        produced += len(Generation.piece(token))
        end = len(text) if i == last else min(max(produced - hold, sent), len(text))
        yield text[sent:end]
        sent = end
