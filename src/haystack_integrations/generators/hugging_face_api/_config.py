"""
Configuration checks: everything the user gives us is validated here, before any request.

Errors are `ValueError` / `TypeError` whose message names the parameter. Nothing here mutates what
the caller passed: values are copied into new, frozen objects.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlsplit

from ._engines import ENGINE_NAMES
from ._fleet import Admission

DEFAULT_MAX_NEW_TOKENS = 512


class HFGenerationAPIType(Enum):
    """The kind of Hugging Face API a generator talks to."""

    #: A Text Generation Inference server you run (or any engine that speaks TGI or the OpenAI API).
    TEXT_GENERATION_INFERENCE = "text_generation_inference"
    #: A Hugging Face Inference Endpoint (TGI, vLLM, SGLang, llama.cpp ... behind one URL).
    INFERENCE_ENDPOINTS = "inference_endpoints"
    #: Hugging Face Inference Providers, addressed by model id (the former serverless Inference API).
    SERVERLESS_INFERENCE_API = "serverless_inference_api"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def from_str(string: str) -> HFGenerationAPIType:
        """
        Converts a string such as "text_generation_inference" to the enum member.

        :raises ValueError: If the string names no API type; the message lists the valid ones.
        """
        try:
            return HFGenerationAPIType(string)
        except ValueError:
            valid = ", ".join(repr(t.value) for t in HFGenerationAPIType)
            raise ValueError(f"api_type must be one of {valid}, got {string!r}") from None


@dataclass(frozen=True, slots=True)
class Timeout:
    """
    Connect and read timeouts, in seconds. Both are finite by default: a dead server fails fast, a slow
    generation still has two minutes between two bytes.
    """

    connect: float = 10.0
    read: float = 120.0

    def as_dict(self) -> dict[str, float]:
        """The form `api_params["timeout"]` takes in YAML."""
        return {"connect": self.connect, "read": self.read}

    @staticmethod
    def parse(value: Any) -> Timeout:
        """Accepts a number (both timeouts), a dict with `connect` and/or `read`, or a `Timeout`."""
        if isinstance(value, Timeout):
            value = value.as_dict()
        if isinstance(value, Mapping):
            unknown = set(value) - {"connect", "read"}
            if unknown:
                raise ValueError(f"api_params['timeout'] accepts the keys 'connect' and 'read', got {sorted(unknown)}")
            default = Timeout()
            return Timeout(
                connect=_positive_seconds(value.get("connect", default.connect), "api_params['timeout']['connect']"),
                read=_positive_seconds(value.get("read", default.read), "api_params['timeout']['read']"),
            )
        seconds = _positive_seconds(value, "api_params['timeout']")
        return Timeout(connect=seconds, read=seconds)


def plain(value: Any) -> Any:
    """
    A NumPy scalar (`np.int64`, `np.float32`, `np.bool_` ...) as the Python value it holds; anything else as
    it is. Told by its module, so NumPy is never imported here (nor needed).
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _positive_seconds(value: Any, name: str) -> float:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


PROTOCOLS = ("auto", "tgi", "completions", "chat")

# RFC 9110 field names (tokens), and values in printable ASCII: the one form both HTTP libraries send as the
# same bytes (urllib3 encodes other characters as Latin-1, aiohttp as UTF-8).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")

# Keys that `api_params` may hold; anything else is a typo we report rather than ignore.
_API_PARAM_KEYS = frozenset(
    {
        "url",
        "model",
        "provider",
        "bill_to",
        "timeout",
        "headers",
        "protocol",
        "max_retries",
        "verify",
        "scale_up_timeout",
        "engine",
        "admission",
        "fallback",
    }
)

#: How long to wait, by default, for an Inference Endpoint scaled to zero to start a replica.
DEFAULT_SCALE_UP_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class APISettings:
    """The validated `api_params`."""

    api_type: HFGenerationAPIType
    url: str | None
    model: str | None
    provider: str | None
    bill_to: str | None
    timeout: Timeout
    headers: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "auto"
    max_retries: int = 3
    verify: bool = True
    #: Seconds to wait for an Inference Endpoint scaling up from zero; 0 for other api types or when off.
    scale_up_timeout: float = 0.0
    #: The engine the user declared (`api_params["engine"]`), or None to find it out.
    engine: str | None = None
    #: Every server of a URL-based api type (`api_params["url"]`, a string or a list of replicas); `url` is
    #: the first.
    urls: tuple[str, ...] = ()
    #: How many requests each replica is given at once (`api_params["admission"]`).
    admission: Admission = field(default_factory=Admission)
    #: The backend that answers while this one cannot (`api_params["fallback"]`), validated.
    fallback: APISettings | None = None


