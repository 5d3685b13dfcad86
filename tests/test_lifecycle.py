"""
Haystack 3.4's lifecycle, as pipelines drive it (issue 13): warm-up and close, sync and async, an event
loop that never stalls, `Pipeline.stream()` and what abandoning it does, and the user's callback errors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from haystack import Pipeline
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator, ServerError
from tests.fakes import FakeTGI, Fault
from tests.helpers import TEXT, posts

LONG = [f" word{i}" for i in range(400)]  # a generation that takes 400 x token_delay to stream


def pipeline_with(server: FakeTGI, **api_params: Any) -> tuple[Pipeline, HuggingFaceAPIGenerator]:
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, **api_params})
    pipeline = Pipeline()
    pipeline.add_component("llm", generator)
    return pipeline, generator


class Ticker:
    """A task that measures how long the event loop goes without running it."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def longest_stall(self) -> float:
        return max(self.gaps, default=0.0)


async def test_run_async_never_stalls_the_event_loop_on_a_slow_server_that_first_answers_503(tgi: FakeTGI) -> None:
    tgi.faults_for("GET", "/info").extend([Fault.status(503, headers={"Retry-After": "1"}), Fault.delay(1.0)])
    tgi.faults.extend([Fault.unavailable(retry_after=1), Fault.delay(1.0)])
    pipeline, _ = pipeline_with(tgi)
    with Ticker() as ticker:
        result = await pipeline.run_async({"llm": {"prompt": "q"}})
        streamed: list[str] = []
        await pipeline.run_async({"llm": {"prompt": "q", "streaming_callback": _async_collect(streamed)}})
    await pipeline.close_async()
    assert result["llm"]["replies"] == [TEXT]
    assert "".join(streamed) == TEXT
    assert len(ticker.gaps) > 100
    assert ticker.longest_stall < 0.3, f"the event loop stalled for {ticker.longest_stall:.2f} s"


def _async_collect(into: list[str]) -> Any:
    async def callback(chunk: StreamingChunk) -> None:
        into.append(chunk.content)

    return callback


async def test_warm_up_async_is_idempotent_and_cheap(tgi: FakeTGI) -> None:
    pipeline, generator = pipeline_with(tgi)
    for _ in range(3):
        assert (await pipeline.run_async({"llm": {"prompt": "q"}}))["llm"]["replies"] == [TEXT]
    started = time.perf_counter()
    for _ in range(100):
        await generator.warm_up_async()
        generator.warm_up()
    assert time.perf_counter() - started < 0.1  # a cached route: no request, no work
    assert [r.path for r in tgi.requests].count("/info") == 1
    await pipeline.close_async()


async def test_pipeline_close_async_releases_every_async_connection(tgi: FakeTGI) -> None:
    pipeline, generator = pipeline_with(tgi)
    replies = await asyncio.gather(*(pipeline.run_async({"llm": {"prompt": f"p{i}"}}) for i in range(9)))
    assert all(r["llm"]["replies"] == [TEXT] for r in replies)
    assert tgi.open_connections > 0
    await pipeline.close_async()
    assert tgi.wait_open_connections(0), f"{tgi.open_connections} connections still open"
    # Closing is idempotent, and the generator reconnects when used again.
    await pipeline.close_async()
    assert (await pipeline.run_async({"llm": {"prompt": "again"}}))["llm"]["replies"] == [TEXT]
    await generator.close_async()
    assert tgi.wait_open_connections(0)


def test_pipeline_close_releases_the_sync_connections(tgi: FakeTGI) -> None:
    pipeline, _ = pipeline_with(tgi)
    assert pipeline.run({"llm": {"prompt": "q"}})["llm"]["replies"] == [TEXT]
    assert tgi.wait_open_connections(1)
    pipeline.close()
    assert tgi.wait_open_connections(0)


async def test_pipeline_stream_forwards_the_chunks(tgi: FakeTGI) -> None:
    pipeline, _ = pipeline_with(tgi)
    handle = pipeline.stream({"llm": {"prompt": "q"}})
    chunks = [chunk async for chunk in handle]
    assert "".join(c.content for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    assert handle.result["llm"]["replies"] == [TEXT]
    await pipeline.close_async()


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_abandoning_a_stream_closes_it_so_the_server_stops_generating(how: str) -> None:
    with FakeTGI(tokens=LONG, token_delay=0.02) as server:
        pipeline, _ = pipeline_with(server)
        handle = pipeline.stream({"llm": {"prompt": "q"}})
        received = []
        if how == "aclose":
            async for chunk in handle:
                received.append(chunk.content)
                if len(received) == 3:
                    break
            abandoned = time.monotonic()
            await handle.aclose()
        else:
            three = asyncio.Event()

            async def consume() -> None:
                async for chunk in handle:
                    received.append(chunk.content)
                    if len(received) == 3:
                        three.set()

            task = asyncio.create_task(consume())
            await three.wait()
            abandoned = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        aborted = await asyncio.to_thread(server.wait_aborted, 2.0)
        assert aborted is not None, "the server kept writing: the HTTP stream was not closed"
        assert aborted.at - abandoned < 1.0
        assert aborted.events < len(LONG) // 2
        await pipeline.close_async()


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom("the user's own failure"), ServerError("raised by the callback")])
def test_an_exception_from_the_callback_propagates_unchanged_and_is_never_retried(error: Exception) -> None:
    with FakeTGI(tokens=LONG, token_delay=0.01) as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})

        def callback(chunk: StreamingChunk) -> None:
            raise error

        with pytest.raises(type(error)) as raised:
            generator.run("q", streaming_callback=callback)
        assert raised.value is error
        assert posts(server) == 1
        assert server.wait_aborted(2.0) is not None  # the stream was closed


@pytest.mark.parametrize("error", [Boom("the user's own failure"), ServerError("raised by the callback")])
async def test_an_exception_from_an_async_callback_propagates_unchanged_and_is_never_retried(
    error: Exception,
) -> None:
    with FakeTGI(tokens=LONG, token_delay=0.01) as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})

        async def callback(chunk: StreamingChunk) -> None:
            raise error

        with pytest.raises(type(error)) as raised:
            await generator.run_async("q", streaming_callback=callback)
        assert raised.value is error
        assert posts(server) == 1
        assert await asyncio.to_thread(server.wait_aborted, 2.0) is not None
        await generator.close_async()
