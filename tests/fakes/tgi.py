"""A fake Text Generation Inference (TGI v3) server speaking TGI's native protocol.

Routes (as in TGI's router, ``router/src/server.rs``):

* ``GET /info``, ``GET /health`` (and ``GET /``), ``GET /v1/models``;
* ``POST /generate`` (one ``GenerateResponse``), ``POST /generate_stream`` (Server-Sent Events), and the
  compat route ``POST /`` (``stream`` true: SSE; false: a JSON *array* of one ``GenerateResponse``);
* ``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI style, served by the engine of
  ``openai_compat.py`` with TGI's choices (any model name, stop text kept, ``max_tokens`` 100 by default on
  completions, ``[DONE]`` at the end); their error bodies are that engine's, not TGI's.

What it reproduces, beyond the schemas of ``tgi_openapi.json``:

* request bodies are deserialized like serde/axum do: invalid JSON is a plain-text 400, a JSON value of the
  wrong shape (``"stop": null``, ``"max_new_tokens": -1``, missing ``inputs``) a plain-text 422, a missing
  ``Content-Type: application/json`` a 415, and a body over 2 MB a plain-text 413;
* validation errors are 422 ``{"error": "Input validation error: ...", "error_type": "validation"}`` on
  JSON routes, but a 200 stream holding one ``data: {"error": ...}`` event on streaming routes, in TGI's
  order of checks and with its messages;
* defaults: a request without ``parameters`` samples (``do_sample`` true), one with ``parameters`` does
  not; ``max_new_tokens`` missing or null means ``min(max_total_tokens - input tokens, 1024)``;
  ``details`` defaults to false; ``return_full_text`` defaults to false on ``/generate*`` and, on the
  compat route ``/``, to true for models tagged ``text-generation`` or untagged (the prompt is prepended);
* stream events are numbered from 1, carry no ``top_tokens`` key unless ``top_n_tokens`` was asked for,
  and the last one has ``generated_text`` (and ``details`` when asked); there is no ``[DONE]``;
* stop sequences stop generation when the generated text *ends with* one, and stay in the text; the length
  limit is checked first (finish reasons ``length`` | ``eos_token`` | ``stop_sequence``);
* with ``api_key``, every POST route needs ``Authorization: Bearer <key>`` (compared case-insensitively,
  like TGI) and answers a bare 401 otherwise.

The resolved parameters of each generation request are in ``server.requests[i].resolved``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._common import (
    Exchange,
    FakeServer,
    Generation,
    count_prompt_tokens,
    generate,
    token_id,
)
from .openai_compat import OpenAIEngine
from .tls import TLSConfig

DEFAULT_MODEL_ID = "fake-org/fake-model"
DEFAULT_GENERATION_LENGTH = 1024  # TGI v3: the max_new_tokens default, capped by max_total_tokens
_FINISH_REASONS = {"length": "length", "eos": "eos_token", "stop": "stop_sequence"}


@dataclass(frozen=True)
class TGILimits:
    """The router limits of a TGI deployment (its launcher flags)."""

    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_stop_sequences: int = 4
    max_best_of: int = 2
    max_top_n_tokens: int = 5


# --------------------------------------------------------------------------------------------------
# Deserialization, the serde/axum way
# --------------------------------------------------------------------------------------------------

# GenerateParameters fields: (serde type, nullable). Non-nullable fields reject an explicit null, which
# is what serde does for `#[serde(default)] stop: Vec<String>` or `details: bool`.
_PARAMETER_FIELDS: dict[str, tuple[str, bool]] = {
    "best_of": ("usize", True),
    "temperature": ("f32", True),
    "repetition_penalty": ("f32", True),
    "frequency_penalty": ("f32", True),
    "top_k": ("i32", True),
    "top_p": ("f32", True),
    "typical_p": ("f32", True),
    "do_sample": ("bool", False),
    "max_new_tokens": ("u32", True),
    "return_full_text": ("bool", True),
    "stop": ("strings", False),
    "truncate": ("usize", True),
    "watermark": ("bool", False),
    "details": ("bool", False),
    "decoder_input_details": ("bool", False),
    "seed": ("u64", True),
    "top_n_tokens": ("u32", True),
    "grammar": ("any", True),
    "adapter_id": ("string", True),
}
_INT_RANGES = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "usize": (0, 2**64 - 1), "i32": (-(2**31), 2**31 - 1)}
_EXPECTED = {"bool": "a boolean", "string": "a string", "strings": "a sequence"}


class _Rejected(Exception):
    """A body axum's Json extractor refuses: plain-text status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _unexpected(value: Any) -> str:
    # serde's `Unexpected` wording
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    return "sequence" if isinstance(value, list) else "map"