def parse_api_params(api_type: HFGenerationAPIType, api_params: Any) -> APISettings:
    """
    Validates `api_params` for the given API type.

    :raises ValueError: If a required key is missing or a value is invalid; the message names the key.
    :raises TypeError: If a value has the wrong type.
    """
    if not isinstance(api_params, Mapping):
        raise TypeError(f"api_params must be a dict, got {type(api_params).__name__}")
    unknown = set(api_params) - _API_PARAM_KEYS
    if unknown:
        raise ValueError(f"api_params has unknown keys {sorted(unknown)}; valid keys are {sorted(_API_PARAM_KEYS)}")

    urls = _server_urls(api_params.get("url"))
    url = urls[0] if urls else None
    model = _optional_str(api_params, "model")
    if api_type is HFGenerationAPIType.SERVERLESS_INFERENCE_API:
        if url:
            raise ValueError(
                "api_params['url'] does not apply to 'serverless_inference_api' (Inference Providers are found "
                "from the model id); for a server of your own use api_type 'inference_endpoints'"
            )
        if not model:
            raise ValueError("api_params['model'] is required for api_type 'serverless_inference_api'")
        if api_params.get("fallback") is not None or api_params.get("admission") is not None:
            raise ValueError(
                "api_params['fallback'] and api_params['admission'] apply to URL-based api types (servers and "
                "their replicas); Inference Providers are balanced by the router"
            )
        if "/" not in model.split(":", 1)[0]:
            raise ValueError(f"api_params['model'] must be a Hub model id such as 'org/name', got {model!r}")
    else:
        if not url:
            raise ValueError(f"api_params['url'] is required for api_type {api_type.value!r}")

    headers = api_params.get("headers") or {}
    valid_headers = isinstance(headers, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    )
    if not valid_headers:
        raise TypeError("api_params['headers'] must be a dict of strings to strings")
    for header, value in headers.items():
        # Both HTTP libraries must send exactly what is given: a header is Latin-1 text on one line.
        if not _HEADER_NAME.fullmatch(header):
            raise ValueError(f"api_params['headers'] has a name that is not a valid header name: {header!r}")
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(
                f"api_params['headers'][{header!r}] cannot be sent as a header: it holds a line break, a control "
                "character or a character outside printable ASCII (the value is not repeated here)"
            )
    if any(name.lower() in ("authorization", "proxy-authorization") for name in headers):
        # api_params are saved in plain text by to_dict and pipeline YAML; credentials belong in a Secret.
        raise ValueError(
            "api_params['headers'] must not carry credentials (Authorization): pass "
            "token=Secret.from_env_var('YOUR_VAR') instead, which is never written out"
        )

    protocol = api_params.get("protocol", "auto")
    if protocol not in PROTOCOLS:
        raise ValueError(f"api_params['protocol'] must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol != "auto" and api_type is HFGenerationAPIType.SERVERLESS_INFERENCE_API:
        raise ValueError("api_params['protocol'] applies to URL-based api types; serverless picks its own route")

    max_retries = plain(api_params.get("max_retries", 3))
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"api_params['max_retries'] must be an integer >= 0, got {max_retries!r}")

    verify = api_params.get("verify", True)
    if not isinstance(verify, bool):
        raise TypeError(f"api_params['verify'] must be True or False, got {verify!r}")

    scale_up_timeout = _scale_up_timeout(api_type, api_params)
    engine = api_params.get("engine", "auto")
    if engine != "auto" and engine not in ENGINE_NAMES:
        raise ValueError(f"api_params['engine'] must be 'auto' or one of {list(ENGINE_NAMES)}, got {engine!r}")
    if engine != "auto" and api_type is HFGenerationAPIType.SERVERLESS_INFERENCE_API:
        raise ValueError("api_params['engine'] applies to URL-based api types; Inference Providers are known by route")
    if protocol == "tgi" and engine not in ("auto", "tgi"):
        raise ValueError(f"api_params['protocol'] 'tgi' is TGI's own protocol, but api_params['engine'] is {engine!r}")
    timeout = api_params.get("timeout")
    return APISettings(
        api_type=api_type,
        url=url,
        model=model,
        provider=_optional_str(api_params, "provider"),
        bill_to=_optional_str(api_params, "bill_to"),
        timeout=Timeout() if timeout is None else Timeout.parse(timeout),
        headers=dict(headers),
        protocol=protocol,
        max_retries=max_retries,
        verify=verify,
        scale_up_timeout=scale_up_timeout,
        engine=None if engine == "auto" else engine,
        urls=urls,
        admission=Admission.parse(plain(api_params.get("admission"))),
        fallback=_fallback(api_params.get("fallback")),
    )


