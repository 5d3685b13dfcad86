"""
One benchmarked client, alone in its own process (and venv), driven by `bench.py`.

Each client is set up once, warmed up, then answers commands read from stdin, one JSON object a line,
with one JSON line on stdout:

- `{"op": "call", "n": N, "seconds": S}`: one-piece generations of 16 tokens, one after the other, in
  batches of N until S seconds have passed;
- `{"op": "stream", "n": N, "seconds": S}`: the same with streams of 1,000 tokens (`"burst"`: the same
  again; the orchestrator has told the server to send those streams at once instead of paced);
- `{"op": "rps", "n": N, "seconds": S}`: up to N one-piece generations in flight at once (64 threads for
  sync clients, 256 tasks on one event loop for async ones), none started after S seconds;
- `{"op": "check"}`: one reply and one streamed reply, for the orchestrator to compare with the truth.

Every answer carries the client process's CPU time (`time.process_time`, all threads) and the wall
time. `--rss N` instead makes N calls in a fresh process and prints the peak RSS.

Only the standard library is imported at the top: each peer imports its own library when chosen, so
this file runs in every venv of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PROMPT = "Summarize in one sentence why a benchmark should interleave the clients that it compares."
MODEL_ID = "bench/fake-model-1b"
CALL_TOKENS = 16
STREAM_TOKENS = 1000
THREADS = 64  # requests in flight for sync clients (one thread each)
TASKS = 256  # requests in flight for async clients (one task each, one event loop)


class Peer:
    """A client under test. Sync peers implement `call`/`stream`, async ones `acall`/`astream`."""

    is_async = False

    def call(self) -> str:
        raise NotImplementedError

    def stream(self) -> str:
        """Streams STREAM_TOKENS tokens; returns the concatenated text."""
        raise NotImplementedError

    async def acall(self) -> str:
        raise NotImplementedError

    async def astream(self) -> str:
        raise NotImplementedError

    async def aopen(self) -> None:
        """Set-up that needs the running loop (e.g. an aiohttp session), run once on the client's loop."""

    def close(self) -> None:
        """Called once before the process exits (sync clients)."""

    async def aclose(self) -> None:
        """Called once on the client's loop before the process exits (async clients)."""


# --- raw floors: the least a correct Python client does with each HTTP library -------------------------
#
# Every raw client builds the JSON body on every call (`json.dumps`, as any client must), sends it on a
# keep-alive connection with connect and read timeouts, checks the status, and decodes the JSON answer;
# streams are split into lines as they arrive and each `data:` line goes through `json.loads`. Nothing is
# pre-encoded or skipped, so that a ratio to these floors measures what the generator adds, not what the
# floor leaves out. The ones this project is built on (urllib3 for `run`, aiohttp for `run_async`) are the
# references; httpx and httpx2 (what the generator used before, and what huggingface_hub 2.x runs on) are
# measured beside them.

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 120.0
JSON_HEADERS = {"Content-Type": "application/json"}


