"""
A fake continuous-batching engine for the fleet benchmark (`fleet.py`): TGI's routes on 127.0.0.1, and a
decode loop simple enough that the best possible time of a batch is a formula.

The model (`Engine`, no I/O, so tests and the orchestrator reason about it directly):

- Time advances in steps of `step_seconds / speed`. At every step, each *running* sequence gets one token;
  those that reached their length are answered; then *waiting* requests take the free slots, oldest first (a
  request that arrives at an idle engine starts at once). At most `batch_size` sequences run.
- A reply's length is the prompt's own (`natural_length`: uniform in `tokens` * (1 ± `spread`), by the prompt's
  hash), plus the end-of-sequence token, or `max_new_tokens` if that comes first, as a model stops at its EOS.
- So throughput grows with concurrency up to `batch_size` sequences, then stays flat while the rest queue:
  capacity = batch_size * speed / step_seconds tokens per second, and a request alone takes
  (its tokens) * step_seconds / speed seconds. No prefill, no memory limit: one number per replica.
- Past `queue_limit` requests admitted and not yet answered (running + waiting), a new one is refused at
  once: 429 `{"error": "Model is overloaded", "error_type": "overloaded"}` as TGI's router answers (TGI's
  `max_concurrent_requests`, which `/info` reports), or 503 with `--refuse-status 503` (a busy proxy or
  another engine). On `/generate_stream` TGI answers 200 and sends the error as the stream's one event;
  so does this server with 429 (with 503 the status is 503 there too).
- A client that goes away cancels its sequence (TGI stops generating for a closed connection).
- The loop keeps time against the clock, not against sleeps: a step that comes late (the machine is busy) is
  caught up at once, so a replica delivers its capacity in wall time whatever the scheduling noise.
- Replies are a deterministic function of the prompt (`expected_reply`): a client that hands a prompt another
  prompt's reply is caught.

`--step-seconds 0` answers every request at once (no batching, no queue): the single-call overhead
scenario, which measures the client, not the engine.

Control on stdin, one JSON line answered per command: `stats` (the counters), `reset` (zero them),
`crash` (the counters, then `os._exit`: the kernel closes every socket as it does for SIGKILL, so
clients see the same resets and refused connects, and the counts up to the crash are exact). End of
input stops the server. `GET /fleet/stats` gives the same counters over HTTP.

Run: python benchmarks/fleet_server.py --speed 2 --batch-size 32 --queue-limit 64  (prints "READY <port>")
Only the standard library is needed; uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL_ID = "bench/fleet-model-1b"
MAX_TOTAL_TOKENS = 8192
# 32 words, a few multi-byte: the index of a word is 5 bits of a generator's state.
_WORDS = (
    " the", " fleet", " answers", " with", " a", " short", " and", " plain", " sentence", " about", " café",
    " naïve", " data", ",", ".", " it", " is", " fast", " enough", " when", " every", " replica", " keeps",
    " busy", " but", " never", " drops", " one", " prompt", " or", " twice", " again",
)  # fmt: skip
OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}


def prompt_text(key: str) -> str:
    """The prompt of id `key`: the id is in the text, so each prompt's reply is its own."""
    return f"Prompt {key}: write one plain sentence about item {key} for the fleet benchmark."


def reply_tokens(prompt: str, n: int) -> list[int]:
    """Word indices of the first n tokens of the reply to `prompt`: a 64-bit LCG seeded by the prompt's hash."""
    state = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
    out = []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(state >> 59)
    return out


def reply_text(prompt: str, n: int) -> str:
    """The first n tokens of the reply to `prompt`, as text."""
    return "".join(_WORDS[i] for i in reply_tokens(prompt, n))


def natural_length(prompt: str, mean: int, spread: float) -> int:
    """
    How many tokens the model says before its end of sequence: uniform in mean * (1 ± spread), by the prompt's
    hash. Lengths differ as real replies do, so sequences end at different steps and free their slots one by one
    (equal lengths started together would run in lockstep cohorts, a batch ending at once).
    """
    half = int(mean * spread)
    digest = hashlib.blake2b(prompt.encode(), digest_size=8, person=b"length").digest()
    return mean - half + int.from_bytes(digest, "big") % (2 * half + 1)


