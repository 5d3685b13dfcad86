"""
A fast fake inference server for the client benchmarks: TGI's native routes and the OpenAI-compatible
completions routes (as vLLM writes them), over HTTP/1.1 keep-alive, from one asyncio protocol.

Why it is built like this: the benchmarks measure *client* CPU, so the server must cost as little as
possible and must never be the bottleneck. It runs in its own process, pinned to another core than the
clients, parses only the request line, the headers it needs and the body length, and caches every
answer by (method, path, body): a client repeating one request gets the same bytes from a dict lookup.

The answers follow the real servers' shapes (see /work/shared/reference/PROTOCOLS.md and
tgi_openapi.json): `/generate` with `details`, one SSE event per token on `/generate_stream` (each in
its own chunk of a chunked body, as axum and uvicorn write them), TGI's compat route `/` (a JSON array
of one object, or SSE when `stream` is true, and the prompt prepended when `return_full_text` is
missing), `/v1/models`, and `/v1/completions` with vLLM's fields, the usage chunk and `data: [DONE]`.

Streams go out either at once (burst) or paced, one event per `interval` seconds (a timer per event, the
server idle in between; `call_later`'s resolution makes 1 ms the shortest useful interval, ~1.1 ms in
practice). Paced is how real servers deliver tokens, a few ms apart, so every client reads each event on
its own and pays one wake-up per token; a burst lets a client take many events per read (and, if it
does so, hand them out as one chunk).

Run: python benchmarks/fake_server.py [--port 0] [--cpu 1] [--interval 0.001]  (prints "READY <port>"
when listening). On stdin it takes `interval S` (answered `OK`) and stops at the end of its input.
Only the standard library is needed; uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import stat
import sys

MODEL_ID = "bench/fake-model-1b"
CREATED = 1_732_550_000
# A small vocabulary with a few multi-byte words, so clients really decode UTF-8.
_WORDS = (
    " the", " model", " answers", " with", " a", " short", " and", " quite", " plain", " sentence",
    " about", " café", " naïve", " data", ",", ".", " it", " is", " fast", " enough",
)  # fmt: skip
MAX_TOKENS = 100_000
_CACHE_LIMIT = 4096

INFO = {
    "model_id": MODEL_ID,
    "model_sha": "0123456789abcdef0123456789abcdef01234567",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 1024,  # what this fake serves at once (256 in flight): clients may trust it
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 4095,
    "max_total_tokens": 4096,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": "3.3.4",
    "sha": "fakefakefakefakefakefakefakefakefakefake",
    "docker_label": None,
}
MODELS = {
    "object": "list",
    "data": [
        {
            "id": MODEL_ID,
            "object": "model",
            "created": CREATED,
            "owned_by": "vllm",
            "root": MODEL_ID,
            "parent": None,
            "max_model_len": 4096,
            "permission": [],
        }
    ],
}


def token(i: int) -> dict[str, object]:
    """The i-th generated token, as TGI's `Token` schema."""
    logprob = -round(0.05 + (i * 37 % 100) / 97, 4)
    return {"id": 1000 + i % len(_WORDS), "text": _WORDS[i % len(_WORDS)], "logprob": logprob, "special": False}


def generated_text(n: int) -> str:
    """What a client must reply for n tokens."""
    return "".join(_WORDS[i % len(_WORDS)] for i in range(n))


def _dumps(value: object) -> bytes:
    # serde_json / orjson style: compact, UTF-8 written as is.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(payload: object, extra: list[tuple[str, str]] | None = None, status: str = "200 OK") -> bytes:
    body = _dumps(payload)
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), *(extra or [])]
    return _head(status, headers) + body