def _raw_bodies(protocol: str) -> tuple[str, str, Callable[[int, bool], dict[str, Any]]]:
    """The same paths and bodies that the generator sends for this protocol."""
    if protocol == "tgi":

        def body(n: int, stream: bool) -> dict[str, Any]:
            return {"inputs": PROMPT, "parameters": {"max_new_tokens": n, "return_full_text": False, "details": True}}

        return "/generate", "/generate_stream", body

    def completions_body(n: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": MODEL_ID, "max_tokens": n, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        body["prompt"] = PROMPT
        return body

    return "/v1/completions", "/v1/completions", completions_body


def _raw_text(protocol: str, payload: dict[str, Any]) -> str:
    return payload["generated_text"] if protocol == "tgi" else payload["choices"][0]["text"]


def _event_parser(protocol: str, text: bool = False) -> Callable[[Any, list[str]], None]:
    """
    The handling of one SSE line (bytes, or str when `text`; without the newline): `json.loads` of each
    `data:` payload, the token's text kept. `data: [DONE]` (completions) is skipped, not a reason to stop
    reading: the chunked body ends right after it, and reading to its end keeps the connection reusable.
    """
    prefix, done = ("data:", "[DONE]") if text else (b"data:", b"[DONE]")
    if protocol == "tgi":

        def tgi(line: Any, pieces: list[str]) -> None:
            if line.startswith(prefix):
                pieces.append(json.loads(line[5:])["token"]["text"])

        return tgi

    def completions(line: Any, pieces: list[str]) -> None:
        if line.startswith(prefix):
            data = line[5:]
            if data.strip() == done:
                return
            choices = json.loads(data)["choices"]
            if choices:  # the usage chunk has no choices
                pieces.append(choices[0]["text"])

    return completions


class _Raw(Peer):
    def __init__(self, url: str, protocol: str) -> None:
        self.url = url
        self.protocol = protocol
        self.path, self.stream_path, self.make_body = _raw_bodies(protocol)
        self.on_line = _event_parser(protocol)

    def body(self) -> bytes:
        return json.dumps(self.make_body(CALL_TOKENS, False)).encode()

    def stream_body(self) -> bytes:
        return json.dumps(self.make_body(STREAM_TOKENS, True)).encode()

    def _split(self, chunks: Any, pieces: list[str]) -> None:
        """Lines out of a stream of byte chunks, split wherever the chunks happen to end."""
        rest = b""
        for chunk in chunks:
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                self.on_line(line, pieces)
        if rest:
            self.on_line(rest, pieces)


class RawUrllib3(_Raw):
    """
    urllib3 2.x: one `PoolManager` (maxsize: one kept-alive connection per thread of the 64-thread run),
    `retries=False`, per-operation timeouts; `preload_content=False`, then `read()` for one-piece answers
    and `read_chunked()` (`stream()` when the body is not chunked) for streams.
    """

    def __init__(self, url: str, protocol: str) -> None:
        import urllib3

        super().__init__(url, protocol)
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
        self.pool = urllib3.PoolManager(maxsize=THREADS, retries=False, timeout=timeout)
        self.call_url, self.stream_url = url + self.path, url + self.stream_path

    def call(self) -> str:
        response = self.pool.request(
            "POST", self.call_url, body=self.body(), headers=JSON_HEADERS, preload_content=False
        )
        try:
            data = response.read()
        finally:
            response.release_conn()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return _raw_text(self.protocol, json.loads(data))

    def stream(self) -> str:
        response = self.pool.request(
            "POST", self.stream_url, body=self.stream_body(), headers=JSON_HEADERS, preload_content=False
        )
        pieces: list[str] = []
        try:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
            self._split(response.read_chunked() if response.chunked else response.stream(65536), pieces)
        finally:
            response.release_conn()
        return "".join(pieces)

    def close(self) -> None:
        self.pool.clear()


class RawAiohttp(_Raw):
    """
    aiohttp 3.x: one `ClientSession`, created inside the running loop (`aopen`), a `TCPConnector` whose
    limit (512) is above the 256 requests in flight, `ClientTimeout(sock_connect, sock_read)`; one-piece
    answers by `read()` + `json.loads`, streams by `content.iter_any()` split into lines.
    """

    is_async = True

    async def aopen(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=2 * TASKS)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self.call_url, self.stream_url = self.url + self.path, self.url + self.stream_path

    async def acall(self) -> str:
        async with self.session.post(self.call_url, data=self.body(), headers=JSON_HEADERS) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return _raw_text(self.protocol, json.loads(data))

    async def astream(self) -> str:
        pieces: list[str] = []
        async with self.session.post(self.stream_url, data=self.stream_body(), headers=JSON_HEADERS) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            rest = b""
            async for chunk in response.content.iter_any():
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    self.on_line(line, pieces)
            if rest:
                self.on_line(rest, pieces)
        return "".join(pieces)

    async def aclose(self) -> None:
        await self.session.close()


class RawHttpx(_Raw):
    """
    httpx (or httpx2, the same API under another name): a keep-alive `Client` with room for every
    thread, `content=` the encoded body, `response.json()`; streams: `iter_lines()` + `json.loads`.
    """

    module = "httpx"

    def __init__(self, url: str, protocol: str) -> None:
        import importlib

        super().__init__(url, protocol)
        httpx = importlib.import_module(self.module)
        # httpx's default keeps only 20 idle connections: room for all 64 threads (and the 256 tasks).
        self.options = {
            "base_url": url,
            "limits": httpx.Limits(max_connections=2 * TASKS, max_keepalive_connections=TASKS),
            "timeout": httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        }
        self.client = httpx.Client(**self.options)
        self.httpx = httpx
        self.on_text_line = _event_parser(protocol, text=True)  # iter_lines() yields str

    def call(self) -> str:
        response = self.client.post(self.path, content=self.body(), headers=JSON_HEADERS)
        response.raise_for_status()
        return _raw_text(self.protocol, response.json())

    def stream(self) -> str:
        pieces: list[str] = []
        with self.client.stream("POST", self.stream_path, content=self.stream_body(), headers=JSON_HEADERS) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                self.on_text_line(line, pieces)
        return "".join(pieces)

    def close(self) -> None:
        self.client.close()


class RawHttpxAsync(RawHttpx):
    """The same with `AsyncClient`, created inside the running loop."""

    is_async = True

    async def aopen(self) -> None:
        self.aclient = self.httpx.AsyncClient(**self.options)

    async def acall(self) -> str:
        response = await self.aclient.post(self.path, content=self.body(), headers=JSON_HEADERS)
        response.raise_for_status()
        return _raw_text(self.protocol, response.json())

    async def astream(self) -> str:
        pieces: list[str] = []
        body = self.stream_body()
        async with self.aclient.stream("POST", self.stream_path, content=body, headers=JSON_HEADERS) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                self.on_text_line(line, pieces)
        return "".join(pieces)

    async def aclose(self) -> None:
        await self.aclient.aclose()
        self.client.close()


class RawHttpx2(RawHttpx):
    module = "httpx2"


class RawHttpx2Async(RawHttpxAsync):
    module = "httpx2"


# --- this project's generator ----------------------------------------------------------------------


class Ours(Peer):
    """HuggingFaceAPIGenerator (Haystack 3), protocol forced through api_params so no probing is measured."""

    def __init__(self, url: str, protocol: str) -> None:
        from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

        self.generator = HuggingFaceAPIGenerator(
            api_type="text_generation_inference",
            api_params={"url": url, "protocol": protocol},
            generation_kwargs={"max_new_tokens": CALL_TOKENS},
        )
        if hasattr(self.generator, "warm_up"):
            self.generator.warm_up()  # GET /info or /v1/models once, outside the measurement
        self.stream_kwargs = {"max_new_tokens": STREAM_TOKENS}

    def call(self) -> str:
        return self.generator.run(PROMPT)["replies"][0]

    def stream(self) -> str:
        self.generator.run(PROMPT, streaming_callback=_count_chunk, generation_kwargs=self.stream_kwargs)
        return _take_streamed()

    def close(self) -> None:
        self.generator.close()


class OursAsync(Ours):
    is_async = True

    async def aclose(self) -> None:
        close = getattr(self.generator, "close_async", None) or self.generator.aclose
        await close()

    async def acall(self) -> str:
        return (await self.generator.run_async(PROMPT))["replies"][0]

    async def astream(self) -> str:
        await self.generator.run_async(PROMPT, streaming_callback=_acount_chunk, generation_kwargs=self.stream_kwargs)
        return _take_streamed()


# Streaming callbacks keep the pieces so the orchestrator can check the text, and count the calls (how many
# chunks a stream was delivered in); that is all they do.
_streamed: list[str] = []
_callbacks = [0]


def _count_chunk(chunk: Any) -> None:
    _callbacks[0] += 1
    if chunk.content:
        _streamed.append(chunk.content)


async def _acount_chunk(chunk: Any) -> None:
    _callbacks[0] += 1
    if chunk.content:
        _streamed.append(chunk.content)


def _take_streamed() -> str:
    text = "".join(_streamed)
    _streamed.clear()
    return text


# --- huggingface_hub 2.x -----------------------------------------------------------------------------


class HubSync(Peer):
    """
    `InferenceClient.text_generation` with the server URL as model.

    huggingface_hub POSTs to that URL itself, i.e. TGI's compat route `/`, with `stream` in the body: on
    TGI that is `/generate` (answered as a list of one object) or `/generate_stream`. `details=True` as
    Haystack 2.x asks, and `return_full_text=False`, so it receives the same answers as the raw clients
    (without it, `/` prepends the prompt).
    """

    def __init__(self, url: str, protocol: str) -> None:
        from huggingface_hub import AsyncInferenceClient, InferenceClient

        self.client = InferenceClient(model=url)
        self.aclient = AsyncInferenceClient(model=url)
        self.kwargs = {"details": True, "return_full_text": False}

    def call(self) -> str:
        return self.client.text_generation(PROMPT, max_new_tokens=CALL_TOKENS, **self.kwargs).generated_text

    def stream(self) -> str:
        events = self.client.text_generation(PROMPT, max_new_tokens=STREAM_TOKENS, stream=True, **self.kwargs)
        return "".join(event.token.text for event in events)


class HubAsync(HubSync):
    is_async = True

    async def acall(self) -> str:
        output = await self.aclient.text_generation(PROMPT, max_new_tokens=CALL_TOKENS, **self.kwargs)
        return output.generated_text

    async def astream(self) -> str:
        events = await self.aclient.text_generation(PROMPT, max_new_tokens=STREAM_TOKENS, stream=True, **self.kwargs)
        return "".join([event.token.text async for event in events])


# --- Haystack 2.31 ----------------------------------------------------------------------------------


class Haystack2(Peer):
    """Haystack 2.31's HuggingFaceAPIGenerator (sync only: it has no run_async) on huggingface_hub 2.x."""

    def __init__(self, url: str, protocol: str) -> None:
        from haystack.components.generators import HuggingFaceAPIGenerator

        self.generator = HuggingFaceAPIGenerator(
            api_type="text_generation_inference",
            api_params={"url": url},
            generation_kwargs={"max_new_tokens": CALL_TOKENS, "return_full_text": False},
        )
        # Runtime patch, not an edit of site-packages: Haystack 2.31 always passes
        # generation_kwargs["stop_sequences"] (empty here) to text_generation, which huggingface_hub 2.x no
        # longer accepts (TypeError). Without stop words the key carries nothing, so dropping it is exact.
        self.generator.generation_kwargs.pop("stop_sequences", None)
        self.stream_kwargs = {"max_new_tokens": STREAM_TOKENS}

    def call(self) -> str:
        return self.generator.run(PROMPT)["replies"][0]

    def stream(self) -> str:
        self.generator.run(PROMPT, streaming_callback=_count_chunk, generation_kwargs=self.stream_kwargs)
        return _take_streamed()


# --- LangChain ----------------------------------------------------------------------------------------


class LangChainSync(Peer):
    """langchain-huggingface's HuggingFaceEndpoint (on huggingface_hub < 2), defaults as documented."""

    def __init__(self, url: str, protocol: str) -> None:
        from langchain_huggingface import HuggingFaceEndpoint

        self.llm = HuggingFaceEndpoint(endpoint_url=url, max_new_tokens=CALL_TOKENS, task="text-generation")

    def call(self) -> str:
        return self.llm.invoke(PROMPT)

    def stream(self) -> str:
        return "".join(self.llm.stream(PROMPT, max_new_tokens=STREAM_TOKENS))


class LangChainAsync(LangChainSync):
    is_async = True

    async def acall(self) -> str:
        return await self.llm.ainvoke(PROMPT)

    async def astream(self) -> str:
        return "".join([piece async for piece in self.llm.astream(PROMPT, max_new_tokens=STREAM_TOKENS)])


PEERS: dict[str, type[Peer]] = {
    "urllib3": RawUrllib3,
    "aiohttp": RawAiohttp,
    "httpx": RawHttpx,
    "httpx_async": RawHttpxAsync,
    "httpx2": RawHttpx2,
    "httpx2_async": RawHttpx2Async,
    "ours": Ours,
    "ours_async": OursAsync,
    "hfhub": HubSync,
    "hfhub_async": HubAsync,
    "haystack2": Haystack2,
    "langchain": LangChainSync,
    "langchain_async": LangChainAsync,
}


# --- measurement ------------------------------------------------------------------------------------


class Runner:
    """Runs the operations of one peer, sync or async, and times them."""

    def __init__(self, make_peer: Callable[[], Peer], separate_pools: bool = True) -> None:
        self.peer = make_peer()
        # A second instance, so its own connection pool, for the in-flight runs: the sequential windows then
        # never inherit the hundreds of idle keep-alive connections those runs leave behind (httpcore, under
        # httpx and httpx2, checks every idle connection of its pool on every request, so that cost would
        # depend on the order of the windows, not on the client).
        self.parallel_peer = make_peer() if separate_pools else self.peer
        self.peers = [self.peer] if self.parallel_peer is self.peer else [self.peer, self.parallel_peer]
        self.loop = asyncio.new_event_loop() if self.peer.is_async else None
        if self.loop is not None:
            asyncio.set_event_loop(self.loop)
            for peer in self.peers:
                self._run(peer.aopen())  # sessions belong to the loop they are created in
        # Created once: thread start-up is not what we measure.
        self.pool = None if self.peer.is_async else ThreadPoolExecutor(THREADS)

    @property
    def in_flight_count(self) -> int:
        return TASKS if self.peer.is_async else THREADS

    def _run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def _repeat(self, n: int, sync_call: Any, async_call: Any) -> str:
        """n sequential calls, sync or on the loop; returns the last reply (checked by the caller)."""
        if self.loop is None:
            reply = ""
            for _ in range(n):
                reply = sync_call()
            return reply

        async def sequential() -> str:
            reply = ""
            for _ in range(n):
                reply = await async_call()
            return reply

        return self._run(sequential())

    def calls(self, n: int) -> str:
        return self._repeat(n, self.peer.call, self.peer.acall)

    def streams(self, n: int) -> str:
        return self._repeat(n, self.peer.stream, self.peer.astream)

    def in_flight(self, n: int, seconds: float) -> int:
        """Up to n requests, THREADS or TASKS at a time, none started after `seconds`; returns how many."""
        deadline = time.perf_counter() + seconds
        tickets = itertools.count()  # shared: each thread or task takes the next number

        def more() -> bool:
            return next(tickets) < n and time.perf_counter() < deadline

        if self.pool is not None:

            def thread() -> int:
                made = 0
                while more():
                    self.parallel_peer.call()
                    made += 1
                return made

            return sum(f.result() for f in [self.pool.submit(thread) for _ in range(THREADS)])

        async def task() -> int:
            made = 0
            while more():
                await self.parallel_peer.acall()
                made += 1
            return made

        async def tasks() -> int:
            return sum(await asyncio.gather(*(task() for _ in range(TASKS))))

        return self._run(tasks())

    def measure(self, op: str, n: int, seconds: float) -> dict[str, Any]:
        # Start every window from the same GC state: otherwise a full collection of a big import-time heap
        # (Haystack's ~200k objects cost ~100 ms to traverse here) lands in one window by chance.
        gc.collect()
        _callbacks[0] = 0
        wall, cpu = time.perf_counter(), time.process_time()
        in_flight = 1
        if op in ("call", "stream", "burst"):
            # At least n, in batches of n until `seconds` have passed: a window of a few milliseconds (the
            # fastest clients make 150 calls in 20 ms) would be at the mercy of one scheduler hiccup.
            repeat = self.calls if op == "call" else self.streams  # burst: streams, the server sends at once
            done = 0
            while True:
                repeat(n)
                done += n
                if time.perf_counter() - wall >= seconds:
                    break
            n = done
        else:  # throughput windows are bounded in time too: the slowest clients would take minutes
            n = self.in_flight(n, seconds)
            in_flight = self.in_flight_count
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result = {"cpu": cpu, "wall": wall, "n": n, "in_flight": in_flight}
        if op in ("stream", "burst") and _callbacks[0]:
            result["chunks_per_stream"] = _callbacks[0] / n  # how many StreamingChunks a 1,000-token stream made
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for peer in self.peers:
            if self.loop is None:
                peer.close()
            else:
                self._run(peer.aclose())
        if self.loop is not None:
            self.loop.run_until_complete(asyncio.sleep(0.05))  # let transports finish closing
            self.loop.close()


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--protocol", choices=["tgi", "completions"], default="tgi")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--rss", type=int, default=0, help="make this many calls, print the peak RSS and exit")
    parser.add_argument(
        "--with-haystack", action="store_true", help="import haystack first, as any Haystack component's process has"
    )
    args = parser.parse_args()
    _pin(args.cpu)
    if args.with_haystack:
        import haystack  # noqa: F401
    warnings.simplefilter("ignore")  # deprecation notices of the peers are not what we measure

    # Our answers go to a private copy of stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    runner = Runner(lambda: PEERS[args.peer](args.url, args.protocol), separate_pools=not args.rss)
    if args.rss:
        runner.calls(args.rss)
        # ru_maxrss is in KiB on Linux.
        answer({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        runner.close()
        return

    # Warm-up: connections, lazy imports, caches, the thread pool.
    runner.calls(20)
    runner.streams(1)
    runner.in_flight(2 * runner.in_flight_count, 30)
    answer({"ready": True, "pid": os.getpid(), "in_flight": runner.in_flight_count})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "quit":
                break
            if command["op"] == "check":
                answer({"reply": runner.calls(1), "streamed": runner.streams(1)})
            else:
                answer(runner.measure(command["op"], command["n"], command.get("seconds", 60)))
        except Exception as error:  # reported to the orchestrator, which records it
            answer({"error": f"{type(error).__name__}: {error}"[:500]})
    runner.close()


if __name__ == "__main__":
    main()
