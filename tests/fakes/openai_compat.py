"""A fake OpenAI-compatible engine in the style of vLLM's OpenAI server.

Routes (all under ``base_path``, default ``""``):

* ``GET /v1/models`` (``{"object": "list", "data": [{"id": model_id, "object": "model", ...}]}``),
  ``GET /health`` (200, empty);
* ``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed or not; ``routes`` chooses which
  exist (a chat-only engine answers 404 ``{"detail": "Not Found"}`` on ``/v1/completions``, like FastAPI).
  ``GET /info`` does not exist (404), which is how clients tell such an engine from TGI.

What it reproduces:

* a ``model`` other than the served one: 404 ``{"error": {"message": "The model `x` does not exist.",
  "type": "NotFoundError", "param": "model", "code": 404}}``; a missing ``model`` is accepted;
* ``max_tokens`` (and ``max_completion_tokens`` for chat): finish reason ``length``; unset means "up to
  the context length" (``max_model_len``), and prompt + ``max_tokens`` over it is a 400;
* ``stop`` (str or list): vLLM stops as soon as a stop string appears in the generated text and cuts the
  text *before* it (``finish_reason`` ``stop``, ``stop_reason`` the string); request field
  ``include_stop_str_in_output`` keeps it. While streaming with stop strings, vLLM holds back the last
  ``len(longest stop) - 1`` characters until it knows they are not a stop string, and so does this fake.
  With ``keep_stop_text=True`` the fake behaves like TGI's ``/v1`` routes and ``transformers serve``
  instead: it stops when the text *ends with* a stop string and keeps it;
* sampling parameters (``temperature``, ``top_p``, ``top_k``, ``seed``, ``repetition_penalty``,
  ``frequency_penalty``, ``presence_penalty``) are accepted, and range-checked with vLLM's messages (400);
* usage: always in non-streamed answers; in streams, a final chunk with ``"choices": []`` and ``usage``
  when the request has ``stream_options: {"include_usage": true}`` (``stream_usage="request"``, vLLM and
  ``transformers serve`` 5.25), or always / never (``stream_usage="always"`` / ``"never"``); or, with
  ``stream_usage="final_choice"`` (``transformers serve`` 5.24), ``usage`` in the event that carries the
  finish reason, whatever the request says; ``stream_options`` without ``stream`` is a 400;
* streams end with ``data: [DONE]`` unless ``done_marker=False`` (``transformers serve`` omits it).

Prompt tokens: ``len(prompt.split())``; for chat, the words of all message contents (no chat template).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from ._common import (
    Exchange,
    FakeServer,
    Generation,
    count_prompt_tokens,
    generate,
    stream_deltas,
)
from .tls import TLSConfig

DEFAULT_MODEL_ID = "fake-org/fake-model"
StreamUsage = Literal["request", "always", "never", "final_choice"]
_FINISH_REASONS = {"length": "length", "eos": "stop", "stop": "stop"}


def openai_error(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    """vLLM's ``ErrorResponse`` body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_event(error: str, error_type: str) -> dict[str, Any]:
    """The payload of an error event in an OpenAI-style stream (what vLLM writes when generation fails)."""
    return openai_error(error, error_type, 500)


