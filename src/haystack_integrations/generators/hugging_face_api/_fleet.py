"""
Several replicas of one server, used as one: which replica takes the next request (balancing), how many
requests each may have in flight (admission), and which are left out for a while (passive health).

Decisions only, and thread-safe: the sync client's threads and the async client's event loops share one
fleet. A request takes a `Lease` on a replica and gives it back with what happened (`Outcome`); a caller
that finds every replica full waits in the client (its own way: a thread blocks, a task awaits), woken in
order of arrival when a slot frees or a left-out replica's cooldown ends.

- **Balancing**: two replicas picked at random among those with a free slot; the request goes to the one
  less loaded, relative to its limit (so a replica that serves twice as fast, and so earns twice the limit,
  takes twice the requests).
- **Admission**: each replica's limit adapts, additive increase and multiplicative decrease, in the spirit of
  TCP Vegas and Netflix's concurrency-limits. It starts generous (`INITIAL_LIMIT`: the client never caps an
  engine that serves hundreds); +1 per limit's worth of successes while the time to the first byte stays near
  its best; when the replica refuses for overload (429, TGI's `overloaded`, a busy 503), down to what it held
  of ours at that moment, and x0.7 once per round; x0.7 too when the time to first byte climbs past twice its
  best. A `Retry-After` closes the replica to new requests
  until then. What the server says of its own capacity bounds the limit, and seeds it: TGI's `max_batch_size`
  when set (more in flight only queues in the server, and a queue there cannot move to a replica that frees
  up sooner), else its `max_concurrent_requests`. The latency signal is read on streams only (a one-piece
  answer's first byte is its whole generation). A limit given as a number is fixed; `"off"` admits
  everything (the server refuses what it must).
- **Health**: a replica that cannot be reached (a connect failure, a reset before any byte) or that fails
  three times in a row (500/502/504, a broken answer) is left out for a cooldown (2 s, doubling up to 60 s
  while it keeps failing; the requests it had in flight when it died count once), then tried with one request
  at a time until one succeeds. A lone replica without a fallback is never left out. Overload is not failure:
  an overloaded replica keeps serving, at a lower limit. No request is ever sent only to check health.
  Waiters look again when a replica is left out or closed, and at least every `RECHECK` seconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)


class Outcome(Enum):
    """What happened to a request, as far as its replica's health and limit are concerned."""

    #: The replica answered (an error of the request's own, such as a 422, included): it is working.
    ANSWERED = "answered"
    #: Refused for overload: 429, TGI's `overloaded`, a 503 from a busy engine.
    OVERLOADED = "overloaded"
    #: Not reached: a connect failure, a reset or a broken answer before any byte of it.
    UNREACHABLE = "unreachable"
    #: 500, 502 or 504.
    FAILED = "failed"
    #: An Inference Endpoint scaling up from zero, or paused: closed to requests for a while (a fallback's turn).
    ASLEEP = "asleep"
    #: Neither (a read timeout, a cancellation, a cut stream): says nothing about the replica.
    UNKNOWN = "unknown"


#: The limit of an adaptive replica before it says anything of its capacity: generous (as if off), so that the
#: client never limits an engine that serves hundreds at once; the first refusals bring it to what the replica
#: held then, and TGI's `/info` to what it says it takes.
INITIAL_LIMIT = 1024.0
MIN_LIMIT = 1.0
MAX_LIMIT = 1024.0
DECREASE = 0.7
#: Time to first byte beyond this multiple of the best seen counts as the replica queueing.
LATENCY_TOLERANCE = 2.0
FAILURES_BEFORE_COOLDOWN = 3
COOLDOWN = 2.0
MAX_COOLDOWN = 60.0
#: The longest a caller waits for a slot before it looks again by itself (a safety net: waiters are woken).
RECHECK = 1.0
#: How long a sleeping replica is left alone (unless it says, with Retry-After) before it is asked again.
WAKE_RECHECK = 10.0


@dataclass(frozen=True, slots=True)
class Admission:
    """`api_params["admission"]`: `"adaptive"` (default), `"off"`, or a fixed limit per replica."""

    mode: str = "adaptive"
    fixed: int = 0

    @staticmethod
    def parse(value: Any) -> Admission:
        if value is None or value == "adaptive":
            return Admission()
        if value == "off":
            return Admission("off")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return Admission("fixed", value)
        raise ValueError(
            f"api_params['admission'] must be 'adaptive', 'off' or a number of requests per replica >= 1, got {value!r}"
        )


