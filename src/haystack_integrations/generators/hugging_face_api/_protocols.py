"""
The wire protocols: how a prompt and parameters become a request body, and how a response body or a
stream event becomes text, a finish reason and token counts.

Pure functions of data: no I/O here. Which field carries which parameter is the engine's business: each
protocol holds the `Rules` of its engine (`_engines`), which refuse what that engine cannot honour and write
the rest into the body. Three protocols share one small interface:

- `TGIProtocol`: TGI's native `/generate` and `/generate_stream` (and the same body on the
  `hf-inference` provider route);
- `CompletionsProtocol`: OpenAI-compatible `/v1/completions` (vLLM, SGLang, llama.cpp, transformers
  serve, TGI's `/v1`, provider routes);
- `ChatProtocol`: OpenAI-compatible `/v1/chat/completions`, the prompt sent as one user message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

from ._engines import TGI, UNKNOWN, Engine, Rules, asks_to_sample, top_tokens_wanted
from .errors import ResponseFormatError

#: One generated token in `meta["tokens"]`, the same on every engine: its text, its log-probability and
#: the most likely tokens at its place, `{"text": str, "logprob": float | None, "top": [{"text", "logprob"}]}`.
Token = dict[str, Any]


@dataclass(slots=True)
class Generation:
    """One parsed answer, or one parsed stream event (then `text` is the new piece)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    #: For stream events: this is the protocol's last event (TGI), nothing useful follows.
    final: bool = False
    #: Which reply of several (`n`) this is, or belongs to.
    index: int = 0
    #: Token log-probabilities as the server sent them, read only when asked for (`Protocol.tokens`).
    logprobs: Any = None


class Protocol:
    """Builds request bodies and parses answers for one wire protocol, as one engine takes it."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, model: str | None, generate_path: str, stream_path: str, engine: Engine) -> None:
        self.model = model
        self.generate_path = generate_path
        self.stream_path = stream_path
        self.engine = engine
        self.rules = Rules(engine, self.name, self.description)

    def path(self, stream: bool) -> str:
        """The route for a streamed or a one-piece answer."""
        return self.stream_path if stream else self.generate_path

    def check_parameters(self, params: Mapping[str, Any], stream: bool = False) -> None:
        """
        Raises `ValueError` naming the first parameter this engine cannot honour through this protocol (with
        why, and what to do instead), or a combination no engine can, in a streamed request when `stream`.
        """
        rules = self.rules
        for key, value in params.items():
            refusal = rules.refusal(key, value)
            if refusal is not None:
                raise ValueError(refusal)
        n = params.get("n", 1)
        if n > 1 and not asks_to_sample(params):
            raise ValueError(
                f"generation_kwargs['n'] is {n}, but decoding is greedy and would give the same reply {n} times: "
                "ask for sampling (generation_kwargs['do_sample'] = True, or a temperature)"
            )
        grammar = params.get("grammar")
        if params.get("validate_schema") and (grammar is None or grammar.kind != "json"):
            raise ValueError(
                "generation_kwargs['validate_schema'] checks replies against a JSON schema: it needs "
                "generation_kwargs['grammar'] = {'type': 'json', 'value': schema}"
            )

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        """The JSON request body. `params` are checked generation kwargs without stop words."""
        raise NotImplementedError

    def parse_generation(self, payload: Any, prompt_tokens_header: str | None) -> Generation:
        """Parses a one-piece answer (its first reply)."""
        return self.parse_generations(payload, prompt_tokens_header, 1)[0]

    def parse_generations(self, payload: Any, prompt_tokens_header: str | None, n: int) -> list[Generation]:
        """
        Parses a one-piece answer holding `n` replies, in order.

        :raises ResponseFormatError: If the answer does not hold exactly replies 0 to n - 1.
        """
        raise NotImplementedError

    def parse_event(self, payload: Mapping[str, Any]) -> Generation:
        """Parses one stream event (an error event has been handled before) of a single reply."""
        raise NotImplementedError

    def parse_event_choices(self, payload: Mapping[str, Any]) -> list[Generation]:
        """Parses one stream event of several replies: one generation per reply it carries (`index`)."""
        return [self.parse_event(payload)]

    def usage(self, payload: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """Prompt and completion tokens of a whole answer (all its replies), when the server counted them."""
        return None, None

    def prefill(self, generation: Generation) -> list[Token]:
        """The prompt's tokens with their log-probabilities (`decoder_input_details`), when the server sent them."""
        return []

    def tokens(self, generation: Generation, top: int) -> list[Token]:
        """
        The tokens of a generation (or of a stream event) in `meta["tokens"]`'s shape, each with its `top`
        most likely alternatives.

        :raises ResponseFormatError: If the server sent token details in a shape it does not document.
        """
        raise NotImplementedError


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # Decoded JSON objects are dicts: test that first, the ABC check costs ~6x more.
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if _is_mapping(value) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _malformed(what: str, payload: Any) -> ResponseFormatError:
    return ResponseFormatError(f"The server's answer has no {what}").quoting(payload)


