"""
The sync client: runs the core's flows (`_core`) with urllib3 and `time.sleep`. Only I/O lives here: a byte
loop around each `Exchange`, and the table that names urllib3's exceptions.

One thread-safe `PoolManager` per server a generator talks to (a `ProxyManager` where the environment names a
proxy for it), with `retries=False` and `redirect=False`: every retry decision is the core's, and redirects
are never followed, so each attempt is exactly one request on one connection.

The flows of a `Together` run in threads of their own, handing their chunks to the callback one at a time;
when one fails, the others are stopped by `_Abort`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, BinaryIO

import urllib3
from haystack.dataclasses import StreamingChunk
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    DecodeError,
    HTTPError,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from ._core import ClientCore, Driver, Flow, Resolve, Sleep, T, Together, WaitForSlot
from ._exchange import Exchange, Failure
from ._fleet import Lease
from ._http import proxy_for, ssl_context
from ._routing import Route
from .errors import HuggingFaceAPIError

SyncCallback = Callable[[StreamingChunk], Any]

#: Connections kept alive per server: as many as threads that use one generator at once, in practice.
POOL_SIZE = 64
_BLOCK = 64 * 1024
#: How often a run of a `Together` waiting for admission looks whether another run failed.
_ABORT_CHECK = 0.2

#: urllib3's exceptions, most specific first, as the failures the exchange words.
_FAILURES: tuple[tuple[type[HTTPError], Failure], ...] = (
    (ProxyError, Failure.PROXY),
    (NewConnectionError, Failure.CONNECT),  # refused, unreachable, DNS (a subclass of ConnectTimeoutError)
    (ReadTimeoutError, Failure.READ_TIMEOUT),
    (Urllib3TimeoutError, Failure.CONNECT_TIMEOUT),
    (SSLError, Failure.CONNECT),
    (DecodeError, Failure.UNDECODABLE),
)


def _failure(error: HTTPError) -> Failure:
    for cls, failure in _FAILURES:
        if isinstance(error, cls):
            return failure
    return Failure.BROKEN  # ProtocolError and the rest: the connection broke, or the answer is not HTTP


class _CheckedHead(http.client.HTTPResponse):
    """
    http.client's response, refusing a head that aiohttp's parser refuses too, so both clients see the same
    failure: http.client takes the end of the connection inside the head for the head's end, and accepts
    header lines that do not parse (urllib3 then logs a warning with a traceback).
    """

    def begin(self) -> None:
        reader = self.fp
        self.fp = watched = _LastLine(reader)  # type: ignore[assignment]
        try:
            super().begin()
        finally:
            if self.fp is watched:  # type: ignore[comparison-overlap]  # http.client drops a reader it closed
                self.fp = reader
        if watched.last == b"" or self.msg.defects:
            raise http.client.IncompleteRead(b"", None)  # urllib3: ProtocolError, a connection failure


class _LastLine:
    """A reader that remembers the last line read: an empty one means the connection ended there."""

    __slots__ = ("_reader", "last")

    def __init__(self, reader: BinaryIO) -> None:
        self._reader = reader
        self.last: bytes | None = None

    def readline(self, limit: int = -1) -> bytes:
        self.last = self._reader.readline(limit)
        return self.last

    def __getattr__(self, name: str) -> Any:  # what else http.client asks of its reader (close, read ...)
        return getattr(self._reader, name)


class _Abort:
    """
    Stops the runs of a `Together` once one of them failed: none starts another attempt or wait, and the
    connections they are using are shut down, which ends a read blocked on them at once (a stream, or the wait
    for the head of a one-piece answer, which can last the whole generation).
    """

    __slots__ = ("_connections", "_fired", "_lock")

    def __init__(self) -> None:
        self._fired = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[HTTPConnection] = set()

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def fire(self) -> None:
        with self._lock:
            self._fired.set()
            connections = list(self._connections)
        for connection in connections:
            _shut_down(connection)

    def sleep(self, seconds: float) -> None:
        """`time.sleep`, ended early by `fire`."""
        self._fired.wait(seconds)

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.add(connection)
        if self.fired:
            _shut_down(connection)

    def unwatch(self, connection: object) -> None:
        if isinstance(connection, HTTPConnection):
            with self._lock:
                self._connections.discard(connection)


class _Aborted(Exception):
    """A run of a `Together` stopped because another one failed."""


def _shut_down(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


#: The `_Abort` of the run sending a request in this thread, if it belongs to a `Together`.
_SENDING = threading.local()


class _Watched(HTTPConnection):
    """A connection that a run of a `Together` sends on is known to that run's `_Abort`, which may shut it down."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        abort: _Abort | None = getattr(_SENDING, "abort", None)
        if abort is not None:
            abort.watch(self)
        super().request(*args, **kwargs)

    def connect(self) -> None:
        super().connect()
        abort: _Abort | None = getattr(_SENDING, "abort", None)
        if abort is not None and abort.fired:  # fired while connecting, before there was a socket to shut down
            _shut_down(self)


