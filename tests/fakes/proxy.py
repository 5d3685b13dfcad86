"""A real forward HTTP proxy on 127.0.0.1, for testing clients that go through ``HTTP(S)_PROXY``.

:class:`ForwardProxy` speaks the two ways clients use an HTTP proxy (RFC 9110 / 9112):

* **absolute-form requests** for ``http://`` URLs: ``GET http://tgi.test:8080/info HTTP/1.1``. The proxy
  sends the request on in origin-form (``GET /info``, the client's ``Host`` header kept), over a new
  upstream connection, and streams the answer back as it arrives: chunked bodies chunk by chunk (SSE
  streams stay streams), ``Content-Length`` bodies as read, close-delimited ones until the upstream
  closes. An upstream that dies mid-body makes the proxy drop the client's connection too, so a cut
  stream stays cut. Client connections are kept alive between requests.
* **CONNECT tunnels** for ``https://`` URLs (and anything else): ``CONNECT tgi.test:8443 HTTP/1.1``,
  ``200 Connection established``, then bytes both ways until either side closes; TLS runs end to end
  between the client and the fake, the proxy sees none of it.

Every host name is sent to **127.0.0.1** (the port is the requested one, or ``ports[host]``): a client
can use names such as ``tgi.test`` or ``xyz.endpoints.huggingface.cloud`` that it never resolves itself
(a client going through a proxy lets the proxy resolve), and all traffic stays on loopback.

With ``auth=(user, password)`` every request needs ``Proxy-Authorization: Basic ...`` and gets a 407 with
``Proxy-Authenticate: Basic realm="fake-proxy"`` otherwise. Hop-by-hop headers (``Proxy-Authorization``
included) are not passed on. Each request is recorded (:attr:`ForwardProxy.requests`): method, target
as sent, headers, the upstream it went to and the status the proxy answered. Example::

    with FakeTGI() as tgi, ForwardProxy(auth=("u", "p")) as proxy:
        env = {"HTTP_PROXY": proxy.authenticated_url}  # http://u:p@127.0.0.1:PORT
        ...  # the client calls http://tgi.test:{tgi.port}/generate
        assert proxy.requests[0].headers["proxy-authorization"].startswith("Basic ")
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import selectors
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import parse_headers
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from ._common import ServedInThread

# Connection-level headers a proxy does not forward (RFC 9110 section 7.6.1), in lower case.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass
class ProxiedRequest:
    """One request the proxy received.

    ``target`` is the request target as sent (``http://tgi.test:8080/info`` or ``tgi.test:8443`` for
    CONNECT), ``host`` / ``port`` the requested ones, ``upstream`` the ``(address, port)`` the proxy
    connected to (None if it did not), ``headers`` the request headers with lower-cased names, and
    ``status`` what the proxy answered: the upstream's status, 200 for an established tunnel, 407, 400
    or 502 from the proxy itself (None until known).
    """

    method: str
    target: str
    host: str
    port: int | None
    headers: dict[str, str]
    upstream: tuple[str, int] | None = None
    status: int | None = None
    received_at: float = field(default_factory=time.monotonic)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    rbufsize = 0  # unbuffered: no byte the client sent after a CONNECT can be left behind in a buffer
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # Requests -----------------------------------------------------------------------------------
    def do_CONNECT(self) -> None:
        record = self._begin()
        if record is None:
            return
        host, port = record.host, record.port
        if not host or port is None:
            self._reply(record, 400, "CONNECT needs host:port")
            return
        upstream = self._connect(record)
        if upstream is None:
            return
        try:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            record.status = 200
            _pipe(self.connection, upstream, self.server.proxy)
        finally:
            self.server.untrack(upstream)
            upstream.close()
            self.close_connection = True

    def _forward(self) -> None:
        record = self._begin()
        if record is None:
            return
        url = urlsplit(self.path)
        body = self._request_body()
        if url.scheme != "http" or not url.hostname:
            self._reply(record, 400, "a proxy request needs an absolute http:// URI (use CONNECT for https)")
            return
        upstream = self._connect(record)
        if upstream is None:
            return
        try:
            self._exchange(record, upstream, url.path or "/", url.query, body)
        finally:
            self.server.untrack(upstream)
            upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward

    # Steps --------------------------------------------------------------------------------------
    def _begin(self) -> ProxiedRequest | None:
        """Record the request; answer 407 (and return None) when proxy credentials are missing."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if self.command == "CONNECT":
            host, _, port_text = self.path.rpartition(":")
        else:
            url = urlsplit(self.path)
            host, port_text = url.hostname or "", str(url.port or 80)
        host = host.strip("[]").lower()
        record = ProxiedRequest(self.command, self.path, host, int(port_text) if port_text.isdigit() else None, headers)
        proxy = self.server.proxy
        proxy._record(record)
        if not proxy._authorized(headers.get("proxy-authorization")):
            if self.command != "CONNECT":
                self._request_body()  # read it all, or the client may miss the answer
            self._reply(
                record, 407, "Proxy Authentication Required", {"Proxy-Authenticate": 'Basic realm="fake-proxy"'}
            )
            return None
        return record

    def _connect(self, record: ProxiedRequest) -> socket.socket | None:
        proxy = self.server.proxy
        assert record.port is not None
        port = proxy.ports.get(record.host, record.port)
        record.upstream = ("127.0.0.1", port)
        try:
            upstream = socket.create_connection(record.upstream, timeout=proxy.connect_timeout)
        except OSError as exc:
            self._reply(record, 502, f"cannot reach {record.host}:{record.port}: {exc}")
            return None
        upstream.settimeout(None)
        self.server.track(upstream)
        return upstream

    def _request_body(self) -> bytes:
        """The request body as sent (chunked framing kept), read to its end."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                parts.append(line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        parts.append(trailer)
                        if trailer in (b"\r\n", b"\n", b""):
                            return b"".join(parts)
                parts.append(_read_exactly(self.rfile, size + 2))
        return _read_exactly(self.rfile, int(self.headers.get("Content-Length") or 0))

    def _exchange(self, record: ProxiedRequest, upstream: socket.socket, path: str, query: str, body: bytes) -> None:
        target = path + (f"?{query}" if query else "")
        head = [f"{self.command} {target} HTTP/1.1"]
        for name, value in self.headers.items():
            if name.lower() not in _HOP_BY_HOP and name.lower() not in _connection_tokens(self.headers):
                head.append(f"{name}: {value}")
        head.append("Connection: close")  # one upstream connection per request
        upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        reader = upstream.makefile("rb")
        try:
            status, status_line, headers = _read_response_head(reader)
            record.status = status
            client_wants_close = self.close_connection
            lines = [status_line]
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() not in _connection_tokens(headers):
                    lines.append(f"{name}: {value}")
            no_body = self.command == "HEAD" or status in (204, 304)
            chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
            length = headers.get("Content-Length")
            close_delimited = not no_body and not chunked and length is None
            if close_delimited or client_wants_close:
                lines.append("Connection: close")
                self.close_connection = True
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if no_body:
                return
            complete = (
                _relay_chunked(reader, self.wfile)
                if chunked
                else _relay_bytes(reader, self.wfile, None if length is None else int(length))
            )
            if not complete:  # the upstream died mid-body: the client must see the cut too
                self.close_connection = True
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
        except _UpstreamClosed:  # before a byte of answer: the proxy can still say so
            self._reply(record, 502, "the upstream closed the connection without an answer")
        finally:
            reader.close()

    def _reply(
        self, record: ProxiedRequest, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        record.status = status
        body = message.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == 400 or self.command == "CONNECT":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class _UpstreamClosed(Exception):
    pass


def _connection_tokens(headers: Any) -> set[str]:
    """Header names listed in ``Connection`` (also hop-by-hop)."""
    return {t.strip().lower() for t in headers.get("Connection", "").split(",") if t.strip()}


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    parts, remaining = [], size
    while remaining > 0:
        piece = reader.read(remaining)
        if not piece:
            break
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)


def _read_response_head(reader: BinaryIO) -> tuple[int, str, Any]:
    """Status code, status line and headers of the upstream's answer, skipping 1xx interim answers."""
    while True:
        line = reader.readline(65537)
        if not line:
            raise _UpstreamClosed
        status_line = line.decode("latin-1").rstrip("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
        headers = parse_headers(reader)  # type: ignore[arg-type]
        if not 100 <= status < 200:
            return status, status_line, headers


def _relay_chunked(reader: BinaryIO, writer: Any) -> bool:
    """Copy a chunked body chunk by chunk, framing included; False if the upstream stopped short."""
    while True:
        line = reader.readline(65537)
        if not line.endswith(b"\n"):
            if line:
                writer.write(line)
            return False
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            writer.write(line)
            return False
        if size == 0:
            writer.write(line)
            while True:
                trailer = reader.readline(65537)
                writer.write(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return True
                if not trailer:
                    return False
        data = _read_exactly(reader, size + 2)
        writer.write(line + data)
        if len(data) < size + 2:
            return False


def _relay_bytes(reader: Any, writer: Any, length: int | None) -> bool:
    """Copy ``length`` bytes as they come (all of them until EOF when None); False if cut short."""
    remaining = length
    while remaining is None or remaining > 0:
        piece = reader.read1(65536 if remaining is None else min(remaining, 65536))
        if not piece:
            return remaining is None
        writer.write(piece)
        if remaining is not None:
            remaining -= len(piece)
    return True


def _pipe(client: socket.socket, upstream: socket.socket, proxy: ForwardProxy) -> None:
    """Copy bytes both ways until both sides have closed (a half-close is passed on) or one fails."""
    peers = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        open_sides = 2
        while open_sides and not proxy._stopping.is_set():
            for key, _ in selector.select(timeout=0.1):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if data:
                    try:
                        peers[source].sendall(data)
                    except OSError:
                        return
                    continue
                selector.unregister(source)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(peers[source], socket.SHUT_WR)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, proxy: ForwardProxy) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.proxy = proxy
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._handlers: list[threading.Thread] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="ForwardProxy-conn"
        )
        thread.daemon = True
        with self._lock:
            self._handlers = [t for t in self._handlers if t.is_alive()]
            self._handlers.append(thread)
        thread.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self.proxy._stopping.is_set():
            self.close_connections()

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def close_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._handlers)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            return  # clients and upstreams that vanish, and stop()
        super().handle_error(request, client_address)


