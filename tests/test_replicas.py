"""
Several replicas of one server, and a fallback backend, through real HTTP to fakes on 127.0.0.1: balancing,
a dead replica left out and taken back, retries on another replica before any byte (never after text),
admission instead of retry storms (without stalling the event loop), the fallback in and out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from haystack import Pipeline

from haystack_integrations.generators.hugging_face_api import (
    APIConnectionError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    OverloadedError,
    _fleet,
)
from tests.fakes._common import Fault
from tests.fakes.openai_compat import FakeOpenAI
from tests.fakes.tgi import FakeTGI
from tests.helpers import MODE_IDS, MODES, TEXT, Chunks, call, posts


@pytest.fixture
def replicas() -> Iterator[list[FakeTGI]]:
    with ExitStack() as stack:
        yield [stack.enter_context(FakeTGI()) for _ in range(3)]


def fleet_of(servers: list[Any], **api_params: Any) -> HuggingFaceAPIGenerator:
    params = {"url": [s.url for s in servers], "max_retries": 1, **api_params}
    return HuggingFaceAPIGenerator("text_generation_inference", params)


def many(generator: HuggingFaceAPIGenerator, mode: str, count: int, **kwargs: Any) -> list[Any]:
    """`count` calls at once: threads on `run`, tasks on `run_async`; each result, or the error it raised."""
    if mode == "sync":

        def one(_: int) -> Any:
            try:
                return generator.run("q", **kwargs)
            except Exception as error:  # the test looks at what each call ended with
                return error

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, range(count)))

    async def main() -> list[Any]:
        try:
            return await asyncio.gather(
                *(generator.run_async("q", **kwargs) for _ in range(count)), return_exceptions=True
            )
        finally:
            await generator.close_async()

    return asyncio.run(main())


# --- balancing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
def test_calls_spread_over_the_replicas_and_meta_names_the_one_that_answered(
    replicas: list[FakeTGI], mode: str, stream: bool
) -> None:
    generator = fleet_of(replicas)
    answered: Counter[str] = Counter()
    for _ in range(30):
        result = call(generator, mode, Chunks() if stream else None)
        assert result["replies"] == [TEXT]
        answered[result["meta"][0]["replica"]] += 1
    assert answered == Counter({s.url: posts(s) for s in replicas})  # meta says who answered, truly
    assert all(posts(s) > 0 for s in replicas)  # 30 calls, two random choices each: every replica is used


def test_in_flight_calls_go_to_the_less_loaded_replica(replicas: list[FakeTGI]) -> None:
    for server in replicas:
        server.token_delay = 0.02  # calls overlap
    results = many(fleet_of(replicas), "async", 60)
    assert all(r["replies"] == [TEXT] for r in results)
    counts = sorted(posts(s) for s in replicas)
    assert sum(counts) == 60 and counts[0] >= 10  # balanced by load, not piled on one


def test_a_single_url_keeps_meta_as_it_was(replicas: list[FakeTGI]) -> None:
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": replicas[0].url})
    meta = generator.run("q")["meta"][0]
    assert "replica" not in meta and "backend" not in meta


def test_replicas_may_run_different_engines_each_with_its_own_route() -> None:
    with FakeTGI() as tgi, FakeOpenAI() as other:
        generator = fleet_of([tgi, other])
        protocols = {}
        for _ in range(24):
            meta = generator.run("q")["meta"][0]
            protocols[meta["replica"]] = meta["protocol"]
    assert protocols == {tgi.url: "tgi", other.url: "completions"}


# --- health: left out, taken back, retried elsewhere ------------------------------------------------------


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
def test_a_dead_replica_is_left_out_and_every_call_is_answered_by_the_others(
    replicas: list[FakeTGI], mode: str, stream: bool
) -> None:
    generator = fleet_of(replicas, max_retries=1)
    generator.warm_up()
    dead = replicas[0]
    dead.stop()
    for _ in range(20):
        assert call(generator, mode, Chunks() if stream else None)["replies"] == [TEXT]
    fleet = generator._connection.core.fleet
    assert fleet is not None
    replica = fleet.replica(dead.url)
    assert replica.unreachable == 1  # tried once, then left out for its cooldown: no request per call
    assert sum(posts(s) for s in replicas[1:]) == 20


def test_a_replica_dead_at_warm_up_does_not_fail_it_but_all_dead_does(replicas: list[FakeTGI]) -> None:
    replicas[0].stop()
    generator = fleet_of(replicas)
    generator.warm_up()  # two of three answered
    assert generator.run("q")["replies"] == [TEXT]
    for server in replicas[1:]:
        server.stop()
    with pytest.raises(Exception, match="could not connect"):
        fleet_of(replicas).warm_up()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_when_every_replica_is_dead_calls_fail_on_their_retry_budget_not_after_the_cooldowns(
    replicas: list[FakeTGI], mode: str
) -> None:
    generator = fleet_of(replicas, max_retries=2)
    generator.warm_up()
    for server in replicas:
        server.stop()
    results = many(generator, mode, 6)
    assert all(isinstance(r, APIConnectionError) for r in results), results
    fleet = generator._connection.core.fleet
    assert fleet is not None and fleet.all_out
    # Each call made its three attempts (some on left-out replicas), as it would against a lone dead server.
    assert sum(r.unreachable for r in fleet.replicas) == 6 * 3


def test_a_replica_comes_back_after_its_cooldown(monkeypatch: pytest.MonkeyPatch, replicas: list[FakeTGI]) -> None:
    monkeypatch.setattr(_fleet, "COOLDOWN", 0.3)
    generator = fleet_of(replicas)
    generator.warm_up()
    dead = replicas[0]
    dead.stop()
    while generator._connection.core.fleet.replica(dead.url).unreachable == 0:  # type: ignore[union-attr]
        generator.run("q")
    dead.restart()
    time.sleep(0.35)  # the cooldown
    for _ in range(30):
        generator.run("q")
    assert posts(dead) > 0  # taken back: first one request (probation), then its share
    replica = generator._connection.core.fleet.replica(dead.url)  # type: ignore[union-attr]
    assert not replica.on_probation and replica.cooldowns == 0


def test_repeated_5xx_leave_a_replica_out(replicas: list[FakeTGI]) -> None:
    failing = replicas[0]
    failing.faults.extend([Fault.status(500, "boom")] * 50)
    generator = fleet_of(replicas, max_retries=3)
    for _ in range(30):
        assert generator.run("q")["replies"] == [TEXT]  # each 500 retried on another replica
    assert posts(failing) == 3  # three in a row, then out for the cooldown


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
def test_a_failure_before_any_byte_is_retried_on_another_replica_at_once(
    replicas: list[FakeTGI], mode: str, stream: bool
) -> None:
    broken = replicas[0]
    broken.faults.extend([Fault.close_without_response()] * 30)
    generator = fleet_of(replicas, max_retries=1)
    for _ in range(20):  # max_retries 1: the call that hits the broken replica succeeds on its one retry
        assert call(generator, mode, Chunks() if stream else None)["replies"] == [TEXT]
    assert posts(broken) == 1  # reset before any byte, once: left out since
    assert sum(posts(s) for s in replicas[1:]) == 20


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_cut_after_text_is_never_retried_on_another_replica(replicas: list[FakeTGI], mode: str) -> None:
    for server in replicas:
        server.faults.append(Fault.reset(after_events=2))  # whichever replica answers cuts after two tokens
    generator = fleet_of(replicas, max_retries=3)
    chunks = Chunks()
    with pytest.raises(IncompleteStreamError) as raised:
        call(generator, mode, chunks)
    assert raised.value.delivered_text == chunks.text != ""
    assert sum(posts(s) for s in replicas) == 1


# --- admission ------------------------------------------------------------------------------------------


def busy(server: FakeTGI, admits: int) -> FakeTGI:
    """A server that takes `admits` generations at once and refuses more with TGI's 429 overloaded."""
    server.max_concurrent = admits
    server.token_delay = 0.01
    return server


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_overload_goes_to_admission_not_to_the_callers_retries(mode: str) -> None:
    with FakeTGI() as server:
        busy(server, 4)
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "max_retries": 0})
        results = many(generator, mode, 32)
    assert all(not isinstance(r, Exception) and r["replies"] == [TEXT] for r in results), results
    assert server.refused < 32  # refusals lower the limit; they are not each caller's retry storm


