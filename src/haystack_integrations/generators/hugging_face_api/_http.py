"""
The HTTP vocabulary that the sync (urllib3) and async (aiohttp) clients share, free of I/O: requests
and answers as values, what an answer's status means (errors, redirects), the response size limit,
`Retry-After`, which proxy a URL goes through and the TLS settings.

Both clients only move bytes: everything here is decided once, for both.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import certifi

from .errors import ConfigurationError, RedirectError, ResponseFormatError, error_from_response

#: A one-piece answer (or an error body) larger than this is refused rather than held in memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, ready to send."""

    method: str
    #: The server's base URL (what clients keep a connection pool for); `url` starts with it.
    base: str
    url: str
    headers: Mapping[str, str] = field(repr=False)  # carries the token: never in a repr (error trackers print them)
    body: bytes | None = field(repr=False)
    #: Seconds to connect, and to wait for each read once the answer has started.
    connect_timeout: float
    read_timeout: float
    #: Seconds to wait for the status line: longer than `read_timeout` when an Inference Endpoint's proxy
    #: may hold the request while a replica starts (`X-Scale-Up-Timeout`).
    first_byte_timeout: float
    #: What the request is, for messages: "POST https://host/generate" (never a header value).
    where: str
    #: What the user should change when this request is redirected.
    redirect_hint: str = "set api_params['url'] to the address the redirect points to"
    #: The request goes to a Hugging Face Inference Endpoint (which answers 400 when paused).
    endpoint: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """The status, headers and (for one-piece answers and errors) body of a response."""

    status: int
    headers: Mapping[str, str]  # case-insensitive, as both HTTP libraries give them
    body: bytes = b""


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """Whether an answer is server-sent events (a server that names no type is given the benefit of the doubt)."""
    content_type = headers.get("content-type")
    return content_type is None or content_type.lower().startswith("text/event-stream")


def json_body(request: Request, answer: Answer) -> Any:
    """The decoded JSON of a successful one-piece answer."""
    try:
        return json.loads(answer.body)
    except ValueError:
        raise ResponseFormatError(f"{request.where} returned invalid JSON").quoting(answer.body) from None


def raise_for_status(request: Request, answer: Answer, redact: Callable[[str], str]) -> None:
    """
    Raises the error an answer stands for: a redirect (never followed, never read as a reply) or an
    HTTP error status (server text redacted of the token).
    """
    status = answer.status
    if status < 300:
        return
    if status < 400:
        raise _redirect_error(request, answer)
    retry_after = parse_retry_after(answer.headers.get("retry-after"))
    raise error_from_response(status, answer.body, retry_after, request.where, redact, request.endpoint)


def _redirect_error(request: Request, answer: Answer) -> RedirectError:
    location = answer.headers.get("location")
    if location:
        # Origin and path only: a query string may carry a signature or a key.
        target = urlsplit(urljoin(request.url, location))
        points = f"points to {target.scheme}://{target.netloc.rpartition('@')[2]}{target.path or '/'}"
    else:
        points = "names no Location"
    return RedirectError(
        f"{request.where} answered HTTP {answer.status}, a redirect that {points}. Redirects are not followed "
        f"(the token must not travel to wherever a server points): {request.redirect_hint}",
        status_code=answer.status,
    )


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


# --- proxies ---------------------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy from the environment: its URL without credentials, and the credentials."""

    url: str
    user: str | None = None
    password: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """The `Proxy-Authorization` header for the proxy's credentials, if it has any."""
        if self.user is None:
            return {}
        credentials = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Proxy-Authorization": f"Basic {credentials}"}


def proxy_for(url: str) -> Proxy | None:
    """
    The proxy that `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` name for `url`, unless `NO_PROXY` exempts it.

    Read as httpx read them, so users keep what they had. Traffic to this machine never goes through a
    proxy: the proxy would refuse it, or see it.
    """
    if is_loopback(url):
        return None
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    proxy_parts = urlsplit(proxy)
    host = proxy_parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if proxy_parts.port is not None:
        netloc += f":{proxy_parts.port}"
    if proxy_parts.scheme not in ("http", "https"):
        # Never spoken to as if it were an HTTP proxy: the request, and its token, would reach it in clear.
        variable = f"{parts.scheme.upper()}_PROXY" if proxies.get(parts.scheme) else "ALL_PROXY"
        raise ConfigurationError(
            f"{variable} names a {proxy_parts.scheme} proxy ({proxy_parts.scheme}://{netloc}), which this client "
            f"does not speak: set {parts.scheme.upper()}_PROXY to an http:// proxy for {parts.scheme} requests, or "
            f"add {parts.hostname} to NO_PROXY"
        )
    user = None if proxy_parts.username is None else unquote(proxy_parts.username)
    return Proxy(f"{proxy_parts.scheme}://{netloc}", user, unquote(proxy_parts.password or ""))


# --- TLS -------------------------------------------------------------------------------------------


def ssl_context(verify: bool) -> ssl.SSLContext:
    """
    The TLS settings: certificates verified against `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else
    certifi's bundle (what httpx users had); with `verify=False`, nothing is checked.
    """
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        return ssl.create_default_context(cafile=certifi.where())
    if cafile is not None and not os.path.isfile(cafile):
        raise ConfigurationError(
            f"SSL_CERT_FILE names {cafile!r}, which is not a file: point it to a CA bundle, or unset it"
        )
    if capath is not None and not os.path.isdir(capath):
        raise ConfigurationError(
            f"SSL_CERT_DIR names {capath!r}, which is not a directory: point it to a folder of CA certificates, "
            "or unset it"
        )
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as error:  # unreadable, or no certificate in it
        variable, value = ("SSL_CERT_FILE", cafile) if cafile is not None else ("SSL_CERT_DIR", capath)
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
        raise ConfigurationError(
            f"{variable} names {value!r}, which could not be loaded as CA certificates ({reason})"
        ) from None