class ForwardProxy(ServedInThread):
    """A threaded forward proxy on 127.0.0.1 (see the module docstring). Context manager, or
    :meth:`start` / :meth:`stop`.

    ``auth``: ``(user, password)`` required as proxy basic auth. ``ports``: host name → local port, for
    URLs without the fake's port (``{"xyz.endpoints.huggingface.cloud": tgi.port}``); other names keep
    the requested port. ``connect_timeout``: seconds to reach an upstream before answering 502.
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.auth = auth
        self.ports: dict[str, int] = {host.lower(): port for host, port in (ports or {}).items()}
        self.connect_timeout = connect_timeout
        self._requests: list[ProxiedRequest] = []
        self._requests_lock = threading.Lock()
        super().__init__()

    # Lifecycle (start, stop, context manager, port: ServedInThread) ------------------------------
    def _new_server(self) -> _ProxyServer:
        return _ProxyServer(self)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``HTTP_PROXY`` / ``HTTPS_PROXY`` (the proxy itself is plain http)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def authenticated_url(self) -> str:
        """``url`` with the ``auth`` credentials in it (``http://user:password@127.0.0.1:PORT``)."""
        if self.auth is None:
            return self.url
        user, password = (quote(part, safe="") for part in self.auth)
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def proxy_authorization(self) -> str:
        """The ``Proxy-Authorization`` header value the proxy accepts."""
        if self.auth is None:
            raise RuntimeError("this proxy takes no credentials")
        return "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()

    # Recording ----------------------------------------------------------------------------------
    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def _record(self, record: ProxiedRequest) -> None:
        with self._requests_lock:
            self._requests.append(record)

    def _authorized(self, header: str | None) -> bool:
        if self.auth is None:
            return True
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self.auth[0]}:{self.auth[1]}"
