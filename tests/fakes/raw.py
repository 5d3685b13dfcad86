"""A TCP server that answers each HTTP request with exact bytes: for the faults an HTTP server library never makes.

Garbage status lines, heads cut mid-line, header lines that do not parse, broken chunked framing, a whole
stream in one write: what a proxy, a crashed engine or a buggy gateway may send. Each connection serves one
request and is then closed (or reset), so the connections it saw are the requests it answered.

    with ScriptedServer([Reply(b"HELLO WORLD\\r\\n\\r\\n")], then=tgi_json("Hello")) as server:
        ...  # point a generator at server.url; server.connections counts the requests it answered
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._common import ServedInThread

_TGI_INFO = {
    "model_id": "scripted/tgi",
    "max_input_tokens": 4095,
    "max_total_tokens": 4096,
    "max_stop_sequences": 4,
    "max_best_of": 2,
    "max_concurrent_requests": 128,
    "router": "text-generation-router",
    "version": "3.3.6-dev0",
}

_MODELS = {"object": "list", "data": [{"id": "scripted/model", "object": "model", "owned_by": "scripted"}]}


@dataclass(frozen=True)
class Reply:
    """
    Bytes to answer one request with, then how the connection ends: `close` (FIN) or `reset` (RST). `later`
    is written 50 ms after `data`, so that it reaches the client in a read of its own.
    """

    data: bytes
    end: str = "close"
    later: bytes = b""


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers.items()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def tgi_json(text: str, tokens: int = 3) -> Reply:
    """TGI's `/generate` answer."""
    body = json.dumps({"generated_text": text, "details": {"finish_reason": "eos_token", "generated_tokens": tokens}})
    head = _head("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(body))})
    return Reply(head + body.encode())


def tgi_events(tokens: Sequence[str]) -> list[bytes]:
    """TGI's `/generate_stream` events for `tokens`, the last one final."""
    events = []
    for position, text in enumerate(tokens, start=1):
        final = position == len(tokens)
        payload: dict[str, Any] = {
            "index": position,
            "token": {"id": position, "text": text, "logprob": -0.5, "special": False},
            "generated_text": "".join(tokens) if final else None,
            "details": {"finish_reason": "eos_token", "generated_tokens": len(tokens), "input_length": 2}
            if final
            else None,
        }
        events.append(f"data: {json.dumps(payload)}\n\n".encode())
    return events


def chunked(parts: Iterable[bytes], *, terminator: bool = True) -> bytes:
    """`parts` as HTTP/1.1 chunks, one per part, and the terminating chunk."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return body + (b"0\r\n\r\n" if terminator else b"")


def sse_head() -> bytes:
    return _head("200 OK", {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})


def chat_stream(tokens: Sequence[str], model: str = "scripted/model") -> Reply:
    """A whole OpenAI-compatible chat stream (role, one event per token, finish, usage, `[DONE]`) in one piece."""
    payloads: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    payloads += [{"choices": [{"index": 0, "delta": {"content": text}}]} for text in tokens]
    payloads.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    payloads.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(tokens)}})
    events = [
        f"data: {json.dumps({'model': model, 'object': 'chat.completion.chunk', **p})}\n\n".encode() for p in payloads
    ]
    return Reply(sse_head() + chunked([*events, b"data: [DONE]\n\n"]))


def tgi_stream(tokens: Sequence[str]) -> Reply:
    """A whole TGI stream, written in one piece: every event arrives in the same read."""
    return Reply(sse_head() + chunked(tgi_events(tokens)))


class ScriptedServer(ServedInThread):
    """
    Answers `GET /info` like TGI and `GET /v1/models` like an OpenAI-compatible server; every other request with the next of `replies`, and once they are used up
    with `then` (a good answer, or a fault forever).
    """

    def __init__(self, replies: Sequence[Reply] = (), then: Reply | None = None) -> None:
        super().__init__()
        self._replies: deque[Reply] = deque(replies)
        self._then = then
        self._lock = threading.Lock()
        self.connections = 0  # connections that carried a generation request (not a GET probe)
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _new_server(self) -> Any:
        return _Listener(self)

    def _next_reply(self, method: str, path: str) -> Reply | None:
        with self._lock:
            self.requests.append((method, path))
            if method == "GET" and path == "/info":
                body = json.dumps(_TGI_INFO).encode()
                return Reply(
                    _head("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body
                )
            self.connections += 1
            return self._replies.popleft() if self._replies else self._then

    def serve(self, conn: socket.socket) -> None:
        request = _read_request(conn)
        if request is None:
            return
        reply = self._next_reply(*request)
        if reply is None:
            return
        with contextlib.suppress(OSError):
            if reply.data:
                conn.sendall(reply.data)
            if reply.later:
                time.sleep(0.05)
                conn.sendall(reply.later)
            if reply.end == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _read_request(conn: socket.socket) -> tuple[str, str] | None:
    """Reads one request (head and Content-Length body); returns its method and path."""
    data = b""
    while b"\r\n\r\n" not in data:
        block = conn.recv(65536)
        if not block:
            return None
        data += block
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        block = conn.recv(65536)
        if not block:
            break
        body += block
    return method, path


class _Listener:
    """The socket server behind `ScriptedServer`: one thread per connection, closed after one request."""

    def __init__(self, owner: ScriptedServer) -> None:
        self.server_address = ("127.0.0.1", 0)
        self._owner = owner
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.server_address = self._socket.getsockname()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def serve_forever(self, poll_interval: float = 0.01) -> None:
        self._socket.settimeout(poll_interval)
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            with self._lock:
                self._open.add(conn)
                self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            self._owner.serve(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def shutdown(self) -> None:
        self._stop.set()

    def server_close(self) -> None:
        self._socket.close()

    def close_connections(self) -> None:
        with self._lock:
            open_connections = list(self._open)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