class TGIProtocol(Protocol):
    """TGI's native protocol: `{"inputs", "parameters"}` in, `generated_text` and `details` out."""

    name = "tgi"
    description = "TGI's native protocol"

    def __init__(
        self,
        model: str | None,
        generate_path: str = "/generate",
        stream_path: str = "/generate_stream",
        stream_in_body: bool = False,
    ) -> None:
        super().__init__(model, generate_path, stream_path, TGI)
        # The compat-style route (`/` on TGI, `hf-inference` on the router) selects streaming by a body flag.
        self.stream_in_body = stream_in_body

    def check_parameters(self, params: Mapping[str, Any], stream: bool = False) -> None:
        super().check_parameters(params, stream)
        if not stream:
            return
        # TGI answers these with "... is not supported when streaming tokens": said here, naming the parameter.
        if params.get("decoder_input_details"):
            key, why = "decoder_input_details", "TGI returns the prompt's tokens in one-piece answers only"
        elif params.get("best_of", 1) > 1:
            key, why = "best_of", "TGI picks the best of several sequences in one-piece answers only"
        else:
            return
        raise ValueError(
            f"generation_kwargs[{key!r}] cannot be honoured by TGI in a streamed request: {why}; run without a "
            "streaming_callback, or without this parameter"
        )

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        parameters: dict[str, Any] = {}
        self.rules.write(parameters, params, stop)
        # The prompt is added back client-side when asked for, identically on every protocol; details
        # carry the finish reason and token counts.
        parameters["return_full_text"] = False
        parameters["details"] = True
        body: dict[str, Any] = {"inputs": prompt, "parameters": parameters}
        if self.stream_in_body:
            body["stream"] = stream
        return body

    def parse_generations(self, payload: Any, prompt_tokens_header: str | None, n: int) -> list[Generation]:
        if n != 1:  # TGI has no `n`: the flow sends one request per reply
            raise ValueError(f"TGI's native protocol answers one reply per request, not {n}")
        # The compat-style routes answer with a list of one object.
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if not isinstance(payload, Mapping) or not isinstance(payload.get("generated_text"), str):
            raise _malformed("'generated_text'", payload)
        details = _mapping(payload.get("details"))
        prompt_tokens = int(prompt_tokens_header) if prompt_tokens_header and prompt_tokens_header.isdigit() else None
        generation = Generation(
            text=payload["generated_text"],
            finish_reason=_str_or_none(details.get("finish_reason")),
            prompt_tokens=prompt_tokens,
            completion_tokens=_int_or_none(details.get("generated_tokens")),
            logprobs=details or None,
        )
        return [generation]

    def parse_event(self, payload: Mapping[str, Any]) -> Generation:
        token = payload.get("token")
        if not _is_mapping(token):
            raise _malformed("'token' in a stream event", payload)
        # Special tokens (</s>, <|im_end|> ...) are the model's markup, never text for the user.
        text = "" if token.get("special") else token.get("text")
        if not isinstance(text, str):
            raise _malformed("token text in a stream event", payload)
        if payload.get("generated_text") is None:
            return Generation(text, logprobs=payload)
        details = _mapping(payload.get("details"))
        return Generation(
            text,
            finish_reason=_str_or_none(details.get("finish_reason")),
            prompt_tokens=_int_or_none(details.get("input_length")),
            completion_tokens=_int_or_none(details.get("generated_tokens")),
            final=True,
            logprobs=payload,
        )

    def tokens(self, generation: Generation, top: int) -> list[Token]:
        raw = generation.logprobs
        if not _is_mapping(raw):
            return []
        if "token" in raw:  # a stream event: one token, and the alternatives at its place
            pairs = [(raw["token"], raw.get("top_tokens") or [])]
        else:
            tokens, tops = raw.get("tokens"), raw.get("top_tokens")
            if not isinstance(tokens, list) or (tops is not None and not isinstance(tops, list)):
                raise _malformed("token details ('tokens', 'top_tokens')", raw)
            pairs = list(zip(tokens, tops if tops else [[]] * len(tokens), strict=False))
        result: list[Token] = []
        for token, alternatives in pairs:
            if not _is_mapping(token) or not isinstance(alternatives, list):
                raise _malformed("token details", raw)
            if token.get("special"):  # left out, as from the text
                continue
            choices = [(alt.get("text"), alt.get("logprob")) for alt in alternatives if _is_mapping(alt)]
            result.append(_token(token.get("text"), token.get("logprob"), choices, top, raw))
        return result

    def prefill(self, generation: Generation) -> list[Token]:
        details = generation.logprobs
        prefill = details.get("prefill") if _is_mapping(details) else None
        if not isinstance(prefill, list):
            return []
        return [_token(t.get("text"), t.get("logprob"), [], 0, details) for t in prefill if _is_mapping(t)]