class _HTTPConnection(_Watched):
    response_class = _CheckedHead


class _HTTPSConnection(_Watched, HTTPSConnection):
    response_class = _CheckedHead


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


def _close(manager: urllib3.PoolManager) -> None:
    """Closes every connection of `manager` now (its `clear()` leaves them to the garbage collector)."""
    pools = manager.pools
    for key in list(pools.keys()):  # a snapshot: the container changes under other threads
        pool = pools.get(key)
        if pool is not None:
            pool.close()  # also closes the connections still in use as they come back
    manager.clear()


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

    def route(self, core: ClientCore, base: str | None) -> Route:
        """The route to `base` (see `Resolve`), resolved once (by whichever thread comes first)."""
        state = core.route_state(base)
        route = state.route
        if route is None:
            ticket = state.resolutions
            with state.lock:
                route = state.route
                if route is None:
                    route = self.run(core.resolution(base, ticket))
        return route

    def warm_up(self) -> None:
        """Resolves the route to every server (see `ClientCore.warmed_up`)."""
        core = self._core
        failures: list[HuggingFaceAPIError] = []
        for base in core.keys:
            if not core.needs_warm_up(base):
                continue
            try:
                self.route(core, base)
            except HuggingFaceAPIError as error:
                core.unreachable_at_warm_up(base)
                failures.append(error)
        core.warmed_up(failures)

    def run(self, flow: Flow[T], callback: SyncCallback | None = None, abort: _Abort | None = None) -> T:
        """
        Runs `flow` to its end, performing its effects; `callback` receives the chunks of its exchanges.
        `abort`: the run is one of a `Together`, and stops when it fires.
        """
        driver = Driver(flow)
        try:
            effect = driver.start()
            while effect is not None:
                if abort is not None and abort.fired:
                    raise _Aborted
                if isinstance(effect, Exchange):
                    effect = driver.send(self._exchange(effect, callback, abort))
                elif isinstance(effect, Sleep):
                    if abort is None:
                        time.sleep(effect.seconds)
                    else:
                        abort.sleep(effect.seconds)
                    effect = driver.send(None)
                elif isinstance(effect, Resolve):
                    try:
                        route: Route | HuggingFaceAPIError = self.route(effect.core, effect.base)
                    except HuggingFaceAPIError as error:
                        route = error
                    effect = driver.send(route)
                elif isinstance(effect, WaitForSlot):
                    effect = driver.send(_wait_for_slot(effect, abort))
                else:
                    effect = driver.send(self._together(effect, callback))
        finally:
            driver.close()
        return driver.result

    def _together(self, together: Together, callback: SyncCallback | None) -> Any:
        """Runs the flows of `together` in threads, the callback called by one at a time; their outcome."""
        abort = _Abort()
        failures: list[tuple[int, BaseException]] = []
        each = None if callback is None else _one_at_a_time(together.recording(callback))

        def run_one(index: int, flow: Flow[Any]) -> Any:
            try:
                return self.run(flow, each, abort)
            except BaseException as error:
                if not abort.fired:  # the first failure; the others' come from stopping them
                    failures.append((index, error))
                    abort.fire()
                raise

        flows = together.flows
        with ThreadPoolExecutor(len(flows), thread_name_prefix="hf-api-reply") as pool:
            futures = [pool.submit(run_one, index, flow) for index, flow in enumerate(flows)]
            try:
                wait(futures)
            finally:  # also when interrupted here (Ctrl-C): the threads stop before it goes on
                abort.fire()
        results = [None if future.exception() else future.result() for future in futures]
        return together.outcome(results, failures[0] if failures else None)

    def close(self) -> None:
        """Closes every connection; the pools reopen if the generator is used again."""
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            _close(pool)

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
            manager = urllib3.PoolManager(**options)
        else:
            manager = urllib3.ProxyManager(proxy.url, proxy_headers=proxy.headers, **options)
        manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager

    def _timeout(self, connect: float, read: float) -> urllib3.Timeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[(connect, read)] = urllib3.Timeout(connect=connect, read=read)
        return timeout

    def _exchange(self, exchange: Exchange, callback: SyncCallback | None, abort: _Abort | None = None) -> Any:
        """
        Performs one exchange: sends its request, reports what comes back, hands its chunks to `callback`
        (whose own exceptions propagate untouched); returns its outcome. `abort` may shut its connection down.
        """
        request = exchange.request
        if abort is not None:
            _SENDING.abort = abort  # the connection sending the request watches itself (`_Watched`)
        try:
            response = self._pool(request.base).urlopen(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=self._timeout(exchange.connect_timeout, exchange.head_timeout),
            )
        except HTTPError as error:
            exchange.fail(_failure(error), str(error))
            return exchange.outcome
        finally:
            if abort is not None:
                _SENDING.abort = None
        try:
            exchange.receive_head(response.status, response.headers)
            blocks = _blocks(response)
            waiting = exchange.head_timeout  # the socket's timeout now
            while (timeout := exchange.next_read()) is not None:
                if timeout != waiting:  # after a held head, or while draining
                    sock = getattr(response.connection, "sock", None)
                    if sock is not None:
                        sock.settimeout(timeout)
                    waiting = timeout
                try:
                    block = next(blocks, b"")
                except HTTPError as error:
                    chunks = exchange.fail(_failure(error), str(error))
                else:
                    chunks = exchange.receive(block)
                for chunk in chunks:
                    callback(chunk)  # type: ignore[misc]  # chunks come only with a stream, which has a callback
        finally:
            if abort is not None:
                abort.unwatch(response.connection)  # before it serves anyone else
            if not exchange.reusable:  # closing also stops a server that is still generating
                response.close()
            response.release_conn()
        return exchange.outcome


def _wait_for_slot(effect: WaitForSlot, abort: _Abort | None) -> Lease | None:
    """A slot taken at once, or None once one may have freed (or a left-out replica opens, or `abort` fires)."""
    fleet, woken = effect.fleet, threading.Event()
    lease = fleet.acquire(effect.avoid, woken.set)
    if lease is None:
        timeout = fleet.wait_timeout()
        if abort is not None:  # a run of a `Together` looks at its abort now and then
            timeout = min(timeout, _ABORT_CHECK)
        try:
            if woken.wait(timeout):
                return None
        except BaseException:  # interrupted (Ctrl-C): its turn passes on
            fleet.forget(woken.set)
            raise
        fleet.forget(woken.set)
    return lease


def _one_at_a_time(callback: SyncCallback) -> SyncCallback:
    """`callback`, called by one thread at a time (chunks of several replies arrive in several threads)."""
    lock = threading.Lock()

    def serialized(chunk: StreamingChunk) -> Any:
        with lock:
            return callback(chunk)

    return serialized


def _blocks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as it arrives: one HTTP chunk at a time, or what each read returns."""
    if response.chunked:
        yield from response.read_chunked(decode_content=True)
    else:
        while block := response.read1(_BLOCK):
            yield block
