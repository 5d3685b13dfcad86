"""
Exceptions raised by `HuggingFaceAPIGenerator` while talking to a server.

Bad configuration or bad input is reported before any request, as `ValueError` or `TypeError` naming
the parameter. Everything that goes wrong on the wire is one of these::

    HuggingFaceAPIError                 base class: catch this to catch them all
    ├── APIConnectionError              the server could not be reached, or the connection broke
    │   └── APITimeoutError             connect timeout (retried) or read timeout (not retried): see `phase`
    ├── APIStatusError                  the server answered with an error (HTTP status or in-stream event)
    │   ├── RedirectError               3xx: redirects are never followed; the message says where it points
    │   ├── BadRequestError             400, 413, 415 and other 4xx not listed below
    │   │   ├── PayloadTooLargeError    413
    │   │   └── EndpointPausedError     400 from a paused Inference Endpoint: resume it first
    │   ├── AuthenticationError         401, 403
    │   ├── NotFoundError               404: unknown route or model
    │   ├── ValidationError             422, or TGI error_type "validation"
    │   ├── GenerationError             424, or TGI error_type "generation" / "incomplete_generation"
    │   ├── OverloadedError             429, or TGI error_type "overloaded"
    │   └── ServerError                 5xx
    │       └── EndpointNotReadyError   503 from an Inference Endpoint still scaling up after `scale_up_timeout`
    ├── ResponseFormatError             the answer did not follow the protocol (bad JSON, bad SSE)
    │   └── StructuredOutputError       a reply that `grammar` constrained does not follow it; `reply` holds it
    ├── IncompleteStreamError           a stream ended before its final event
    ├── ProviderResolutionError         serverless: no usable Inference Provider for the model
    └── ConfigurationError              the environment names what cannot be used: SSL_CERT_FILE / SSL_CERT_DIR,
                                        a SOCKS proxy; the message names the variable (never retried)

Every error carries `status_code` (when there was one), `server_message` (what the server said, with
the token in use replaced by `<redacted>`), `error_type` (TGI's field, when present), `retry_after`
(seconds, from the `Retry-After` header) and `delivered_text`: the text already handed to the
streaming callback before the failure, so a caller knows exactly what a partial stream contained. A
failure is never returned as a reply.

With several replies (`generation_kwargs["n"]`), `delivered_replies` holds the text each reply had handed to
the streaming callback, by index (`StreamingChunk.index`), and `delivered_text` those texts joined in that
order. On an engine without `n` each reply is a request of its own; when one of them fails, the call fails
with that request's error, whose message names the reply and whose `reply_index` is its index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Self

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "EndpointNotReadyError",
    "EndpointPausedError",
    "GenerationError",
    "HuggingFaceAPIError",
    "IncompleteStreamError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProviderResolutionError",
    "RedirectError",
    "ResponseFormatError",
    "ServerError",
    "StructuredOutputError",
    "ValidationError",
]


class HuggingFaceAPIError(Exception):
    """Base class of every error raised while generating through a Hugging Face API or compatible server."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        server_message: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.server_message = server_message
        self.error_type = error_type
        self.retry_after = retry_after
        self.delivered_text = ""
        #: Which of several replies (`n`) failed, when one did; None when the call's request failed as a whole.
        self.reply_index: int | None = None
        #: With several replies: the text each had handed to the streaming callback, by index.
        self.delivered_replies: list[str] = []
        self._quoted: Any = None  # server text to quote at the end of the message, once redacted

    def quoting(self, server_text: Any) -> Self:
        """Marks `server_text` (bytes, text or decoded JSON) to be quoted, redacted, at the end of the message."""
        self._quoted = server_text
        return self

    def redact(self, redact: Callable[[str], str], limit: int = 300) -> None:
        """
        Removes the token in use from everything this error says (called once, before it is logged or raised).
        Quoted server text is redacted before it is cut to `limit` characters, so no part of a token survives.
        """
        if self._quoted is not None:
            quoted, self._quoted = self._quoted, None
            text = quoted.decode("utf-8", "replace") if isinstance(quoted, bytes) else str(quoted)
            self.message = f"{self.message}: {redact(text)[:limit]!r}"
        self.message = redact(self.message)
        if self.server_message is not None:
            self.server_message = redact(self.server_message)
        self.args = (self.message,)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies and pickles (multiprocessing, Celery, Ray) keep every attribute, whatever the subclass's
        # constructor takes: the default would call `cls(*args)` and lose them, or fail (APITimeoutError).
        return _rebuild, (type(self), self.args, self.__dict__)

    def __str__(self) -> str:
        if not self.delivered_text:
            return self.message
        return f"{self.message} ({len(self.delivered_text)} characters had already reached the streaming callback)"