class _BadRequest(Exception):
    def __init__(self, message: str, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message, self.type, self.param = message, type_, param


def _number(body: dict[str, Any], name: str, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "integer" if integer else "number"
        raise _BadRequest(f"Input should be a valid {kind}: {name}", "Bad Request", name)
    return value


class OpenAIEngine:
    """``/v1/completions`` and ``/v1/chat/completions`` over a fake server's model.

    Shared by :class:`FakeOpenAI`, :class:`~tests.fakes.tgi.FakeTGI` (its ``/v1`` routes) and
    :class:`~tests.fakes.hub.FakeRouter` (the providers behind the router).
    """

    def __init__(
        self,
        server: FakeServer,
        *,
        model_id: str,
        check_model: bool = True,
        keep_stop_text: bool = False,
        stream_usage: StreamUsage = "request",
        max_model_len: int = 4096,
        done_marker: bool = True,
        default_max_tokens: int | None = None,
    ) -> None:
        self.server = server
        self.default_max_tokens = default_max_tokens  # /v1/completions without max_tokens (TGI: 100)
        self.model_id = model_id
        self.check_model = check_model
        self.keep_stop_text = keep_stop_text
        self.stream_usage: StreamUsage = stream_usage
        self.max_model_len = max_model_len
        self.done_marker = done_marker
        #: When set, sent as every choice's finish_reason (e.g. vLLM's "abort"), whatever happened.
        self.finish_reason_override: Any = None

    def _finish_reason(self, gen: Generation) -> Any:
        return self.finish_reason_override or _FINISH_REASONS[gen.finish_reason]

    # Routes -------------------------------------------------------------------------------------
    def completions(self, ex: Exchange, *, served_model: str | None = None) -> None:
        self._handle(ex, chat=False, served_model=served_model)

    def chat(self, ex: Exchange, *, served_model: str | None = None) -> None:
        self._handle(ex, chat=True, served_model=served_model)

    def models_document(self) -> dict[str, Any]:
        model = {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model_id,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        return {"object": "list", "data": [model]}

    # One request --------------------------------------------------------------------------------
    def _handle(self, ex: Exchange, *, chat: bool, served_model: str | None) -> None:
        try:
            body = self._body(ex, chat=chat)
            model = served_model or self.model_id
            requested = body.get("model")
            if served_model is None and self.check_model and requested is not None and requested != self.model_id:
                ex.send_json(
                    404, openai_error(f"The model `{requested}` does not exist.", "NotFoundError", 404, "model")
                )
                return
            prompts = self._prompts(body, chat=chat)
            settings = self._settings(body, chat=chat)
            if not chat and settings["max_tokens"] is None:
                settings["max_tokens"] = self.default_max_tokens
            lengths = [count_prompt_tokens(p) for p in prompts]
            max_tokens = settings["max_tokens"]
            for length in lengths:
                self._check_context(length, max_tokens)
        except _BadRequest as bad:
            ex.send_json(400, openai_error(bad.message, bad.type, 400, bad.param))
            return
        generations = [
            self._generate(ex, length, max_tokens, settings["stop"], settings["include_stop"]) for length in lengths
        ]
        ex.record.resolved.update(model=model, max_tokens=max_tokens, stop=settings["stop"], stream=body["stream"])
        usage = {
            "prompt_tokens": sum(lengths),
            "total_tokens": sum(lengths) + sum(len(g.tokens) for g in generations),
            "completion_tokens": sum(len(g.tokens) for g in generations),
        }
        include_usage = self.stream_usage in ("always", "final_choice") or (
            self.stream_usage == "request" and bool((body.get("stream_options") or {}).get("include_usage"))
        )
        if body["stream"]:
            self._stream(ex, chat, model, prompts, generations, settings, usage if include_usage else None)
        else:
            for generation in generations:
                self.server.compute_pause(generation)
            self._respond(ex, chat, model, prompts, generations, settings, usage)

    def _body(self, ex: Exchange, *, chat: bool) -> dict[str, Any]:
        if ex.json is None:
            raise _BadRequest(f"JSON decode error: {ex.json_error or 'empty body'}", "Bad Request")
        body = ex.json
        if not isinstance(body, dict):
            raise _BadRequest("Input should be a valid dictionary", "Bad Request")
        field = "messages" if chat else "prompt"
        if field not in body:
            raise _BadRequest(f"Field required: {field}", "Bad Request", field)
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise _BadRequest("Input should be a valid boolean: stream", "Bad Request", "stream")
        body = {**body, "stream": bool(stream)}
        if body.get("stream_options") is not None and not body["stream"]:
            raise _BadRequest("Stream options can only be defined when `stream=True`.", "Bad Request")
        return body

    @staticmethod
    def _prompts(body: dict[str, Any], *, chat: bool) -> list[str]:
        if chat:
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("Input should be a non-empty list: messages", "Bad Request", "messages")
            words: list[str] = []
            for message in messages:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, list):  # content parts
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                words.append(content or "")
            return [" ".join(words)]
        prompt = body["prompt"]
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return list(prompt)
        raise _BadRequest("Input should be a valid string or a non-empty list of strings: prompt", "Bad Request")

    @staticmethod
    def _settings(body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        """Check the sampling parameters like vLLM's ``SamplingParams._verify_args``."""
        max_tokens = _number(body, "max_tokens", integer=True)
        if chat and max_tokens is None:
            max_tokens = _number(body, "max_completion_tokens", integer=True)
        temperature = _number(body, "temperature")
        top_p = _number(body, "top_p")
        top_k = _number(body, "top_k", integer=True)
        repetition_penalty = _number(body, "repetition_penalty")
        _number(body, "seed", integer=True)
        for name in ("presence_penalty", "frequency_penalty"):
            value = _number(body, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise _BadRequest(f"{name} must be in [-2, 2], got {value}.")
        if repetition_penalty is not None and repetition_penalty <= 0:
            raise _BadRequest(f"repetition_penalty must be greater than zero, got {repetition_penalty}.")
        if temperature is not None and temperature < 0:
            raise _BadRequest(f"temperature must be non-negative, got {temperature}.")
        if top_p is not None and not 0 < top_p <= 1:
            raise _BadRequest(f"top_p must be in (0, 1], got {top_p}.")
        if top_k is not None and top_k < -1:
            raise _BadRequest(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        if max_tokens is not None and max_tokens < 1:
            raise _BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
        stop = body.get("stop")
        stop_list = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if (stop is not None and not isinstance(stop, (str, list))) or not all(isinstance(s, str) for s in stop_list):
            raise _BadRequest("Input should be a valid string: stop", "Bad Request", "stop")
        if any(not s for s in stop_list):
            raise _BadRequest("stop cannot contain an empty string.")
        return {
            "max_tokens": max_tokens,
            "stop": stop_list,
            "include_stop": bool(body.get("include_stop_str_in_output")),
            "echo": bool(body.get("echo")) and not chat,
        }

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> None:
        if max_tokens is None:
            if prompt_tokens >= self.max_model_len:
                raise _BadRequest(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, your request "
                    f"has {prompt_tokens} input tokens. Please reduce the length of the input messages."
                )
        elif prompt_tokens + max_tokens > self.max_model_len:
            raise _BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )

    def _generate(
        self, ex: Exchange, prompt_tokens: int, max_tokens: int | None, stop: list[str], include_stop: bool
    ) -> Generation:
        limit = self.server.limit_for(ex, max_tokens if max_tokens is not None else self.max_model_len - prompt_tokens)
        if self.keep_stop_text:  # TGI / transformers serve: suffix match, stop text kept, length first
            return generate(self.server.vocab_for(ex), max_new_tokens=limit, stop=stop, stop_match="suffix")
        return generate(
            self.server.vocab_for(ex),
            max_new_tokens=limit,
            stop=stop,
            stop_match="substring",
            keep_stop_text=include_stop,
            length_first=False,
        )

    # Answers ------------------------------------------------------------------------------------
    def _respond(
        self,
        ex: Exchange,
        chat: bool,
        model: str,
        prompts: list[str],
        generations: list[Generation],
        settings: dict[str, Any],
        usage: dict[str, int],
    ) -> None:
        choices: list[dict[str, Any]] = []
        for i, (prompt, gen) in enumerate(zip(prompts, generations, strict=True)):
            finish = {"finish_reason": self._finish_reason(gen), "stop_reason": gen.stop_string}
            if chat:
                message = {"role": "assistant", "content": gen.text, "tool_calls": [], "reasoning_content": None}
                choices.append({"index": i, "message": message, "logprobs": None, **finish})
            else:
                text = (prompt if settings["echo"] else "") + gen.text
                choices.append({"index": i, "text": text, "logprobs": None, **finish, "prompt_logprobs": None})
        body = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {**usage, "prompt_tokens_details": None},
        }
        ex.send_json(200, body)

    def _stream(
        self,
        ex: Exchange,
        chat: bool,
        model: str,
        prompts: list[str],
        generations: list[Generation],
        settings: dict[str, Any],
        usage: dict[str, int] | None,
    ) -> None:
        sse = ex.open_sse(error_event=openai_error_event, done_marker=self.done_marker)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if chat and not sse.event(
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            },
            token=False,
        ):
            return
        # vLLM holds back text that could be the start of a stop string, unless it keeps stop strings.
        hold = 0
        if settings["stop"] and not (self.keep_stop_text or settings["include_stop"]):
            hold = max(len(s) for s in settings["stop"]) - 1
        for i, (prompt, gen) in enumerate(zip(prompts, generations, strict=True)):
            deltas = list(stream_deltas(gen, hold))
            if settings["echo"]:
                deltas[0] = prompt + deltas[0]
            for j, delta in enumerate(deltas):
                last = j == len(deltas) - 1
                finish = self._finish_reason(gen) if last else None
                choice: dict[str, Any]
                if chat:
                    content = {"content": delta} if delta or not last else {}
                    choice = {"index": i, "delta": content, "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"index": i, "text": delta, "logprobs": None, "finish_reason": finish}
                choice["stop_reason"] = gen.stop_string if last else None
                event = {**head, "choices": [choice]}
                final = last and i == len(prompts) - 1
                if final and usage is not None and self.stream_usage == "final_choice":
                    event["usage"] = usage
                if not sse.event(event, final=final):
                    return
        usage_event = usage is not None and self.stream_usage != "final_choice"
        if usage_event and not sse.event({**head, "choices": [], "usage": usage}, token=False):
            return
        sse.close()


class FakeOpenAI(FakeServer):
    """A vLLM-like OpenAI-compatible server over the fake model (see the module docstring)."""

    def __init__(
        self,
        tokens: Iterable[str] | None = None,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        routes: Iterable[str] = ("completions", "chat"),
        base_path: str = "",
        keep_stop_text: bool = False,
        stream_usage: StreamUsage = "request",
        max_model_len: int = 4096,
        api_key: str | None = None,
        sse_space: bool = True,
        keepalive: bool = False,
        keepalive_comment: str = "",
        token_delay: float = 0.0,
        done_marker: bool = True,
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
        self.api_key = api_key
        self.base_path = base_path.rstrip("/")
        self.engine = OpenAIEngine(
            self,
            model_id=model_id,
            keep_stop_text=keep_stop_text,
            stream_usage=stream_usage,
            max_model_len=max_model_len,
            done_marker=done_marker,
        )
        routes = set(routes)
        unknown = routes - {"completions", "chat"}
        if unknown:
            raise ValueError(f"unknown routes: {sorted(unknown)}")
        base = re.escape(self.base_path)
        self.route("GET", rf"{base}/v1/models", self._models)
        self.route("GET", rf"{base}/health", self._health)
        if "completions" in routes:
            self.route("POST", rf"{base}/v1/completions", self._completions)
        if "chat" in routes:
            self.route("POST", rf"{base}/v1/chat/completions", self._chat)

    @property
    def api_url(self) -> str:
        """The base URL an OpenAI client takes (``url + base_path + "/v1"``)."""
        return f"{self.url}{self.base_path}/v1"

    def error_body(self, message: str, error_type: str, status: int) -> Any:
        return openai_error(message, error_type, status)

    # FastAPI's answers for unknown routes and methods
    def not_found(self, ex: Exchange) -> None:
        ex.send_json(404, {"detail": "Not Found"})

    def method_not_allowed(self, ex: Exchange) -> None:
        ex.send_json(405, {"detail": "Method Not Allowed"})

    # vLLM's engine-level settings, reachable on the server for convenience
    @property
    def keep_stop_text(self) -> bool:
        return self.engine.keep_stop_text

    @keep_stop_text.setter
    def keep_stop_text(self, value: bool) -> None:
        self.engine.keep_stop_text = value

    @property
    def stream_usage(self) -> StreamUsage:
        return self.engine.stream_usage

    @stream_usage.setter
    def stream_usage(self, value: StreamUsage) -> None:
        self.engine.stream_usage = value

    def _authorized(self, ex: Exchange) -> bool:
        if self.api_key is None or ex.bearer_token() == self.api_key:
            return True
        ex.send_json(401, {"error": "Unauthorized"})
        return False

    def _models(self, ex: Exchange) -> None:
        if self._authorized(ex):
            ex.send_json(200, self.engine.models_document())

    def _health(self, ex: Exchange) -> None:
        ex.send(200)

    def _completions(self, ex: Exchange) -> None:
        if self._authorized(ex):
            self.engine.completions(ex)

    def _chat(self, ex: Exchange) -> None:
        if self._authorized(ex):
            self.engine.chat(ex)
