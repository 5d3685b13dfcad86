"""A TCP relay in front of a fake that breaks a share of its connections: resets, cuts and stalls.

Each accepted connection is relayed to ``upstream`` byte for byte, or, with probability ``share``, broken in
one of three ways once the first bytes of the answer come back: reset (RST), cut (FIN halfway through), or
stalled (nothing more is relayed until the client gives up). The relay counts the client connections that are
still open, which is what a test of ``close()`` reads.

    with FakeTGI() as tgi, ChaosRelay(tgi.port, share=0.4, seed=1) as relay:
        ...  # point the client at relay.url; relay.open_connections after close() must be 0
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from typing import Any

from ._common import ServedInThread

_MODES = ("reset", "cut", "stall")


class ChaosRelay(ServedInThread):
    def __init__(self, upstream_port: int, *, share: float = 0.4, seed: int = 0) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.share = share
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.broken = dict.fromkeys(_MODES, 0)
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections not closed by the client yet (the relay never closes one on its own but to break it)."""
        with self._lock:
            return len(self._open)

    def _new_server(self) -> Any:
        return _Relay(self)

    def _pick(self) -> str | None:
        with self._lock:
            if self._random.random() >= self.share:
                return None
            mode = self._random.choice(_MODES)
            self.broken[mode] += 1
            return mode

    def relay(self, client: socket.socket) -> None:
        with self._lock:
            self._open.add(client)
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        mode = self._pick()
        done = threading.Event()

        def forward_requests() -> None:
            with contextlib.suppress(OSError):
                while block := client.recv(65536):
                    upstream.sendall(block)
            done.set()  # the client closed its connection (or it broke)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)  # so that the fake closes its side too

        threading.Thread(target=forward_requests, daemon=True).start()
        try:
            while not done.is_set() and (block := upstream.recv(65536)):
                if mode == "reset":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                    return
                if mode == "cut":
                    client.sendall(block[: len(block) // 2])
                    client.shutdown(socket.SHUT_WR)
                    mode = "stall"  # then wait for the client to close its side
                    continue
                if mode == "stall":
                    continue  # swallowed: the client waits for bytes that never come
                client.sendall(block)
            if mode == "stall" or not done.is_set():
                done.wait(30)  # until the client closes, or gives up
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.close()
            self._closed_by_client(client, done)

    def _closed_by_client(self, client: socket.socket, done: threading.Event) -> None:
        done.wait(30)  # the client's side reached end of file: it closed the connection
        with self._lock:
            self._open.discard(client)
        with contextlib.suppress(OSError):
            client.close()


class _Relay:
    def __init__(self, owner: ChaosRelay) -> None:
        self._owner = owner
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.server_address = self._socket.getsockname()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve_forever(self, poll_interval: float = 0.01) -> None:
        self._socket.settimeout(poll_interval)
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._owner.relay, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def shutdown(self) -> None:
        self._stop.set()

    def server_close(self) -> None:
        self._socket.close()

    def close_connections(self) -> None:
        with self._owner._lock:
            open_connections = list(self._owner._open)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        for thread in list(self._threads):
            thread.join(timeout / max(len(self._threads), 1))