def test_without_admission_the_same_overload_fails_callers() -> None:
    with FakeTGI() as server:
        busy(server, 4)
        api_params = {"url": server.url, "max_retries": 0, "admission": "off"}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)
        results = many(generator, "async", 32)
    assert any(isinstance(r, OverloadedError) for r in results)  # what admission spares its users


def test_a_single_call_refused_for_overload_keeps_its_retry_budget() -> None:
    with FakeTGI() as server:
        server.faults.extend([Fault.overloaded()] * 5)
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "max_retries": 1})
        with pytest.raises(OverloadedError):
            generator.run("q")
        assert posts(server) == 2  # nothing of ours in flight to make room: max_retries decides, as before


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_fixed_admission_caps_what_each_replica_has_in_flight(replicas: list[FakeTGI], mode: str) -> None:
    for server in replicas:
        server.token_delay = 0.01
    results = many(fleet_of(replicas, admission=2), mode, 24)
    assert all(r["replies"] == [TEXT] for r in results)
    assert [s.most_in_flight for s in replicas] == [2, 2, 2]


def test_what_tgi_says_of_its_capacity_seeds_the_limit() -> None:
    with FakeTGI(max_concurrent_requests=3) as server:
        busy(server, 3)
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "max_retries": 0})
        results = many(generator, "async", 24)
    assert all(r["replies"] == [TEXT] for r in results)
    assert server.most_in_flight == 3 and server.refused == 0  # never sent what it said it cannot take