def _data_error(path: str, detail: str) -> _Rejected:
    where = f"{path}: " if path else ""
    return _Rejected(422, f"Failed to deserialize the JSON body into the target type: {where}{detail}")


def _check_value(value: Any, kind: str, nullable: bool, path: str) -> Any:
    if value is None:
        if nullable or kind == "any":
            return None
        raise _data_error(path, f"invalid type: null, expected {_EXPECTED.get(kind, kind)}")
    if kind == "any":
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "strings" and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _data_error(f"{path}[{i}]", f"invalid type: {_unexpected(item)}, expected a string")
        return list(value)
    if kind == "f32" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in _INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise _data_error(path, f"invalid value: {_unexpected(value)}, expected {kind}")
        return value
    raise _data_error(path, f"invalid type: {_unexpected(value)}, expected {_EXPECTED.get(kind, kind)}")


@dataclass
class TGIRequest:
    """A deserialized ``GenerateRequest`` / ``CompatGenerateRequest`` with serde defaults applied."""

    inputs: str
    parameters: dict[str, Any]
    parameters_present: bool
    stream: bool = False


def parse_generate_request(ex: Exchange, *, compat: bool) -> TGIRequest:
    """Deserialize the body like ``Json<GenerateRequest>`` would, or raise :class:`_Rejected`."""
    content_type = ex.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type == "application/json" or content_type.endswith("+json")):
        raise _Rejected(415, "Expected request with `Content-Type: application/json`")
    if ex.json is None:
        detail = ex.json_error or "EOF while parsing a value at line 1 column 0"
        raise _Rejected(400, f"Failed to parse the request body as JSON: {detail}")
    body = ex.json
    target = "CompatGenerateRequest" if compat else "GenerateRequest"
    if not isinstance(body, dict):
        raise _data_error("", f"invalid type: {_unexpected(body)}, expected struct {target}")
    if "inputs" not in body:
        raise _data_error("", "missing field `inputs`")
    inputs = _check_value(body["inputs"], "string", False, "inputs")
    present = "parameters" in body
    raw = body.get("parameters", {})
    if not isinstance(raw, dict):
        raise _data_error("parameters", f"invalid type: {_unexpected(raw)}, expected struct GenerateParameters")
    params: dict[str, Any] = {name: None for name in _PARAMETER_FIELDS}
    params.update(stop=[], do_sample=not present, watermark=False, details=False, decoder_input_details=False)
    for name, value in raw.items():
        if name in _PARAMETER_FIELDS:  # unknown fields are ignored, as serde does by default
            kind, nullable = _PARAMETER_FIELDS[name]
            params[name] = _check_value(value, kind, nullable, f"parameters.{name}")
    stream = _check_value(body.get("stream", False), "bool", False, "stream") if compat else False
    return TGIRequest(inputs, params, present, bool(stream))


# --------------------------------------------------------------------------------------------------
# Validation, in TGI's order and words (router/src/validation.rs)
# --------------------------------------------------------------------------------------------------