def server_base_url(url: str) -> str:
    """The server's root: the configured URL without a trailing `/` or `/v1`."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _server_urls(value: Any) -> tuple[str, ...]:
    """`api_params["url"]`: one server (a string), or the replicas of one (a list of strings); () when unset."""
    if value is None or isinstance(value, str):
        url = _optional_str({"url": value}, "url")
        if url is None:
            return ()
        check_server_url(url)
        return (url,)
    if not isinstance(value, list | tuple):
        raise TypeError(
            "api_params['url'] must be a server URL, or a list of the URLs of replicas of one server, "
            f"got {type(value).__name__}"
        )
    if not value:
        raise ValueError("api_params['url'] is an empty list: give at least one server URL")
    urls: list[str] = []
    for index, item in enumerate(value):
        name = f"api_params['url'][{index}]"
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{name} must be a server URL (a non-empty string), got {item!r}")
        url = item.strip()
        check_server_url(url, name)
        if server_base_url(url) in (server_base_url(seen) for seen in urls):
            raise ValueError(f"{name} repeats {url!r}: each replica once (a replica's share comes from its speed)")
        urls.append(url)
    return tuple(urls)


def _fallback(value: Any) -> APISettings | None:
    """`api_params["fallback"]`: `{"api_type": ..., "api_params": {...}}`, checked as the generator's own."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"api_type", "api_params"} or "api_type" not in value:
        raise ValueError(
            "api_params['fallback'] must be {'api_type': ..., 'api_params': {...}}, for example {'api_type': "
            "'serverless_inference_api', 'api_params': {'model': 'org/name'}}"
        )
    try:
        api_type = HFGenerationAPIType.from_str(value["api_type"])
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"api_params['fallback']['api_type']: {error}") from error
    params = value.get("api_params") or {}
    if isinstance(params, Mapping) and "fallback" in params:
        raise ValueError("api_params['fallback'] cannot have a fallback of its own")
    try:
        return parse_api_params(api_type, params)
    except (ValueError, TypeError) as error:
        raise type(error)(str(error).replace("api_params", "api_params['fallback']['api_params']", 1)) from error


_AUTH_ADVICE = (
    "token=Secret.from_env_var('YOUR_VAR'), whose value is sent as 'Bearer <value>', or as it is when it has its "
    "own scheme (for Basic auth: 'Basic <base64 of user:password>')"
)


