"""
Who receives the token, and where it must never show up: the token/host policy, in one place.

- A token the user passed explicitly (any `Secret` but the default lookup of `HF_API_TOKEN` /
  `HF_TOKEN`) goes to the servers this generator talks to: the configured URL, or the Hub and router.
- The default ("ambient") token goes only to Hugging Face's own hosts over https: `huggingface.co`
  and its subdomains, `*.huggingface.cloud` (Inference Endpoints), and the hosts named by
  `HF_ENDPOINT` / `HF_ROUTER_URL`. Not to `*.hf.space`: a Space runs whatever code its owner wrote.
- Redirects are never followed (see `_http`), so a token never travels to an origin it was not meant for.
- Server text (error bodies, stream error events) may echo the token: `redact` removes it before the
  text reaches an exception, a log line or the CLI.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from haystack.utils import Secret

logger = logging.getLogger(__name__)

#: The environment variables of the default token.
AMBIENT_TOKEN_VARS = frozenset({"HF_API_TOKEN", "HF_TOKEN"})
# Hosts (and their subdomains) that may receive the ambient token.
_HF_DOMAINS = ("huggingface.co", "huggingface.cloud")
REDACTED = "<redacted>"
# Shorter values are not searched for in server text: they would garble it and protect nothing.
_MIN_REDACTED_LENGTH = 6


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def may_receive_ambient_token(url: str) -> bool:
    """
    True for https URLs of huggingface.co, *.huggingface.co and *.huggingface.cloud, and for the servers
    named by `HF_ENDPOINT` / `HF_ROUTER_URL` (pointing those somewhere is the user saying "this is my Hub").
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and any(host == domain or host.endswith("." + domain) for domain in _HF_DOMAINS):
        return True
    configured = (os.environ.get("HF_ENDPOINT"), os.environ.get("HF_ROUTER_URL"))
    return any(value and origin_of(value) == origin_of(url) for value in configured)


def _is_ambient(token: Secret) -> bool:
    if token.type.value != "env_var":
        return False
    return set(token.to_dict()["env_vars"]) <= AMBIENT_TOKEN_VARS


class Credentials:
    """The token of one generator: resolved once, sent where the policy allows, redacted everywhere else."""

    def __init__(self, token: Secret | None) -> None:
        value = token.resolve_value() if token is not None else None
        self._value = value.strip() if isinstance(value, str) and value.strip() else None
        self._ambient = token is not None and _is_ambient(token)
        # The whole value and, for "Scheme credential" values, the credential alone (servers echo either).
        secrets = {self._value, self._value.partition(" ")[2].strip()} if self._value else set()
        self._secrets = sorted((s for s in secrets if len(s) >= _MIN_REDACTED_LENGTH), key=len, reverse=True)

    @property
    def available(self) -> bool:
        """Whether there is a token at all."""
        return self._value is not None

    def authorization(self, url: str) -> str | None:
        """The `Authorization` value for requests to `url`, or None when the policy withholds the token."""
        if self._value is None:
            return None
        if self._ambient and not may_receive_ambient_token(url):
            logger.info(
                "Not sending the token from HF_TOKEN/HF_API_TOKEN to %s (not a Hugging Face host over https); "
                "pass token=Secret.from_env_var('YOUR_VAR') to send a token there",
                origin_of(url),
            )
            return None
        # A value with its own scheme ("Basic ...", "Bearer ...") is sent as it is; a bare token is a bearer token.
        return self._value if " " in self._value else f"Bearer {self._value}"

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the token replaced by `<redacted>`."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"Credentials(available={self.available})"