class _OpenAIProtocol(Protocol):
    """What `/v1/completions` and `/v1/chat/completions` share: parameters, usage and finish reasons."""

    def __init__(self, model: str | None, path: str, engine: Engine = UNKNOWN) -> None:
        super().__init__(model, path, path, engine)

    def _common_body(self, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.model:
            body["model"] = self.model
        self.rules.write(body, params, stop)  # may name another model: an adapter
        body["stream"] = stream
        if stream and self.rules.stream_options:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _usage(payload: Mapping[str, Any]) -> tuple[int | None, int | None]:
        usage = payload.get("usage")
        if not _is_mapping(usage):
            return None, None
        return _int_or_none(usage.get("prompt_tokens")), _int_or_none(usage.get("completion_tokens"))

    def usage(self, payload: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """Prompt and completion tokens of a whole answer (all its replies), when the server counted them."""
        return self._usage(payload)

    @staticmethod
    def _first_choice(payload: Any) -> Mapping[str, Any] | None:
        choices = payload.get("choices") if _is_mapping(payload) else None
        if isinstance(choices, list) and choices and _is_mapping(choices[0]):
            return choices[0]
        return None

    def _text_of(self, choice: Mapping[str, Any], stream: bool) -> Any:
        raise NotImplementedError

    def parse_generation(self, payload: Any, prompt_tokens_header: str | None) -> Generation:
        choice = self._first_choice(payload)
        text = None if choice is None else self._text_of(choice, stream=False)
        if not isinstance(text, str):
            raise _malformed("text in 'choices'", payload)
        prompt_tokens, completion_tokens = self._usage(payload)
        return Generation(
            text=text,
            finish_reason=_str_or_none(choice.get("finish_reason")) if choice else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=_str_or_none(payload.get("model")),
            logprobs=choice.get("logprobs") if choice else None,
        )

    def parse_generations(self, payload: Any, prompt_tokens_header: str | None, n: int) -> list[Generation]:
        if n == 1:
            return [self.parse_generation(payload, prompt_tokens_header)]
        choices = payload.get("choices") if _is_mapping(payload) else None
        if not isinstance(choices, list):
            raise _malformed("'choices'", payload)
        by_index = {c.get("index"): c for c in choices if _is_mapping(c)}
        if len(choices) != n or set(by_index) != set(range(n)):
            raise ResponseFormatError(f"The server was asked for {n} replies and answered {len(choices)}")
        prompt_tokens, _ = self._usage(payload)  # its completion tokens count all the replies: not one's
        model = _str_or_none(payload.get("model"))
        generations = []
        for index in range(n):
            choice = by_index[index]
            text = self._text_of(choice, stream=False)
            if not isinstance(text, str):
                raise _malformed(f"text in choice {index}", payload)
            generations.append(
                Generation(
                    text=text,
                    finish_reason=_str_or_none(choice.get("finish_reason")),
                    prompt_tokens=prompt_tokens,
                    model=model,
                    index=index,
                    logprobs=choice.get("logprobs"),
                )
            )
        return generations

    def parse_event(self, payload: Mapping[str, Any]) -> Generation:
        prompt_tokens, completion_tokens = self._usage(payload)
        choice = self._first_choice(payload)
        if choice is None:  # the usage chunk at the end has no choices
            return Generation("", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        text = self._text_of(choice, stream=True)
        return Generation(
            text if isinstance(text, str) else "",
            finish_reason=_str_or_none(choice.get("finish_reason")),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=_str_or_none(payload.get("model")),
            logprobs=choice.get("logprobs"),
        )

    def parse_event_choices(self, payload: Mapping[str, Any]) -> list[Generation]:
        # Usage comes in an event of its own, for all the replies: read it with `usage`.
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return []
        model = _str_or_none(payload.get("model"))
        generations = []
        for choice in choices:
            index = choice.get("index") if _is_mapping(choice) else None
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise _malformed("reply index in a stream event", payload)
            text = self._text_of(choice, stream=True)
            generations.append(
                Generation(
                    text if isinstance(text, str) else "",
                    finish_reason=_str_or_none(choice.get("finish_reason")),
                    model=model,
                    index=index,
                    logprobs=choice.get("logprobs"),
                )
            )
        return generations

    def tokens(self, generation: Generation, top: int) -> list[Token]:
        raw = generation.logprobs
        if raw is None:
            return []
        if not _is_mapping(raw):
            raise _malformed("token log-probabilities ('logprobs')", raw)
        if "content" in raw:  # chat's shape; llama.cpp sends it on /v1/completions too
            return _chat_tokens(raw, top)
        return _legacy_tokens(raw, top)


class CompletionsProtocol(_OpenAIProtocol):
    """OpenAI-compatible text completions: the prompt is continued as is."""

    name = "completions"
    description = "OpenAI-compatible completions"

    def __init__(self, model: str | None, path: str = "/v1/completions", engine: Engine = UNKNOWN) -> None:
        super().__init__(model, path, engine)

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        body = self._common_body(params, stop, stream)
        body["prompt"] = prompt
        return body

    def _text_of(self, choice: Mapping[str, Any], stream: bool) -> Any:
        return choice.get("text")


class ChatProtocol(_OpenAIProtocol):
    """OpenAI-compatible chat completions: the prompt is sent as one user message."""

    name = "chat"
    description = "OpenAI-compatible chat completions"

    def __init__(self, model: str | None, path: str = "/v1/chat/completions", engine: Engine = UNKNOWN) -> None:
        super().__init__(model, path, engine)

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        body = self._common_body(params, stop, stream)
        body["messages"] = [{"role": "user", "content": prompt}]
        return body

    def _text_of(self, choice: Mapping[str, Any], stream: bool) -> Any:
        message = choice.get("delta" if stream else "message")
        return message.get("content") if isinstance(message, Mapping) else None


# --- token details, in one shape ---------------------------------------------------------------------


def _token(text: Any, logprob: Any, alternatives: list[tuple[Any, Any]], top: int, raw: Any) -> Token:
    """One token of `meta["tokens"]`; its alternatives most likely first, `top` of them at most."""
    if not isinstance(text, str) or (logprob is not None and not _is_number(logprob)):
        raise _malformed("token text and log-probability", raw)
    if any(not isinstance(t, str) or not _is_number(lp) for t, lp in alternatives):
        raise _malformed("alternative tokens' text and log-probability", raw)
    best = sorted(alternatives, key=lambda pair: -pair[1])[:top] if top else []
    return {"text": text, "logprob": logprob, "top": [{"text": t, "logprob": lp} for t, lp in best]}


def _legacy_tokens(raw: Mapping[str, Any], top: int) -> list[Token]:
    """OpenAI's legacy completions shape: parallel lists `tokens`, `token_logprobs`, `top_logprobs`."""
    tokens, logprobs, tops = raw.get("tokens"), raw.get("token_logprobs"), raw.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(logprobs, list) or len(logprobs) != len(tokens):
        raise _malformed("token log-probabilities ('tokens', 'token_logprobs')", raw)
    if tops is None:
        tops = [None] * len(tokens)
    if not isinstance(tops, list) or len(tops) != len(tokens):
        raise _malformed("alternatives ('top_logprobs')", raw)
    result = []
    for text, logprob, alternatives in zip(tokens, logprobs, tops, strict=True):
        if alternatives is not None and not _is_mapping(alternatives):
            raise _malformed("alternatives ('top_logprobs')", raw)
        result.append(_token(text, logprob, list((alternatives or {}).items()), top, raw))
    return result


def _chat_tokens(raw: Mapping[str, Any], top: int) -> list[Token]:
    """OpenAI's chat shape: `content`, a list of `{token, logprob, top_logprobs: [{token, logprob}]}`."""
    content = raw.get("content")
    if content is None:  # e.g. a chunk carrying only the role
        return []
    if not isinstance(content, list):
        raise _malformed("token log-probabilities ('content')", raw)
    result = []
    for entry in content:
        if not _is_mapping(entry):
            raise _malformed("token log-probabilities ('content')", raw)
        alternatives = entry.get("top_logprobs") or []
        if not isinstance(alternatives, list) or not all(_is_mapping(a) for a in alternatives):
            raise _malformed("alternatives ('top_logprobs')", raw)
        pairs = [(a.get("token"), a.get("logprob")) for a in alternatives]
        result.append(_token(entry.get("token"), entry.get("logprob"), pairs, top, raw))
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def no_token_details(where: str) -> ResponseFormatError:
    """The error of a reply without the token details that were asked for: the server ignored the request."""
    return ResponseFormatError(f"{where}: token details were asked for (details / top_n_tokens); the server sent none")


def tokens_for_meta(
    protocol: Protocol, generation: Generation, params: Mapping[str, Any], where: str = "The server's answer"
) -> list[Token] | None:
    """
    `meta["tokens"]` of a one-piece reply: None unless `details` / `top_n_tokens` asked for it.

    :raises ResponseFormatError: If they did and the server sent no token details (it ignored the request).
    """
    top = top_tokens_wanted(params)
    if top is None:
        return None
    if generation.logprobs is None:
        raise no_token_details(where)
    return protocol.tokens(generation, top)


def tokens_within(tokens: list[Token], length: int) -> list[Token]:
    """The tokens that made the first `length` characters of their text: those of a reply cut at a stop word."""
    kept, at = [], 0
    for token in tokens:
        if at >= length:
            break
        kept.append(token)
        at += len(token["text"])
    return kept


# Servers' finish reasons mapped to Haystack's FinishReason values.
_FINISH_REASONS = {
    "eos_token": "stop",
    "stop_sequence": "stop",
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
}


#: Finish reasons that mean the generation failed (vLLM: "abort" when the request was cancelled).
FAILED_FINISH_REASONS = frozenset({"abort", "error"})


def normalize_finish_reason(raw: str | None) -> str | None:
    """TGI's `eos_token` / `stop_sequence` become `stop`; OpenAI's values stay; unknown values give None."""
    return _FINISH_REASONS.get(raw) if raw else None