def validate(req: TGIRequest, limits: TGILimits, *, streaming: bool) -> tuple[str | None, int, int | None]:
    """Return (error message or None, input length, effective max_new_tokens when known)."""
    p = req.parameters
    best_of = p["best_of"] or 1
    input_length = count_prompt_tokens(req.inputs)
    if best_of != 1 and (best_of > limits.max_best_of or best_of == 0):
        return f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}", input_length, None
    if streaming and best_of != 1:
        return "`best_of` != 1 is not supported when streaming tokens", input_length, None
    if streaming and p["decoder_input_details"]:
        return "`decoder_input_details` == true is not supported when streaming tokens", input_length, None
    sampling = p["do_sample"] or any(p[k] is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
    checks: list[tuple[bool, str]] = [
        (best_of > 1 and not sampling, "you must use sampling when `best_of` is > 1"),
        (p["temperature"] is not None and p["temperature"] <= 0, "`temperature` must be strictly positive"),
        (
            p["repetition_penalty"] is not None and p["repetition_penalty"] <= 0,
            "`repetition_penalty` must be strictly positive",
        ),
        (
            p["frequency_penalty"] is not None and not -2.0 <= p["frequency_penalty"] <= 2.0,
            "`frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (p["top_p"] is not None and not 0.0 < p["top_p"] < 1.0, "`top_p` must be > 0.0 and < 1.0"),
        (p["typical_p"] is not None and not 0.0 < p["typical_p"] < 1.0, "`typical_p` must be > 0.0 and < 1.0"),
        (p["top_k"] is not None and p["top_k"] <= 0, "`top_k` must be strictly positive"),
        (p["max_new_tokens"] == 0, "`max_new_tokens` must be strictly positive"),
        (
            len(p["stop"]) > limits.max_stop_sequences,
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p['stop'])}",
        ),
        (best_of > 1 and p["seed"] is not None, "`seed` must not be set when `best_of` > 1"),
        (
            p["top_n_tokens"] is not None and p["top_n_tokens"] > limits.max_top_n_tokens,
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p['top_n_tokens']}",
        ),
        (req.inputs == "", "`inputs` cannot be empty"),
        (
            p["truncate"] is not None and not 0 < p["truncate"] <= limits.max_input_tokens,
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p['truncate']}",
        ),
    ]
    for failed, message in checks:
        if failed:
            return message, input_length, None
    if p["truncate"] is not None:
        input_length = min(input_length, p["truncate"])
    max_new = p["max_new_tokens"]
    if max_new is None:
        max_new = min(max(limits.max_total_tokens - input_length, 0), DEFAULT_GENERATION_LENGTH)
    if input_length + max_new > limits.max_total_tokens:
        return (
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new} `max_new_tokens`",
            input_length,
            max_new,
        )
    if input_length > limits.max_input_tokens:
        return (
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}",
            input_length,
            max_new,
        )
    return None, input_length, max_new


def validation_error(message: str) -> dict[str, str]:
    return {"error": f"Input validation error: {message}", "error_type": "validation"}


def tgi_error_event(error: str, error_type: str) -> dict[str, str]:
    """The payload of an error event on TGI streams (``ErrorResponse``)."""
    return {"error": error, "error_type": error_type}


# --------------------------------------------------------------------------------------------------
# The generation routes
# --------------------------------------------------------------------------------------------------


