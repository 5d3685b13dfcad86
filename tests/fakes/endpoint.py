"""The proxy of a Hugging Face Inference Endpoint, put in front of any fake.

An Inference Endpoint is an engine (TGI, vLLM, ...) behind Hugging Face's proxy, and the proxy answers
on the engine's behalf when there is no replica to serve. Set it on any fake::

    tgi.endpoint = EndpointProxy(cold_for=2.0, retry_after=1)

It acts before routing, for every method and path (``GET /info`` probes included), and before the fault
queues: a request it answers never reaches the engine and takes no fault. What the docs and issues say it
does (``PROTOCOLS.md``, "Inference Endpoints, as they behave"), and what this fake reproduces:

* **Scaled to zero.** A request wakes the endpoint up; the replica needs ``cold_for`` seconds to start.
  While it starts the proxy answers **503** (with ``Retry-After`` when ``retry_after`` is set), unless
  the request has ``X-Scale-Up-Timeout: N``: then the proxy *holds* it (no byte is written) until the
  replica is ready and serves it normally, or answers 503 once ``N`` seconds have passed.
  ``honour_scale_up_header=False`` is a proxy that ignores the header (always 503 while cold).

  The cold-start clock: it starts at the **first request that reaches the proxy** (any method, whatever
  its headers), not at construction, because that is what wakes a real scaled-to-zero endpoint; the
  replica is ready ``cold_for`` seconds later (``ready_at``). :meth:`scale_to_zero` goes back to zero
  (the next request starts a new cold start); :meth:`resume` starts one at once.
* **Paused.** A paused endpoint does not wake up: every request gets **400** until :meth:`resume`.
  The body: see :data:`PAUSED_BODY`.

The body of the 503 (:data:`UNAVAILABLE_BODY`) is not documented anywhere I could find; it is a short
plain-text error, and clients must not depend on it.

What it did is recorded: ``requests[i].endpoint`` on the server, and here :attr:`events` (one
:class:`EndpointEvent` per request), the counters :attr:`passed`, :attr:`unavailable` (503s),
:attr:`holds`, :attr:`hold_timeouts`, :attr:`paused_rejections`, and :attr:`ready_at` /
:attr:`cold_started_at` (``time.monotonic()`` values).

A self-hosted engine that answers 503 by itself (no proxy, no holding) is :meth:`Fault.unavailable
<tests.fakes.Fault.unavailable>`, queued on any route with ``server.faults_for(method, path)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._common import json_bytes

if TYPE_CHECKING:
    from ._common import Exchange

EndpointState = Literal["scaledToZero", "initializing", "running", "paused"]
EndpointAction = Literal["passed", "held", "cold", "hold_timeout", "paused"]
Body = bytes | str | Mapping[str, Any]

#: What the proxy answers a request for a paused endpoint, with status 400.
#:
#: The wording is the one a user reported from a real paused endpoint (elastic/elasticsearch issue
#: #112033, August 2024: "if the HF inference endpoint is paused, the call fails with [status 400]
#: Error message: [Bad Request: Invalid state]"). Elasticsearch takes that message from the ``error``
#: field of a JSON body (or shows the raw body), so ``{"error": "Bad Request: Invalid state"}`` is the
#: likeliest shape. Note that it does not say "paused": a client cannot tell a paused endpoint from the
#: message; it can only say that a 400 from an endpoint may mean it is paused.
PAUSED_BODY: Mapping[str, str] = {"error": "Bad Request: Invalid state"}

#: A more talkative alternative, invented (no real proxy is known to say this): ``paused_body=PAUSED_HINT``.
PAUSED_HINT: Mapping[str, str] = {
    "error": "Bad Request: Invalid state. This endpoint is paused: resume it to send requests again."
}

#: What the proxy answers while the replica is starting, with status 503 (invented, see the module doc).
UNAVAILABLE_BODY = "503 Service Unavailable"


@dataclass(frozen=True)
class EndpointEvent:
    """What the proxy did with one request.

    ``action``: ``"passed"`` (to the engine), ``"held"`` (held ``waited`` seconds, then passed),
    ``"cold"`` (503 at once), ``"hold_timeout"`` (held ``waited`` seconds, then 503), ``"paused"`` (400).
    ``scale_up_timeout`` is the request's ``X-Scale-Up-Timeout`` header, as sent (None when absent).
    """

    at: float
    method: str
    path: str
    action: EndpointAction
    waited: float
    scale_up_timeout: str | None


class EndpointProxy:
    """An Inference Endpoint's proxy in front of a fake: ``server.endpoint = EndpointProxy(...)``.

    ``cold_for``: seconds a cold start takes (0: the endpoint is running from the start). ``retry_after``:
    the ``Retry-After`` header of the 503s (none by default). ``honour_scale_up_header``: whether
    ``X-Scale-Up-Timeout`` holds requests. ``paused``: start paused. ``unavailable_body`` /
    ``paused_body`` / ``paused_status``: the proxy's answers (a mapping is sent as JSON, a str as plain
    text). Thread-safe; one proxy may front several fakes.
    """

    def __init__(
        self,
        *,
        cold_for: float = 0.0,
        retry_after: int | None = None,
        honour_scale_up_header: bool = True,
        paused: bool = False,
        unavailable_body: Body = UNAVAILABLE_BODY,
        paused_body: Body = PAUSED_BODY,
        paused_status: int = 400,
    ) -> None:
        self.cold_for = cold_for
        self.retry_after = retry_after
        self.honour_scale_up_header = honour_scale_up_header
        self.unavailable_body = unavailable_body
        self.paused_body = paused_body
        self.paused_status = paused_status
        self._changed = threading.Condition()
        self._paused = paused
        self._cold_started_at: float | None = None
        self._ready_at: float | None = None
        if cold_for <= 0:
            self._ready_at = time.monotonic()
        self._events: list[EndpointEvent] = []

    # State --------------------------------------------------------------------------------------
    @property
    def state(self) -> EndpointState:
        """``"scaledToZero"`` (no replica, no cold start yet), ``"initializing"``, ``"running"`` or
        ``"paused"``: the names of the Inference Endpoints API."""
        with self._changed:
            if self._paused:
                return "paused"
            if self._ready_at is None:
                return "scaledToZero"
            return "running" if time.monotonic() >= self._ready_at else "initializing"

    @property
    def cold_started_at(self) -> float | None:
        """When the current cold start began (``time.monotonic()``), or None if there was none."""
        with self._changed:
            return self._cold_started_at

    @property
    def ready_at(self) -> float | None:
        """When the replica became (or will become) ready (``time.monotonic()``); None while scaled to
        zero with no request yet. While paused: the value from before the pause."""
        with self._changed:
            return self._ready_at

    def pause(self) -> None:
        """Pause the endpoint: 400 to everything until :meth:`resume`."""
        with self._changed:
            self._paused = True
            self._changed.notify_all()

    def resume(self, cold_for: float = 0.0) -> None:
        """Resume a paused endpoint. A real one initializes again before it runs: ``cold_for`` seconds of
        cold start beginning now (503s, or holds), none by default."""
        with self._changed:
            self._paused = False
            now = time.monotonic()
            self._cold_started_at = now if cold_for > 0 else None
            self._ready_at = now + max(cold_for, 0.0)
            self._changed.notify_all()

    def scale_to_zero(self, cold_for: float | None = None) -> None:
        """Go back to zero replicas (what an idle endpoint does): the next request starts a cold start
        of ``cold_for`` seconds (default: the current ``cold_for``)."""
        with self._changed:
            if cold_for is not None:
                self.cold_for = cold_for
            self._cold_started_at = self._ready_at = None
            if self.cold_for <= 0:
                self._ready_at = time.monotonic()
            self._changed.notify_all()

    # Records ------------------------------------------------------------------------------------
    @property
    def events(self) -> list[EndpointEvent]:
        with self._changed:
            return list(self._events)

    def _count(self, *actions: str) -> int:
        with self._changed:
            return sum(1 for e in self._events if e.action in actions)

    @property
    def passed(self) -> int:
        """Requests that reached the engine (held ones included)."""
        return self._count("passed", "held")

    @property
    def unavailable(self) -> int:
        """503s the proxy answered (at once, or after a hold)."""
        return self._count("cold", "hold_timeout")

    @property
    def holds(self) -> int:
        """Requests held because of ``X-Scale-Up-Timeout``, whatever came of them."""
        return self._count("held", "hold_timeout")

    @property
    def hold_timeouts(self) -> int:
        return self._count("hold_timeout")

    @property
    def paused_rejections(self) -> int:
        return self._count("paused")

    # One request --------------------------------------------------------------------------------
    def admit(self, ex: Exchange) -> bool:
        """Decide on one request: True lets it through to the engine; False means the proxy answered it
        (or gave up because the server is stopping). Called by the server, in the request's thread."""
        header = ex.headers.get("x-scale-up-timeout")
        started = time.monotonic()
        with self._changed:
            action = self._decide(header, started)
            if action is None:  # hold
                action = self._hold(ex, started + (_seconds(header) or 0.0))
                if action is None:  # stopping
                    ex.abort()
                    return False
            waited = time.monotonic() - started if action in ("held", "hold_timeout") else 0.0
            self._events.append(EndpointEvent(started, ex.method, ex.path, action, waited, header))
        ex.record.endpoint = action
        if action in ("passed", "held"):
            return True
        if action == "paused":
            _answer(ex, self.paused_status, self.paused_body, {})
        else:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            _answer(ex, 503, self.unavailable_body, headers)
        return False

    def _decide(self, header: str | None, now: float) -> EndpointAction | None:
        """The action for a request arriving now, or None to hold it. Called with the lock held."""
        if self._paused:
            return "paused"
        if self._ready_at is None:  # scaled to zero: this request starts the replica
            self._cold_started_at = now
            self._ready_at = now + self.cold_for
        if now >= self._ready_at:
            return "passed"
        if self.honour_scale_up_header and _seconds(header) is not None:
            return None
        return "cold"

    def _hold(self, ex: Exchange, deadline: float) -> EndpointAction | None:
        """Wait (lock held, released while waiting) until the replica is ready or ``deadline`` passes."""
        while True:
            now = time.monotonic()
            if self._paused:
                return "paused"
            if self._ready_at is None:  # scaled to zero again meanwhile: a held request wakes it up
                self._cold_started_at = now
                self._ready_at = now + self.cold_for
            if now >= self._ready_at:
                return "held"
            if now >= deadline:
                return "hold_timeout"
            if ex.server.stopping:
                return None
            # Woken by pause() / resume() / scale_to_zero(); the cap lets stop() be noticed quickly.
            self._changed.wait(min(self._ready_at - now, deadline - now, 0.05))


def _seconds(header: str | None) -> float | None:
    """The seconds of an ``X-Scale-Up-Timeout`` value; None when absent or not a number."""
    if header is None:
        return None
    try:
        return max(float(header.strip()), 0.0)
    except ValueError:
        return None


def _answer(ex: Exchange, status: int, body: Body, headers: dict[str, str]) -> None:
    if isinstance(body, Mapping):
        ex.send(status, json_bytes(dict(body)), content_type="application/json", headers=headers)
    elif isinstance(body, str):
        ex.send(status, body.encode(), content_type="text/plain; charset=utf-8", headers=headers)
    else:
        ex.send(status, body, headers=headers)
