"""Strict fakes of each engine's request format, for the per-engine parameter rules.

Each fake takes exactly the fields its engine documents (ENGINES.md, with sources), on ``/v1/completions``
and ``/v1/chat/completions``, and does with any other field what that engine does:

* transformers serve answers 422 ``{"detail": "Unexpected fields in the request: {...}"}``; OpenAI's own
  API (the model of an engine that says nothing about itself) and the Inference Providers router 400;
* vLLM, SGLang, llama.cpp, llama-cpp-python and TGI answer 200 and ignore it. The fake records it in
  ``requests[i].resolved["ignored"]``, as it records fields the engine accepts but documents as unused
  (``n`` on llama-cpp-python, ``response_format`` on transformers serve): a test asserts that list is
  empty, so a field sent under a name the engine ignores fails the test instead of passing silently.

What the engine made of a request is in ``resolved``, in common terms whatever the engine's field names:
``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``typical_p``, ``repetition_penalty``,
``frequency_penalty``, ``seed``, ``sampling`` (whether it samples), ``n``, ``top_logprobs`` (alternatives per
token, None for no log-probabilities), ``constraint`` (``("json", schema)`` / ``("regex", pattern)``),
``truncate``, ``adapter``, ``stop``, ``best_of``, ``prompt_tokens``, ``ignored``.

The model is ``_common``'s deterministic one, with visible effects: a constrained request generates
``json_tokens`` or ``regex_tokens`` (the test picks a pattern they match); a LoRA adapter puts
``[adapter]`` first; a sampled request with a seed ends with `` #seed``, and with ``n`` > 1 each reply with
`` #i``. Log-probabilities come in the engine's shape: OpenAI's legacy one on completions (llama.cpp: chat's
``content`` even there), chat's ``content`` on chat, with ``k`` alternatives per token (the token itself,
then ``alt1`` ... at lower log-probabilities).

:class:`FakeEngine` serves one engine by its :class:`Profile` (``VLLM``, ``SGLANG``, ``LLAMA_CPP``,
``LLAMA_CPP_PYTHON``, ``TRANSFORMERS``, ``OPENAI``); :class:`StrictTGI` is a :class:`~tests.fakes.tgi.FakeTGI`
whose native routes honour ``grammar`` and ``adapter_id`` and whose ``/v1`` routes follow TGI's OpenAI
schemas; :func:`strict_router` puts the router's documented fields in front of a
:class:`~tests.fakes.hub.FakeRouter`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._common import Exchange, FakeServer, GeneratedToken, Generation, count_prompt_tokens, generate, stream_deltas
from .hub import FakeRouter
from .tgi import FakeTGI, tgi_error_event, validation_error

DEFAULT_MODEL_ID = "fake-org/fake-model"
JSON_TOKENS = ('{"', "name", '": "', "Ada", '"}')
REGEX_TOKENS = ("123", "-", "45")
_FINISH = {"length": "length", "eos": "stop", "stop": "stop"}


def _names(text: str) -> frozenset[str]:
    """Field names written as one string, as engines' documentation lists them."""
    return frozenset(text.split())


# The OpenAI API's own fields (openai-python's CompletionCreateParams / CompletionCreateParams for chat).
OPENAI_COMPLETIONS = _names(
    "model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed stop "
    "stream stream_options suffix temperature top_p user"
)
OPENAI_CHAT = _names(
    "model messages audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens "
    "max_tokens metadata modalities n parallel_tool_calls prediction presence_penalty reasoning_effort "
    "response_format seed service_tier stop store stream stream_options temperature tool_choice tools "
    "top_logprobs top_p user web_search_options"
)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Profile:
    """One engine's OpenAI-compatible request format: the fields each route takes, and the rest's fate."""

    name: str
    owned_by: str | None  # None: the model id (TGI)
    completions: frozenset[str]
    chat: frozenset[str]
    #: Fields accepted and documented as doing nothing: always recorded as ignored.
    unused: frozenset[str] = frozenset()
    #: What happens to any other field: "ignore" (answered 200, recorded) or "reject".
    unknown: Literal["ignore", "reject"] = "ignore"
    card: Mapping[str, Any] = field(default_factory=dict)
    #: Streams may end with a usage event (`stream_options.include_usage`).
    stream_usage: bool = True
    #: The log-probabilities list the end-of-sequence token too, whose text is not in the reply (vLLM 0.32 does).
    eos_in_logprobs: bool = False


