"""
What a cold review of the core found, each pinned by a test: nothing blocking the event loop at first use,
a bounded wait for a stream's end marker, headers merged without duplicates, no token in a request's
repr, and sessions of a dropped generator closed on their loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._http import Request
from tests.fakes import FakeTGI, issue_cert, make_ca
from tests.helpers import TEXT, Chunks, call


async def test_tls_settings_are_loaded_once_per_client_and_off_the_event_loop(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_integrations.generators.hugging_face_api import _async

    ca = make_ca(tmp_path_factory.mktemp("ca"))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    threads: list[threading.Thread] = []
    real = _async.ssl_context

    def recording(verify: bool) -> object:
        threads.append(threading.current_thread())
        return real(verify)

    monkeypatch.setattr(_async, "ssl_context", recording)
    with FakeTGI(tls=issue_cert(ca)) as server:
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        assert (await generator.run_async("q"))["replies"] == [TEXT]
        await generator.close_async()
        assert (await generator.run_async("q"))["replies"] == [TEXT]  # a new session: the same TLS settings
        await generator.close_async()
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()  # loading the CA bundle never ran on the loop


def test_the_async_client_module_is_imported_off_the_event_loop() -> None:
    import subprocess
    import sys

    code = """
import asyncio, sys, threading
from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
assert "aiohttp" not in sys.modules
where = []
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp":
            where.append(threading.current_thread() is threading.main_thread())
        return None
sys.meta_path.insert(0, Finder())
async def main():
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://127.0.0.1:9"})
    try:
        await generator.warm_up_async()
    except Exception:
        pass
asyncio.run(main())
print(where)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[False]"  # imported once, in a worker thread


@pytest.fixture
def lingering_server() -> Iterator[str]:
    """A TGI-like server whose streams send their final event, then keep the body open with comments."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        return
                    request += data
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(
                    next(
                        (
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        b"0",
                    )
                )
                while len(body) < length:
                    body += conn.recv(65536)
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                final = b'data: {"index":1,"token":{"id":1,"text":"Hi","logprob":0,"special":false},"generated_text":"Hi","details":{"finish_reason":"eos_token","generated_tokens":1}}\n\n'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                conn.sendall(b"%X\r\n%s\r\n" % (len(final), final))
                for _ in range(30):  # 3 s of keep-alive comments after the last event
                    if stop.wait(0.1):
                        return
                    conn.sendall(b"3\r\n:\n\n\r\n")
                conn.sendall(b"0\r\n\r\n")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_complete_reply_is_not_held_while_the_server_keeps_the_body_open(lingering_server: str, mode: str) -> None:
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": lingering_server, "protocol": "tgi"})
    generator.warm_up()
    chunks = Chunks()
    started = time.monotonic()
    assert call(generator, mode, chunks)["replies"] == ["Hi"]
    assert time.monotonic() - started < 2  # the end-marker read is bounded (1 s), not the server's 3 s


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_headers_differing_only_in_case_are_sent_once(tgi: FakeTGI, mode: str) -> None:
    headers = {"user-agent": "my-app/1.0", "content-type": "text/plain", "x-scale-up-timeout": "1"}
    generator = HuggingFaceAPIGenerator("inference_endpoints", {"url": tgi.url, "headers": headers})
    assert call(generator, mode, None)["replies"] == [TEXT]
    post = [r for r in tgi.requests if r.method == "POST"][-1]
    assert post.headers["user-agent"] == "my-app/1.0"  # the user's wins
    assert post.headers["content-type"] == "application/json"  # the protocol's wins
    assert post.headers["x-scale-up-timeout"] == "300"  # so does the policy's


def test_a_request_repr_never_shows_its_headers_or_body() -> None:
    request = Request("POST", "http://h", "http://h/g", {"Authorization": "Bearer hf_SECRET"}, b"{}", 1, 1, 1, "POST")
    assert "hf_SECRET" not in repr(request) and "Authorization" not in repr(request)


async def test_a_generator_dropped_without_close_closes_its_sessions_on_their_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    with FakeTGI() as server:
        for _ in range(3):
            generator = HuggingFaceAPIGenerator(
                "text_generation_inference", {"url": server.url}, token=Secret.from_token("t0k3n-value")
            )
            assert (await generator.run_async("q"))["replies"] == [TEXT]
            del generator
            gc.collect()
            await asyncio.sleep(0.05)  # the loop runs the closing task
        assert await asyncio.to_thread(server.wait_open_connections, 0)
    assert "Unclosed" not in caplog.text
