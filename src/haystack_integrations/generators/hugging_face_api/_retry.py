"""
Retries with exponential backoff, full jitter and `Retry-After`.

Retried: connection failures and timeouts, streams cut before their end, HTTP 408, 429 and 5xx, and
TGI's "overloaded" error events.
Never retried: anything once streamed text has reached the user's callback, because a second attempt
would deliver the beginning again. The caller passes `delivered()` so this module can tell.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import APIConnectionError, HuggingFaceAPIError, IncompleteStreamError, OverloadedError, ServerError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait between attempts."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: A server asking for a longer wait than this is not waited for: the error is raised instead.
    max_retry_after: float = 60.0

    @staticmethod
    def is_transient(error: HuggingFaceAPIError) -> bool:
        """Whether `error` says "not now" rather than "not this request": worth another attempt."""
        if isinstance(error, APIConnectionError | OverloadedError | ServerError | IncompleteStreamError):
            return True
        return error.status_code == 408

    def should_retry(self, error: HuggingFaceAPIError, attempt: int, delivered: str) -> bool:
        """Whether `error`, raised by attempt number `attempt` (0-based), deserves another attempt."""
        if attempt >= self.max_retries or delivered:
            return False
        if error.retry_after is not None and error.retry_after > self.max_retry_after:
            return False
        return self.is_transient(error)

    def delay(self, attempt: int, error: HuggingFaceAPIError) -> float:
        """Seconds to wait before the next attempt: the server's `Retry-After`, else jittered backoff."""
        if error.retry_after is not None:
            return error.retry_after
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def _wait_or_raise(policy: RetryPolicy, error: HuggingFaceAPIError, attempt: int, delivered: str) -> float:
    """Seconds to wait before retrying `error`; re-raises it when it is not to be retried."""
    error.delivered_text = delivered
    if not policy.should_retry(error, attempt, delivered):
        raise error
    wait = policy.delay(attempt, error)
    logger.warning("Attempt %d failed (%s); retrying in %.2f s", attempt + 1, error.message, wait)
    return wait


def call_with_retries(policy: RetryPolicy, attempt_fn: Callable[[], T], delivered: Callable[[], str]) -> T:
    """
    Calls `attempt_fn` until it succeeds or fails in a way not worth retrying.

    :param policy: The retry policy.
    :param attempt_fn: One attempt.
    :param delivered: Returns the text already handed to the user's callback; non-empty forbids a retry.
    """
    attempt = 0
    while True:
        try:
            return attempt_fn()
        except HuggingFaceAPIError as error:
            time.sleep(_wait_or_raise(policy, error, attempt, delivered()))
            attempt += 1


async def acall_with_retries(
    policy: RetryPolicy, attempt_fn: Callable[[], Awaitable[T]], delivered: Callable[[], str]
) -> T:
    """The async twin of `call_with_retries`."""
    attempt = 0
    while True:
        try:
            return await attempt_fn()
        except HuggingFaceAPIError as error:
            await asyncio.sleep(_wait_or_raise(policy, error, attempt, delivered()))
            attempt += 1
