"""Concurrency and resources: one pool per generator, shared by many tasks and threads, released on close."""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator, ServerError
from tests.fakes import FakeTGI, Fault

TEXT = "Natural Language Processing is a field."
CONCURRENT = 200


def client_connections(server_port: int) -> int:
    """Open TCP connections from this machine to the server's port, read from the kernel's table."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            state = fields[3]
            if remote_port == server_port and state == "01":  # ESTABLISHED, client side
                count += 1
    return count


def wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


async def test_200_concurrent_run_async_share_one_pool_and_release_it() -> None:
    with FakeTGI(token_delay=0.01) as server:
        port = int(server.url.rsplit(":", 1)[1])
        baseline = client_connections(port)
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        results = await asyncio.gather(*(generator.run_async(f"prompt {i}") for i in range(CONCURRENT)))
        assert [r["replies"] for r in results] == [[TEXT]] * CONCURRENT
        first_wave = client_connections(port) - baseline
        assert 1 <= first_wave <= CONCURRENT

        # A second wave reuses the kept-alive connections: never more connections than requests in flight.
        results = await asyncio.gather(*(generator.run_async(f"again {i}") for i in range(CONCURRENT)))
        assert all(r["replies"] == [TEXT] for r in results)
        assert client_connections(port) - baseline <= CONCURRENT

        await generator.aclose()
        assert wait_for(lambda: client_connections(port) <= baseline)


def test_run_is_safe_from_many_threads_and_close_releases_sockets() -> None:
    with FakeTGI() as server:
        port = int(server.url.rsplit(":", 1)[1])
        baseline = client_connections(port)
        with HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url}) as generator:
            with ThreadPoolExecutor(max_workers=16) as pool:
                replies = list(pool.map(lambda i: generator.run(f"p{i}")["replies"][0], range(100)))
            assert replies == [TEXT] * 100
            assert [r.path for r in server.requests].count("/info") == 1
            assert client_connections(port) - baseline <= 16
        gc.collect()
        assert wait_for(lambda: client_connections(port) <= baseline)


def test_generator_reconnects_after_close() -> None:
    with FakeTGI() as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        assert generator.run("a")["replies"] == [TEXT]
        generator.close()
        assert generator.run("b")["replies"] == [TEXT]
        generator.close()


def test_run_async_from_successive_event_loops() -> None:
    # AsyncPipeline users call asyncio.run repeatedly; a client bound to a closed loop must not be reused.
    with FakeTGI() as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        for _ in range(3):
            assert asyncio.run(generator.run_async("q"))["replies"] == [TEXT]


def test_one_async_pool_per_event_loop_and_none_left_for_closed_loops() -> None:
    with FakeTGI() as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        for _ in range(3):
            assert asyncio.run(generator.run_async("q"))["replies"] == [TEXT]
            # asyncio.run shut the loop down: the loop's sessions closed their connections on it.
            assert wait_for(lambda: server.open_connections == 0)
        gc.collect()
        assert generator._connection.async_client is not None
        assert len(generator._connection.async_client._loops) <= 1  # the states of collected loops are gone
        generator.close()
        assert len(generator._connection.async_client._loops) == 0


def test_close_from_async_code_never_drives_another_loop() -> None:
    with FakeTGI() as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        other = asyncio.new_event_loop()  # an open, idle loop with a session of its own
        other.run_until_complete(generator.run_async("q"))

        async def main() -> None:
            assert (await generator.run_async("q"))["replies"] == [TEXT]
            generator.close()  # must not try to run `other` from inside this running loop
            await generator.close_async()

        asyncio.run(main())
        assert server.wait_open_connections(1)  # other's connection: only `other` may close it
        other.run_until_complete(generator.close_async())
        other.close()
        assert wait_for(lambda: server.open_connections == 0)
        generator.close()
        assert generator._connection.async_client is not None
        assert len(generator._connection.async_client._loops) == 0


def _refused_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_callers_queued_behind_a_failing_route_resolution_share_its_failure() -> None:
    from haystack_integrations.generators.hugging_face_api import APIConnectionError

    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": _refused_url(), "max_retries": 2})

    def attempt(_: int) -> float:
        started = time.monotonic()
        try:
            generator.run("q")
        except APIConnectionError:
            return time.monotonic() - started
        raise AssertionError("expected a connection error")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(attempt, range(8)))
    one = time.monotonic() - started
    assert generator._connection.core.resolutions == 1  # not one resolution per waiting thread
    assert one < 6  # ~one resolution with its retries, not eight in a row


async def test_tasks_queued_behind_a_failing_route_resolution_share_its_failure() -> None:
    from haystack_integrations.generators.hugging_face_api import APIConnectionError

    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": _refused_url(), "max_retries": 2})
    outcomes = await asyncio.gather(*(generator.run_async("q") for _ in range(8)), return_exceptions=True)
    assert all(isinstance(o, APIConnectionError) for o in outcomes)
    assert generator._connection.core.resolutions == 1
    await generator.close_async()


def test_a_later_call_resolves_the_route_again() -> None:
    with FakeTGI() as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "max_retries": 0})
        server.faults_for("GET", "/info").append(Fault.status(503))
        with pytest.raises(ServerError):
            generator.run("q")
        assert generator.run("q")["replies"] == [TEXT]  # the failure is not cached for later calls
