"""
HTTP: one keep-alive connection pool per generator and server (per event loop for async), spread over
`POOLS` httpx clients, timeouts, size limits, and the translation of httpx's exceptions into ours.
One attempt per call: retries live in `_retry`, protocols in `_protocols`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import os
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._config import Timeout
from .errors import (
    APIConnectionError,
    APITimeoutError,
    HuggingFaceAPIError,
    ResponseFormatError,
    error_from_response,
)

#: httpcore 1.0's connection pools spend O(connections²) Python work per request (their
#: `_assign_requests_to_connections` counts all connections once per idle connection, and polls every idle
#: socket): with 64 requests in flight on one pool that is ~5 ms of CPU per request with asyncio and
#: 0.6-1.2 ms (varying run to run) with threads. Requests are spread over this many small pools instead,
#: each to the least busy one: every scan stays short, connections stay no more than the requests in flight
#: (rounded up to a multiple of POOLS), and a sequential caller still uses one pool and one connection.
POOLS = 8

#: A one-piece answer larger than this is refused rather than held in memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

# Where a token picked up from HF_TOKEN / HF_API_TOKEN may go: Hugging Face's own hosts.
_HF_DOMAINS = ("huggingface.co", "hf.space", "huggingface.cloud")


def is_hugging_face_url(url: str) -> bool:
    """
    True for https URLs of huggingface.co, *.hf.space and *.huggingface.cloud, and for the Hub and router
    named by `HF_ENDPOINT` / `HF_ROUTER_URL`.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and any(host == domain or host.endswith("." + domain) for domain in _HF_DOMAINS):
        return True
    # Pointing HF_ENDPOINT / HF_ROUTER_URL somewhere is the user saying that server is their Hugging Face.
    configured = (os.environ.get("HF_ENDPOINT"), os.environ.get("HF_ROUTER_URL"))
    return any(value and urlsplit(value)[:2] == parts[:2] for value in configured)


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (it may be a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _translate(error: httpx.HTTPError, where: str) -> HuggingFaceAPIError:
    """httpx's exceptions as ours, with a message that says what failed (never a header value)."""
    if isinstance(error, httpx.TimeoutException):
        kind = "connecting" if isinstance(error, httpx.ConnectTimeout) else "waiting for the server"
        return APITimeoutError(f"{where} timed out while {kind} (see api_params['timeout'])")
    if isinstance(error, httpx.ConnectError):
        return APIConnectionError(f"{where} could not connect: {error}")
    if isinstance(error, httpx.DecodingError):
        return ResponseFormatError(f"{where} returned a body that could not be decoded: {error}")
    return APIConnectionError(f"{where} failed: the connection broke ({type(error).__name__}: {error})")


class HTTPTransport:
    """
    Sends requests to one base URL.

    Thread-safe: the sync clients are created once under a lock and httpx.Client is thread-safe. An
    httpx.AsyncClient is bound to the event loop it was created in, so each loop has its own clients.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: Timeout, verify: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._timeout = httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.read, pool=None)
        self._verify = verify
        # Proxy settings from the environment are for the outside world; a proxy would refuse (or see)
        # traffic meant for a server on this machine.
        self._trust_env = not _is_loopback(self.base_url)
        self._lock = threading.Lock()
        self._clients: tuple[httpx.Client, ...] = ()
        self._busy: list[int] = []  # requests in flight per sync pool, under self._lock
        self._ssl_context: ssl.SSLContext | None = None
        # Each loop's clients and their requests in flight (a loop runs one task at a time: its counters
        # need no lock). Clients of a closed loop cannot be reused; they are dropped (see `close`).
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[tuple[httpx.AsyncClient, ...], list[int]]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"HTTPTransport(base_url={self.base_url!r})"

    # --- clients -------------------------------------------------------------------------------

    def _pool_options(self) -> dict[str, Any]:
        """Options for one of the POOLS clients: a share of the limits, one TLS context for all."""
        verify: bool | ssl.SSLContext = self._verify
        if verify:  # loading the CA bundle costs ~10 ms: once, not once per pool
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context(trust_env=self._trust_env)
            verify = self._ssl_context
        return {
            "base_url": self.base_url,
            "headers": self._headers,
            "timeout": self._timeout,
            "verify": verify,
            # 256 connections in all is generous: TGI's own default cap is 128 requests in flight.
            "limits": httpx.Limits(max_connections=256 // POOLS, max_keepalive_connections=64 // POOLS),
            "trust_env": self._trust_env,
        }

    @contextmanager
    def _sync_client(self) -> Iterator[httpx.Client]:
        """Lends the least busy sync pool for one request."""
        with self._lock:
            if not self._clients:
                options = self._pool_options()
                self._clients = tuple(httpx.Client(**options) for _ in range(POOLS))
                self._busy = [0] * POOLS
            clients, busy = self._clients, self._busy
            index = busy.index(min(busy))
            busy[index] += 1
        try:
            yield clients[index]
        finally:
            with self._lock:
                busy[index] -= 1

    @contextmanager
    def _async_client(self) -> Iterator[httpx.AsyncClient]:
        """Lends the least busy of this loop's async pools for one request."""
        loop = asyncio.get_running_loop()
        pools = self._aclients.get(loop)
        if pools is None:
            with self._lock:
                for stale in [other for other in self._aclients if other.is_closed()]:
                    del self._aclients[stale]
                pools = self._aclients.get(loop)
                if pools is None:
                    options = self._pool_options()
                    clients = tuple(httpx.AsyncClient(**options) for _ in range(POOLS))
                    pools = self._aclients[loop] = (clients, [0] * POOLS)
        clients, busy = pools
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            yield clients[index]
        finally:
            busy[index] -= 1

    def close(self) -> None:
        """
        Closes the sync pools and forgets the async pools of closed loops. An open loop's async pools
        are closed only by `aclose()` on that loop: driving someone else's loop from here is not safe.
        """
        with self._lock:
            clients, self._clients = self._clients, ()
            for loop in [loop for loop in self._aclients if loop.is_closed()]:
                del self._aclients[loop]
        for client in clients:
            client.close()

    async def aclose(self) -> None:
        """Closes the sync pools and this loop's async pools."""
        with self._lock:
            clients, self._clients = self._clients, ()
            pools = self._aclients.pop(asyncio.get_running_loop(), None)
        for client in clients:
            client.close()
        for aclient in pools[0] if pools is not None else ():
            await aclient.aclose()

    # --- requests ------------------------------------------------------------------------------

    def _where(self, method: str, path: str) -> str:
        return f"{method} {self.base_url}{path}"

    def _build(self, client: httpx.Client | httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Request:
        if body is None:
            return client.build_request(method, path)
        content = json.dumps(body, ensure_ascii=False).encode()
        return client.build_request(method, path, content=content, headers={"content-type": "application/json"})

    @staticmethod
    def _check_size(response: httpx.Response, where: str, received: int) -> None:
        declared = response.headers.get("content-length")
        if max(received, int(declared) if declared and declared.isdigit() else 0) > MAX_RESPONSE_BYTES:
            raise ResponseFormatError(f"{where} returned more than {MAX_RESPONSE_BYTES} bytes; refused")

    def _error(self, response: httpx.Response, body: bytes, where: str) -> HuggingFaceAPIError:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return error_from_response(response.status_code, body, retry_after, where)

    def _answer(self, response: httpx.Response, body: bytes, where: str) -> tuple[Any, httpx.Headers]:
        """A complete one-piece answer: its decoded JSON and headers, or the error it stands for."""
        if response.status_code >= 400:
            raise self._error(response, body, where)
        try:
            return json.loads(body), response.headers
        except ValueError:
            raise ResponseFormatError(f"{where} returned invalid JSON: {body[:200]!r}") from None

    def request_json(self, method: str, path: str, body: Any = None) -> tuple[Any, httpx.Headers]:
        """
        Sends one request and returns the decoded JSON answer and its headers.

        :raises APIStatusError: (a subclass) when the server answers with an error status.
        """
        where = self._where(method, path)
        with self._sync_client() as client:
            try:
                response = client.send(self._build(client, method, path, body), stream=True)
                try:
                    self._check_size(response, where, 0)
                    chunks = []
                    received = 0
                    for chunk in response.iter_bytes():
                        received += len(chunk)
                        self._check_size(response, where, received)
                        chunks.append(chunk)
                finally:
                    response.close()
            except httpx.HTTPError as error:
                raise _translate(error, where) from None
            return self._answer(response, b"".join(chunks), where)

    async def arequest_json(self, method: str, path: str, body: Any = None) -> tuple[Any, httpx.Headers]:
        """The async twin of `request_json`."""
        where = self._where(method, path)
        with self._async_client() as client:
            try:
                response = await client.send(self._build(client, method, path, body), stream=True)
                try:
                    self._check_size(response, where, 0)
                    chunks = []
                    received = 0
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        self._check_size(response, where, received)
                        chunks.append(chunk)
                finally:
                    await response.aclose()
            except httpx.HTTPError as error:
                raise _translate(error, where) from None
            return self._answer(response, b"".join(chunks), where)

    @contextmanager
    def stream_lines(self, path: str, body: Any) -> Iterator[Iterator[str]]:
        """
        POSTs `body` and yields an iterator over the lines of the streamed answer.

        Closing the context closes the response, which stops a server still generating.
        """
        where = self._where("POST", path)
        with self._sync_client() as client:
            try:
                response = client.send(self._build(client, "POST", path, body), stream=True)
            except httpx.HTTPError as error:
                raise _translate(error, where) from None
            try:
                if response.status_code >= 400:
                    try:
                        content = response.read()
                    except httpx.HTTPError as error:
                        raise _translate(error, where) from None
                    raise self._error(response, content, where)
                yield self._lines(response, where)
            finally:
                response.close()

    @staticmethod
    def _lines(response: httpx.Response, where: str) -> Iterator[str]:
        try:
            yield from response.iter_lines()
        except httpx.HTTPError as error:
            raise _translate(error, where) from None

    @asynccontextmanager
    async def astream_lines(self, path: str, body: Any) -> AsyncIterator[AsyncIterator[str]]:
        """The async twin of `stream_lines`."""
        where = self._where("POST", path)
        with self._async_client() as client:
            try:
                response = await client.send(self._build(client, "POST", path, body), stream=True)
            except httpx.HTTPError as error:
                raise _translate(error, where) from None
            try:
                if response.status_code >= 400:
                    try:
                        content = await response.aread()
                    except httpx.HTTPError as error:
                        raise _translate(error, where) from None
                    raise self._error(response, content, where)
                yield self._alines(response, where)
            finally:
                await response.aclose()

    @staticmethod
    async def _alines(response: httpx.Response, where: str) -> AsyncIterator[str]:
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.HTTPError as error:
            raise _translate(error, where) from None