def _rebuild(cls: type[HuggingFaceAPIError], args: tuple[Any, ...], state: dict[str, Any]) -> HuggingFaceAPIError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class APIConnectionError(HuggingFaceAPIError):
    """The server could not be reached (refused, DNS failure) or the connection broke mid-response."""


class APITimeoutError(APIConnectionError):
    """
    The connect or read timeout passed (see `api_params["timeout"]`).

    `phase` is `"connect"` (nothing reached the server: retried) or `"read"` (the server has the request
    and may still be generating: not retried, so a long generation is never started twice).
    """

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class APIStatusError(HuggingFaceAPIError):
    """The server answered with an error, as an HTTP status or as an error event inside a stream."""


class RedirectError(APIStatusError):
    """
    HTTP 3xx. Redirects are never followed (a token must not travel to wherever a server points), so the
    configured address is not the final one; the message names where the redirect points.
    """


class BadRequestError(APIStatusError):
    """The server refused the request as malformed (4xx not covered by a more precise class)."""


class PayloadTooLargeError(BadRequestError):
    """HTTP 413: the request body is over the server's limit (TGI: 2 MB)."""


class EndpointPausedError(BadRequestError):
    """A paused Inference Endpoint answers 400 until someone resumes it; it does not wake up by itself."""


class AuthenticationError(APIStatusError):
    """HTTP 401 or 403: the token is missing, wrong, or lacks permission."""


class NotFoundError(APIStatusError):
    """HTTP 404: the route or the model does not exist on that server."""


class ValidationError(APIStatusError):
    """The server rejected the parameters or the input (HTTP 422 or TGI error_type "validation")."""


class GenerationError(APIStatusError):
    """The model failed while generating (HTTP 424 or TGI error_type "generation")."""


class OverloadedError(APIStatusError):
    """The server is over capacity (HTTP 429 or TGI error_type "overloaded"); retried automatically."""


class ServerError(APIStatusError):
    """HTTP 5xx: the server failed; retried automatically."""


class EndpointNotReadyError(ServerError):
    """An Inference Endpoint kept answering 503 (scaling up from zero) for longer than `scale_up_timeout`."""


class ResponseFormatError(HuggingFaceAPIError):
    """The server's answer did not follow the protocol: invalid JSON, a missing field, a malformed event."""


