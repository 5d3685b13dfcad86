"""
What issue 18 promised beyond the fault table: errors that travel (copy, pickle, shared with waiters), no
stale failure after an interrupted resolution, every connection released by `close()` after faults, and one
chunk per server event however the bytes arrive (through Hayhooks' OpenAI-compatible route too).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import (
    APITimeoutError,
    HuggingFaceAPIError,
    HuggingFaceAPIGenerator,
)
from haystack_integrations.generators.hugging_face_api import errors as error_module
from tests.fakes import FakeTGI, Fault
from tests.fakes.chaos import ChaosRelay
from tests.fakes.raw import ScriptedServer, tgi_stream
from tests.helpers import Chunks

TOKENS = [f" t{i}" for i in range(10)]


# --- errors that travel -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", error_module.__all__)
def test_every_error_copies_and_pickles_with_its_attributes(name: str) -> None:
    cls = getattr(error_module, name)
    extra = {"phase": "read"} if cls is APITimeoutError else {}
    error = cls("POST http://x/generate failed", **extra)
    error.status_code, error.server_message, error.error_type = 503, "busy", "overloaded"
    error.retry_after, error.delivered_text = 2.5, "Hello"
    for again in (copy.copy(error), copy.deepcopy(error), pickle.loads(pickle.dumps(error))):
        assert type(again) is cls
        assert vars(again) == vars(error)
        assert str(again) == str(error) and again.args == error.args


@pytest.fixture
def silent_info() -> Any:
    """A TGI whose /info never answers in time: every route resolution times out."""
    with FakeTGI() as server:
        for _ in range(64):
            server.faults_for("GET", "/info").append(Fault.delay(5))
        yield server


def test_threads_queued_behind_a_resolution_that_times_out_get_its_class(silent_info: FakeTGI) -> None:
    api_params = {"url": silent_info.url, "timeout": {"read": 0.3}, "max_retries": 0}
    generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)

    def attempt(_: int) -> BaseException | None:
        try:
            generator.run("q")
        except BaseException as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    assert all(type(o) is APITimeoutError and o.phase == "read" for o in outcomes), outcomes


async def test_tasks_queued_behind_a_resolution_that_times_out_get_its_class(silent_info: FakeTGI) -> None:
    api_params = {"url": silent_info.url, "timeout": {"read": 0.3}, "max_retries": 0}
    generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)
    outcomes = await asyncio.gather(*(generator.run_async("q") for _ in range(4)), return_exceptions=True)
    await generator.close_async()
    assert all(type(o) is APITimeoutError and o.phase == "read" for o in outcomes), outcomes


async def test_a_cancelled_resolution_leaves_no_failure_for_the_next_caller() -> None:
    with FakeTGI() as server:
        server.faults_for("GET", "/info").append(Fault.status(500, {"error": "down"}))
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "max_retries": 0})
        with pytest.raises(HuggingFaceAPIError):
            await generator.warm_up_async()  # a failed resolution: its failure is kept for its waiters
        server.faults_for("GET", "/info").append(Fault.delay(2))
        resolving = asyncio.create_task(generator.warm_up_async())
        await asyncio.sleep(0.3)
        resolving.cancel()  # interrupted while waiting for /info
        with pytest.raises(asyncio.CancelledError):
            await resolving
        probes = sum(1 for r in server.requests if r.path == "/info")
        # A caller that read the count before the cancelled resolution is not handed the old failure.
        result = await generator.run_async("q")
        assert result["replies"]
        assert sum(1 for r in server.requests if r.path == "/info") == probes + 1  # it resolved for real
        await generator.close_async()


# --- close() after faults ---------------------------------------------------------------------------


def test_close_releases_every_connection_after_faults_on_64_threads() -> None:
    with FakeTGI() as tgi, ChaosRelay(tgi.port, share=0.4, seed=7) as relay:
        api_params = {"url": relay.url, "protocol": "tgi", "max_retries": 0, "timeout": {"read": 0.5}}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)

        def call(index: int) -> None:
            with contextlib.suppress(HuggingFaceAPIError):
                generator.run("q", streaming_callback=(lambda chunk: None) if index % 2 else None)

        while True:  # the route probe may meet a fault too
            with contextlib.suppress(HuggingFaceAPIError):
                generator.warm_up()
                break
        with ThreadPoolExecutor(max_workers=64) as pool:
            list(pool.map(call, range(1000)))
        assert sum(relay.broken.values()) > 30  # the faults happened (to 40% of the connections)
        assert relay.open_connections > 0  # kept-alive connections, before close()
        generator.close()
        assert _eventually(lambda: relay.open_connections == 0), relay.open_connections


def test_close_async_releases_every_connection_after_faults_on_256_tasks() -> None:
    with FakeTGI() as tgi, ChaosRelay(tgi.port, share=0.4, seed=8) as relay:
        api_params = {"url": relay.url, "protocol": "tgi", "max_retries": 0, "timeout": {"read": 0.5}}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)

        async def main() -> int:
            while not await _resolved(generator.warm_up_async()):  # the route probe may meet a fault too
                pass
            in_flight = asyncio.Semaphore(256)

            async def call(index: int) -> None:
                async with in_flight:
                    with contextlib.suppress(HuggingFaceAPIError):
                        callback = (lambda chunk: None) if index % 2 else None
                        await generator.run_async("q", streaming_callback=callback)

            await asyncio.gather(*(call(i) for i in range(1000)))
            open_before = relay.open_connections
            await generator.close_async()
            return open_before

        assert asyncio.run(main()) > 0
        assert sum(relay.broken.values()) > 30
        assert _eventually(lambda: relay.open_connections == 0), relay.open_connections


async def _resolved(warm_up: Any) -> bool:
    try:
        await warm_up
    except HuggingFaceAPIError:
        return False
    return True


def _eventually(check: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


# --- one chunk per server event ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["run", "run_async"])
def test_a_stream_written_in_one_piece_gives_one_chunk_per_event(mode: str) -> None:
    with ScriptedServer(then=tgi_stream(TOKENS)) as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "protocol": "tgi"})
        chunks = Chunks()
        if mode == "run":
            generator.run("q", streaming_callback=chunks)
        else:
            asyncio.run(generator.run_async("q", streaming_callback=chunks))
    assert [c.content for c in chunks.received] == TOKENS
    assert [c.start for c in chunks.received] == [True] + [False] * 9
    assert chunks.received[-1].finish_reason == "stop"


def test_a_slow_callback_still_gets_one_chunk_per_event() -> None:
    # While the callback sleeps, the server's next events arrive together in the socket's buffer.
    with FakeTGI(tokens=TOKENS) as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        received: list[str] = []
        lock = threading.Lock()

        def slow(chunk: Any) -> None:
            with lock:
                received.append(chunk.content)
            time.sleep(0.05)

        generator.run("q", streaming_callback=slow)
    assert received[:10] == TOKENS