_SAMPLING = _names("temperature top_p top_k min_p seed")
VLLM = Profile(
    "vllm",
    "vllm",
    OPENAI_COMPLETIONS - {"best_of"}
    | {
        *_SAMPLING,
        "repetition_penalty",
        "structured_outputs",
        "response_format",
        "truncate_prompt_tokens",
        "truncation_side",
        "include_stop_str_in_output",
        "watermarking",
    },
    OPENAI_CHAT | {*_SAMPLING, "repetition_penalty", "structured_outputs", "truncate_prompt_tokens", "truncation_side"},
    card={"root": DEFAULT_MODEL_ID, "parent": None, "max_model_len": 4096, "permission": []},
    eos_in_logprobs=True,
)
SGLANG = Profile(
    "sglang",
    "sglang",
    OPENAI_COMPLETIONS | {*_SAMPLING, "repetition_penalty", "json_schema", "regex", "ebnf", "lora_path"},
    OPENAI_CHAT | {*_SAMPLING, "repetition_penalty", "regex", "ebnf", "lora_path"},
    card={"root": DEFAULT_MODEL_ID, "parent": None, "max_model_len": 4096},
)
_LLAMA_NATIVE = {*_SAMPLING, "typical_p", "repeat_penalty", "json_schema", "grammar", "n_probs", "n_predict"}
LLAMA_CPP = Profile(
    "llama.cpp",
    "llamacpp",
    OPENAI_COMPLETIONS - {"best_of"} | _LLAMA_NATIVE,
    OPENAI_CHAT | _LLAMA_NATIVE,
    card={"meta": {"n_ctx_train": 8192}},
)
_LLAMA_CPP_PYTHON = _names("temperature top_p min_p top_k seed repeat_penalty grammar mirostat_mode min_tokens")
LLAMA_CPP_PYTHON = Profile(
    "llama-cpp-python",
    "me",
    _names(
        "model prompt suffix max_tokens echo stop stream logprobs presence_penalty frequency_penalty logit_bias user"
    )
    | set(_LLAMA_CPP_PYTHON),
    _names(
        "model messages functions function_call tools tool_choice max_tokens logprobs top_logprobs stop stream "
        "presence_penalty frequency_penalty logit_bias response_format user"
    )
    | set(_LLAMA_CPP_PYTHON),
    unused=frozenset({"n", "best_of"}),
    card={"permissions": []},
    stream_usage=False,
)
TRANSFORMERS = Profile(
    "transformers",
    "local",
    OPENAI_COMPLETIONS | {"generation_config"},
    OPENAI_CHAT | {"generation_config", "chat_template_kwargs"},
    # Accepted, then ignored with a warning in the server's log.
    unused=_names(
        "best_of echo logprobs n presence_penalty user audio function_call functions metadata modalities "
        "parallel_tool_calls prediction reasoning_effort response_format service_tier store tool_choice "
        "top_logprobs web_search_options"
    ),
    unknown="reject",
    card={"status": {"value": "loaded"}},
)
#: A server that says nothing of itself, taking the OpenAI API's fields only (as OpenAI does).
OPENAI = Profile("openai", "system", OPENAI_COMPLETIONS, OPENAI_CHAT, unknown="reject")
#: TGI's /v1 routes (tgi_openapi.json's CompletionRequest and ChatRequest); serde ignores other fields.
TGI_V1 = Profile(
    "tgi",
    None,
    _names("frequency_penalty max_tokens model prompt repetition_penalty seed stop stream suffix temperature top_p"),
    _names(
        "frequency_penalty logit_bias logprobs max_tokens messages model n presence_penalty response_format "
        "seed stop stream stream_options temperature tool_choice tool_prompt tools top_logprobs top_p"
    ),
    unused=frozenset({"n", "logit_bias"}),  # documented "UNUSED"
)
#: The Inference Providers router's documented chat fields, and OpenAI's completions on provider routes.
ROUTER = Profile(
    "inference-providers",
    None,
    OPENAI_COMPLETIONS,
    _names(
        "frequency_penalty logprobs max_tokens messages model presence_penalty response_format seed stop stream "
        "stream_options temperature tool_choice tool_prompt tools top_logprobs top_p"
    ),
    unknown="reject",
)


