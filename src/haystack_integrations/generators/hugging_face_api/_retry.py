"""
When a failed attempt is tried again, and after how long: decisions only, no sleeping (the sync and
async clients sleep as they are told).

Retried, up to `max_retries` times with full-jitter backoff or the server's `Retry-After`:
connection failures, connect timeouts, HTTP 408, 429 and 5xx, TGI's "overloaded" error events, and
streams cut before any text reached the callback.

Never retried: a read timeout (the server has the request and may still be generating: a second
attempt would start the generation again on the same busy server), anything once streamed text has
reached the user's callback (a second attempt would deliver the beginning again), redirects, and
every other client error.

Inference Endpoints scale to zero: while a replica starts, their proxy answers 503. With
`scale_up_timeout` set, a 503 is waited out (the server's `Retry-After`, else a growing backoff)
until the endpoint answers or that many seconds have passed since the call began, without using up
`max_retries`; then `EndpointNotReadyError`. The wait is logged at warning level when it starts and
when it ends, with `hf_scale_up` on the record for programs that show it (the CLI's progress bar).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import (
    APIConnectionError,
    APITimeoutError,
    EndpointNotReadyError,
    HuggingFaceAPIError,
    IncompleteStreamError,
    OverloadedError,
    ServerError,
)

logger = logging.getLogger(__name__)

#: The shortest wait between two requests to an Inference Endpoint that is scaling up.
MIN_SCALE_UP_DELAY = 1.0


def is_transient(error: HuggingFaceAPIError) -> bool:
    """Whether `error` says "not now" rather than "not this request": worth another attempt."""
    if isinstance(error, APITimeoutError):
        return error.phase == "connect"
    if isinstance(error, EndpointNotReadyError):
        return False  # the scale-up wait is over
    if isinstance(error, APIConnectionError | OverloadedError | ServerError | IncompleteStreamError):
        return True
    return error.status_code == 408


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait between attempts."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: A server asking for a longer wait than this is not waited for: the error is raised instead.
    max_retry_after: float = 60.0
    #: Seconds to wait out 503s of an Inference Endpoint scaling up from zero; 0: no such wait.
    scale_up_timeout: float = 0.0
    #: Backoff while an endpoint scales up: from 1 s, doubling, up to this.
    max_scale_up_delay: float = 15.0

    def budget(
        self, where: str, started: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> RetryBudget:
        """The retries of one call (a route probe or a generation) that began at `started` (default: now)."""
        return RetryBudget(self, where, clock, started)


class RetryBudget:
    """What one call has used of its retries, and of its scale-up wait."""

    __slots__ = ("_attempts", "_clock", "_policy", "_scale_up_waits", "_started", "_waiting_since", "_where")

    def __init__(
        self, policy: RetryPolicy, where: str, clock: Callable[[], float], started: float | None = None
    ) -> None:
        self._policy = policy
        self._where = where
        self._clock = clock
        self._started = clock() if started is None else started
        self._attempts = 0
        self._scale_up_waits = 0
        self._waiting_since: float | None = None

    def wait_before_retry(self, error: HuggingFaceAPIError, delivered: str, elsewhere: str | None = None) -> float:
        """
        Seconds to wait before the next attempt after `error`.

        :param error: What the last attempt raised.
        :param delivered: The text already handed to the streaming callback; any forbids a retry.
        :param elsewhere: Another server (a replica) that takes the next attempt at once: no wait then.
        :raises HuggingFaceAPIError: `error` itself (with `delivered_text` set) when it is not to be retried,
            or `EndpointNotReadyError` when an endpoint's scale-up took longer than `scale_up_timeout`.
        """
        error.delivered_text = delivered
        policy = self._policy
        if policy.scale_up_timeout and error.status_code == 503 and not delivered:
            return self._wait_for_scale_up(error)
        if self._attempts >= policy.max_retries or delivered or not is_transient(error):
            raise error
        if error.retry_after is not None and error.retry_after > policy.max_retry_after:
            raise error
        self._attempts += 1
        if elsewhere is not None:
            logger.warning("Attempt %d failed (%s); retrying on %s", self._attempts, error.message, elsewhere)
            return 0.0
        if error.retry_after is not None:
            wait = error.retry_after
        else:
            wait = random.uniform(0, min(policy.max_delay, policy.base_delay * 2 ** (self._attempts - 1)))
        logger.warning("Attempt %d failed (%s); retrying in %.2f s", self._attempts, error.message, wait)
        return wait

    def _wait_for_scale_up(self, error: HuggingFaceAPIError) -> float:
        limit = self._policy.scale_up_timeout
        now = self._clock()
        remaining = self._started + limit - now
        if self._waiting_since is None:
            self._waiting_since = now
            self._log_scale_up("waiting", limit, "is scaling up (HTTP 503); waiting up to %g s for it")
        if remaining <= 0:
            self._log_scale_up("gave_up", now - self._waiting_since, "is still not ready after %.1f s; giving up")
            raise EndpointNotReadyError(
                f"{self._where}: the Inference Endpoint did not become ready in {limit:g} s (it answered 503 "
                "while scaling up from zero); raise api_params['scale_up_timeout'] for slower cold starts",
                status_code=503,
                server_message=error.server_message,
                retry_after=error.retry_after,
            ) from error
        backoff = min(self._policy.max_scale_up_delay, 2.0**self._scale_up_waits) * random.uniform(0.5, 1.0)
        backoff = max(backoff, MIN_SCALE_UP_DELAY)
        self._scale_up_waits += 1
        # At least a second between two requests, whatever Retry-After says (0, or a date already past): the
        # wait has no attempt limit, and a proxy answering at once must not be flooded for minutes.
        wait = max(error.retry_after, MIN_SCALE_UP_DELAY) if error.retry_after is not None else backoff
        return min(wait, remaining)

    def succeeded(self) -> None:
        """Called when an attempt worked: ends (and logs the end of) a scale-up wait."""
        if self._waiting_since is not None:
            self._log_scale_up("ready", self._clock() - self._waiting_since, "is ready after %.1f s")
            self._waiting_since = None

    def _log_scale_up(self, event: str, seconds: float, what: str) -> None:
        """A warning for people, with `hf_scale_up` / `hf_scale_up_seconds` on the record for programs."""
        logger.warning(
            f"%s: the Inference Endpoint {what}",
            self._where,
            seconds,
            extra={"hf_scale_up": event, "hf_scale_up_seconds": seconds},
        )
