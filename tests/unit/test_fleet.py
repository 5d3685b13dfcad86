"""The fleet's decisions, driven by hand with a clock of our own: balancing, admission, health."""

from __future__ import annotations

import random

import pytest

from haystack_integrations.generators.hugging_face_api._fleet import (
    COOLDOWN,
    INITIAL_LIMIT,
    Admission,
    Fleet,
    Lease,
    Outcome,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fleet(
    urls: int = 2,
    admission: Admission = Admission(),  # noqa: B008
    clock: Clock | None = None,
    spare: bool = True,
) -> Fleet:
    return Fleet([f"http://r{i}" for i in range(urls)], admission, clock or Clock(), random.Random(1), spare=spare)


def test_requests_go_to_the_less_loaded_of_two_replicas() -> None:
    two = fleet(2)
    leases = [two.acquire() for _ in range(10)]
    assert all(lease is not None for lease in leases)
    assert [r.in_flight for r in two.replicas] == [5, 5]  # two choices among two: always the less loaded


def test_a_replica_with_a_higher_limit_takes_more() -> None:
    two = fleet(2)
    two.replicas[0].limit, two.replicas[1].limit = 20, 10
    for _ in range(30):
        assert two.acquire() is not None
    assert [r.in_flight for r in two.replicas] == [20, 10]
    assert two.acquire() is None  # both full: the caller waits


def test_a_full_fleet_wakes_a_waiter_when_a_slot_frees() -> None:
    one = fleet(1, Admission("fixed", 1))
    lease = one.acquire()
    assert lease is not None and one.acquire() is None
    woken: list[str] = []
    one.wait(lambda: woken.append("first"))
    one.wait(lambda: woken.append("second"))
    one.release(lease, Outcome.ANSWERED)
    assert woken == ["first"]  # one slot, one waiter, in order of arrival


def test_the_adaptive_limit_grows_with_successes_and_falls_on_overload() -> None:
    clock = Clock()
    one = fleet(1, clock=clock)
    replica = one.replicas[0]
    assert replica.limit == INITIAL_LIMIT  # generous until the replica says or shows otherwise
    replica.limit = 64.0
    for _ in range(64):
        lease = one.acquire()
        assert lease is not None
        one.release(lease, Outcome.ANSWERED, first_byte=0.01)
    assert replica.limit == 65  # +1 per limit's worth of successes
    clock.now += 1
    accepted = [one.acquire() for _ in range(3)]  # the replica is generating these
    refused = [one.acquire() for _ in range(5)]
    for lease in refused[:2]:  # two refusals of one overload: one decrease (x0.7), not two
        assert lease is not None
        one.release(lease, Outcome.OVERLOADED)
    assert replica.limit == pytest.approx(7 * 0.7)  # refused while holding 7: at most that, then x0.7
    for lease in refused[2:]:  # the last refusals come back while it holds the 3 it took: its capacity
        assert lease is not None
        one.release(lease, Outcome.OVERLOADED)
    assert replica.limit == 3 and replica.refused == 5
    assert all(lease is not None for lease in accepted)


def test_rising_time_to_first_byte_lowers_the_limit() -> None:
    clock = Clock()
    one = fleet(1, clock=clock)
    lease = one.acquire()
    assert lease is not None
    one.release(lease, Outcome.ANSWERED, first_byte=0.05)
    clock.now += 1
    lease = one.acquire()
    assert lease is not None
    one.release(lease, Outcome.ANSWERED, first_byte=0.5)  # ten times the best: the replica queues
    assert one.replicas[0].limit == pytest.approx(INITIAL_LIMIT * 0.7)


def test_retry_after_closes_a_replica_until_then() -> None:
    clock = Clock()
    one = fleet(1, clock=clock)
    lease = one.acquire()
    assert lease is not None
    one.release(lease, Outcome.OVERLOADED, retry_after=2)
    assert one.acquire() is None
    assert one.next_change() == pytest.approx(2)
    clock.now += 2
    assert one.acquire() is not None


def test_the_server_capacity_bounds_the_limit() -> None:
    one = fleet(1)
    one.seed(one.replicas[0].base_url, 8)
    assert [one.acquire() is not None for _ in range(9)] == [True] * 8 + [False]


def take(fleet_: Fleet, replica_index: int) -> Lease:
    """A lease on one replica in particular (the others made full for a moment)."""
    others = [r for i, r in enumerate(fleet_.replicas) if i != replica_index]
    saved = [r.limit for r in others]
    for r in others:
        r.limit = 0
    lease = fleet_.acquire()
    for r, limit in zip(others, saved, strict=True):
        r.limit = limit
    assert lease is not None and lease.replica is fleet_.replicas[replica_index]
    return lease


def test_an_unreachable_replica_is_left_out_then_tried_with_one_request() -> None:
    clock = Clock()
    two = fleet(2, clock=clock)
    two.release(take(two, 0), Outcome.UNREACHABLE)
    assert {two.acquire().replica.base_url for _ in range(5)} == {"http://r1"}  # type: ignore[union-attr]
    clock.now += COOLDOWN
    probe = take(two, 0)  # back after the cooldown, on probation: one request at a time
    with pytest.raises(AssertionError):
        take(two, 0)
    two.release(probe, Outcome.ANSWERED)
    assert two.replicas[0].on_probation is False


def test_repeated_5xx_leave_a_replica_out_and_a_failed_probation_doubles_the_cooldown() -> None:
    clock = Clock()
    one = fleet(1, clock=clock)
    for _ in range(3):
        one.release(take(one, 0), Outcome.FAILED)
    assert one.cannot_serve and one.next_change() == pytest.approx(COOLDOWN)
    clock.now += COOLDOWN
    one.release(take(one, 0), Outcome.FAILED)  # the probe fails: out again, for longer
    assert one.next_change() == pytest.approx(2 * COOLDOWN)


def test_overload_is_not_failure() -> None:
    one = fleet(1)
    for _ in range(10):
        one.release(take(one, 0), Outcome.OVERLOADED)
    assert not one.cannot_serve


def test_a_failed_request_goes_to_another_replica_when_there_is_one() -> None:
    two = fleet(2)
    first = take(two, 0)
    assert all(two.acquire(avoid=first.replica).replica is two.replicas[1] for _ in range(3))  # type: ignore[union-attr]


def test_admission_off_never_waits_and_parses_its_forms() -> None:
    off = fleet(1, Admission.parse("off"))
    assert all(off.acquire() is not None for _ in range(5000))
    assert Admission.parse(None) == Admission.parse("adaptive") == Admission()
    assert Admission.parse(8) == Admission("fixed", 8)
    for wrong in (0, -1, True, "fast", 2.5):
        with pytest.raises(ValueError, match=r"api_params\['admission'\]"):
            Admission.parse(wrong)


def test_a_lone_replica_without_a_fallback_is_never_left_out() -> None:
    one = fleet(1, spare=False)
    for _ in range(5):
        one.release(take(one, 0), Outcome.UNREACHABLE)
    assert not one.cannot_serve and one.next_change() is None  # its callers try it again, after their backoff


def test_a_sleeping_replica_is_closed_until_it_says_or_for_a_while() -> None:
    clock = Clock()
    two = fleet(2, clock=clock)
    two.release(take(two, 0), Outcome.ASLEEP, retry_after=3.0)
    assert two.next_change() == pytest.approx(3.0)
    assert two.has_slot() and not two.has_slot(besides=two.replicas[1])
    two.release(take(two, 1), Outcome.ASLEEP)
    assert two.cannot_serve  # every replica asleep: a fallback's turn
    clock.now += 3.0
    assert not two.cannot_serve


def test_a_waiter_queued_with_a_failed_acquire_is_woken_by_the_next_release() -> None:
    one = fleet(1, Admission("fixed", 1))
    lease = take(one, 0)
    woken: list[int] = []
    assert one.acquire(waiter=lambda: woken.append(1)) is None  # queued in the same step: no wake can be missed
    one.release(lease, Outcome.ANSWERED)
    assert woken == [1]


def test_a_replica_that_dies_with_many_requests_in_flight_is_left_out_once() -> None:
    clock = Clock()
    two = fleet(2, clock=clock)
    in_flight = [take(two, 0) for _ in range(32)]
    clock.now += 0.5
    for lease in in_flight:  # the replica dies: every request on it fails at once
        two.release(lease, Outcome.UNREACHABLE)
    replica = two.replicas[0]
    assert replica.unreachable == 32 and replica.cooldowns == 1
    assert two.next_change() == pytest.approx(COOLDOWN)  # the first cooldown, not the longest
    clock.now += COOLDOWN
    two.release(take(two, 0), Outcome.UNREACHABLE)  # still dead when it is tried again: that one counts
    assert replica.cooldowns == 2 and two.next_change() == pytest.approx(2 * COOLDOWN)
