"""
Hayhooks wrapper that serves `hf_generate.yml` (beside this file).

- `POST /hf_generate/run` takes `{"prompt", "generation_kwargs"?}` and answers `{"replies", "meta"}`;
- `POST /v1/chat/completions` with `"model": "hf_generate"` (plain, or streamed with `"stream": true`) is what
  OpenAI clients, Open WebUI and Hayhooks' own Chainlit UI (`hayhooks run --with-chainlit`) talk to.

The YAML is a plain Haystack pipeline. The wrapper adds what a YAML-only deployment cannot do: the server URL comes
from the environment (`HF_API_GENERATOR_URL`), `generation_kwargs` is optional in `/run` requests, and OpenAI requests
are translated into the generator's prompt and `generation_kwargs`.

Errors a client causes (a parameter the generator cannot honour, a bad value) are HTTP 400, errors of the model server
behind the pipeline are 502 / 503 / 504, with the generator's message. On the OpenAI route the exception's `detail` is
an OpenAI error object, `{"error": {"message", "type", "param", "code"}}`: `examples/hayhooks/serve.py` sends it as the
response body itself, as OpenAI does; plain `hayhooks run` wraps it as `{"detail": {"error": {...}}}`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from fastapi import HTTPException
from fastapi_openai_compat import ChatCompletion, Choice, Message
from hayhooks import BasePipelineWrapper, async_streaming_generator, log
from haystack import Pipeline
from haystack.core.errors import PipelineRuntimeError
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    HuggingFaceAPIError,
    OverloadedError,
    ValidationError,
)

URL_ENV = "HF_API_GENERATOR_URL"
PIPELINE_FILE = Path(__file__).with_name("hf_generate.yml")
GENERATOR = "llm"

# OpenAI request fields that become the generator's `generation_kwargs` (TGI names). `top_k` and
# `repetition_penalty` are not OpenAI's, but vLLM, SGLang and TGI accept them on this route, and so do we.
_GENERATION_KWARGS = {
    "max_completion_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
}
# Fields that change nothing in the reply (`stream` selects the transport; the rest is bookkeeping).
_IGNORED = {"model", "messages", "stream", "stream_options", "user", "metadata", "parallel_tool_calls"}
# OpenAI features this pipeline has no equivalent for: accepted only with their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "presence_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
}


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
) -> HTTPException:
    """
    An HTTPException whose detail is an OpenAI error object.

    :param status: HTTP status.
    :param message: What went wrong, for people.
    :param param: The request field at fault, if any.
    :param code: A short machine-readable reason.
    :param kind: OpenAI's `type`; `invalid_request_error` for 4xx, `api_error` otherwise.
    """
    kind = kind or ("invalid_request_error" if status < 500 else "api_error")
    return HTTPException(
        status_code=status, detail={"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def http_error(error: BaseException, params: Mapping[str, str] | None = None) -> HTTPException | None:
    """
    The HTTP error for a failure of the pipeline run, or None for an unexpected failure (left to Hayhooks: a 500).

    :param error: What the pipeline raised (Haystack wraps a component's exception in PipelineRuntimeError).
    :param params: Generation kwarg names mapped to the request field they came from, to name the field at fault.
    """
    cause = error.__cause__ if isinstance(error, PipelineRuntimeError) and error.__cause__ else error
    message = str(cause)  # the generator's messages name the parameter and never contain a token
    if isinstance(cause, HuggingFaceAPIError):
        if isinstance(cause, APITimeoutError):
            return openai_error(504, f"The model server did not answer in time: {message}", code="model_server_timeout")
        if isinstance(cause, APIConnectionError):
            return openai_error(502, f"The model server is unreachable: {message}", code="model_server_unreachable")
        if isinstance(cause, (BadRequestError, ValidationError)):
            return openai_error(400, f"The model server refused the request: {message}", code="model_server_refused")
        if isinstance(cause, OverloadedError):
            return openai_error(503, f"The model server is overloaded: {message}", code="model_server_overloaded")
        return openai_error(502, f"The model server failed: {message}", code="model_server_error")
    if isinstance(cause, (ValueError, TypeError)):
        param = next((field for name, field in (params or {}).items() if name in message), None)
        return openai_error(400, message, param=param, code="invalid_value")
    return None


def _detail_text(error: HTTPException) -> str:
    detail = error.detail
    if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
        return str(detail["error"]["message"])
    return str(detail)


def prompt_from_messages(messages: list[dict[str, Any]]) -> str:
    """
    The text of the last user message.

    :param messages: OpenAI chat messages.
    :raises HTTPException: 400 if there is no user message, or its content is not text.
    """
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise openai_error(
                        400, f"Only text content is supported, not {kind!r}", param="messages", code="unsupported_value"
                    )
                texts.append(part["text"])
            return "\n".join(texts)
        raise openai_error(400, "The last user message has no text content", param="messages", code="invalid_value")
    raise openai_error(400, "messages has no user message (its last one is the prompt)", param="messages")


def generation_kwargs_from_body(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """
    Translate an OpenAI request's sampling fields into the generator's `generation_kwargs`.

    :param body: The OpenAI request.
    :returns: The generation kwargs, and for each of them the request field it came from.
    :raises HTTPException: 400 naming the first field this pipeline cannot honour.
    """
    kwargs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field, value in body.items():
        if field in _IGNORED or value is None:
            continue
        if field in _NEUTRAL:
            if value not in _NEUTRAL[field]:
                raise openai_error(
                    400,
                    f"{field}={value!r} is not supported by this pipeline (one prompt in, one text out)",
                    param=field,
                    code="unsupported_value",
                )
            continue
        name = _GENERATION_KWARGS.get(field)
        if name is None:
            raise openai_error(400, f"Unsupported parameter: {field!r}", param=field, code="unsupported_parameter")
        if field == "stop":
            value = [value] if isinstance(value, str) else value
            if not (isinstance(value, list) and all(isinstance(word, str) for word in value)):
                raise openai_error(400, "stop must be a string or a list of strings", param=field, code="invalid_type")
            if not value:
                continue
        if name in kwargs and kwargs[name] != value:
            raise openai_error(400, f"{field} and {sources[name]} disagree; send one", param=field)
        kwargs[name] = value
        sources[name] = field
    return kwargs, sources


class PipelineWrapper(BasePipelineWrapper):
    """Prompt in, text out, through HuggingFaceAPIGenerator."""

    def setup(self) -> None:
        """Load the YAML pipeline, pointing its generator at `$HF_API_GENERATOR_URL` when that is set."""
        definition = yaml.safe_load(PIPELINE_FILE.read_text(encoding="utf-8"))
        url = os.environ.get(URL_ENV, "").strip()
        if url:
            definition["components"][GENERATOR]["init_parameters"]["api_params"]["url"] = url
        # Hayhooks' `inputs` / `outputs` sections are for `hayhooks pipeline deploy-yaml`, not for Haystack.
        definition.pop("inputs", None)
        definition.pop("outputs", None)
        self.pipeline = Pipeline.from_dict(definition)

    async def run_api_async(self, prompt: str, generation_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Generate a reply to a prompt.

        :param prompt: The prompt (sent as one user message: the YAML's protocol is `chat`).
        :param generation_kwargs: Overrides for this request, e.g. {"max_new_tokens": 32, "stop": ["\\n"]}.
        :returns: `replies` (one string, or `n` of them) and `meta` (one each: model, finish_reason, engine, ...).
        """
        inputs: dict[str, Any] = {"prompt": prompt}
        if generation_kwargs:
            inputs["generation_kwargs"] = generation_kwargs
        output = await self._run(inputs)
        # Hayhooks' own routes answer errors as {"detail": "..."}: keep that convention here.
        return {"replies": output["replies"], "meta": output["meta"]}

    async def run_chat_completion_async(
        self, model: str, messages: list[dict[str, Any]], body: dict[str, Any]
    ) -> ChatCompletion | AsyncGenerator[ChatCompletion, None]:
        """
        Answer an OpenAI chat completion request (model `hf_generate`), plain or streamed.

        The pipeline is prompt in, text out: the **last user message is the prompt**. Earlier messages (the
        conversation so far) and system messages are not sent to the model, so every turn is answered on its own; the
        model server's chat template supplies the model's default system prompt. `max_tokens` (or
        `max_completion_tokens`), `temperature`, `top_p`, `stop` (a string or a list), `seed`, `frequency_penalty`,
        `top_k` and `repetition_penalty` become this request's `generation_kwargs`, over the YAML's. Any other field
        the generator cannot honour (`n` > 1, `logprobs`, `tools`, a JSON `response_format`, unknown fields) is an
        HTTP 400 naming it, before anything is generated.

        :param model: The pipeline's name (`hf_generate`).
        :param messages: The OpenAI messages.
        :param body: The whole OpenAI request.
        :returns: A `ChatCompletion`, or for `"stream": true` the chunks to send as server-sent events.
        """
        prompt = prompt_from_messages(messages)
        kwargs, sources = generation_kwargs_from_body(body)
        inputs: dict[str, Any] = {"prompt": prompt}
        if kwargs:
            inputs["generation_kwargs"] = kwargs
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return await self._stream(inputs, model, sources, include_usage=bool(options.get("include_usage")))
        output = await self._run(inputs, sources)
        meta = output["meta"][0]
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            object="chat.completion",
            created=int(time.time()),
            model=model,
            choices=[
                Choice(
                    index=0,
                    message=Message(role="assistant", content=output["replies"][0]),
                    finish_reason=meta.get("finish_reason") or "stop",
                )
            ],
            usage=meta.get("usage"),
        )

    async def _run(self, inputs: dict[str, Any], sources: Mapping[str, str] | None = None) -> dict[str, Any]:
        assert self.pipeline is not None  # set by setup(), which Hayhooks calls before serving
        try:
            result = await self.pipeline.run_async({GENERATOR: inputs})
        except Exception as error:
            failure = http_error(error, sources)
            if failure is None:
                raise
            if sources is None:  # Hayhooks' /run: a plain message in `detail`
                failure = HTTPException(status_code=failure.status_code, detail=_detail_text(failure))
            raise failure from error
        output: dict[str, Any] = result[GENERATOR]
        return output

    async def _stream(
        self, inputs: dict[str, Any], model: str, sources: Mapping[str, str], *, include_usage: bool
    ) -> AsyncGenerator[ChatCompletion, None]:
        """
        Start the pipeline and wait for its first chunk before answering.

        Until the first token, nothing has been sent, so a failure (a parameter the protocol cannot honour, the model
        server being down) is still an HTTP error status. After it, the response is a 200 stream, and a failure
        becomes a last event `{"error": {...}}` (which OpenAI clients raise as an error).
        """
        chunks = async_streaming_generator(self.pipeline, pipeline_run_args={GENERATOR: inputs})
        first: StreamingChunk | None = None
        try:
            item = await anext(chunks)
            first = item if isinstance(item, StreamingChunk) else None
        except StopAsyncIteration:
            pass
        except Exception as error:
            failure = http_error(error, sources)
            if failure is None:
                raise
            raise failure from error
        except BaseException:  # cancelled while waiting: stop the generation
            await chunks.aclose()
            raise
        return _events(first, chunks, model, include_usage)