@dataclass(eq=False)
class Replica:
    """One server of the fleet and what the fleet knows of it. Changed only under the fleet's lock."""

    base_url: str
    limit: float
    #: What the server says it can take (TGI's max_concurrent_requests); the limit never goes past it.
    capacity: float = MAX_LIMIT
    in_flight: int = 0
    closed_until: float = 0.0  # a Retry-After: no new request before then
    out_until: float = 0.0  # left out for a cooldown until then
    on_probation: bool = False  # back from a cooldown: one request at a time until one succeeds
    failures: int = 0  # in a row
    cooldowns: int = 0  # in a row, for the doubling
    best_first_byte: float | None = None
    #: Counters for people (the CLI's progress bar, logs).
    answered: int = 0
    refused: int = 0
    unreachable: int = 0
    successes_since_increase: int = field(default=0, repr=False)
    decreased_at: float = field(default=float("-inf"), repr=False)
    left_out_at: float = field(default=float("-inf"), repr=False)

    def slots(self, now: float, admission: Admission, despite_health: bool = False) -> float:
        """How many more requests it may take now (0 when closed, out, or full; out counts as open `despite_health`)."""
        if now < self.closed_until:
            return 0.0
        if not despite_health:
            if now < self.out_until:
                return 0.0
            if self.on_probation:
                return 1.0 - self.in_flight
        if admission.mode == "off":
            return float("inf")
        limit = admission.fixed if admission.mode == "fixed" else self.limit
        return limit - self.in_flight

    def load(self, admission: Admission) -> float:
        limit = admission.fixed if admission.mode == "fixed" else self.limit
        return self.in_flight / max(limit, 1.0)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """A fleet at one moment: replicas (and how many are not left out), requests in flight and waiting, refusals."""

    replicas: int
    serving: int
    in_flight: int
    waiting: int
    refused: int
    unreachable: int
    limits: tuple[float, ...]


@dataclass(slots=True)  # not frozen: made per request, and a frozen dataclass's __init__ costs more
class Lease:
    """One request's slot on a replica, until it is given back with `Fleet.release`."""

    replica: Replica
    started: float


