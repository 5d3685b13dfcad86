"""
The wire protocols: how a prompt and parameters become a request body, and how a response body or a
stream event becomes text, a finish reason and token counts.

Pure functions of data: no I/O here. Three protocols share one small interface:

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

from .errors import ResponseFormatError


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


class Protocol:
    """Builds request bodies and parses answers for one wire protocol."""

    name: ClassVar[str]
    #: Generation parameters (our names, TGI's) that this protocol cannot honour.
    unsupported: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model: str | None, generate_path: str, stream_path: str) -> None:
        self.model = model
        self.generate_path = generate_path
        self.stream_path = stream_path

    def path(self, stream: bool) -> str:
        """The route for a streamed or a one-piece answer."""
        return self.stream_path if stream else self.generate_path

    def check_parameters(self, params: Mapping[str, Any]) -> None:
        """Raises `ValueError` naming the first parameter this protocol cannot honour."""
        for key in params:
            if key in self.unsupported:
                raise ValueError(
                    f"generation_kwargs[{key!r}] is not supported by the {self.description} protocol; "
                    f"remove it, or use a server that speaks TGI's native protocol (api_params['protocol'] = 'tgi')"
                )

    @property
    def description(self) -> str:
        return self.name

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        """The JSON request body. `params` are checked generation kwargs without stop words."""
        raise NotImplementedError

    def parse_generation(self, payload: Any, prompt_tokens_header: str | None) -> Generation:
        """Parses a one-piece answer."""
        raise NotImplementedError

    def parse_event(self, payload: Mapping[str, Any]) -> Generation:
        """Parses one stream event (an error event has been handled before)."""
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

    def __init__(
        self,
        model: str | None,
        generate_path: str = "/generate",
        stream_path: str = "/generate_stream",
        stream_in_body: bool = False,
    ) -> None:
        super().__init__(model, generate_path, stream_path)
        # The compat-style route (`/` on TGI, `hf-inference` on the router) selects streaming by a body flag.
        self.stream_in_body = stream_in_body

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        parameters = {key: value for key, value in params.items() if key != "return_full_text"}
        # TGI rejects temperature 0 and top_p 1.0; both mean "no change to the distribution".
        if parameters.get("temperature") == 0:
            del parameters["temperature"]
            parameters["do_sample"] = False
        if parameters.get("top_p") == 1:
            del parameters["top_p"]
        # The prompt is added back client-side when asked for, identically on every protocol; details
        # carry the finish reason and token counts.
        parameters["return_full_text"] = False
        parameters["details"] = True
        if stop:
            parameters["stop"] = stop
        body: dict[str, Any] = {"inputs": prompt, "parameters": parameters}
        if self.stream_in_body:
            body["stream"] = stream
        return body

    def parse_generation(self, payload: Any, prompt_tokens_header: str | None) -> Generation:
        # The compat-style routes answer with a list of one object.
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if not isinstance(payload, Mapping) or not isinstance(payload.get("generated_text"), str):
            raise _malformed("'generated_text'", payload)
        details = _mapping(payload.get("details"))
        prompt_tokens = int(prompt_tokens_header) if prompt_tokens_header and prompt_tokens_header.isdigit() else None
        return Generation(
            text=payload["generated_text"],
            finish_reason=_str_or_none(details.get("finish_reason")),
            prompt_tokens=prompt_tokens,
            completion_tokens=_int_or_none(details.get("generated_tokens")),
        )

    def parse_event(self, payload: Mapping[str, Any]) -> Generation:
        token = payload.get("token")
        if not _is_mapping(token):
            raise _malformed("'token' in a stream event", payload)
        # Special tokens (</s>, <|im_end|> ...) are the model's markup, never text for the user.
        text = "" if token.get("special") else token.get("text")
        if not isinstance(text, str):
            raise _malformed("token text in a stream event", payload)
        if payload.get("generated_text") is None:
            return Generation(text)
        details = _mapping(payload.get("details"))
        return Generation(
            text,
            finish_reason=_str_or_none(details.get("finish_reason")),
            prompt_tokens=_int_or_none(details.get("input_length")),
            completion_tokens=_int_or_none(details.get("generated_tokens")),
            final=True,
        )


_SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p", "typical_p")
# Values that leave the distribution as it is: they do not ask for sampling (TGI drops top_p 1.0 too).
_NEUTRAL: dict[str, Any] = {"top_p": 1, "temperature": 0}


class _OpenAIProtocol(Protocol):
    """What `/v1/completions` and `/v1/chat/completions` share: parameters, usage and finish reasons."""

    unsupported = frozenset(
        {"typical_p", "watermark", "grammar", "truncate", "top_n_tokens", "adapter_id", "decoder_input_details"}
    )
    # Our (TGI) names mapped to the OpenAI API's names; top_k and repetition_penalty are extensions that
    # vLLM, SGLang, llama.cpp and TGI's /v1 accept.
    _renamed: ClassVar[dict[str, str]] = {"max_new_tokens": "max_tokens"}
    _passed: ClassVar[frozenset[str]] = frozenset(
        {"temperature", "top_p", "top_k", "seed", "repetition_penalty", "frequency_penalty", "best_of"}
    )

    def __init__(self, model: str | None, path: str) -> None:
        super().__init__(model, path, path)

    def _common_body(self, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.model:
            body["model"] = self.model
        for key, value in params.items():
            if key in self._renamed:
                body[self._renamed[key]] = value
            elif key in self._passed:
                body[key] = value
        # TGI decodes greedily unless asked to sample (do_sample, or a temperature / top_k / top_p);
        # OpenAI-compatible servers sample by default. Greedy everywhere unless asked keeps backends alike.
        sampling = params.get("do_sample") is True or any(
            key in params and params[key] != _NEUTRAL.get(key) for key in _SAMPLING_PARAMETERS
        )
        if params.get("do_sample") is False or not sampling:
            body["temperature"] = 0
        if stop:
            body["stop"] = stop
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _usage(payload: Mapping[str, Any]) -> tuple[int | None, int | None]:
        usage = payload.get("usage")
        if not _is_mapping(usage):
            return None, None
        return _int_or_none(usage.get("prompt_tokens")), _int_or_none(usage.get("completion_tokens"))

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
        )

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
        )


class CompletionsProtocol(_OpenAIProtocol):
    """OpenAI-compatible text completions: the prompt is continued as is."""

    name = "completions"
    description = "OpenAI-compatible completions"

    def __init__(self, model: str | None, path: str = "/v1/completions") -> None:
        super().__init__(model, path)

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
    unsupported = _OpenAIProtocol.unsupported | {"best_of"}

    def __init__(self, model: str | None, path: str = "/v1/chat/completions") -> None:
        super().__init__(model, path)

    def build_body(self, prompt: str, params: Mapping[str, Any], stop: list[str], stream: bool) -> dict[str, Any]:
        body = self._common_body(params, stop, stream)
        body["messages"] = [{"role": "user", "content": prompt}]
        return body

    def _text_of(self, choice: Mapping[str, Any], stream: bool) -> Any:
        message = choice.get("delta" if stream else "message")
        return message.get("content") if isinstance(message, Mapping) else None


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
