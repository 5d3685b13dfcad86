"""
The sync client: runs the core's flows (`_core`) with urllib3 and `time.sleep`. Only I/O lives here.

One thread-safe `PoolManager` per server a generator talks to (a `ProxyManager` where the environment
names a proxy for it), with
`retries=False` and `redirect=False`: every retry decision is the core's, and redirects are never
followed. urllib3's exceptions become the package's in `_translate`, the one place that knows them.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from haystack.dataclasses import StreamingChunk
from urllib3.exceptions import (
    DecodeError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from ._core import ClientCore, Deliver, Driver, Effect, Exchange, Flow, T
from ._generation import StreamState
from ._http import DRAIN_BYTES, DRAIN_SECONDS, Answer, BoundedBody, Request, is_event_stream, proxy_for, ssl_context
from ._routing import Route
from .errors import APIConnectionError, APITimeoutError, HuggingFaceAPIError, ResponseFormatError

SyncCallback = Callable[[StreamingChunk], Any]

#: Connections kept alive per server: as many as threads that use one generator at once, in practice.
POOL_SIZE = 64
_BLOCK = 64 * 1024


def _translate(error: HTTPError, where: str) -> HuggingFaceAPIError:
    """urllib3's exceptions as ours, with a message that says what failed (never a header value)."""
    if isinstance(error, ProxyError):
        return APIConnectionError(f"{where} could not connect through the proxy: {error}")
    if isinstance(error, NewConnectionError):  # refused, unreachable, DNS (a subclass of ConnectTimeoutError)
        return APIConnectionError(f"{where} could not connect: {error}")
    if isinstance(error, ReadTimeoutError):
        return APITimeoutError(f"{where} timed out waiting for the server (see api_params['timeout'])", phase="read")
    if isinstance(error, Urllib3TimeoutError):
        return APITimeoutError(f"{where} timed out while connecting (see api_params['timeout'])", phase="connect")
    if isinstance(error, SSLError):
        return APIConnectionError(f"{where} could not connect: {error}")
    if isinstance(error, DecodeError):
        return ResponseFormatError(f"{where} returned a body that could not be decoded: {error}")
    if isinstance(error, ProtocolError):
        return APIConnectionError(f"{where} failed: the connection broke ({error})")
    return APIConnectionError(f"{where} failed: {type(error).__name__}: {error}")


