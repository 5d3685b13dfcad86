"""
Who receives the token, and where it must never show up: the token/host policy, in one place.

- A token the user passed explicitly (any `Secret` but an env-var secret naming only `HF_API_TOKEN` /
  `HF_TOKEN`) goes to the servers this generator talks to: the configured URL, or the Hub and router.
- A secret naming only those variables ("ambient": the default, or the same lookup written in a pipeline
  file that may come from anyone) goes only to Hugging Face's own hosts over https: `huggingface.co`
  and its subdomains, `*.huggingface.cloud` (Inference Endpoints), and the hosts named by
  `HF_ENDPOINT` / `HF_ROUTER_URL`. Not to `*.hf.space`: a Space runs whatever code its owner wrote.
  `chosen_env_var` marks a variable the user named for this very call (the CLI's `--token-env`): sent.
- A value that cannot travel in an HTTP header (a line break, a control or non-ASCII character) is
  refused before any request, naming where it came from, never quoting it.
- Redirects are never followed (see `_http`), so a token never travels to an origin it was not meant for.
- Server text (error bodies, stream error events) may echo the token: `redact` removes it, and each of its
  pieces, before the text reaches an exception, a log line or the CLI.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from haystack.utils import Secret
from haystack.utils.auth import EnvVarSecret

logger = logging.getLogger(__name__)

#: The environment variables of the default token.
AMBIENT_TOKEN_VARS = frozenset({"HF_API_TOKEN", "HF_TOKEN"})
# Hosts (and their subdomains) that may receive the ambient token.
_HF_DOMAINS = ("huggingface.co", "huggingface.cloud")
REDACTED = "<redacted>"
# Shorter values are not searched for in server text: they would garble it and protect nothing.
_MIN_REDACTED_LENGTH = 6
# What an HTTP header value may hold, as both stacks send it alike: visible ASCII, space and tab. (urllib3
# would send Latin-1 bytes that aiohttp encodes as UTF-8; no token scheme uses either.)
_UNSENDABLE = re.compile(r"[^\t\x20-\x7e]")


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


@dataclass(frozen=True)
class _ChosenEnvVarSecret(EnvVarSecret):
    """An env-var secret the user named for this call: sent to the URL they gave, whatever its name."""


def chosen_env_var(name: str) -> Secret:
    """
    The token in the environment variable `name`, which the user chose on purpose (the CLI's `--token-env`):
    sent to the configured URL even when `name` is `HF_TOKEN` or `HF_API_TOKEN`. Serialized, it is a plain
    env-var secret again, so a saved pipeline keeps the host policy.
    """
    return _ChosenEnvVarSecret((name,))


def _is_ambient(token: Secret) -> bool:
    if token.type.value != "env_var" or isinstance(token, _ChosenEnvVarSecret):
        return False
    return set(token.to_dict()["env_vars"]) <= AMBIENT_TOKEN_VARS


def source_of(token: Secret) -> str:
    """Where a token's value comes from, for messages: the variable that holds it, or "the token"."""
    if token.type.value == "env_var":
        names = token.to_dict()["env_vars"]
        name = next((name for name in names if os.environ.get(name) is not None), names[0])
        return f"the token in the environment variable {name}"
    return "the token"


def withheld_variable(token: Secret | None, url: str) -> str | None:
    """
    The variable whose token the policy keeps from `url` (`HF_TOKEN` set, `url` not a Hugging Face host),
    or None when nothing is withheld. Lets a 401 explain itself.
    """
    if token is None or not _is_ambient(token) or may_receive_ambient_token(url):
        return None
    names = token.to_dict()["env_vars"]
    return next((name for name in names if (os.environ.get(name) or "").strip()), None)


def _fragments(value: str) -> set[str]:
    """
    The value and the pieces a message could show of it: the credential of a "Scheme credential" value, and
    the runs between characters a header cannot hold (a message may quote the value escaped, `\\n` for a
    line break, so the whole never appears but each line does).
    """
    pieces = {value, value.partition(" ")[2].strip()}
    for piece in _UNSENDABLE.split(value):
        pieces.update({piece, piece.strip()})
    return {piece for piece in pieces if len(piece) >= _MIN_REDACTED_LENGTH}


def _unsendable(value: str) -> str | None:
    """What makes `value` impossible to send as a header, in words, or None. Never the character itself."""
    found = _UNSENDABLE.search(value)
    if found is None:
        return None
    char = found.group()
    if char in "\r\n":
        return "a line break (was a file of several lines read into it?)"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return "a control character"
    return "a non-ASCII character"


class Credentials:
    """The token of one generator: resolved once, sent where the policy allows, redacted everywhere else."""

    def __init__(self, token: Secret | None) -> None:
        value = token.resolve_value() if token is not None else None
        self._value = value.strip() if isinstance(value, str) and value.strip() else None
        self._ambient = token is not None and _is_ambient(token)
        self._source = source_of(token) if token is not None else "the token"
        # Checked here, raised when the token is to be sent: a default token that is never sent (a local
        # server) must not break anything.
        self._unsendable = _unsendable(self._value) if self._value else None
        # Longest first, so that a piece never hides inside an already shortened longer match.
        self._secrets = sorted(_fragments(self._value) if self._value else (), key=len, reverse=True)

    @property
    def available(self) -> bool:
        """Whether there is a token at all."""
        return self._value is not None

    def authorization(self, url: str) -> str | None:
        """
        The `Authorization` value for requests to `url`, or None when the policy withholds the token.

        :raises ValueError: When the token is to be sent but cannot be a header value; the message names
            its source (the variable), never the value.
        """
        if self._value is None:
            return None
        if self._ambient and not may_receive_ambient_token(url):
            logger.info(
                "Not sending the token from HF_TOKEN/HF_API_TOKEN to %s (not a Hugging Face host over https); "
                "to send it there deliberately, export it under another name and pass "
                "token=Secret.from_env_var('THAT_NAME')",
                origin_of(url),
            )
            return None
        if self._unsendable is not None:
            raise ValueError(
                f"{self._source} cannot be sent in an HTTP header: it contains {self._unsendable}. A token is one "
                "line of printable ASCII; set it to the token alone"
            )
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
