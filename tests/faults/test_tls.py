"""TLS verification is on unless the user turns it off explicitly."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from haystack_integrations.generators.hugging_face_api import APIConnectionError, HuggingFaceAPIGenerator

INFO = {"model_id": "tls/model", "max_total_tokens": 4096, "max_stop_sequences": 4}


class _Handler(BaseHTTPRequestHandler):
    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json(INFO)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._json({"generated_text": "over TLS", "details": {"finish_reason": "eos_token", "generated_tokens": 2}})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def https_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a self-signed certificate")
    folder: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_self_signed_certificate_is_refused_by_default(https_url: str) -> None:
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": https_url, "max_retries": 0})
    with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        generator.run("hello")


def test_verification_can_be_turned_off_explicitly(https_url: str) -> None:
    api_params = {"url": https_url, "max_retries": 0, "verify": False}
    result = HuggingFaceAPIGenerator("text_generation_inference", api_params).run("hello")
    assert result["replies"] == ["over TLS"]
    assert result["meta"][0]["model"] == "tls/model"
