"""
One benchmarked client, alone in its own process (and venv), driven by `bench.py`.

Each client is set up once, warmed up, then answers commands read from stdin, one JSON object a line,
with one JSON line on stdout:

- `{"op": "call", "n": N}`: N one-piece generations of 16 tokens, one after the other;
- `{"op": "stream", "n": N}`: N streams of 1,000 tokens;
- `{"op": "rps", "n": N, "seconds": S}`: up to N generations with 64 in flight (64 threads for sync
  clients, 64 tasks for async ones), none started after S seconds;
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
IN_FLIGHT = 64


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


# --- raw floor: the least a Python client can do with httpx ---------------------------------------


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


def _raw_event_text(protocol: str, event: dict[str, Any]) -> str:
    if protocol == "tgi":
        return event["token"]["text"]
    choices = event["choices"]
    return choices[0]["text"] if choices else ""  # the usage chunk has no choices


class RawSync(Peer):
    """A keep-alive httpx.Client posting the request and decoding the JSON; streams: iter_lines + json.loads."""

    def __init__(self, url: str, protocol: str) -> None:
        import httpx

        # Keep-alive for all 64 threads: httpx's default keeps only 20 idle connections.
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.client = httpx.Client(base_url=url, limits=limits, timeout=120)
        self.protocol = protocol
        self.path, self.stream_path, body = _raw_bodies(protocol)
        self.body, self.stream_body = body(CALL_TOKENS, False), body(STREAM_TOKENS, True)

    def call(self) -> str:
        response = self.client.post(self.path, json=self.body)
        response.raise_for_status()
        return _raw_text(self.protocol, response.json())

    def stream(self) -> str:
        pieces = []
        with self.client.stream("POST", self.stream_path, json=self.stream_body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    pieces.append(_raw_event_text(self.protocol, json.loads(data)))
        return "".join(pieces)


class RawAsync(RawSync):
    """The same with httpx.AsyncClient."""

    is_async = True

    def __init__(self, url: str, protocol: str) -> None:
        import httpx

        super().__init__(url, protocol)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.aclient = httpx.AsyncClient(base_url=url, limits=limits, timeout=120)

    async def acall(self) -> str:
        response = await self.aclient.post(self.path, json=self.body)
        response.raise_for_status()
        return _raw_text(self.protocol, response.json())

    async def astream(self) -> str:
        pieces = []
        async with self.aclient.stream("POST", self.stream_path, json=self.stream_body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    pieces.append(_raw_event_text(self.protocol, json.loads(data)))
        return "".join(pieces)


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
        self.generator.warm_up()  # GET /info or /v1/models once, outside the measurement
        self.stream_kwargs = {"max_new_tokens": STREAM_TOKENS}

    def call(self) -> str:
        return self.generator.run(PROMPT)["replies"][0]

    def stream(self) -> str:
        self.generator.run(PROMPT, streaming_callback=_count_chunk, generation_kwargs=self.stream_kwargs)
        return _take_streamed()


class OursAsync(Ours):
    is_async = True

    async def acall(self) -> str:
        return (await self.generator.run_async(PROMPT))["replies"][0]

    async def astream(self) -> str:
        await self.generator.run_async(PROMPT, streaming_callback=_acount_chunk, generation_kwargs=self.stream_kwargs)
        return _take_streamed()


# Streaming callbacks keep the pieces so the orchestrator can check the text; appending is all they do.
_streamed: list[str] = []


def _count_chunk(chunk: Any) -> None:
    if chunk.content:
        _streamed.append(chunk.content)


async def _acount_chunk(chunk: Any) -> None:
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
    Haystack 2.x asks, and `return_full_text=False`, so it receives the same answers as the raw floor
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
    "raw": RawSync,
    "raw_async": RawAsync,
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
        # A second instance, so its own connection pool, for the 64-in-flight runs. Otherwise the sequential
        # windows inherit 64 idle keep-alive connections from them, and httpcore's pool checks every idle
        # connection (a poll() each) on every request until they expire 5 s later: that cost would depend on
        # the order of the windows, not on the client.
        self.parallel_peer = make_peer() if separate_pools else self.peer
        self.loop = asyncio.new_event_loop() if self.peer.is_async else None
        # Created once: thread start-up is not what we measure.
        self.pool = None if self.peer.is_async else ThreadPoolExecutor(IN_FLIGHT)

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
        """Up to n requests, 64 at a time, none started after `seconds`; returns how many were made."""
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

            return sum(f.result() for f in [self.pool.submit(thread) for _ in range(IN_FLIGHT)])

        async def task() -> int:
            made = 0
            while more():
                await self.parallel_peer.acall()
                made += 1
            return made

        async def tasks() -> int:
            return sum(await asyncio.gather(*(task() for _ in range(IN_FLIGHT))))

        return self._run(tasks())

    def measure(self, op: str, n: int, seconds: float) -> dict[str, Any]:
        # Start every window from the same GC state: otherwise a full collection of a big import-time heap
        # (Haystack's ~200k objects cost ~100 ms to traverse here) lands in one window by chance.
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        if op == "call":
            self.calls(n)
        elif op == "stream":
            self.streams(n)
        else:  # throughput windows are bounded in time too: the slowest clients would take minutes
            n = self.in_flight(n, seconds)
        return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "n": n}


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
    args = parser.parse_args()
    _pin(args.cpu)
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
        return

    # Warm-up: connections, lazy imports, caches, the thread pool.
    runner.calls(20)
    runner.streams(1)
    runner.in_flight(2 * IN_FLIGHT, 30)
    answer({"ready": True, "pid": os.getpid()})
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


if __name__ == "__main__":
    main()