def check_server_url(url: str, name: str = "api_params['url']", token_advice: str = _AUTH_ADVICE) -> None:
    """
    A server URL is an http(s) base address without credentials, query or fragment. `name` and
    `token_advice` say how the caller knows the URL and passes a token (the CLI has its own flags).

    Credentials in a URL would be written to pipeline YAML by `to_dict()` and printed in every error and log
    line that names the URL; a query or fragment cannot take the route paths appended to it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL such as 'http://localhost:8080', got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{name} must not contain a user name or password: the URL is saved in plain text in pipeline YAML "
            f"and shown in error messages. Pass the credential as a token instead: {token_advice}"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{name} must be the server's base address without a query or fragment (route paths are appended "
            f"to it), got {parts.scheme}://{parts.netloc}{parts.path}?..."
        )


def _scale_up_timeout(api_type: HFGenerationAPIType, api_params: Mapping[str, Any]) -> float:
    """`scale_up_timeout`: only Inference Endpoints scale to zero; default 300 s for them, 0 turns it off."""
    value = plain(api_params.get("scale_up_timeout"))
    if api_type is not HFGenerationAPIType.INFERENCE_ENDPOINTS:
        if value is not None:
            raise ValueError(
                "api_params['scale_up_timeout'] applies to api_type 'inference_endpoints' only (the servers that "
                f"scale to zero); remove it for {api_type.value!r}"
            )
        return 0.0
    if value is None:
        return DEFAULT_SCALE_UP_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"api_params['scale_up_timeout'] must be a number of seconds, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"api_params['scale_up_timeout'] must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _optional_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"api_params[{key!r}] must be a string, got {type(value).__name__}")
    return value.strip() or None


# --- generation parameters -------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: Seeds are signed 64-bit integers on the OpenAI-compatible engines (TGI takes u64).
MAX_SEED = 2**63
#: `n` beyond this is far more likely a typo than a wish: an engine without `n` gets one request per reply.
MAX_REPLIES = 128


# Each of TGI's GenerateParameters (tgi_openapi.json), plus `n` and `validate_schema`, with the check its
# value must pass and the rule as the error message states it. `stop_sequences` is Haystack 2.x's name for
# `stop`; `grammar` is parsed by `parse_grammar` instead. Which engine takes which: `_engines.RULES`.
_CHECKS: dict[str, tuple[Any, str]] = {
    "max_new_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 means greedy decoding)"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "typical_p": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "frequency_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]"),
    "seed": (lambda v: _is_int(v) and 0 <= v < MAX_SEED, "an integer >= 0 and < 2**63"),
    "n": (lambda v: _is_int(v) and 1 <= v <= MAX_REPLIES, f"an integer from 1 to {MAX_REPLIES}"),
    "best_of": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "top_n_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "truncate": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "do_sample": (lambda v: isinstance(v, bool), "True or False"),
    "details": (lambda v: isinstance(v, bool), "True or False"),
    "decoder_input_details": (lambda v: isinstance(v, bool), "True or False"),
    "return_full_text": (lambda v: isinstance(v, bool), "True or False"),
    "watermark": (lambda v: isinstance(v, bool), "True or False"),
    "grammar": (lambda v: isinstance(v, Mapping), "a dict such as {'type': 'json', 'value': {...}}"),
    "validate_schema": (lambda v: isinstance(v, bool), "True or False"),
    "adapter_id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "stop": (lambda v: _is_stop_list(v), "a list of non-empty strings"),
    "stop_sequences": (lambda v: _is_stop_list(v), "a list of non-empty strings"),
}


def _is_stop_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(word, str) and word for word in value)
    )


def check_generation_kwargs(kwargs: Any, name: str) -> dict[str, Any]:
    """
    Validates generation kwargs and returns a new dict without the `None` values (None = server default).
    `grammar` becomes a `Grammar`, whatever form the user gave it in.

    :param kwargs: The user's dict (not modified).
    :param name: How the user knows the dict, for messages: "generation_kwargs".
    :raises ValueError: For an unknown key or a value out of range.
    :raises TypeError: If `kwargs` is not a dict.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(kwargs).__name__}")
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in _CHECKS:
            hint = _KEY_HINTS.get(key, "")
            raise ValueError(f"{name}[{key!r}] is not a known generation parameter{hint}; known: {sorted(_CHECKS)}")
        if value is None:
            continue
        value = plain(value)
        check, rule = _CHECKS[key]
        if not check(value):
            raise ValueError(f"{name}[{key!r}] must be {rule}, got {value!r}")
        if key == "grammar":
            value = parse_grammar(value, f"{name}['grammar']")
        elif key in ("stop", "stop_sequences"):
            value = list(value)
            for word in value:
                check_encodable(word, f"{name}[{key!r}]")
        checked[key] = value
    return checked


# The OpenAI API's names for parameters this component takes under TGI's names.
_KEY_HINTS = {
    "max_tokens": " (use 'max_new_tokens')",
    "response_format": " (use 'grammar': {'type': 'json', 'value': schema})",
    "logprobs": " (use 'details': True, and 'top_n_tokens' for alternatives)",
    "top_logprobs": " (use 'top_n_tokens')",
}