#: The profiles by the engine names of `api_params["engine"]` (`unknown`: a server that says nothing of itself).
BY_ENGINE = {
    "vllm": VLLM,
    "sglang": SGLANG,
    "llama.cpp": LLAMA_CPP,
    "llama-cpp-python": LLAMA_CPP_PYTHON,
    "transformers": TRANSFORMERS,
    "unknown": OPENAI,
}


@dataclass
class Reading:
    """What an engine made of one request, in common terms."""

    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    top_logprobs: int | None = None
    constraint: tuple[str, Any] | None = None
    adapter: str | None = None
    truncate: int | None = None
    sampling: bool = True
    values: dict[str, Any] = field(default_factory=dict)  # the sampling parameters, under common names


class StrictOpenAIEngine:
    """``/v1/completions`` and ``/v1/chat/completions`` of one :class:`Profile`, over a fake server's model."""

    def __init__(
        self,
        server: FakeServer,
        profile: Profile,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        adapters: Iterable[str] = (),
        check_model: bool = True,
    ) -> None:
        self.server = server
        self.profile = profile
        self.model_id = model_id
        self.adapters = set(adapters)
        self.check_model = check_model
        self.json_tokens: list[str] = list(JSON_TOKENS)
        self.regex_tokens: list[str] = list(REGEX_TOKENS)

    # Routes -------------------------------------------------------------------------------------
    def completions(self, ex: Exchange, *, served_model: str | None = None) -> None:
        self._handle(ex, chat=False, served_model=served_model)

    def chat(self, ex: Exchange, *, served_model: str | None = None) -> None:
        self._handle(ex, chat=True, served_model=served_model)

    def models_document(self) -> dict[str, Any]:
        cards = [self._card(self.model_id, None)] + [self._card(name, self.model_id) for name in sorted(self.adapters)]
        return {"object": "list", "data": cards}

    def _card(self, model: str, parent: str | None) -> dict[str, Any]:
        card = {"id": model, "object": "model", "created": 0, "owned_by": self.profile.owned_by or model}
        card.update(self.profile.card)
        if "parent" in card:
            card["parent"] = parent
        return card

    # One request --------------------------------------------------------------------------------
    def _handle(self, ex: Exchange, *, chat: bool, served_model: str | None) -> None:
        try:
            body = ex.json if isinstance(ex.json, dict) else None
            if body is None:
                raise BadRequest("the body must be a JSON object")
            reading = self._read(ex, body, chat, served_model)
        except BadRequest as bad:
            if self.profile.unknown == "reject" and self.profile.name == "transformers":
                ex.send_json(bad.status, {"detail": bad.message})
            else:
                ex.send_json(bad.status, {"error": {"message": bad.message, "type": "BadRequestError", "code": 400}})
            return
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        prompt_tokens = count_prompt_tokens(prompt)
        if reading.truncate is not None:
            prompt_tokens = min(prompt_tokens, reading.truncate)
        generations = [self._generate(ex, reading, i, body.get("seed")) for i in range(reading.n)]
        ex.record.resolved["prompt_tokens"] = prompt_tokens
        model = served_model or body.get("model") or self.model_id
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(len(g.tokens) for g in generations),
            "total_tokens": prompt_tokens + sum(len(g.tokens) for g in generations),
        }
        if body.get("stream"):
            include = self.profile.stream_usage and bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(ex, chat, model, generations, reading, usage if include else None)
        else:
            self._respond(ex, chat, model, generations, reading, usage)

    def _read(self, ex: Exchange, body: dict[str, Any], chat: bool, served_model: str | None) -> Reading:
        profile = self.profile
        known = profile.chat if chat else profile.completions
        required = "messages" if chat else "prompt"
        if required not in body:
            raise BadRequest(f"Field required: {required}", 422 if profile.name == "transformers" else 400)
        unknown = sorted(set(body) - known - profile.unused)
        if unknown and profile.unknown == "reject":
            if profile.name == "transformers":
                raise BadRequest(f"Unexpected fields in the request: {set(unknown)}", 422)
            raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}")
        ignored = sorted(set(body) & profile.unused) + unknown
        ex.record.resolved["ignored"] = ignored
        body = {key: value for key, value in body.items() if key not in ignored}
        reading = Reading(max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"))
        stop = body.get("stop")
        reading.stop = [stop] if isinstance(stop, str) else list(stop or [])
        values = reading.values
        for name in ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "repetition_penalty", "typical_p"):
            if name in body:
                values[name] = body[name]
        if "repeat_penalty" in body:
            values["repetition_penalty"] = body["repeat_penalty"]
        if "best_of" in body:
            values["best_of"] = body["best_of"]
        reading.sampling = body.get("temperature", 1.0) != 0
        if profile.name == "transformers":
            self._transformers(body, reading)
        if "n" in body:
            reading.n = body["n"]
            if reading.n > 1 and not reading.sampling and profile.name == "vllm":
                raise BadRequest(f"n must be 1 when using greedy sampling, got {reading.n}.")
        reading.top_logprobs = self._logprobs(body, chat)
        reading.constraint = self._constraint(body, chat)
        reading.adapter = self._adapter(body, served_model)
        if "truncate_prompt_tokens" in body:
            reading.truncate = body["truncate_prompt_tokens"]
        ex.record.resolved.update(
            max_tokens=reading.max_tokens,
            stop=reading.stop,
            n=reading.n,
            top_logprobs=reading.top_logprobs,
            constraint=reading.constraint,
            adapter=reading.adapter,
            truncate=reading.truncate,
            sampling=reading.sampling,
            **values,
        )
        return reading

    @staticmethod
    def _transformers(body: dict[str, Any], reading: Reading) -> None:
        config = json.loads(body["generation_config"]) if "generation_config" in body else {}
        if not isinstance(config, dict):
            raise BadRequest("generation_config must be a JSON object", 422)
        reading.values.update(
            {key: config[key] for key in ("top_k", "typical_p", "repetition_penalty") if key in config}
        )
        if "frequency_penalty" in body:  # transformers' own reading of it
            reading.values["repetition_penalty"] = 1.0 + body["frequency_penalty"]
        # generate() samples only when told to; the model's generation config does not.
        reading.sampling = bool(config.get("do_sample")) and body.get("temperature", 1.0) != 0

    def _logprobs(self, body: dict[str, Any], chat: bool) -> int | None:
        name = self.profile.name
        if not chat:
            count = body.get("logprobs")
            if count is None:
                return None
            # vLLM reads 0 as "the chosen token only"; SGLang and llama.cpp as "none".
            if count == 0 and name != "vllm":
                return None
            return int(count)
        top = body.get("top_logprobs")
        if top is not None and not body.get("logprobs"):
            raise BadRequest('"top_logprobs" requires "logprobs" to be set')
        if not body.get("logprobs"):
            return None
        if name in ("llama.cpp", "llama-cpp-python"):
            # llama.cpp: n_probs = top_logprobs (no probabilities at all for 0); llama-cpp-python passes
            # top_logprobs as its logprobs count and returns nothing without it.
            if name == "llama-cpp-python" and not top:
                return None
            top = 20 if top is None else top
            return int(top) or None
        return int(top or 0)

    def _constraint(self, body: dict[str, Any], chat: bool) -> tuple[str, Any] | None:
        name = self.profile.name
        found: list[tuple[str, Any]] = []
        response_format = body.get("response_format")
        if name == "vllm":
            outputs = body.get("structured_outputs") or {}
            if len([k for k in ("json", "regex", "choice", "grammar") if k in outputs]) > 1:
                raise BadRequest("You can only use one kind of structured outputs constraint")
            found += [(kind, outputs[kind]) for kind in ("json", "regex") if kind in outputs]
            if response_format and response_format.get("type") == "json_schema":
                found.append(("json", response_format["json_schema"]["schema"]))
        elif name == "sglang":
            if "json_schema" in body:
                found.append(("json", json.loads(body["json_schema"])))
            if "regex" in body:
                found.append(("regex", body["regex"]))
            if response_format and response_format.get("type") == "json_schema":
                schema = response_format.get("json_schema") or {}
                if "name" not in schema:
                    raise BadRequest("response_format.json_schema.name: Field required", 422)
                found.append(("json", schema.get("schema")))
        elif name == "llama.cpp":
            if "json_schema" in body and "grammar" in body:
                raise BadRequest("Either json_schema or grammar can be specified, but not both")
            if "json_schema" in body:
                found.append(("json", body["json_schema"]))
            if chat and response_format:
                if response_format.get("type") == "json_schema":
                    found.append(("json", (response_format.get("json_schema") or {}).get("schema")))
                elif response_format.get("type") == "json_object":
                    found.append(("json", response_format.get("schema", {"type": "object"})))
        elif name == "llama-cpp-python":
            if chat and response_format:
                if response_format.get("type") not in ("text", "json_object"):
                    raise BadRequest("response_format.type: Input should be 'text' or 'json_object'", 422)
                if response_format["type"] == "json_object":
                    found.append(("json", response_format.get("schema", {"type": "object"})))
        elif response_format is not None:  # TGI, the router, OpenAI
            found.append(self._tagged_format(response_format))
        if len(found) > 1:
            raise BadRequest("more than one output constraint")
        return found[0] if found else None

    def _tagged_format(self, response_format: Any) -> tuple[str, Any]:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if self.profile.name == "tgi":  # TGI's GrammarType, with a `value`
            if kind in ("json", "json_object") and "value" in response_format:
                return "json", response_format["value"]
            if kind == "regex" and isinstance(response_format.get("value"), str):
                return "regex", response_format["value"]
            raise BadRequest("Failed to deserialize the JSON body: response_format", 422)
        if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
            schema = response_format["json_schema"]
            if "name" not in schema:
                raise BadRequest("response_format.json_schema.name is required")
            return "json", schema.get("schema")
        raise BadRequest(f"Invalid response_format: {response_format!r}")

    def _adapter(self, body: dict[str, Any], served_model: str | None) -> str | None:
        name, model = self.profile.name, body.get("model")
        if name == "sglang":
            adapter = body.get("lora_path")
            if adapter is not None and adapter not in self.adapters:
                raise BadRequest(f"LoRA adapter {adapter!r} is not loaded")
            return adapter
        if name in ("vllm", "tgi") and model in self.adapters:
            return str(model)
        if served_model is None and self.check_model and model is not None and model != self.model_id:
            if name == "tgi":
                return None  # TGI takes an unknown model name as an adapter it does not have: the base model
            raise BadRequest(f"The model `{model}` does not exist.", 404)
        return None

    def _generate(self, ex: Exchange, reading: Reading, index: int, seed: Any) -> Generation:
        vocab = list(self.server.vocab_for(ex))
        if reading.constraint is not None:
            vocab = list(self.json_tokens if reading.constraint[0] == "json" else self.regex_tokens)
        if reading.adapter is not None:
            vocab.insert(0, f"[{reading.adapter}] ")
        if reading.n > 1:
            vocab.append(f" #{index}")
        elif reading.sampling and seed is not None:
            vocab.append(f" #{seed}")
        return generate(vocab, max_new_tokens=reading.max_tokens, stop=reading.stop, stop_match="substring")

    # Answers ------------------------------------------------------------------------------------
    def _logprob_entries(self, tokens: list[GeneratedToken], top: int, chat_shape: bool) -> Any:
        tokens = [t for t in tokens if not t.special or self.profile.eos_in_logprobs]
        if chat_shape:
            with_bytes = self.profile.name != "tgi"

            def entry(text: str, logprob: float) -> dict[str, Any]:
                item: dict[str, Any] = {"token": text, "logprob": logprob}
                if with_bytes:
                    item["bytes"] = list(text.encode())
                return item

            return {
                "content": [
                    {**entry(t.text, t.logprob), "top_logprobs": [entry(*alt) for alt in _alternatives(t, top)]}
                    for t in tokens
                ]
            }
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t.text)
        return {
            "tokens": [t.text for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(_alternatives(t, top)) for t in tokens],
            "text_offset": offsets,
        }

    def _chat_shape(self, chat: bool) -> bool:
        return chat or self.profile.name == "llama.cpp"  # llama.cpp answers chat's shape on completions too

    def _respond(
        self,
        ex: Exchange,
        chat: bool,
        model: str,
        generations: list[Generation],
        reading: Reading,
        usage: dict[str, int],
    ) -> None:
        choices = []
        for i, gen in enumerate(generations):
            choice: dict[str, Any] = {"index": i, "finish_reason": _FINISH[gen.finish_reason]}
            if chat:
                choice["message"] = {"role": "assistant", "content": gen.text}
            else:
                choice["text"] = gen.text
            choice["logprobs"] = (
                None
                if reading.top_logprobs is None
                else self._logprob_entries(gen.tokens, reading.top_logprobs, self._chat_shape(chat))
            )
            choices.append(choice)
        body = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
        }
        ex.send_json(200, body)

    def _stream(
        self,
        ex: Exchange,
        chat: bool,
        model: str,
        generations: list[Generation],
        reading: Reading,
        usage: dict[str, int] | None,
    ) -> None:
        sse = ex.open_sse(done_marker=True)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        hold = max((len(s) for s in reading.stop), default=1) - 1
        # The replies' events interleave, one token of each in turn, as an engine batching them would.
        streams = [list(zip(stream_deltas(gen, hold), gen.tokens, strict=True)) for gen in generations]
        for step in range(max(len(s) for s in streams)):
            for i, stream in enumerate(streams):
                if step >= len(stream):
                    continue
                delta, token = stream[step]
                last = step == len(stream) - 1
                choice: dict[str, Any] = {
                    "index": i,
                    "finish_reason": _FINISH[generations[i].finish_reason] if last else None,
                }
                if chat:
                    choice["delta"] = {"content": delta}
                else:
                    choice["text"] = delta
                choice["logprobs"] = (
                    None
                    if reading.top_logprobs is None
                    else self._logprob_entries([token], reading.top_logprobs, self._chat_shape(chat))
                )
                if not sse.event({**head, "choices": [choice]}):
                    return
        if usage is not None and not sse.event({**head, "choices": [], "usage": usage}, token=False):
            return
        sse.close()