class StructuredOutputError(ResponseFormatError):
    """
    A reply constrained by `generation_kwargs["grammar"]` that does not follow it: not JSON, not matching the
    regular expression, or (with `validate_schema`) not following the schema. `reply` holds the reply's text.
    """

    def __init__(self, message: str, reply: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        self.reply = reply


class IncompleteStreamError(HuggingFaceAPIError):
    """The stream ended before the event that marks a complete generation."""


class ConfigurationError(HuggingFaceAPIError):
    """
    The environment names something this client cannot use: an `SSL_CERT_FILE` or `SSL_CERT_DIR` that is
    missing or holds no certificates, a proxy in a scheme it does not speak (SOCKS). The message names the
    variable and its value (never credentials). Not retried: it fails the same way until the variable changes.
    """


class ProviderResolutionError(HuggingFaceAPIError):
    """No Inference Provider could serve the model (unknown model, no live provider, missing token)."""


# TGI names the failure in `error_type`; it is more precise than the HTTP status, and it is all there is
# for errors sent as events inside a stream (whose HTTP status is 200).
_ERROR_TYPES: dict[str, type[APIStatusError]] = {
    "validation": ValidationError,
    "overloaded": OverloadedError,
    "generation": GenerationError,
    "incomplete_generation": GenerationError,
}


def _class_for_status(status: int) -> type[APIStatusError]:
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 413:
        return PayloadTooLargeError
    if status == 422:
        return ValidationError
    if status == 424:
        return GenerationError
    if status == 429:
        return OverloadedError
    if status >= 500:
        return ServerError
    return BadRequestError


def _server_message(payload: Any) -> tuple[str | None, str | None]:
    """Extracts (message, error_type) from the error bodies of TGI, OpenAI-compatible servers and the Hub."""
    if not isinstance(payload, Mapping):
        return None, None
    error = payload.get("error")
    error_type = payload.get("error_type")
    if isinstance(error, Mapping):  # OpenAI style: {"error": {"message": ..., "type": ...}}
        message = error.get("message")
        error_type = error_type or error.get("type")
    elif error is not None:
        message = error
    else:  # FastAPI style: {"detail": ...}
        message = payload.get("detail") or payload.get("message")
    return (None if message is None else str(message)), (None if error_type is None else str(error_type))


def _no_redaction(text: str) -> str:
    return text


def error_from_response(
    status: int,
    body: bytes,
    retry_after: float | None,
    where: str,
    redact: Callable[[str], str] = _no_redaction,
    endpoint: bool = False,
) -> APIStatusError:
    """
    Builds the exception for an HTTP error response (status >= 400).

    :param status: The HTTP status code.
    :param body: The raw response body (JSON or plain text).
    :param retry_after: Seconds from the `Retry-After` header, if any.
    :param where: What was requested, for the message (method and URL, never a token).
    :param redact: Removes the token in use from server text, which may echo it.
    :param endpoint: The request went to an Inference Endpoint, whose proxy answers a paused endpoint with
        `400 {"error": "Bad Request: Invalid state"}` (words that never say "paused").
    """
    text = redact(body.decode("utf-8", "replace").strip())
    try:
        message, error_type = _server_message(json.loads(text))
    except ValueError:
        message, error_type = None, None
    if message is None:
        message = text[:2000] or None
    if endpoint and status == 400 and message and any(w in message.lower() for w in ("invalid state", "paused")):
        return EndpointPausedError(
            f"{where} failed with HTTP 400: the Inference Endpoint is paused (or otherwise not running) and "
            "answers nothing until it is resumed: resume it in its page on huggingface.co/endpoints, or with "
            f"huggingface_hub's resume_inference_endpoint(). The server said: {message}",
            status_code=status,
            server_message=message,
            error_type=error_type,
        )
    cls = _ERROR_TYPES.get(error_type or "") or _class_for_status(status)
    summary = f"{where} failed with HTTP {status}" + (f": {message}" if message else "")
    return cls(summary, status_code=status, server_message=message, error_type=error_type, retry_after=retry_after)


def error_from_event(
    payload: Mapping[str, Any], where: str, redact: Callable[[str], str] = _no_redaction
) -> APIStatusError:
    """
    Builds the exception for an error event inside a stream (TGI answers 200 and then sends the error).

    :param payload: The decoded event.
    :param where: What was requested, for the message.
    :param redact: Removes the token in use from server text.
    """
    message, error_type = _server_message(payload)
    message = None if message is None else redact(message)
    cls = _ERROR_TYPES.get(error_type or "", GenerationError)
    return cls(
        f"{where} reported an error in its stream: {message}",
        status_code=200,
        server_message=message,
        error_type=error_type,
    )
