"""
The async client: runs the core's flows (`_core`) with aiohttp and `asyncio.sleep`. Only I/O lives here.

An aiohttp `ClientSession` belongs to the event loop it was created in, so each loop gets its own:
one per server, created inside the running loop on first use and closed there by `close()`. Proxies
come from the environment through `_http.proxy_for` (not aiohttp's `trust_env`, which reads `~/.netrc`
in a thread for every request), redirects are never followed, and aiohttp's exceptions become the
package's in `_translate`, the one place that knows them.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from ._core import ClientCore, Deliver, Driver, Exchange, Flow, T
from ._generation import StreamState
from ._http import (
    DRAIN_BYTES,
    DRAIN_SECONDS,
    Answer,
    BoundedBody,
    Proxy,
    Request,
    is_event_stream,
    proxy_for,
    ssl_context,
)
from ._routing import Route
from .errors import APIConnectionError, APITimeoutError, HuggingFaceAPIError, ResponseFormatError

AsyncCallback = Callable[[Any], Awaitable[None] | None]

#: Connections per server and event loop: enough for hundreds of requests in flight.
CONNECTION_LIMIT = 1024
_BLOCK = 64 * 1024
_LIBRARY_ERRORS = (aiohttp.ClientError, TimeoutError)


def _translate(error: BaseException, where: str) -> HuggingFaceAPIError:
    """aiohttp's exceptions as ours, with a message that says what failed (never a header value)."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{where} timed out while connecting (see api_params['timeout'])", phase="connect")
    if isinstance(error, TimeoutError):  # aiohttp's socket read timeout, and any other
        return APITimeoutError(f"{where} timed out waiting for the server (see api_params['timeout'])", phase="read")
    if isinstance(error, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return APIConnectionError(f"{where} could not connect through the proxy: {error}")
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS verification
        return APIConnectionError(f"{where} could not connect: {error}")
    if isinstance(error, aiohttp.ClientResponseError):  # an answer aiohttp could not parse
        return ResponseFormatError(f"{where} returned an answer that is not valid HTTP: {error.message}")
    return APIConnectionError(f"{where} failed: the connection broke ({type(error).__name__}: {error})")


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
    What one event loop has of a generator: its sessions and its route lock.

    A loop's sessions are closed on that loop: by `AsyncClient.close()`, else when the loop shuts down.
    For the latter, a small async generator is registered with the loop and left suspended; the loop's
    `shutdown_asyncgens()` (which `asyncio.run` calls before closing it) resumes it into its `finally`,
    which closes the sessions while the loop still runs. A loop closed without that is noticed later
    (`abandon`): its sessions are then only marked closed, their sockets left to the garbage collector.
    """

    __slots__ = ("_closer", "route_lock", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[aiohttp.ClientSession, _ProxyRoute]] = {}
        self.route_lock = asyncio.Lock()
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

    async def route(self) -> Route:
        """The route, resolved once (by whichever task comes first; the others wait without blocking)."""
        route = self._core.route
        if route is None:
            ticket = self._core.resolutions
            async with self._state().route_lock:
                route = self._core.route
                if route is None:
                    route = await self.run(self._core.resolution(ticket))
        return route

    async def run(self, flow: Flow[T], callback: AsyncCallback | None = None) -> T:
        """Runs `flow` to its end, performing its effects; `callback` receives the chunks it delivers."""
        driver = Driver(flow)
        try:
            effect = driver.start()
            while effect is not None:  # the effects, performed here (one coroutine less per request in flight)
                outcome = None
                if isinstance(effect, Exchange):
                    outcome = await self._exchange(effect.request, effect.stream, callback)
                elif isinstance(effect, Deliver):
                    result = callback(effect.chunk)  # type: ignore[misc]  # a delivery comes with a callback
                    if result is not None and inspect.isawaitable(result):
                        await result
                else:
                    await asyncio.sleep(effect.seconds)
                effect = driver.send(outcome)
        finally:
            driver.close()
        return driver.result

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

    async def _exchange(self, request: Request, stream: StreamState | None, callback: AsyncCallback | None) -> Any:
        """
        Sends `request`; returns its `Answer`, or the `HuggingFaceAPIError` it failed with. A stream's body
        goes to `stream`, its chunks to `callback`, whose own exceptions propagate untouched. Cancelling
        the task closes the connection at once, which stops a server that is still generating.
        """
        session, route = await self._session(request.base)
        headers = request.headers if route.forwarded_headers is None else {**request.headers, **route.forwarded_headers}
        try:
            response = await session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                proxy=route.proxy,
                proxy_headers=route.tunnel_headers,
                timeout=self._timeout(request.connect_timeout, request.first_byte_timeout),
            )
        except _LIBRARY_ERRORS as error:
            return _translate(error, request.where)
        reusable = False  # whether the connection may serve another request: the body was read to its end
        try:
            if stream is None or response.status >= 300 or not is_event_stream(response.headers):
                answer = await self._read_whole(request, response)
                reusable = isinstance(answer, Answer)
                return answer
            if request.first_byte_timeout != request.read_timeout:
                protocol = response.connection.protocol if response.connection is not None else None
                if protocol is not None:  # the answer has started: reads get the usual timeout, from now on
                    protocol.read_timeout = request.read_timeout
                    protocol.start_timeout()
            content = response.content
            while not stream.done:
                try:
                    block = await content.readany()
                except _LIBRARY_ERRORS as error:
                    return _translate(error, request.where)
                if (chunk := stream.feed(block)) is not None:
                    result = callback(chunk)  # type: ignore[misc]  # a stream always comes with a callback
                    if result is not None and inspect.isawaitable(result):
                        await result
            reusable = await self._drain(content) if stream.should_drain else stream.at_eof
            return Answer(response.status, response.headers)
        finally:
            if reusable:
                response.release()
            else:
                response.close()

    @staticmethod
    async def _drain(content: aiohttp.StreamReader) -> bool:
        """Reads what follows a stream's last event (its end marker), briefly; True when the body ended cleanly."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                received = 0
                while block := await content.readany():
                    received += len(block)
                    if received > DRAIN_BYTES:
                        return False
        except _LIBRARY_ERRORS:
            return False
        return True

    @staticmethod
    async def _read_whole(request: Request, response: aiohttp.ClientResponse) -> Answer | HuggingFaceAPIError:
        try:
            body = BoundedBody(request, response.headers)  # refuses a declared length over the limit
            if response.content_length is not None:  # one read of what was declared: the common case
                body.add(await response.content.read())
            else:
                async for part in response.content.iter_chunked(_BLOCK):
                    body.add(part)
        except _LIBRARY_ERRORS as error:
            return _translate(error, request.where)
        except HuggingFaceAPIError as error:  # too large
            return error
        return body.answer(response.status, response.headers)
