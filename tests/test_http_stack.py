"""
What the HTTP stacks (urllib3 for `run`, aiohttp for `run_async`) must keep doing for users (issue 13):
proxies from the environment (through a real local proxy), TLS verification with `SSL_CERT_FILE`,
redirects never followed, and which timeouts are retried.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import (
    APIConnectionError,
    APITimeoutError,
    HuggingFaceAPIGenerator,
    RedirectError,
)
from tests.fakes import FakeOpenAI, FakeTGI, Fault, ForwardProxy, issue_cert, make_ca
from tests.helpers import MODE_IDS, MODES, TEXT, Chunks, call, posts

SECRET = "hf_stack_test_token_0123456789"


def tgi_generator(url: str, **api_params: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("text_generation_inference", {"url": url, **api_params})


@pytest.fixture
def resolve_test_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under `.test` resolve to 127.0.0.1 for this process (no DNS server is asked)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if isinstance(host, str) and host.endswith(".test") else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Any:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    return ca, issue_cert(ca, hostnames=["127.0.0.1", "tgi.test"])


# --- proxies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_http_proxy_from_the_environment_carries_the_requests(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, mode: str, streamed: bool
) -> None:
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        chunks = Chunks() if streamed else None
        result = call(tgi_generator(tgi.url_for("tgi.test")), mode, chunks)
        assert result["replies"] == [TEXT]
        assert [r.host for r in proxy.requests] == ["tgi.test"] * len(tgi.requests)
        assert [r.method for r in proxy.requests] == [r.method for r in tgi.requests]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_proxy_credentials_in_the_proxy_url_go_to_the_proxy_only(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    with ForwardProxy(auth=("user", "pa:ss")) as proxy:
        monkeypatch.setenv("http_proxy", proxy.authenticated_url)
        assert call(tgi_generator(tgi.url_for("tgi.test")), mode, None)["replies"] == [TEXT]
        assert {r.headers.get("proxy-authorization") for r in proxy.requests} == {proxy.proxy_authorization()}
        assert all("proxy-authorization" not in r.headers for r in tgi.requests)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_proxy_and_loopback_bypass_the_proxy(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, resolve_test_names: None, mode: str
) -> None:
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.org,tgi.test")
        assert call(tgi_generator(tgi.url_for("tgi.test")), mode, None)["replies"] == [TEXT]
        assert call(tgi_generator(tgi.url), mode, None)["replies"] == [TEXT]  # 127.0.0.1: never proxied
        assert proxy.requests == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_https_through_the_proxy_tunnel_verifies_the_certificate(
    certificates: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    ca, cert = certificates
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with FakeTGI(tls=cert) as server, ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        generator = tgi_generator(server.url_for("tgi.test"), max_retries=0)
        assert call(generator, mode, Chunks())["replies"] == [TEXT]
        assert {r.method for r in proxy.requests} == {"CONNECT"}


# --- TLS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ssl_cert_file_names_the_trusted_certificates(
    certificates: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    ca, cert = certificates
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with FakeTGI(tls=cert) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
        assert call(tgi_generator(server.url, max_retries=0), mode, None)["replies"] == [TEXT]
        # Without our CA (certifi's bundle), the certificate is refused.
        monkeypatch.delenv("SSL_CERT_FILE")
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            call(tgi_generator(server.url, max_retries=0), mode, None)
        # Unless the user turns verification off, explicitly.
        assert call(tgi_generator(server.url, max_retries=0, verify=False), mode, None)["replies"] == [TEXT]


# --- redirects -------------------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[FakeTGI]:
    """Where a redirect points: it must never receive a request (or a token)."""
    with FakeTGI() as server:
        yield server


@pytest.mark.parametrize("code", [301, 302, 307, 308])
@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_redirect_is_an_error_that_names_where_it_points(
    tgi: FakeTGI, elsewhere: FakeTGI, code: int, mode: str, streamed: bool
) -> None:
    location = f"{elsewhere.url}/generate?signature=s3cr3t"
    tgi.faults.append(Fault.redirect(code, location, body={"generated_text": "not a reply"}))
    generator = tgi_generator(tgi.url, max_retries=3)
    generator.warm_up()
    with pytest.raises(RedirectError) as raised:
        call(generator, mode, Chunks() if streamed else None)
    message = str(raised.value)
    assert f"HTTP {code}" in message
    assert f"points to {elsewhere.url}/generate" in message
    assert "signature" not in message and "s3cr3t" not in message  # never the query string
    assert "set api_params['url']" in message
    assert raised.value.status_code == code
    assert posts(tgi) == 1  # never retried
    assert elsewhere.requests == []  # never followed


def test_a_relative_redirect_is_named_with_its_origin(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.redirect(307, "/v2/generate"))
    with pytest.raises(RedirectError, match=rf"points to {tgi.url}/v2/generate"):
        tgi_generator(tgi.url, protocol="tgi").run("q")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_redirect_during_route_detection_is_not_read_as_a_missing_route(elsewhere: FakeTGI, mode: str) -> None:
    with FakeOpenAI() as server:
        server.faults_for("GET", "/info").append(Fault.redirect(302, f"{elsewhere.url}/info"))
        generator = HuggingFaceAPIGenerator(
            "text_generation_inference", {"url": server.url}, token=Secret.from_token(SECRET)
        )
        with pytest.raises(RedirectError, match=r"GET .*/info answered HTTP 302"):
            call(generator, mode, None)
        assert [r.path for r in server.requests] == ["/info"]  # no /v1/models, no completions
    assert elsewhere.requests == []


# --- timeouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_read_timeout_is_not_retried(tgi: FakeTGI, mode: str, streamed: bool) -> None:
    generator = tgi_generator(tgi.url, timeout={"read": 0.5}, max_retries=3)
    generator.warm_up()
    tgi.faults.extend([Fault.delay(3)] * 4)
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as raised:
        call(generator, mode, Chunks() if streamed else None)
    assert raised.value.phase == "read"
    assert posts(tgi) == 1  # the server has the request: starting it again would generate twice
    assert time.monotonic() - started < 2


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose listen queue is full: a connect to it never completes (a connect timeout, on loopback)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_connect_timeout_is_retried(unaccepting_port: int, caplog: pytest.LogCaptureFixture, mode: str) -> None:
    caplog.set_level(logging.WARNING)
    generator = tgi_generator(f"http://127.0.0.1:{unaccepting_port}", timeout={"connect": 0.3}, max_retries=2)
    with pytest.raises(APITimeoutError) as raised:
        call(generator, mode, None)
    assert raised.value.phase == "connect"
    retries = [r for r in caplog.records if r.getMessage().startswith("Attempt")]
    assert len(retries) == 2  # nothing reached the server: trying again is safe


def test_the_package_no_longer_imports_httpx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, haystack; before = set(sys.modules);"
        "import haystack_integrations.generators.hugging_face_api as m;"
        "m.HuggingFaceAPIGenerator('text_generation_inference', {'url': 'http://h'});"
        "import haystack_integrations.generators.hugging_face_api._async;"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] in ('httpx', 'httpx2', 'httpcore')))"
    )
    # haystack itself imports httpx; what matters is that our modules do not, directly or not.
    source = Path(__file__).resolve().parents[1] / "src"
    for module in source.rglob("*.py"):
        text = module.read_text()
        assert "import httpx" not in text and "from httpx" not in text, module
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