@dataclass(frozen=True)
class Reply:
    """What the model generates for one request: `words`, then the end-of-sequence token if it got that far."""

    words: list[int]
    eos: bool

    @classmethod
    def plan(cls, prompt: str, max_new_tokens: int, mean: int, spread: float) -> Reply:
        natural = natural_length(prompt, mean, spread)
        if max_new_tokens <= natural:  # cut by max_new_tokens (TGI counts the end-of-sequence token in it)
            return cls(reply_tokens(prompt, max_new_tokens), eos=False)
        return cls(reply_tokens(prompt, natural), eos=True)

    @property
    def steps(self) -> int:
        """Decode steps, i.e. generated tokens, the end-of-sequence token included."""
        return len(self.words) + self.eos

    @property
    def text(self) -> str:
        return "".join(_WORDS[i] for i in self.words)

    @property
    def finish_reason(self) -> str:
        return "eos_token" if self.eos else "length"

    def token(self, index: int) -> dict[str, object]:
        """TGI's `Token` for generated token `index` (the end of sequence is special, and no text of the reply)."""
        logprob = -round(0.05 + (index * 37 % 100) / 97, 4)
        if index == len(self.words):
            return {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}
        word = self.words[index]
        return {"id": 1000 + word, "text": _WORDS[word], "logprob": logprob, "special": False}


def expected_reply(prompt: str, max_new_tokens: int, mean: int, spread: float) -> tuple[str, int]:
    """(the text a client must return, the decode steps it costs): what the orchestrator checks and counts."""
    reply = Reply.plan(prompt, max_new_tokens, mean, spread)
    return reply.text, reply.steps


@dataclass(eq=False)
class Sequence:
    """One admitted request. `on_token(index, word)` streams; `on_done()` answers."""

    prompt: str
    tokens: int
    on_done: Callable[[], None]
    on_token: Callable[[int], None] | None = None
    made: int = 0


@dataclass
class Counters:
    admitted: int = 0
    refused: int = 0
    completed: int = 0
    cancelled: int = 0  # the client went away before its answer
    tokens: int = 0
    steps: int = 0  # steps with at least one running sequence
    slot_steps: int = 0  # sum of running sequences over those steps: utilisation = slot_steps / (steps * batch)
    peak_running: int = 0
    peak_waiting: int = 0
    first_request: float | None = None  # time.monotonic() of the first generation request (refused ones too)
    last_completion: float | None = None


@dataclass
class Engine:
    """Continuous batching in steps: see the module's docstring. Decisions only; the caller keeps time."""

    batch_size: int
    queue_limit: int
    running: list[Sequence] = field(default_factory=list)
    waiting: deque[Sequence] = field(default_factory=deque)
    counts: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.queue_limit < self.batch_size:
            raise ValueError("batch_size must be >= 1 and queue_limit >= batch_size")

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def arrive(self, now: float) -> None:
        """A generation request arrived (admitted or not): the clock of the scenario starts here."""
        if self.counts.first_request is None:
            self.counts.first_request = now

    def offer(self, sequence: Sequence) -> bool:
        """Queues a request, or refuses it (False) when queue_limit requests are already admitted."""
        if len(self.running) + len(self.waiting) >= self.queue_limit:
            self.counts.refused += 1
            return False
        self.counts.admitted += 1
        self.waiting.append(sequence)
        self.counts.peak_waiting = max(self.counts.peak_waiting, len(self.waiting))
        return True

    def cancel(self, sequence: Sequence) -> None:
        if sequence in self.running:
            self.running.remove(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        else:
            return
        self.counts.cancelled += 1

    def step(self, now: float) -> list[Sequence]:
        """One decode step at time `now`: a token for every running sequence, then the free slots filled."""
        finished = []
        if self.running:
            self.counts.steps += 1
            self.counts.slot_steps += len(self.running)
            self.counts.tokens += len(self.running)
            still = []
            for sequence in self.running:
                sequence.made += 1
                if sequence.on_token is not None:
                    sequence.on_token(sequence.made - 1)
                (finished if sequence.made >= sequence.tokens else still).append(sequence)
            self.running = still
        for _ in finished:
            self.counts.completed += 1
            self.counts.last_completion = now
        while self.waiting and len(self.running) < self.batch_size:
            self.running.append(self.waiting.popleft())
        self.counts.peak_running = max(self.counts.peak_running, len(self.running))
        return finished


# --- HTTP ---------------------------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_STATUS = {200: "200 OK", 404: "404 Not Found", 422: "422 Unprocessable Entity", 429: "429 Too Many Requests"}
_STATUS |= {503: "503 Service Unavailable", 400: "400 Bad Request", 405: "405 Method Not Allowed"}


def _json(payload: object, status: int = 200, extra: list[tuple[str, str]] | None = None) -> bytes:
    body = _dumps(payload)
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), *(extra or [])]
    return _head(_STATUS[status], headers) + body