def test_waiting_for_admission_does_not_stall_the_event_loop() -> None:
    with FakeTGI() as server:
        server.token_delay = 0.02
        api_params = {"url": server.url, "admission": 1}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)
        gaps: list[float] = []

        async def ticker(stop: asyncio.Event) -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def main() -> list[Any]:
            stop = asyncio.Event()
            tick = asyncio.ensure_future(ticker(stop))
            try:
                return await asyncio.gather(*(generator.run_async("q") for _ in range(12)))
            finally:
                stop.set()
                await tick
                await generator.close_async()

        results = asyncio.run(main())
    assert all(r["replies"] == [TEXT] for r in results)
    assert server.most_in_flight == 1
    one_call = len(TEXT.split()) * 0.02  # each call holds the only slot for about this long
    assert max(gaps) < one_call  # 11 callers waited, the loop went on ticking meanwhile


def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    with FakeTGI() as server:
        server.token_delay = 0.02
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url, "admission": 1})

        async def main() -> Any:
            first = asyncio.ensure_future(generator.run_async("q"))
            await asyncio.sleep(0.01)
            waiter = asyncio.ensure_future(generator.run_async("q"))
            last = asyncio.ensure_future(generator.run_async("q"))
            await asyncio.sleep(0.01)
            waiter.cancel()
            try:
                return await asyncio.wait_for(asyncio.gather(first, last), timeout=10)
            finally:
                await generator.close_async()

        results = asyncio.run(main())
    assert [r["replies"] for r in results] == [[TEXT], [TEXT]]


# --- the fallback ---------------------------------------------------------------------------------------


def with_fallback(primary: str | list[str], fallback: FakeTGI, api_type: str = "text_generation_inference") -> Any:
    api_params = {
        "url": primary,
        "max_retries": 1,
        "fallback": {"api_type": "text_generation_inference", "api_params": {"url": fallback.url}},
    }
    return HuggingFaceAPIGenerator(api_type, api_params)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
def test_the_fallback_answers_while_the_primary_is_out_and_hands_back(
    monkeypatch: pytest.MonkeyPatch, mode: str, stream: bool
) -> None:
    monkeypatch.setattr(_fleet, "COOLDOWN", 0.3)
    with FakeTGI() as primary, FakeTGI() as fallback:
        generator = with_fallback(primary.url, fallback)
        assert call(generator, mode, None)["meta"][0]["backend"] == "primary"
        primary.stop()
        result = call(generator, mode, Chunks() if stream else None)
        assert result["replies"] == [TEXT] and result["meta"][0]["backend"] == "fallback"
        assert call(generator, mode, None)["meta"][0]["backend"] == "fallback"  # still out: straight there
        primary.restart()
        time.sleep(0.35)
        assert call(generator, mode, None)["meta"][0]["backend"] == "primary"  # ready again: it takes over
        assert posts(fallback) == 2


def test_the_fallback_answers_while_an_inference_endpoint_scales_up() -> None:
    with FakeTGI() as endpoint, FakeTGI() as fallback:
        generator = with_fallback(endpoint.url, fallback, "inference_endpoints")
        generator.warm_up()
        endpoint.faults.append(Fault.unavailable(retry_after=1))
        result = generator.run("q")
        assert result["replies"] == [TEXT] and result["meta"][0]["backend"] == "fallback"
        asked = [r for r in endpoint.requests if r.method == "POST"]
        assert "x-scale-up-timeout" not in {k.lower() for k in asked[0].headers}  # a 503 at once, not a hold
        assert generator.run("q")["meta"][0]["backend"] == "fallback"  # its Retry-After: 1 s
        time.sleep(1.05)
        assert generator.run("q")["meta"][0]["backend"] == "primary"