class SyncClient:
    """Runs a generator's flows in the calling thread; safe to use from many threads at once."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._route_lock = threading.Lock()  # one route resolution at a time
        self._lock = threading.Lock()  # guards the pools
        self._pools: dict[str, urllib3.PoolManager] = {}  # by server base URL
        self._ssl_context: ssl.SSLContext | None = None
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}

    # --- what the component asks -----------------------------------------------------------------

    def route(self) -> Route:
        """The route, resolved once (by whichever thread comes first)."""
        route = self._core.route
        if route is None:
            ticket = self._core.resolutions
            with self._route_lock:
                route = self._core.route
                if route is None:
                    route = self.run(self._core.resolution(ticket))
        return route

    def run(self, flow: Flow[T], callback: SyncCallback | None = None) -> T:
        """Runs `flow` to its end, performing its effects; `callback` receives the chunks it delivers."""
        driver = Driver(flow)
        try:
            effect = driver.start()
            while effect is not None:
                effect = driver.send(self._perform(effect, callback))
        finally:
            driver.close()
        return driver.result

    def close(self) -> None:
        """Closes every connection; the pools reopen if the generator is used again."""
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.clear()

    # --- effects ---------------------------------------------------------------------------------

    def _perform(self, effect: Effect, callback: SyncCallback | None) -> Any:
        if isinstance(effect, Exchange):
            return self._exchange(effect.request, effect.stream, callback)
        if isinstance(effect, Deliver):
            assert callback is not None
            callback(effect.chunk)
        else:
            time.sleep(effect.seconds)
        return None

    # --- HTTP ------------------------------------------------------------------------------------

    def _pool(self, base: str) -> urllib3.PoolManager:
        """The pool for the server at `base`: direct, or through the proxy the environment names for it."""
        pool = self._pools.get(base)
        if pool is None:
            with self._lock:
                pool = self._pools.get(base)
                if pool is None:
                    pool = self._pools[base] = self._new_pool(base)
        return pool

    def _new_pool(self, base: str) -> urllib3.PoolManager:
        proxy = proxy_for(base)
        options: dict[str, Any] = {"num_pools": 4, "maxsize": POOL_SIZE, "retries": False}
        if base.startswith("https:") or (proxy is not None and proxy.url.startswith("https:")):
            verify = self._core.settings.verify
            options["ssl_context"] = self._ssl_context or ssl_context(verify)
            self._ssl_context = options["ssl_context"]  # loading the CA bundle costs ~20 ms: once
            if not verify:
                options["cert_reqs"] = "CERT_NONE"
        if proxy is None:
            return urllib3.PoolManager(**options)
        return urllib3.ProxyManager(proxy.url, proxy_headers=proxy.headers, **options)

    def _timeout(self, connect: float, read: float) -> urllib3.Timeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[(connect, read)] = urllib3.Timeout(connect=connect, read=read)
        return timeout

    def _exchange(self, request: Request, stream: StreamState | None, callback: SyncCallback | None) -> Any:
        """
        Sends `request`; returns its `Answer`, or the `HuggingFaceAPIError` it failed with. A stream's body
        goes to `stream`, its chunks to `callback`, whose own exceptions propagate untouched.
        """
        pool = self._pool(request.base)
        try:
            response = pool.urlopen(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=self._timeout(request.connect_timeout, request.first_byte_timeout),
            )
        except HTTPError as error:
            return _translate(error, request.where)
        reusable = False  # whether the connection may serve another request: the body was read to its end
        try:
            if stream is None or response.status >= 300 or not is_event_stream(response.headers):
                answer = self._read_whole(request, response)
                reusable = isinstance(answer, Answer)
                return answer
            if request.first_byte_timeout != request.read_timeout:
                sock = getattr(response.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(request.read_timeout)  # the answer has started: reads get the usual timeout
            blocks = self._blocks(response)
            while not stream.done:
                try:
                    block = next(blocks, b"")
                except HTTPError as error:
                    return _translate(error, request.where)
                if (chunk := stream.feed(block)) is not None:
                    callback(chunk)  # type: ignore[misc]  # a stream always comes with a callback
            reusable = self._drain(response, blocks) if stream.should_drain else stream.at_eof
            return Answer(response.status, response.headers)
        finally:
            if not reusable:  # closing also stops a server that is still generating
                response.close()
            response.release_conn()

    @staticmethod
    def _drain(response: urllib3.BaseHTTPResponse, blocks: Iterator[bytes]) -> bool:
        """Reads what follows a stream's last event (its end marker), briefly; True when the body ended cleanly."""
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(DRAIN_SECONDS)
        deadline = time.monotonic() + DRAIN_SECONDS
        received = 0
        try:
            for block in blocks:
                received += len(block)
                if received > DRAIN_BYTES or time.monotonic() > deadline:
                    return False
        except HTTPError:
            return False
        return True

    @staticmethod
    def _read_whole(request: Request, response: urllib3.BaseHTTPResponse) -> Answer | HuggingFaceAPIError:
        try:
            body = BoundedBody(request, response.headers)
            for part in response.stream(_BLOCK):
                body.add(part)
        except HTTPError as error:
            return _translate(error, request.where)
        except HuggingFaceAPIError as error:  # too large
            return error
        return body.answer(response.status, response.headers)

    @staticmethod
    def _blocks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        """The body as it arrives: one HTTP chunk at a time, or what each read returns."""
        if response.chunked:
            yield from response.read_chunked(decode_content=True)
        else:
            while block := response.read1(_BLOCK):
                yield block
