"""
The async client: runs the core's flows (`_core`) with aiohttp and `asyncio.sleep`. Only I/O lives here: a
byte loop around each `Exchange`, and the table that names aiohttp's exceptions.

An aiohttp `ClientSession` belongs to the event loop it was created in, so each loop gets its own:
one per server, created inside the running loop on first use and closed there by `close()`. Proxies
come from the environment through `_http.proxy_for` (not aiohttp's `trust_env`, which reads `~/.netrc`
in a thread for every request), redirects are never followed, and aiohttp never sends a request again
by itself (`_sent_once`): each attempt is exactly one request on one connection, as on the sync path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError

from ._core import ClientCore, Driver, Flow, Resolve, Sleep, T, Together, WaitForSlot
from ._exchange import Exchange, Failure
from ._fleet import Lease
from ._http import Proxy, proxy_for, ssl_context
from ._routing import Route
from .errors import HuggingFaceAPIError

AsyncCallback = Callable[[Any], Awaitable[None] | None]

#: Connections per server and event loop: enough for hundreds of requests in flight.
CONNECTION_LIMIT = 1024


def _failure(error: BaseException) -> Failure:
    """aiohttp's exceptions as the failures the exchange words."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return Failure.CONNECT_TIMEOUT
    if isinstance(error, TimeoutError):  # aiohttp's socket read timeout, or the exchange's shorter wait
        return Failure.READ_TIMEOUT
    if isinstance(error, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return Failure.PROXY
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS verification
        return Failure.CONNECT
    if isinstance(error, aiohttp.ClientPayloadError) and isinstance(error.__cause__, ContentEncodingError):
        return Failure.UNDECODABLE
    return Failure.BROKEN  # the connection broke, or the answer is not HTTP


class _NotResent(Exception):
    """
    Carries a connection error past aiohttp's own resend loop, which sends idempotent requests (our GET
    probes) a second time after a reset: retries are the core's, counted against `max_retries`.
    """

    def __init__(self, error: aiohttp.ClientError) -> None:
        super().__init__(str(error))
        self.error = error


async def _sent_once(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
    """The session's middleware: see `_NotResent`."""
    try:
        response: aiohttp.ClientResponse = await handler(request)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as error:
        raise _NotResent(error) from error
    return response


_LIBRARY_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class _ProxyRoute:
    """
    How requests reach a server: directly, or through `proxy`. The proxy's credentials go on the CONNECT
    request of a tunnel (https) or, when the proxy forwards plain http, on each request, which it receives.
    """

    proxy: str | None = None
    tunnel_headers: dict[str, str] | None = None
    forwarded_headers: dict[str, str] | None = None

    @staticmethod
    def to(base: str, proxy: Proxy | None) -> _ProxyRoute:
        if proxy is None:
            return _ProxyRoute()
        credentials = proxy.headers or None
        if base.startswith("https:"):
            return _ProxyRoute(proxy.url, tunnel_headers=credentials)
        return _ProxyRoute(proxy.url, forwarded_headers=credentials)


class _LoopState:
    """
    What one event loop has of a generator: its sessions and its route locks.

    A loop's sessions are closed on that loop: by `AsyncClient.close()`, else when the loop shuts down.
    For the latter, a small async generator is registered with the loop and left suspended; the loop's
    `shutdown_asyncgens()` (which `asyncio.run` calls before closing it) resumes it into its `finally`,
    which closes the sessions while the loop still runs. A loop closed without that is noticed later
    (`abandon`): its sessions are then only marked closed, their sockets left to the garbage collector.
    """

    __slots__ = ("_closer", "route_locks", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[aiohttp.ClientSession, _ProxyRoute]] = {}
        self.route_locks: dict[tuple[int, str | None], asyncio.Lock] = {}  # by (id of the core, server)
        # It refers to the loop (through the loop's finalizer hook): dropped once it has run.
        self._closer: AsyncGenerator[None, None] | None = _close_at_loop_shutdown(self)
        _run_now(self._closer.__anext__())  # registers it with the running loop, suspended at its yield

    async def close(self) -> None:
        """Closes the sessions, on the running loop."""
        if self._closer is not None:
            await self._closer.aclose()

    async def close_sessions(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session, _ in sessions:
            await session.close()  # on a closed loop this only marks it closed, without waiting for anything
        self._closer = None

    def abandon(self) -> None:
        """For a loop that was closed without shutting down its async generators."""
        if self._closer is not None:
            _run_now(self._closer.aclose())


async def _close_at_loop_shutdown(state: _LoopState) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await state.close_sessions()


def _run_now(step: Coroutine[Any, Any, Any] | Awaitable[Any]) -> None:
    """Runs an awaitable that needs no event loop to its end, here; one that would wait is abandoned."""
    try:
        step.send(None)  # type: ignore[union-attr]
    except StopIteration:
        return
    step.close()  # type: ignore[union-attr]


#: Closing tasks of orphaned sessions: the event loop keeps only weak references to tasks.
_CLOSING: set[asyncio.Task[None]] = set()


def _close_orphaned_sessions(loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]) -> None:
    """For a client garbage-collected without `close()`: each loop's sessions are closed on that loop."""

    def close_on(state: _LoopState) -> None:
        task = asyncio.get_running_loop().create_task(state.close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    for loop, state in list(loops.items()):
        try:
            loop.call_soon_threadsafe(close_on, state)
        except RuntimeError:  # the loop is closed
            state.abandon()


class AsyncClient:
    """Runs a generator's flows on the running event loop; usable from several loops, one session each."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._lock = threading.Lock()  # guards `_loops` (loops may run in different threads)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._ssl_context: ssl.SSLContext | None = None  # shared by the sessions of every loop
        # Dropped without close(): its sessions are closed on their loops all the same (not at exit, though).
        weakref.finalize(self, _close_orphaned_sessions, self._loops).atexit = False
        # The loop used last (weakly) and its state: spares a weak-dictionary lookup per request.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopState] | None = None

    # --- what the component asks -----------------------------------------------------------------

    async def route(self, core: ClientCore, base: str | None) -> Route:
        """
        The route to `base` (see `Resolve`), resolved once (by whichever task comes first; the others wait
        without blocking).
        """
        state = core.route_state(base)
        route = state.route
        if route is None:
            ticket = state.resolutions
            locks = self._state().route_locks
            lock = locks.get((id(core), base)) or locks.setdefault((id(core), base), asyncio.Lock())
            async with lock:
                route = state.route
                if route is None:
                    route = await self.run(core.resolution(base, ticket))
        return route

    async def warm_up(self) -> None:
        """Resolves the route to every server (see `ClientCore.warmed_up`)."""
        core = self._core
        failures: list[HuggingFaceAPIError] = []
        for base in core.keys:
            if not core.needs_warm_up(base):
                continue
            try:
                await self.route(core, base)
            except HuggingFaceAPIError as error:
                core.unreachable_at_warm_up(base)
                failures.append(error)
        core.warmed_up(failures)

    async def run(self, flow: Flow[T], callback: AsyncCallback | None = None) -> T:
        """Runs `flow` to its end, performing its effects; `callback` receives the chunks of its exchanges."""
        driver = Driver(flow)
        try:
            effect = driver.start()
            while effect is not None:  # the effects, performed here (one coroutine less per request in flight)
                if isinstance(effect, Exchange):
                    effect = driver.send(await self._exchange(effect, callback))
                elif isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                    effect = driver.send(None)
                elif isinstance(effect, Resolve):
                    try:
                        route: Route | HuggingFaceAPIError = await self.route(effect.core, effect.base)
                    except HuggingFaceAPIError as error:
                        route = error
                    effect = driver.send(route)
                elif isinstance(effect, WaitForSlot):
                    effect = driver.send(await _wait_for_slot(effect))
                else:
                    effect = driver.send(await self._together(effect, callback))
        finally:
            driver.close()
        return driver.result

    async def _together(self, together: Together, callback: AsyncCallback | None) -> Any:
        """Runs the flows of `together` as tasks; the first to fail cancels the others (closing their streams)."""
        each = None if callback is None else together.recording(callback)
        tasks = [asyncio.ensure_future(self.run(flow, each)) for flow in together.flows]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # also when this task is cancelled: the others end with it
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        # Every task is done now; each one's exception is read (else asyncio logs it as never retrieved).
        results: list[Any] = []
        first: tuple[int, BaseException] | None = None
        for index, task in enumerate(tasks):
            error = None if task.cancelled() else task.exception()
            results.append(None if task.cancelled() or error is not None else task.result())
            if first is None and error is not None and task in done:
                first = (index, error)
        return together.outcome(results, first)

    async def close(self) -> None:
        """Closes the running loop's sessions and forgets those of closed loops."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.pop(loop, None)
            self._last = None
        self.forget_closed_loops()
        if state is not None:
            await state.close()

    def forget_closed_loops(self) -> None:
        """Drops the sessions of event loops that were closed without `close()` (see `_LoopState`)."""
        with self._lock:
            closed = [loop for loop in self._loops if loop.is_closed()]
            states = [self._loops.pop(loop) for loop in closed]
            if self._last is not None and self._last[0]() in closed:
                self._last = None
        for state in states:
            state.abandon()

    # --- effects ---------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:  # nearly always: one loop at a time
            return last[1]
        state = self._loops.get(loop)
        if state is None:
            self.forget_closed_loops()
            with self._lock:
                state = self._loops.get(loop)
                if state is None:
                    state = self._loops[loop] = _LoopState()
        self._last = (weakref.ref(loop), state)
        return state

    async def _session(self, base: str) -> tuple[aiohttp.ClientSession, _ProxyRoute]:
        """This loop's session for the server at `base`, and how its requests reach it."""
        state = self._state()
        entry = state.sessions.get(base)
        if entry is None:
            proxy = proxy_for(base)
            tls = base.startswith("https:") or (proxy is not None and proxy.url.startswith("https:"))
            tls_option: ssl.SSLContext | bool = True  # plain http: aiohttp needs no context
            if tls:
                if self._ssl_context is None:  # loading the CA bundle takes ~15 ms: once, and off the loop
                    self._ssl_context = await asyncio.to_thread(ssl_context, self._core.settings.verify)
                tls_option = self._ssl_context
            entry = state.sessions.get(base)  # another task may have made it meanwhile
            if entry is None:
                connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT, limit_per_host=0, ssl=tls_option)
                session = aiohttp.ClientSession(
                    connector=connector,
                    trust_env=False,
                    skip_auto_headers=("Accept-Encoding",),  # as the sync client: no compressed streams
                    middlewares=(_sent_once,),
                )
                entry = state.sessions[base] = (session, _ProxyRoute.to(base, proxy))
        return entry

    def _timeout(self, connect: float, read: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[(connect, read)] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=read
            )
        return timeout

    async def _exchange(self, exchange: Exchange, callback: AsyncCallback | None) -> Any:
        """
        Performs one exchange: sends its request, reports what comes back, hands its chunks to `callback`
        (whose own exceptions propagate untouched); returns its outcome. Cancelling the task closes the
        connection at once, which stops a server that is still generating.

        aiohttp's own read timeout is the exchange's longest wait (the head); a shorter wait that the exchange
        asks for (reads after a held head, the drain) is enforced around that read.
        """
        request = exchange.request
        session, route = await self._session(request.base)
        headers = request.headers if route.forwarded_headers is None else {**request.headers, **route.forwarded_headers}
        longest = exchange.head_timeout
        try:
            response = await session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                proxy=route.proxy,
                proxy_headers=route.tunnel_headers,
                timeout=self._timeout(exchange.connect_timeout, longest),
            )
        except _NotResent as wrapped:
            exchange.fail(_failure(wrapped.error), str(wrapped.error))
            return exchange.outcome
        except _LIBRARY_ERRORS as error:
            exchange.fail(_failure(error), str(error))
            return exchange.outcome
        unwatch = _end_reads_when_closed(response)
        try:
            exchange.receive_head(response.status, response.headers)
            content = response.content
            while (timeout := exchange.next_read()) is not None:
                try:
                    if timeout < longest:
                        async with asyncio.timeout(timeout):
                            block = await content.readany()
                    else:
                        block = await content.readany()
                except _LIBRARY_ERRORS as error:
                    chunks = exchange.fail(_failure(error), str(error) or type(error).__name__)
                else:
                    chunks = exchange.receive(block)
                for chunk in chunks:
                    result = callback(chunk)  # type: ignore[misc]  # chunks come only with a stream and its callback
                    if result is not None and inspect.isawaitable(result):
                        await result
        finally:
            if unwatch is not None:
                unwatch()
            if exchange.reusable:
                response.release()
            else:
                response.close()
        return exchange.outcome


async def _wait_for_slot(effect: WaitForSlot) -> Lease | None:
    """A slot taken at once, or None once one may have freed (or a left-out replica opens); the loop runs on."""
    fleet, loop = effect.fleet, asyncio.get_running_loop()
    woken = loop.create_future()

    def wake() -> None:  # called by whichever thread or loop gives a slot back
        with contextlib.suppress(RuntimeError):  # this loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, woken)

    lease = fleet.acquire(effect.avoid, wake)
    if lease is None:
        try:
            done, _ = await asyncio.wait((woken,), timeout=fleet.wait_timeout())
        except BaseException:  # cancelled: a wake it received passes on to the next waiter
            fleet.forget(wake)
            raise
        if not done:
            fleet.forget(wake)
    return lease


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _end_reads_when_closed(response: aiohttp.ClientResponse) -> Callable[[], None] | None:
    """
    Makes the connection's closing end a read of the body that is still waiting; returns how to undo it.

    aiohttp's C parser, rejecting the body's chunked framing after the head, closes the connection but never
    tells the body's reader, which then waits forever (its read timeout dropped too). The sync client sees
    a broken connection there; so does this one, now.
    """
    connection = response.connection
    closed = connection.protocol.closed if connection is not None and connection.protocol is not None else None
    if closed is None:
        return None
    content = response.content

    def on_closed(_: object) -> None:
        if not content.is_eof():
            content.set_exception(aiohttp.ClientPayloadError("the connection closed before the body ended"))

    closed.add_done_callback(on_closed)  # removed after the exchange: a kept-alive connection serves many

    def unwatch() -> None:
        closed.remove_done_callback(on_closed)

    return unwatch