def _event(payload: object) -> bytes:
    data = b"data: " + _dumps(payload) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_SSE_HEAD = _head(
    "200 OK", [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
)


class Replica:
    """The server's state: settings, the engine, and the loop that steps it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.speed = args.speed
        self.interval = args.step_seconds / args.speed if args.step_seconds > 0 else 0.0
        self.mean_tokens = args.tokens
        self.spread = args.spread
        self.default_max_new_tokens = 4 * args.tokens  # when a request sets none: its own length decides
        self.refuse_status = args.refuse_status
        self.engine = Engine(args.batch_size, args.queue_limit)
        self.wake = asyncio.Event()
        self.info = {
            "model_id": MODEL_ID,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": args.queue_limit,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": MAX_TOTAL_TOKENS - 1,
            "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "3.3.6",
            "sha": None,
            "docker_label": None,
            # TGI 1.x / 2.0 reported its batching limits too (TGI 3 moved them to the launcher's log). Kept so
            # that a client may read them, and only as a hint: nothing requires them.
            "max_batch_size": args.batch_size,
            "max_batch_total_tokens": args.batch_size * MAX_TOTAL_TOKENS,
            "max_waiting_tokens": 20,
            "waiting_served_ratio": 0.3,
        }
        self.models = {
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": 1_732_550_000, "owned_by": MODEL_ID}],
        }

    def stats(self) -> dict[str, Any]:
        counts = self.engine.counts
        return {
            "name": self.name,
            "pid": os.getpid(),
            **vars(counts),
            "running": len(self.engine.running),
            "waiting": len(self.engine.waiting),
        }

    def reset(self) -> dict[str, Any]:
        self.engine.counts = Counters()
        return self.stats()

    async def stepper(self) -> None:
        """Steps the engine while it has work, on a fixed schedule from the moment work arrived."""
        while True:
            await self.wake.wait()
            next_at = time.monotonic()
            while self.engine.busy:
                now = time.monotonic()
                while next_at <= now and self.engine.busy:  # late steps are caught up at once
                    for sequence in self.engine.step(now):
                        sequence.on_done()
                    next_at += self.interval
                if self.engine.busy:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self.wake.clear()


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, bodies by Content-Length, one request at a time (clients do not pipeline)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.buffer = bytearray()
        self.pending: Sequence | None = None  # the sequence this connection waits for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.replica.engine.cancel(self.pending)
            self.pending = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        while self.pending is None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._handle(method, target.split("?", 1)[0], body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        replica = self.replica
        if method == "GET":
            answers = {"/info": replica.info, "/v1/models": replica.models}
            if path == "/health":
                self.transport.write(_head("200 OK", [("content-length", "0")]))
            elif path == "/fleet/stats":
                self.transport.write(_json(replica.stats()))
            elif path in answers:
                self.transport.write(_json(answers[path]))
            else:
                self.transport.write(_json({"error": "Not Found", "error_type": "not_found"}, 404))
            return
        if method != "POST" or path not in ("/generate", "/generate_stream"):
            self.transport.write(_json({"error": "Not Found", "error_type": "not_found"}, 404))
            return
        try:
            request = json.loads(body)
            prompt = request["inputs"]
            if not isinstance(prompt, str):
                raise TypeError("inputs must be a string")
            params = request.get("parameters") or {}
            max_new_tokens = int(params.get("max_new_tokens") or replica.default_max_new_tokens)
        except (ValueError, KeyError, TypeError):
            self.transport.write(_json({"error": "bad request", "error_type": "validation"}, 422))
            return
        prompt_tokens = max(1, len(prompt.split()))
        if max_new_tokens < 1 or prompt_tokens + max_new_tokens > MAX_TOTAL_TOKENS:
            message = (
                f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
                f"Given: {prompt_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
            self.transport.write(_json({"error": message, "error_type": "validation"}, 422))
            return
        answer = _Answer(
            Reply.plan(prompt, max_new_tokens, replica.mean_tokens, replica.spread),
            prompt_tokens,
            bool(params.get("details")),
            time.monotonic(),
            replica.name,
        )
        stream = path == "/generate_stream"
        replica.engine.arrive(answer.arrived)
        if replica.interval == 0:  # instant mode: answered at once
            counts = replica.engine.counts
            counts.admitted += 1
            counts.completed += 1
            counts.tokens += answer.reply.steps
            counts.last_completion = answer.arrived
            self.transport.write(answer.stream() if stream else answer.whole())
            return
        sequence = Sequence(prompt, answer.reply.steps, on_done=lambda: self._done(answer, stream))
        if stream:
            sequence.on_token = lambda i: self.transport.write(answer.event(i))
        if not replica.engine.offer(sequence):
            if stream and replica.refuse_status == 429:  # TGI's stream routes answer 200 and send the error
                self.transport.write(_SSE_HEAD + _event(OVERLOADED) + b"0\r\n\r\n")
            else:
                self.transport.write(_json(OVERLOADED, replica.refuse_status))
            return
        self.pending = sequence
        if stream:
            self.transport.write(_SSE_HEAD)
        replica.wake.set()

    def _done(self, answer: _Answer, stream: bool) -> None:
        self.pending = None
        if not stream:  # a stream's last event went out with its last token
            self.transport.write(answer.whole())
        if self.buffer:  # a request that came in behind this one
            asyncio.get_running_loop().call_soon(self._next)


@dataclass(frozen=True)
class _Answer:
    """One request's reply in TGI's shapes: the whole JSON answer, or its stream events."""

    reply: Reply
    prompt_tokens: int
    details: bool
    arrived: float
    replica: str

    def whole(self) -> bytes:
        reply = self.reply
        answer: dict[str, object] = {"generated_text": reply.text}
        if self.details:
            answer["details"] = {
                "finish_reason": reply.finish_reason,
                "generated_tokens": reply.steps,
                "seed": None,
                "prefill": [],
                "tokens": [reply.token(i) for i in range(reply.steps)],
            }
        headers = [
            ("x-fleet-replica", self.replica),
            ("x-prompt-tokens", str(self.prompt_tokens)),
            ("x-generated-tokens", str(reply.steps)),
            ("x-total-time", str(int((time.monotonic() - self.arrived) * 1000))),
        ]
        return _json(answer, 200, headers)

    def event(self, index: int) -> bytes:
        """The stream event of generated token `index`; the last one ends the body."""
        reply = self.reply
        last = index == reply.steps - 1
        event: dict[str, object] = {
            "index": index + 1,
            "token": reply.token(index),
            "generated_text": reply.text if last else None,
            "details": None,
        }
        if last and self.details:
            event["details"] = {
                "finish_reason": reply.finish_reason,
                "generated_tokens": reply.steps,
                "seed": None,
                "input_length": self.prompt_tokens,
            }
        return _event(event) + (b"0\r\n\r\n" if last else b"")

    def stream(self) -> bytes:
        return _SSE_HEAD + b"".join(self.event(i) for i in range(self.reply.steps))


def _control(replica: Replica, stop: asyncio.Event) -> None:
    """Commands on stdin (`stats`, `reset`, `crash`); end of input stops the server."""
    data = os.read(sys.stdin.fileno(), 4096)
    if not data:
        stop.set()
        return
    for line in data.decode().split():
        if line == "stats":
            print(json.dumps(replica.stats()), flush=True)
        elif line == "reset":
            print(json.dumps(replica.reset()), flush=True)
        elif line == "crash":
            stats = replica.stats()
            stats["aborted"] = stats["running"] + stats["waiting"]
            print(json.dumps(stats), flush=True)
            os._exit(1)  # no cleanup, no goodbye: the kernel closes the sockets, as for SIGKILL
        else:
            print(json.dumps({"error": f"unknown command {line!r}"}), flush=True)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    replica = Replica(args)
    server = await loop.create_server(lambda: Connection(replica), args.host, args.port, backlog=4096)
    stepper = asyncio.ensure_future(replica.stepper())
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Never left behind: the server stops when the orchestrator's pipe closes.
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        loop.add_reader(sys.stdin.fileno(), _control, replica, stop)
    async with server:
        await stop.wait()
    stepper.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="replica")
    parser.add_argument("--speed", type=float, default=1.0, help="speed factor: steps come speed times as often")
    parser.add_argument(
        "--step-seconds", type=float, default=0.025, help="one decode step at speed 1 (0: answer at once)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--queue-limit", type=int, default=64, help="running + waiting; more are refused")
    parser.add_argument("--tokens", type=int, default=64, help="the mean length of a reply, in tokens")
    parser.add_argument("--spread", type=float, default=0.5, help="reply lengths: uniform in tokens * (1 ± spread)")
    parser.add_argument("--refuse-status", type=int, choices=[429, 503], default=429)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (os.sched_setaffinity)")
    args = parser.parse_args()
    if args.speed <= 0 or args.step_seconds < 0 or args.tokens < 1 or not 0 <= args.spread < 1:
        parser.error("--speed and --tokens must be > 0, --step-seconds >= 0, --spread in [0, 1)")
    if args.cpu is not None and hasattr(os, "sched_setaffinity") and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a retry storm opens many connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # optional: a faster event loop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
