"""A local certificate authority for the fakes, made with the ``openssl`` command-line tool.

The standard library can use certificates but not make them, and the fakes add no dependency, so this
module drives ``openssl`` (``/usr/bin/openssl``, 1.1.1 or 3.x) in a subprocess. Example::

    ca = make_ca(tmp_path)
    cert = issue_cert(ca, ["127.0.0.1", "tgi.test"])
    with FakeTGI(tls=cert) as tgi:  # tgi.url == "https://127.0.0.1:PORT"
        ctx = ssl.create_default_context(cafile=ca.cert_path)  # or ca.client_context()
        http.client.HTTPSConnection("127.0.0.1", tgi.port, context=ctx).request("GET", "/info")

What is issued: a self-signed CA (P-256 key, ``basicConstraints=critical,CA:TRUE``, ``keyUsage=critical,
keyCertSign,cRLSign``, subject and authority key identifiers) and leaf certificates signed by it
(``CA:FALSE``, ``digitalSignature``, ``extendedKeyUsage=serverAuth``, a ``subjectAltName`` with one entry
per host name: ``IP:`` for addresses, ``DNS:`` for names), valid from now for ``days`` days. That is
what strict verifiers require (Python 3.13's ``VERIFY_X509_STRICT`` included). Keys are unencrypted
files: they are throwaway test keys, and belong in a temporary directory.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {name}
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {name}
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {alt_names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA made by :func:`make_ca`: give ``cert_path`` to clients as their CA file."""

    cert_path: Path
    key_path: Path
    directory: Path

    def client_context(self) -> ssl.SSLContext:
        """``ssl.create_default_context(cafile=cert_path)``: verifies certificates this CA issued."""
        return ssl.create_default_context(cafile=str(self.cert_path))


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate and its key, issued by :func:`issue_cert`; pass it as a fake's ``tls=``."""

    cert_path: Path
    key_path: Path
    hostnames: tuple[str, ...]
    ca: CertificateAuthority

    def server_context(self) -> ssl.SSLContext:
        return server_context((self.cert_path, self.key_path))


TLSConfig: TypeAlias = "ssl.SSLContext | ServerCertificate | tuple[str | Path, str | Path]"


def _openssl(*args: str | Path) -> None:
    result = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr.strip()}")


def _new_key_args(key_path: Path) -> list[str | Path]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key_path]


def make_ca(directory: str | Path, *, name: str = "Fake Test CA", days: int = 7) -> CertificateAuthority:
    """Create a self-signed CA in ``directory`` (``ca.pem``, ``ca.key``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "ca.cnf"
    config.write_text(_CA_CONFIG.format(name=name))
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-new", "-config", config, *_new_key_args(key), "-out", cert, "-days", str(days))
    return CertificateAuthority(cert, key, directory)


def issue_cert(
    ca: CertificateAuthority,
    hostnames: Iterable[str] = ("127.0.0.1", "localhost"),
    *,
    directory: str | Path | None = None,
    days: int = 7,
) -> ServerCertificate:
    """Issue a server certificate for ``hostnames`` (IP addresses and DNS names), signed by ``ca``.

    Files go to ``directory`` (default: the CA's), named after the first host name.
    """
    names = tuple(hostnames)
    if not names:
        raise ValueError("a certificate needs at least one host name")
    alt_names = ", ".join(f"IP:{n}" if _is_address(n) else f"DNS:{n}" for n in names)
    directory = Path(directory) if directory is not None else ca.directory
    directory.mkdir(parents=True, exist_ok=True)
    stem = names[0].replace(":", "_").replace("*", "star")
    config = directory / f"{stem}.cnf"
    config.write_text(_LEAF_CONFIG.format(name=names[0], alt_names=alt_names))
    key, csr, cert = directory / f"{stem}.key", directory / f"{stem}.csr", directory / f"{stem}.pem"
    _openssl("req", "-new", "-config", config, *_new_key_args(key), "-out", csr)
    serial = "0x" + secrets.token_hex(16)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert_path, "-CAkey", ca.key_path, "-set_serial", serial,
        "-days", str(days), "-extfile", config, "-extensions", "v3_leaf", "-out", cert,
    )  # fmt: skip
    return ServerCertificate(cert, key, names, ca)


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server-side context from any form a fake's ``tls=`` takes (an SSLContext is used as given)."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    cert, key = (tls.cert_path, tls.key_path) if isinstance(tls, ServerCertificate) else tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["http/1.1"])  # a client offering h2 gets HTTP/1.1, all the fakes speak
    return context


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