def _sse_response(
    events: list[bytes], extra: list[tuple[str, str]], content_type: str = "text/event-stream"
) -> list[bytes]:
    """
    A chunked SSE body with one chunk per event, as real servers flush one event per token; as a list of
    the pieces to send one at a time when pacing: the head with the first event, then one event each (the
    last one with the end of the body).
    """
    headers = [("content-type", content_type), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
    parts = []
    for event in events:
        data = b"data: " + event + b"\n\n"
        parts.append(b"%x\r\n%s\r\n" % (len(data), data))
    parts[0] = _head("200 OK", headers + extra) + parts[0]
    parts[-1] += b"0\r\n\r\n"
    return parts


def _prompt_tokens(prompt: object) -> int:
    return max(1, len(prompt.split())) if isinstance(prompt, str) else 1


def _tgi_headers(prompt_tokens: int, n: int) -> list[tuple[str, str]]:
    # The timing headers TGI sets on /generate; clients parse them like any header.
    return [
        ("x-compute-type", "1-nvidia-a10g"),
        ("x-compute-time", "0.5"),
        ("x-compute-characters", str(prompt_tokens * 5)),
        ("x-total-time", "500"),
        ("x-validation-time", "1"),
        ("x-queue-time", "1"),
        ("x-inference-time", "498"),
        ("x-time-per-token", str(498 // max(n, 1))),
        ("x-prompt-tokens", str(prompt_tokens)),
        ("x-generated-tokens", str(n)),
        ("vary", "origin, access-control-request-method, access-control-request-headers"),
        ("access-control-allow-origin", "*"),
    ]


def _tgi(request: dict, path: str) -> bytes | list[bytes]:
    params = request.get("parameters") or {}
    n = min(int(params.get("max_new_tokens") or 100), MAX_TOKENS)
    prompt = request.get("inputs", "")
    prompt_tokens = _prompt_tokens(prompt)
    text = generated_text(n)
    compat = path == "/"
    # TGI's compat route prepends the prompt when return_full_text is left out (text-generation models).
    if params.get("return_full_text") or (compat and params.get("return_full_text") is None):
        text = prompt + text
    details = bool(params.get("details"))
    stream = path == "/generate_stream" or (compat and bool(request.get("stream")))
    if not stream:
        answer: dict[str, object] = {"generated_text": text}
        if details:
            answer["details"] = {
                "finish_reason": "length",
                "generated_tokens": n,
                "seed": None,
                "prefill": [],
                "tokens": [token(i) for i in range(n)],
            }
        return _json_response([answer] if compat else answer, _tgi_headers(prompt_tokens, n))
    events = []
    for i in range(n):
        event: dict[str, object] = {"index": i + 1, "token": token(i), "generated_text": None, "details": None}
        if i == n - 1:
            event["generated_text"] = text
            if details:
                event["details"] = {
                    "finish_reason": "length",
                    "generated_tokens": n,
                    "seed": None,
                    "input_length": prompt_tokens,
                }
        events.append(_dumps(event))
    return _sse_response(events, [("x-compute-type", "1-nvidia-a10g"), ("x-accel-buffering", "no")])


def _completions(request: dict) -> bytes | list[bytes]:
    n = min(int(request.get("max_tokens") or 16), MAX_TOKENS)
    prompt_tokens = _prompt_tokens(request.get("prompt"))
    model = request.get("model") or MODEL_ID
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n, "completion_tokens": n}
    common = {"id": "cmpl-0f1e2d3c4b5a69788796a5b4c3d2e1f0", "object": "text_completion", "created": CREATED}
    uvicorn = [("date", "Mon, 25 Nov 2024 16:00:00 GMT"), ("server", "uvicorn")]
    if not request.get("stream"):
        answer = {
            **common,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": generated_text(n),
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
            ],
            "usage": {**usage, "prompt_tokens_details": None},
            "service_tier": None,
            "system_fingerprint": None,
            "kv_transfer_params": None,
        }
        return _json_response(answer, uvicorn)
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    events = []
    for i in range(n):
        choice = {
            "index": 0,
            "text": _WORDS[i % len(_WORDS)],
            "logprobs": None,
            "finish_reason": "length" if i == n - 1 else None,
            "stop_reason": None,
        }
        chunk: dict[str, object] = {**common, "model": model, "choices": [choice]}
        if include_usage:
            chunk["usage"] = None  # vLLM writes the key in every chunk once usage is asked for
        events.append(_dumps(chunk))
    if include_usage:
        events.append(_dumps({**common, "model": model, "choices": [], "usage": usage}))
    events.append(b"[DONE]")
    return _sse_response(events, uvicorn, content_type="text/event-stream; charset=utf-8")


def respond(method: str, target: str, body: bytes) -> bytes | list[bytes]:
    """The full HTTP response for one request (a stream: as its pieces, see `_sse_response`)."""
    path = target.split("?", 1)[0]
    if method == "GET":
        if path == "/info":
            return _json_response(INFO)
        if path == "/health":
            return _json_response({})
        if path == "/v1/models":
            return _json_response(MODELS)
        return _json_response({"error": "Not Found", "error_type": "not_found"}, status="404 Not Found")
    if method != "POST":
        return _json_response({"error": "Method Not Allowed"}, status="405 Method Not Allowed")
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        return _head("400 Bad Request", [("content-length", "0")])
    if path in ("/", "/generate", "/generate_stream"):
        return _tgi(request, path)
    if path == "/v1/completions":
        return _completions(request)
    return _json_response({"error": "Not Found", "error_type": "not_found"}, status="404 Not Found")


#: Seconds between two events of a stream; 0 sends each answer at once. Set by the orchestrator through stdin
#: (`interval S`): paced streams deliver one event per read, as real servers do (a token every few ms), so a
#: client cannot merge many events into one chunk only because the whole stream arrived at once.
PACING = {"interval": 0.0}

# request bytes -> (the whole answer, its pieces)
_cache: dict[tuple[str, str, bytes], tuple[bytes, list[bytes]]] = {}


def _answer(method: str, target: str, body: bytes) -> tuple[bytes, list[bytes]]:
    key = (method, target, body)
    found = _cache.get(key)
    if found is None:
        if len(_cache) > _CACHE_LIMIT:
            _cache.clear()
        response = respond(method, target, body)
        parts = response if isinstance(response, list) else [response]
        found = _cache[key] = (b"".join(parts), parts)
    return found


class HTTPServerProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; request bodies by Content-Length (what every benchmarked client sends)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()
        self.pending: collections.deque[bytes] = collections.deque()  # pieces of paced answers still to send
        self.timer: asyncio.TimerHandle | None = None
        self.close_after = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
                elif name == "transfer-encoding":
                    self.transport.write(_head("411 Length Required", [("content-length", "0")]))
                    self.transport.close()
                    return
            if len(self.buffer) < end + 4 + length:
                return  # wait for the rest of the body
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            whole, parts = _answer(method, target, body)
            if self.pending or (len(parts) > 1 and PACING["interval"] > 0):
                self.pending.extend(parts)  # behind (or as) a paced answer, in order
                self.close_after = close
                if self.timer is None:
                    self._send_next()
                return
            self.transport.write(whole)
            if close:
                self.transport.close()
                return

    def _send_next(self) -> None:
        self.timer = None
        if self.transport.is_closing():
            self.pending.clear()
            return
        self.transport.write(self.pending.popleft())
        if self.pending:
            self.timer = asyncio.get_running_loop().call_later(PACING["interval"], self._send_next)
        elif self.close_after:
            self.transport.close()


def _control(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Commands from the orchestrator on stdin: `interval S` (answered `OK`); end of input stops the server."""
    data = os.read(sys.stdin.fileno(), 1024)
    if not data:
        stop.set()
        return
    for line in data.decode().splitlines():
        command, _, value = line.partition(" ")
        if command == "interval":
            PACING["interval"] = max(0.0, float(value))
            print("OK", flush=True)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTPServerProtocol, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Commands on stdin; also stop when the parent closes the pipe (the benchmark died): never leave a server behind.
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        loop.add_reader(sys.stdin.fileno(), _control, loop, stop)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (os.sched_setaffinity)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between two events of a stream")
    args = parser.parse_args()
    PACING["interval"] = args.interval
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop  # optional: a faster event loop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