# --- structured output ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grammar:
    """
    What `generation_kwargs["grammar"]` asks for, in one form whatever form it was given in: a reply that is
    a JSON document following `value` (a JSON schema, `kind` "json") or that matches the regular expression
    `value` (`kind` "regex"). `name` and `strict` are for engines whose field takes them (OpenAI's
    `json_schema`); `strict` is sent only when the user gave it.
    """

    kind: Literal["json", "regex"]
    value: Any
    name: str = "response"
    strict: bool | None = None


def parse_grammar(grammar: Mapping[str, Any], name: str) -> Grammar:
    """
    Reads TGI's grammar forms: `{"type": "json", "value": schema}` (`json_object` is TGI's alias; the schema
    may also be a JSON string), `{"type": "regex", "value": pattern}` and `{"type": "json_schema", "value":
    {"schema": schema, "name": ..., "strict": ...}}`. The schema must be a valid JSON schema (Draft 2020-12,
    as TGI checks it) and the pattern a valid Python regular expression (the reply is checked with it).

    :raises ValueError: Naming `name` and what is wrong.
    """
    unknown = set(grammar) - {"type", "value"}
    if unknown or "value" not in grammar:
        raise ValueError(f"{name} must have the keys 'type' and 'value' only, got {sorted(grammar)}")
    kind, value = grammar.get("type"), grammar["value"]
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}['value'] must be a regular expression (a non-empty string), got {value!r}")
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{name}['value'] is not a valid regular expression: {error}") from None
        return Grammar("regex", value)
    if kind in ("json", "json_object"):
        return Grammar("json", _json_schema(value, f"{name}['value']"))
    if kind == "json_schema":
        if not isinstance(value, Mapping) or "schema" not in value or set(value) - {"schema", "name", "strict"}:
            raise ValueError(
                f"{name}['value'] must be {{'schema': ..., 'name': ... (optional), 'strict': ... (optional)}}, "
                f"got {value!r}"
            )
        schema_name, strict = value.get("name", "response"), value.get("strict")
        if not isinstance(schema_name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", schema_name):
            raise ValueError(f"{name}['value']['name'] must be 1-64 letters, digits, '_' or '-', got {schema_name!r}")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"{name}['value']['strict'] must be True or False, got {strict!r}")
        return Grammar("json", _json_schema(value["schema"], f"{name}['value']['schema']"), schema_name, strict)
    raise ValueError(f"{name}['type'] must be 'json', 'regex' or 'json_schema', got {kind!r}")


def _json_schema(value: Any, name: str) -> dict[str, Any]:
    """A JSON schema given as a dict or a JSON string, checked, as a new dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ValueError(f"{name} is a string that is not JSON: {error}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON schema (a dict), got {type(value).__name__}")
    # jsonschema comes with haystack-ai; imported here, where a grammar is used, not at start-up.
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

    try:
        schema: dict[str, Any] = json.loads(json.dumps(value))  # a copy in plain JSON: the caller's is not shared
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold JSON values only: {error}") from None
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"{name} is not a valid JSON schema: {error.message}") from None
    return schema


def check_stop_words(stop_words: Any) -> list[str] | None:
    """Validates `stop_words`; returns a copy."""
    if stop_words is None:
        return None
    if not _is_stop_list(stop_words):
        raise ValueError(f"stop_words must be a list of non-empty strings, got {stop_words!r}")
    for word in stop_words:
        check_encodable(word, "stop_words")
    return list(stop_words)


def merge_stop_words(*groups: Sequence[str] | None) -> list[str]:
    """Concatenates stop word lists in order, without duplicates."""
    return list(dict.fromkeys(word for group in groups if group for word in group))


def check_prompt(prompt: Any) -> str:
    """Rejects a prompt that is not a non-empty string."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    check_encodable(prompt, "prompt")
    return prompt


def check_encodable(text: str, name: str) -> None:
    """Refuses text that cannot be sent as UTF-8 (a lone surrogate, e.g. from a badly decoded file)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} cannot be encoded as UTF-8: character {error.start} is a lone surrogate "
            f"({text[error.start]!r}); decode the text with errors='replace', or remove it"
        ) from None