class Fleet:
    """The replicas of one generator. Safe to share between threads."""

    def __init__(
        self,
        base_urls: Sequence[str],
        admission: Admission = Admission(),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        *,
        spare: bool = False,
    ) -> None:
        self.replicas = [Replica(url, limit=INITIAL_LIMIT) for url in base_urls]
        self.admission = admission
        #: Whether a replica left out has something to stand in for it: another replica, or a fallback (`spare`).
        #: A lone replica without one is never left out: its callers would only wait instead of trying it.
        self.may_leave_out = spare or len(self.replicas) > 1
        self._clock = clock
        self._random = rng or random.Random()
        self._lock = threading.Lock()
        self._waiters: deque[Callable[[], None]] = deque()

    # --- taking and giving back slots ------------------------------------------------------------------

    def acquire(
        self, avoid: Replica | None = None, waiter: Callable[[], None] | None = None, *, despite_health: bool = False
    ) -> Lease | None:
        """
        A slot on the better of two random replicas that have one (preferring any but `avoid`, the replica
        that just failed this request); None when every replica is full, closed or out: then wait. `waiter`
        is then queued (as by `wait`) in the same step, so that no slot can free unseen in between.
        `despite_health`: left-out replicas count as open (every one is out, and there is no fallback).
        """
        now = self._clock()
        with self._lock:
            replicas = self.replicas
            if len(replicas) == 1:  # the common case: no choice to make
                replica = replicas[0]
                if replica.slots(now, self.admission, despite_health) < 1:
                    if waiter is not None:
                        self._waiters.append(waiter)
                    return None
            else:
                open_ = [r for r in replicas if r.slots(now, self.admission, despite_health) >= 1]
                if len(open_) > 1 and avoid is not None and avoid in open_:
                    open_.remove(avoid)
                if not open_:
                    if waiter is not None:
                        self._waiters.append(waiter)
                    return None
                if len(open_) == 1:
                    replica = open_[0]
                else:
                    first, second = self._random.sample(open_, 2)
                    replica = min(first, second, key=lambda r: r.load(self.admission))
            replica.in_flight += 1
        return Lease(replica, now)

    def release(
        self, lease: Lease, outcome: Outcome, *, first_byte: float | None = None, retry_after: float = 0.0
    ) -> None:
        """Gives a slot back with what happened to its request; wakes as many waiters as there are free slots."""
        replica = lease.replica
        now = self._clock()
        with self._lock:
            replica.in_flight -= 1
            if outcome is Outcome.ANSWERED:
                self._answered(replica, lease, first_byte)
            elif outcome is Outcome.OVERLOADED:
                self._overloaded(replica, lease, now, retry_after)
            elif outcome is Outcome.UNREACHABLE:
                replica.unreachable += 1
                self._left_out(replica, lease, now, "cannot be reached")
            elif outcome is Outcome.FAILED:
                replica.failures += 1
                if replica.failures >= FAILURES_BEFORE_COOLDOWN or replica.on_probation:
                    self._left_out(replica, lease, now, f"failed {replica.failures} times in a row (HTTP 5xx)")
            elif outcome is Outcome.ASLEEP:
                replica.closed_until = max(replica.closed_until, now + (retry_after or WAKE_RECHECK))
                logger.info("Replica %s is asleep (scaling up or paused); asked again in a while", replica.base_url)
            if now < replica.out_until or now < replica.closed_until:
                # Fewer replicas to wait for: every waiter looks again (for another replica, or the fallback),
                # and its next wait ends when one opens (`next_change`).
                woken, self._waiters = list(self._waiters), deque()
            else:
                woken = self._take_waiters(now)
        for wake in woken:  # outside the lock: a woken thread takes its slot at once
            wake()

    def _take_waiters(self, now: float) -> list[Callable[[], None]]:
        """The waiters to wake: as many as there are free slots now (a limit that grew frees several)."""
        if not self._waiters:
            return []
        free = sum(max(0.0, replica.slots(now, self.admission)) for replica in self.replicas)
        count = len(self._waiters) if free == float("inf") else min(len(self._waiters), int(free))
        return [self._waiters.popleft() for _ in range(count)]

    def seed(self, base_url: str, capacity: int | None) -> None:
        """What the server at `base_url` says it can take (see the module's docstring): the limit and its ceiling."""
        if capacity is None or capacity < 1:
            return
        with self._lock:
            for replica in self.replicas:
                if replica.base_url == base_url:
                    replica.capacity = float(capacity)
                    replica.limit = min(replica.limit, replica.capacity)
        logger.debug("Replica %s says it takes %d requests at once: its limit's ceiling", base_url, capacity)

    def replica(self, base_url: str) -> Replica:
        """The replica at `base_url`."""
        return next(replica for replica in self.replicas if replica.base_url == base_url)

    def snapshot(self) -> FleetStatus:
        """What the fleet is doing, for people (the CLI's progress bar)."""
        now = self._clock()
        with self._lock:
            replicas = self.replicas
            return FleetStatus(
                replicas=len(replicas),
                serving=sum(1 for r in replicas if now >= r.out_until),
                in_flight=sum(r.in_flight for r in replicas),
                waiting=len(self._waiters),
                refused=sum(r.refused for r in replicas),
                unreachable=sum(r.unreachable for r in replicas),
                limits=tuple(r.limit for r in replicas),
            )

    # --- waiting ---------------------------------------------------------------------------------------

    def wait(self, wake: Callable[[], None]) -> None:
        """`wake` is called once, when a slot may have freed (in order of arrival among the waiters)."""
        with self._lock:
            self._waiters.append(wake)

    def forget(self, wake: Callable[[], None]) -> None:
        """
        A waiter that stops waiting without taking a slot (a timeout, a cancellation). If it was woken already,
        its turn passes on to the next waiter, so that a free slot is never left with waiters asleep.
        """
        with self._lock:
            if wake in self._waiters:
                self._waiters.remove(wake)
                return
            woken = self._take_waiters(self._clock())
        for other in woken:
            other()

    def wake_all(self) -> None:
        """Wakes every waiter to look again (a replica's cooldown or Retry-After is over)."""
        with self._lock:
            woken, self._waiters = list(self._waiters), deque()
        for wake in woken:
            wake()

    def wait_timeout(self) -> float:
        """How long a waiter waits before it looks again by itself: until a replica opens, and never long."""
        change = self.next_change()
        return RECHECK if change is None else min(change, RECHECK)

    def is_open(self, base_url: str) -> bool:
        """Whether the replica at `base_url` is neither left out nor closed."""
        replica, now = self.replica(base_url), self._clock()
        return now >= replica.out_until and now >= replica.closed_until

    def mark_unreachable(self, base_url: str) -> None:
        """A replica that could not be reached outside a request (at warm-up): left out, as a request would."""
        replica, now = self.replica(base_url), self._clock()
        with self._lock:
            replica.unreachable += 1
            self._left_out(replica, Lease(replica, now), now, "cannot be reached")

    def next_change(self) -> float | None:
        """Seconds until a closed or left-out replica opens again (a waiter rechecks then), if any is."""
        now = self._clock()
        with self._lock:
            opening = [
                until for replica in self.replicas for until in (replica.out_until, replica.closed_until) if until > now
            ]
        return min(opening) - now if opening else None

    @property
    def all_out(self) -> bool:
        """Whether every replica is left out for a cooldown."""
        now = self._clock()
        with self._lock:
            return all(now < replica.out_until for replica in self.replicas)

    @property
    def cannot_serve(self) -> bool:
        """Whether every replica is left out or closed (asleep, a Retry-After), not merely full: a fallback's turn."""
        now = self._clock()
        with self._lock:
            return all(now < max(replica.out_until, replica.closed_until) for replica in self.replicas)

    def admits(self, lease: Lease) -> bool:
        """Whether `lease` is still within its replica's limit (which may have fallen since it was taken)."""
        with self._lock:
            return lease.replica.slots(self._clock(), self.admission) >= 0

    def has_slot(self, besides: Replica | None = None) -> bool:
        """Whether a replica other than `besides` would take a request now."""
        now = self._clock()
        with self._lock:
            return any(r is not besides and r.slots(now, self.admission) >= 1 for r in self.replicas)

    def others_in_flight(self, replica: Replica) -> bool:
        """Whether `replica` still has requests of ours in flight: admission can then lighten its load."""
        return replica.in_flight > 0

    # --- decisions -------------------------------------------------------------------------------------

    def _answered(self, replica: Replica, lease: Lease, first_byte: float | None) -> None:
        replica.answered += 1
        replica.failures = 0
        if replica.on_probation:
            replica.on_probation = False
            replica.cooldowns = 0
            replica.out_until = 0.0  # answered while left out (every replica was): it serves again
            logger.info("Replica %s answers again", replica.base_url)
        if self.admission.mode != "adaptive":
            return
        best = replica.best_first_byte
        if first_byte is not None:
            if best is None or first_byte < best:
                replica.best_first_byte = best = first_byte
            if best is not None and first_byte > LATENCY_TOLERANCE * best + 0.005:
                # Answers come later than the replica can give them: it is queueing. The 5 ms keep the
                # jitter of a fast, idle loopback server from counting as a queue.
                self._decrease(replica, lease, f"time to first byte {first_byte:.3f} s, best {best:.3f} s")
                return
        replica.successes_since_increase += 1
        if replica.successes_since_increase >= replica.limit:  # +1 per limit's worth: about once per round trip
            replica.successes_since_increase = 0
            replica.limit = min(replica.limit + 1, replica.capacity, MAX_LIMIT)

    def _overloaded(self, replica: Replica, lease: Lease, now: float, retry_after: float) -> None:
        replica.refused += 1
        replica.failures = 0
        if retry_after > 0:
            replica.closed_until = max(replica.closed_until, now + retry_after)
        if self.admission.mode != "adaptive":
            return
        # The replica refused one more while it held what is still in flight of ours: when that is anything,
        # it is the best estimate of what it takes (a burst's refusals come back while its admitted requests
        # stay, so the last refusal brings the limit to about the replica's capacity in one round).
        held = replica.in_flight
        if 1 <= held < replica.limit:
            logger.debug(
                "Replica %s: limit %.1f -> %d (refused while holding as many)", replica.base_url, replica.limit, held
            )
            replica.limit = float(held)
            replica.successes_since_increase = 0
        self._decrease(replica, lease, "refused for overload")

    def _decrease(self, replica: Replica, lease: Lease, why: str) -> None:
        # Once per round: the requests sent before the last decrease saw the old limit, and their refusals
        # (many at once, from one overload) say nothing new.
        if lease.started <= replica.decreased_at:
            return
        before = replica.limit
        replica.limit = max(MIN_LIMIT, replica.limit * DECREASE)
        replica.decreased_at = self._clock()
        replica.successes_since_increase = 0
        logger.debug("Replica %s: limit %.1f -> %.1f (%s)", replica.base_url, before, replica.limit, why)

    def _left_out(self, replica: Replica, lease: Lease, now: float, why: str) -> None:
        if not self.may_leave_out:
            return
        if lease.started < replica.left_out_at:
            # Sent before the replica was left out: one death fails all its requests in flight at once, and
            # they say nothing new (else a replica with 32 in flight would be out for the longest cooldown).
            return
        cooldown = min(MAX_COOLDOWN, COOLDOWN * 2**replica.cooldowns)
        replica.cooldowns += 1
        replica.failures = 0
        replica.out_until = now + cooldown
        replica.left_out_at = now
        replica.on_probation = True
        logger.warning("Replica %s %s; left out for %.0f s", replica.base_url, why, cooldown)