def _alternatives(token: GeneratedToken, top: int) -> list[tuple[str, float]]:
    """``top`` alternatives at a token's place: the token itself, then less likely ones."""
    return [(token.text, token.logprob)] + [(f"alt{j}", round(token.logprob - j, 4)) for j in range(1, top)]


class FakeEngine(FakeServer):
    """One engine's OpenAI-compatible server, by its :class:`Profile` (see the module docstring).

    ``adapters``: LoRA adapter names it serves (vLLM lists them in ``/v1/models``; SGLang takes them in
    ``lora_path``). ``engine`` is the :class:`StrictOpenAIEngine` (``json_tokens``, ``regex_tokens``).
    """

    def __init__(
        self,
        profile: Profile,
        tokens: Iterable[str] | None = None,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        adapters: Iterable[str] = (),
    ) -> None:
        super().__init__(tokens, done_marker=True)
        self.profile = profile
        self.engine = StrictOpenAIEngine(self, profile, model_id=model_id, adapters=adapters)
        self.route("GET", r"/v1/models", lambda ex: ex.send_json(200, self.engine.models_document()))
        self.route("GET", r"/health", lambda ex: ex.send_json(200, {"status": "ok"}))
        self.route("POST", r"/v1/completions", self.engine.completions)
        self.route("POST", r"/v1/chat/completions", self.engine.chat)
        if profile.name == "vllm":
            self.route("GET", r"/version", lambda ex: ex.send_json(200, {"version": "0.32.0"}))

    def not_found(self, ex: Exchange) -> None:
        ex.send_json(404, {"detail": "Not Found"})