async def _events(
    first: StreamingChunk | None, rest: AsyncGenerator[Any, None], model: str, include_usage: bool
) -> AsyncGenerator[ChatCompletion, None]:
    """Every chunk as an OpenAI `chat.completion.chunk` (so Hayhooks adds no `finish_reason` of its own)."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(content: str | None = None, finish_reason: str | None = None, **extra: Any) -> ChatCompletion:
        choices = (
            []
            if extra
            else [Choice(index=0, delta=Message(role="assistant", content=content), finish_reason=finish_reason)]
        )
        return ChatCompletion(
            id=ident, object="chat.completion.chunk", created=created, model=model, choices=choices, **extra
        )

    async def chunks() -> AsyncIterator[Any]:
        if first is not None:
            yield first
        async for item in rest:
            yield item

    usage = None
    try:
        async for chunk in chunks():
            if not isinstance(chunk, StreamingChunk):
                continue
            if chunk.content or chunk.finish_reason:
                yield event(chunk.content, chunk.finish_reason)
            usage = chunk.meta.get("usage") or usage
        if include_usage and usage:
            yield event(usage=usage)
    except Exception as error:  # the reply was cut: tell the client instead of ending the stream as if complete
        failure = http_error(error) or openai_error(500, f"The pipeline failed: {type(error).__name__}")
        log.warning("hf_generate: stream failed after it started: {}", _detail_text(failure))
        yield event(error=failure.detail["error"])  # type: ignore[index]
    finally:
        await rest.aclose()  # on client disconnect too: cancels the pipeline, which closes the model server stream