def serve_generation(
    server: FakeServer,
    ex: Exchange,
    *,
    route: str,
    limits: TGILimits,
    pipeline_tag: str | None,
    compute_type: str = "gpu+optimized",
    done_marker: bool | None = None,
) -> None:
    """Answer ``/generate`` (``route="generate"``), ``/generate_stream`` (``"stream"``) or ``/`` (``"compat"``).

    ``done_marker`` overrides the server's option for streams (TGI itself never sends ``[DONE]`` here).
    """
    try:
        req = parse_generate_request(ex, compat=route == "compat")
    except _Rejected as rejected:
        ex.send_text(rejected.status, rejected.message)
        return
    streaming = req.stream if route == "compat" else route == "stream"
    p = req.parameters
    full_text = p["return_full_text"]
    if full_text is None:
        # The compat route defaults return_full_text from the model's pipeline tag; /generate* to false.
        full_text = route == "compat" and pipeline_tag in (None, "text-generation")
    error, input_length, max_new = validate(req, limits, streaming=streaming)
    ex.record.resolved.update(
        do_sample=p["do_sample"],
        return_full_text=full_text,
        details=p["details"],
        max_new_tokens=max_new,
        stream=streaming,
        input_length=input_length,
    )
    extra_headers = {"x-compute-type": compute_type, "x-compute-characters": str(len(req.inputs))}
    if error is not None:
        if streaming:
            sse = ex.open_sse(
                headers={**extra_headers, "X-Accel-Buffering": "no"},
                error_event=tgi_error_event,
                done_marker=done_marker,
            )
            sse.event(validation_error(error), token=False)
            sse.close()
        else:
            ex.send_json(422, validation_error(error))
        return
    generation = generate(
        server.vocab_for(ex),
        max_new_tokens=server.limit_for(ex, max_new),
        stop=p["stop"],
        stop_match="suffix",
        keep_stop_text=True,
    )
    prefix = req.inputs if full_text else ""
    # The shards sample (and report a seed) when asked to, or when a warper changes the distribution.
    sampling = (
        p["do_sample"]
        or p["temperature"] not in (None, 1.0)
        or p["top_k"] not in (None, 0)
        or (p["top_p"] or 1.0) < 1.0
        or (p["typical_p"] or 1.0) < 1.0
    )
    seed = (p["seed"] if p["seed"] is not None else zlib.crc32(req.inputs.encode())) if sampling else None
    if streaming:
        _stream(ex, generation, prefix, seed, input_length, p, extra_headers, done_marker)
        return
    server.compute_pause(generation)
    response: dict[str, Any] = {"generated_text": prefix + generation.text}
    if p["details"] or p["decoder_input_details"]:
        response["details"] = _details(generation, prefix, seed, req.inputs, p)
    total_ms = int(server.token_delay * len(generation.tokens) * 1000)
    headers = {
        **extra_headers,
        "x-compute-time": str(total_ms / 1000),
        "x-total-time": str(total_ms),
        "x-validation-time": "0",
        "x-queue-time": "0",
        "x-inference-time": str(total_ms),
        "x-time-per-token": str(total_ms // max(len(generation.tokens), 1)),
        "x-prompt-tokens": str(input_length),
        "x-generated-tokens": str(len(generation.tokens)),
    }
    ex.send_json(200, [response] if route == "compat" else response, headers=headers)


def _details(gen: Generation, prefix: str, seed: int | None, inputs: str, p: dict[str, Any]) -> dict[str, Any]:
    # Field order follows the serde struct: finish_reason, generated_tokens, seed, prefill, tokens, ...
    prefill = []
    if p["decoder_input_details"]:
        words = inputs.split()
        prefill = [{"id": token_id(w), "text": w, "logprob": None if i == 0 else -0.5} for i, w in enumerate(words)]
    details: dict[str, Any] = {
        "finish_reason": _FINISH_REASONS[gen.finish_reason],
        "generated_tokens": len(gen.tokens),
        "seed": seed,
        "prefill": prefill,
        "tokens": [t.as_json() for t in gen.tokens],
    }
    best_of = p["best_of"] or 1
    if best_of > 1:
        # The fake model is deterministic, so every candidate sequence is the same.
        other = {key: details[key] for key in ("finish_reason", "generated_tokens", "seed", "prefill", "tokens")}
        details["best_of_sequences"] = [{"generated_text": prefix + gen.text, **other} for _ in range(best_of - 1)]
    if p["top_n_tokens"]:
        details["top_tokens"] = [[t.as_json()] for t in gen.tokens]
    return details


def _stream(
    ex: Exchange,
    gen: Generation,
    prefix: str,
    seed: int | None,
    input_length: int,
    p: dict[str, Any],
    extra_headers: dict[str, str],
    done_marker: bool | None,
) -> None:
    sse = ex.open_sse(
        headers={**extra_headers, "X-Accel-Buffering": "no"}, error_event=tgi_error_event, done_marker=done_marker
    )
    last = len(gen.tokens) - 1
    for i, token in enumerate(gen.tokens):
        event: dict[str, Any] = {"index": i + 1, "token": token.as_json()}
        if p["top_n_tokens"]:
            event["top_tokens"] = [token.as_json()]
        final = i == last
        event["generated_text"] = prefix + gen.text if final else None
        event["details"] = None
        if final and p["details"]:
            event["details"] = {
                "finish_reason": _FINISH_REASONS[gen.finish_reason],
                "generated_tokens": len(gen.tokens),
                "seed": seed,
                "input_length": input_length,
            }
        if not sse.event(event, final=final):
            return
    sse.close()


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class FakeTGI(FakeServer):
    """A TGI v3 server over the fake model (see the module docstring for the protocol details).

    Attributes worth setting in a test: ``tokens``, ``faults``, ``healthy`` (False: ``/health`` answers
    503), ``model_pipeline_tag``, ``api_key``, ``endpoint``, and the options of :class:`FakeServer`.
    """

    max_body_bytes = 2_000_000  # TGI's --payload-limit default

    def __init__(
        self,
        tokens: Iterable[str] | None = None,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        model_pipeline_tag: str | None = "text-generation",
        limits: TGILimits | None = None,
        max_concurrent_requests: int = 128,
        max_client_batch_size: int = 4,
        version: str = "3.3.6",
        api_key: str | None = None,
        sse_space: bool = True,
        keepalive: bool = False,
        keepalive_comment: str = "",
        token_delay: float = 0.0,
        done_marker: bool = False,
        tls: TLSConfig | None = None,
    ) -> None:
        super().__init__(
            tokens,
            sse_space=sse_space,
            keepalive=keepalive,
            keepalive_comment=keepalive_comment,
            token_delay=token_delay,
            done_marker=done_marker,
            tls=tls,
        )
        self.model_id = model_id
        self.model_pipeline_tag = model_pipeline_tag
        self.limits = limits or TGILimits()
        self.max_concurrent_requests = max_concurrent_requests
        self.max_client_batch_size = max_client_batch_size
        self.version = version
        self.api_key = api_key
        self.healthy = True
        # TGI's OpenAI routes ignore the model name, keep stop text and end streams with [DONE].
        self._openai = OpenAIEngine(
            self, model_id=model_id, check_model=False, keep_stop_text=True, done_marker=True, default_max_tokens=100
        )
        self.route("GET", r"/info", self._info)
        self.route("GET", r"/health|/ping|/", self._health)
        self.route("GET", r"/v1/models", self._models)
        self.route("POST", r"/generate", self._generate)
        self.route("POST", r"/generate_stream", self._generate_stream)
        self.route("POST", r"/", self._compat)
        self.route("POST", r"/v1/completions", self._completions)
        self.route("POST", r"/v1/chat/completions", self._chat)

    def info(self) -> dict[str, Any]:
        """The ``/info`` document (TGI's ``Info`` schema)."""
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": self.model_pipeline_tag,
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": self.limits.max_best_of,
            "max_stop_sequences": self.limits.max_stop_sequences,
            "max_input_tokens": self.limits.max_input_tokens,
            "max_total_tokens": self.limits.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": self.max_client_batch_size,
            "router": "text-generation-router",
            "version": self.version,
            "sha": None,
            "docker_label": None,
        }

    # Routes -------------------------------------------------------------------------------------
    def _info(self, ex: Exchange) -> None:
        ex.send_json(200, self.info())

    def _health(self, ex: Exchange) -> None:
        if self.healthy:
            ex.send(200)
        else:
            ex.send_json(503, {"error": "unhealthy", "error_type": "healthcheck"})

    def _models(self, ex: Exchange) -> None:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        ex.send_json(200, {"object": "list", "data": [model]})

    def _authorized(self, ex: Exchange) -> bool:
        if self.api_key is None:
            return True
        if ex.headers.get("authorization", "").lower() == f"bearer {self.api_key}".lower():
            return True
        ex.send(401)
        return False

    def _generation_route(self, ex: Exchange, route: str) -> None:
        if self._authorized(ex):
            serve_generation(self, ex, route=route, limits=self.limits, pipeline_tag=self.model_pipeline_tag)

    def _generate(self, ex: Exchange) -> None:
        self._generation_route(ex, "generate")

    def _generate_stream(self, ex: Exchange) -> None:
        self._generation_route(ex, "stream")

    def _compat(self, ex: Exchange) -> None:
        self._generation_route(ex, "compat")

    def _completions(self, ex: Exchange) -> None:
        if self._authorized(ex):
            self._openai.completions(ex)

    def _chat(self, ex: Exchange) -> None:
        if self._authorized(ex):
            self._openai.chat(ex)