class StrictTGI(FakeTGI):
    """:class:`FakeTGI` honouring ``grammar`` (json, regex, json_schema; TGI's 422 for a schema without
    top-level ``properties``) and ``adapter_id`` (an adapter it does not serve silently falls back to the base
    model, as TGI does) on its native routes, recording unknown ``parameters`` as ignored, with
    :data:`TGI_V1`'s strict ``/v1`` routes."""

    def __init__(self, tokens: Iterable[str] | None = None, *, adapters: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(tokens, **kwargs)
        self.adapters = set(adapters)
        self._openai = StrictOpenAIEngine(self, TGI_V1, model_id=self.model_id, adapters=adapters)

    def vocab_for(self, ex: Exchange) -> list[str]:
        if ex.path.startswith("/v1/"):
            return super().vocab_for(ex)
        parameters = (ex.json or {}).get("parameters") or {}
        vocab = super().vocab_for(ex)
        grammar = parameters.get("grammar")
        if grammar:
            vocab = list(JSON_TOKENS if grammar["type"] != "regex" else REGEX_TOKENS)
        adapter = parameters.get("adapter_id")
        if adapter in self.adapters:
            vocab.insert(0, f"[{adapter}] ")
        return vocab

    def _generation_route(self, ex: Exchange, route: str) -> None:
        body = ex.json if isinstance(ex.json, dict) else {}
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        known = _names(
            "best_of temperature repetition_penalty frequency_penalty top_k top_p typical_p do_sample max_new_tokens "
            "return_full_text stop truncate watermark details decoder_input_details seed top_n_tokens grammar "
            "adapter_id"
        )
        ex.record.resolved["ignored"] = sorted(set(parameters) - known)
        grammar = parameters.get("grammar")
        error = _tgi_grammar_error(grammar) if grammar is not None else None
        adapter = parameters.get("adapter_id")
        ex.record.resolved.update(
            {key: value for key, value in parameters.items() if key in known},
            max_tokens=parameters.get("max_new_tokens"),
            constraint=_tgi_constraint(grammar) if error is None and grammar is not None else None,
            adapter=adapter if adapter in self.adapters else None,
            top_logprobs=parameters.get("top_n_tokens") if parameters.get("details") else None,
            # TGI's shards sample when asked to, or when a warper changes the distribution.
            sampling=bool(parameters.get("do_sample"))
            or parameters.get("temperature", 1.0) != 1.0
            or bool(parameters.get("top_k"))
            or parameters.get("top_p", 1.0) < 1.0
            or parameters.get("typical_p", 1.0) < 1.0,
        )
        if error is None:
            super()._generation_route(ex, route)
        elif route == "stream" or body.get("stream"):
            sse = ex.open_sse(error_event=tgi_error_event)
            sse.event(validation_error(error), token=False)
            sse.close()
        else:
            ex.send_json(422, validation_error(error))


def _tgi_grammar_error(grammar: Any) -> str | None:
    kind = grammar.get("type") if isinstance(grammar, dict) else None
    if kind == "regex":
        return None if isinstance(grammar.get("value"), str) else "grammar: invalid regex"
    if kind in ("json", "json_object", "json_schema"):
        schema = _tgi_constraint(grammar)[1]
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
            return "Grammar must have a 'properties' field"
        return None
    return f"grammar: unknown variant `{kind}`"


def _tgi_constraint(grammar: dict[str, Any]) -> tuple[str, Any]:
    value = grammar.get("value")
    if grammar["type"] == "regex":
        return "regex", value
    if grammar["type"] == "json_schema" and isinstance(value, dict):
        value = value.get("schema")
    return "json", json.loads(value) if isinstance(value, str) else value


def strict_router(router: FakeRouter) -> FakeRouter:
    """``router`` with the Inference Providers API's documented fields only (:data:`ROUTER`)."""
    router.engine = StrictOpenAIEngine(router, ROUTER, model_id="", check_model=False)
    return router