def test_the_fallback_answers_an_endpoint_asleep_before_its_route_is_known() -> None:
    with FakeTGI() as endpoint, FakeTGI() as fallback:
        endpoint.faults_for("GET", "/info").append(Fault.unavailable(retry_after=5))  # scaled to zero: the probe
        generator = with_fallback(endpoint.url, fallback, "inference_endpoints")
        result = generator.run("q")  # no warm-up: the first call finds it asleep
        assert result["meta"][0]["backend"] == "fallback" and posts(endpoint) == 0


def test_warm_up_does_not_fail_a_pipeline_whose_fallback_can_answer() -> None:
    with FakeTGI() as primary, FakeTGI() as fallback:
        primary.stop()
        pipeline = Pipeline()
        pipeline.add_component("llm", with_fallback(primary.url, fallback))
        result = pipeline.run({"llm": {"prompt": "q"}})  # Pipeline.run warms up first
        assert result["llm"]["meta"][0]["backend"] == "fallback"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_callers_queued_for_a_slot_end_when_every_replica_dies(replicas: list[FakeTGI], mode: str) -> None:
    for server in replicas:
        server.token_delay = 0.05
    generator = fleet_of(replicas, admission=1, max_retries=1)
    generator.warm_up()
    stopper = threading.Timer(0.2, lambda: [server.stop() for server in replicas])  # 3 in flight, 6 queued
    stopper.start()
    started = time.monotonic()
    results = many(generator, mode, 9)
    stopper.join()
    assert all(isinstance(r, Exception) for r in results[3:]), results  # queued: failed, not left waiting
    assert time.monotonic() - started < 30  # a liveness guard: ended by retries and timeouts, not cooldowns


def test_a_fallback_never_takes_over_a_stream_that_delivered_text() -> None:
    with FakeTGI() as primary, FakeTGI() as fallback:
        primary.faults.append(Fault.reset(after_events=2))
        generator = with_fallback(primary.url, fallback)
        with pytest.raises(IncompleteStreamError):
            generator.run("q", streaming_callback=Chunks())
        assert posts(fallback) == 0


# --- settings -------------------------------------------------------------------------------------------


def test_replicas_admission_and_fallback_round_trip_through_yaml(replicas: list[FakeTGI]) -> None:
    generator = with_fallback([s.url for s in replicas[:2]], replicas[2])
    generator.api_params["admission"] = 16
    pipeline = Pipeline()
    pipeline.add_component("llm", generator)
    loaded = Pipeline.loads(pipeline.dumps())
    again: Any = loaded.get_component("llm")
    assert again.api_params == generator.api_params
    assert again.run("q")["meta"][0]["backend"] == "primary"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ([], r"api_params\['url'\] is an empty list"),
        (["http://127.0.0.1:1", "http://127.0.0.1:1/"], r"api_params\['url'\]\[1\] repeats"),
        (["http://127.0.0.1:1", "http://127.0.0.1:1/v1"], r"api_params\['url'\]\[1\] repeats"),
        (["http://127.0.0.1:1", "ftp://x"], r"api_params\['url'\]\[1\] must be an http"),
    ],
)
def test_bad_replica_lists_are_refused_by_name(url: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HuggingFaceAPIGenerator("text_generation_inference", {"url": url})


def test_bad_admission_and_fallback_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"api_params\['admission'\]"):
        HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://127.0.0.1:1", "admission": "lots"})
    fallback = {"api_type": "serverless_inference_api", "api_params": {}}
    with pytest.raises(ValueError, match=r"api_params\['fallback'\]\['api_params'\]\['model'\] is required"):
        HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://127.0.0.1:1", "fallback": fallback})


def test_threads_and_event_loops_share_one_fleet(replicas: list[FakeTGI]) -> None:
    for server in replicas:
        server.token_delay = 0.01
    generator = fleet_of(replicas, admission=1)
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            asyncio.run(generator.run_async("q"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=in_a_thread) for _ in range(4)] + [
        threading.Thread(target=generator.run, args=("q",)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and all(not t.is_alive() for t in threads)
    assert max(s.most_in_flight for s in replicas) == 1  # one limit, whatever thread or loop asks


def test_the_readme_replicas_yaml_loads_as_written() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Replicas, admission and a fallback", 1)[1].split("\n## ", 1)[0]
    yaml_text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    llm: Any = Pipeline.loads(yaml_text).get_component("llm")
    assert len(llm.api_params["url"]) == 2
    fallback = llm._current().core.fallback
    assert fallback is not None and fallback.settings.model == "HuggingFaceTB/SmolLM3-3B"
