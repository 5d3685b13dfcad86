"""The `HuggingFaceAPIGenerator` component: prompt in, text out, from any Hugging Face inference API."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from haystack import component, default_from_dict, default_to_dict
from haystack.dataclasses import ComponentInfo, StreamingCallbackT, StreamingChunk, select_streaming_callback
from haystack.utils import Secret, deserialize_callable, deserialize_secrets_inplace, serialize_callable

from ._config import (
    DEFAULT_MAX_NEW_TOKENS,
    HFGenerationAPIType,
    Timeout,
    check_generation_kwargs,
    check_prompt,
    check_stop_words,
    merge_stop_words,
    parse_api_params,
)
from ._generation import GenerationRequest, StreamState, reply_from_generation
from ._protocols import Protocol
from ._retry import RetryPolicy, acall_with_retries, call_with_retries
from ._routing import (
    Probe,
    ProbeAnswer,
    Resolution,
    Route,
    hub_url,
    resolve_provider_route,
    resolve_url_route,
)
from ._transport import HTTPTransport, is_hugging_face_url
from .errors import APIStatusError, HuggingFaceAPIError, ResponseFormatError

logger = logging.getLogger(__name__)

#: The serialized type Haystack 2.x wrote; pipelines saved with it still load (see `from_dict`).
LEGACY_TYPE = "haystack.components.generators.hugging_face_api.HuggingFaceAPIGenerator"

# The default token comes from the ambient environment; it is only sent to Hugging Face's own hosts.
_AMBIENT_TOKEN_VARS = frozenset({"HF_API_TOKEN", "HF_TOKEN"})


def _is_ambient(token: Secret | None) -> bool:
    if token is None or token.type.value != "env_var":
        return False
    return set(token.to_dict()["env_vars"]) <= _AMBIENT_TOKEN_VARS


def _failed_probe(error: APIStatusError | ResponseFormatError) -> ProbeAnswer:
    """
    Client errors and non-JSON bodies answer a probe (a vLLM server has no /info). A busy or failing
    server (408, 429, 5xx) answers nothing yet: that error is raised, so it is retried.
    """
    if RetryPolicy.is_transient(error):
        raise error
    if isinstance(error, APIStatusError):
        return ProbeAnswer(error.status_code or 0, error=error)
    return ProbeAnswer(200)


@component
class HuggingFaceAPIGenerator:
    """
    Generates text from a prompt through Hugging Face inference APIs and compatible servers.

    Works with Text Generation Inference (TGI) servers, Inference Endpoints (TGI, vLLM, SGLang,
    llama.cpp, any OpenAI-compatible engine) and Inference Providers (the former serverless API).

    Usage example with a self-hosted server:
    ```python
    from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

    generator = HuggingFaceAPIGenerator(api_type="text_generation_inference",
                                        api_params={"url": "http://localhost:8080"})
    result = generator.run(prompt="What's Natural Language Processing?")
    print(result["replies"][0])
    ```
    """

    # Public path: the serialized type (and YAML `type:`) is the package's, not this private module's.
    __module__ = "haystack_integrations.generators.hugging_face_api"

    def __init__(
        self,
        api_type: HFGenerationAPIType | str,
        api_params: dict[str, Any],
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        generation_kwargs: dict[str, Any] | None = None,
        stop_words: list[str] | None = None,
        streaming_callback: StreamingCallbackT | None = None,
    ) -> None:
        """
        Creates the generator. Makes no network request: the server is contacted by `warm_up()` or the
        first run.

        :param api_type: The API to use: `text_generation_inference` (a server you run),
            `inference_endpoints` (a Hugging Face Inference Endpoint) or `serverless_inference_api`
            (Inference Providers, by model id).
        :param api_params: `url` (required for the first two api types: the server's base URL, with or
            without `/v1`), `model` (required for serverless: a Hub model id, optionally `org/name:provider`;
            for URL-based types it overrides the model name sent to OpenAI-compatible servers), and
            optionally `provider` (serverless: an Inference Provider name or `auto`), `bill_to`
            (an organization to bill), `timeout` (seconds, or `{"connect": s, "read": s}`; default
            10 s / 120 s), `headers` (extra HTTP headers), `protocol` (`auto`, `tgi`, `completions`,
            `chat`; default `auto`), `max_retries` (default 3) and `verify` (TLS verification, default True).
        :param token: The Hugging Face token, sent as `Authorization: Bearer <token>` (a value that has its
            own scheme, such as `Basic ...`, is sent as it is). The default reads `HF_API_TOKEN`
            or `HF_TOKEN` and sends it only to Hugging Face hosts; any other secret is sent to the
            configured URL.
        :param generation_kwargs: Generation parameters with TGI's names: `max_new_tokens` (default 512),
            `temperature`, `top_k`, `top_p`, `seed`, `repetition_penalty`, `do_sample`, `stop`, ...
        :param stop_words: Strings that end the reply; it is cut right before the first one.
        :param streaming_callback: Called with each `StreamingChunk` as text arrives; enables streaming.
        """
        if isinstance(api_type, str):
            api_type = HFGenerationAPIType.from_str(api_type)
        elif not isinstance(api_type, HFGenerationAPIType):
            raise TypeError(f"api_type must be an HFGenerationAPIType or a string, got {type(api_type).__name__}")
        if token is not None and not isinstance(token, Secret):
            raise TypeError("token must be a haystack.utils.Secret (e.g. Secret.from_env_var('HF_TOKEN')) or None")
        if streaming_callback is not None and not callable(streaming_callback):
            raise TypeError("streaming_callback must be callable")

        self._settings = parse_api_params(api_type, api_params)
        check_generation_kwargs(generation_kwargs, "generation_kwargs")
        self.api_type = api_type
        self.api_params = copy.deepcopy(api_params)
        if isinstance(self.api_params.get("timeout"), Timeout):  # keep api_params serializable
            self.api_params["timeout"] = self.api_params["timeout"].as_dict()
        self.token = token
        self.generation_kwargs = copy.deepcopy(generation_kwargs) if generation_kwargs else {}
        self.generation_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        self.stop_words = check_stop_words(stop_words)
        self.streaming_callback = streaming_callback

        self._retry = RetryPolicy(max_retries=self._settings.max_retries)
        self._route: Route | None = None
        self._transports: dict[str, HTTPTransport] = {}
        self._lock = threading.Lock()  # guards the transports
        self._route_lock = threading.Lock()  # one route resolution at a time, from any thread
        self._async_route_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    # --- serialization ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """
        Serializes the component.

        :returns: The dictionary; the token as its env-var description (token secrets refuse to serialize).
        """
        return default_to_dict(
            self,
            api_type=self.api_type.value,
            api_params=copy.deepcopy(self.api_params),
            token=self.token.to_dict() if self.token else None,
            generation_kwargs=copy.deepcopy(self.generation_kwargs),
            stop_words=list(self.stop_words) if self.stop_words is not None else None,
            streaming_callback=serialize_callable(self.streaming_callback) if self.streaming_callback else None,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HuggingFaceAPIGenerator:
        """
        Deserializes the component, also from what Haystack 2.x saved.

        Haystack 2.x wrote the type `haystack.components.generators.hugging_face_api.HuggingFaceAPIGenerator`
        and kept stop words in `generation_kwargs["stop_sequences"]`; both are migrated, with a warning.

        :param data: The dictionary (not modified).
        :returns: The component.
        """
        data = copy.deepcopy(data)
        params = data.setdefault("init_parameters", {})
        if data.get("type") == LEGACY_TYPE:
            warnings.warn(
                f"Loading a pipeline saved by Haystack 2.x ({LEGACY_TYPE}). Save it again, or change its type to "
                "'haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator' and move "
                "generation_kwargs.stop_sequences to stop_words.",
                DeprecationWarning,
                stacklevel=2,
            )
            data["type"] = f"{cls.__module__}.{cls.__name__}"
            generation_kwargs = params.get("generation_kwargs") or {}
            legacy_stops = generation_kwargs.pop("stop_sequences", None)
            params["stop_words"] = merge_stop_words(params.get("stop_words"), legacy_stops) or None
        deserialize_secrets_inplace(params, keys=["token"])
        if params.get("streaming_callback"):
            params["streaming_callback"] = deserialize_callable(params["streaming_callback"])
        return default_from_dict(cls, data)

    # --- lifecycle -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Contacts the server once to choose the protocol and route (otherwise done by the first run)."""
        self._ensure_route()

    def close(self) -> None:
        """
        Closes the connection pools of sync runs. The generator reconnects if used again. In async code,
        use `await aclose()` (or `async with`) on the loop that ran the requests.
        """
        with self._lock:
            transports = list(self._transports.values())
        for transport in transports:
            transport.close()

    async def aclose(self) -> None:
        """Closes the connection pools from async code."""
        with self._lock:
            transports = list(self._transports.values())
        for transport in transports:
            await transport.aclose()

    def __enter__(self) -> HuggingFaceAPIGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> HuggingFaceAPIGenerator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- run -------------------------------------------------------------------------------------

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(
        self,
        prompt: str,
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Generates a reply to the prompt.

        :param prompt: The prompt.
        :param streaming_callback: Called with each `StreamingChunk`; overrides the one given at init.
        :param generation_kwargs: Generation parameters for this call; they override the init ones key by key.
        :returns: `replies`: a list with the generated text; `meta`: a list with its metadata (`model`,
            `finish_reason`, `server_finish_reason`, `usage`, `protocol`, `route`, and
            `completion_start_time` when streaming).
        """
        request = self._request(prompt, generation_kwargs)
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=False)
        route = self._ensure_route()
        try:
            reply, meta = self._generate(route, request, callback)
        except APIStatusError as error:
            route = self._fall_back(route, error)
            reply, meta = self._generate(route, request, callback)
        self._set_route(route.confirmed())
        return {"replies": [reply], "meta": [meta]}

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    async def run_async(
        self,
        prompt: str,
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Asynchronously generates a reply to the prompt; same parameters and outputs as `run`.

        :param prompt: The prompt.
        :param streaming_callback: Called (and awaited if async) with each `StreamingChunk`.
        :param generation_kwargs: Generation parameters for this call; they override the init ones key by key.
        :returns: `replies` and `meta`, as `run`.
        """
        request = self._request(prompt, generation_kwargs)
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=True)
        route = await self._aensure_route()
        try:
            reply, meta = await self._agenerate(route, request, callback)
        except APIStatusError as error:
            route = self._fall_back(route, error)
            reply, meta = await self._agenerate(route, request, callback)
        self._set_route(route.confirmed())
        return {"replies": [reply], "meta": [meta]}

    # --- request preparation ---------------------------------------------------------------------

    def _request(self, prompt: Any, runtime_kwargs: dict[str, Any] | None) -> GenerationRequest:
        """Validates one call's input and merges it with the init configuration."""
        prompt = check_prompt(prompt)
        params = {
            **check_generation_kwargs(self.generation_kwargs, "generation_kwargs"),
            **check_generation_kwargs(runtime_kwargs, "generation_kwargs"),
        }
        stop_words = merge_stop_words(self.stop_words, params.pop("stop_sequences", None), params.pop("stop", None))
        return_full_text = bool(params.pop("return_full_text", False))
        return GenerationRequest(prompt, params, stop_words, return_full_text)

    @staticmethod
    def _check_against_route(route: Route, request: GenerationRequest) -> None:
        route.protocol.check_parameters(request.params)
        if route.max_stop_sequences is not None and len(request.stop_words) > route.max_stop_sequences:
            raise ValueError(
                f"stop_words: {len(request.stop_words)} stop words (stop_words plus generation_kwargs['stop']) "
                f"but the server accepts at most {route.max_stop_sequences}"
            )
        max_new_tokens = request.params.get("max_new_tokens")
        limit = route.max_total_tokens
        if limit is not None and max_new_tokens is not None and max_new_tokens >= limit:
            raise ValueError(
                f"generation_kwargs['max_new_tokens'] is {max_new_tokens} but the server's max_total_tokens "
                f"(prompt plus reply) is {limit}"
            )

    # --- routing ---------------------------------------------------------------------------------

    def _transport(self, base_url: str) -> HTTPTransport:
        with self._lock:
            transport = self._transports.get(base_url)
            if transport is None:
                transport = HTTPTransport(
                    base_url, self._headers_for(base_url), self._settings.timeout, self._settings.verify
                )
                self._transports[base_url] = transport
            return transport

    def _token_value(self) -> str | None:
        value = self.token.resolve_value() if self.token else None
        return value if isinstance(value, str) and value else None

    def _headers_for(self, base_url: str) -> dict[str, str]:
        headers = dict(self._settings.headers)
        token = self._token_value()
        if token:
            if _is_ambient(self.token) and not is_hugging_face_url(base_url):
                logger.info(
                    "Not sending the token from HF_TOKEN/HF_API_TOKEN to %s (not a Hugging Face host); pass "
                    "token=Secret.from_env_var('YOUR_VAR') to send a token there",
                    base_url,
                )
            else:
                # A value with a scheme ("Basic ...", "Bearer ...") is sent as it is; a bare token is a bearer token.
                headers["Authorization"] = token if " " in token.strip() else f"Bearer {token}"
        if self._settings.bill_to:
            headers["X-HF-Bill-To"] = self._settings.bill_to
        return headers

    def _resolution(self) -> tuple[Resolution, dict[str, str]]:
        if self._settings.url is not None:
            resolution = resolve_url_route(self._settings)
            return resolution, {"server": self._settings.url}
        return resolve_provider_route(self._settings, self._token_value() is not None), {"hub": hub_url()}

    @staticmethod
    def _fall_back(route: Route, error: APIStatusError) -> Route:
        """
        The fallback route when the first request found no route (404/405); otherwise re-raises `error`.
        It is kept only once a request through it succeeds.
        """
        if route.fallback is None or error.status_code not in (404, 405):
            raise error
        return route.fallen_back()

    def _set_route(self, route: Route) -> Route:
        self._route = route
        return route

    def _ensure_route(self) -> Route:
        route = self._route
        if route is not None:
            return route
        with self._route_lock:
            if self._route is not None:
                return self._route
            resolution, bases = self._resolution()

            def probe(step: Probe) -> ProbeAnswer:
                transport = self._transport(bases[step.target])

                def attempt() -> ProbeAnswer:
                    try:
                        return ProbeAnswer(200, transport.request_json("GET", step.path)[0])
                    except (APIStatusError, ResponseFormatError) as error:
                        return _failed_probe(error)

                return call_with_retries(self._retry, attempt, str)

            try:
                step = next(resolution)
                while True:
                    step = resolution.send(probe(step))
            except StopIteration as done:
                return self._set_route(done.value)

    async def _aensure_route(self) -> Route:
        route = self._route
        if route is not None:
            return route
        lock = self._async_route_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            if self._route is not None:
                return self._route
            resolution, bases = self._resolution()

            async def probe(step: Probe) -> ProbeAnswer:
                transport = self._transport(bases[step.target])

                async def attempt() -> ProbeAnswer:
                    try:
                        return ProbeAnswer(200, (await transport.arequest_json("GET", step.path))[0])
                    except (APIStatusError, ResponseFormatError) as error:
                        return _failed_probe(error)

                return await acall_with_retries(self._retry, attempt, str)

            try:
                step = next(resolution)
                while True:
                    step = resolution.send(await probe(step))
            except StopIteration as done:
                return self._set_route(done.value)

    # --- generation ------------------------------------------------------------------------------

    def _call(self, route: Route, request: GenerationRequest, stream: bool) -> _Call:
        self._check_against_route(route, request)
        protocol = route.protocol
        transport = self._transport(route.base_url)
        body = protocol.build_body(request.prompt, request.params, request.stop_words, stream=stream)
        path = protocol.path(stream)
        return _Call(protocol, transport, path, body, request, route.model, f"POST {transport.base_url}{path}")

    def _generate(
        self, route: Route, request: GenerationRequest, callback: Callable[[StreamingChunk], Any] | None
    ) -> tuple[str, dict[str, Any]]:
        call = self._call(route, request, stream=callback is not None)
        if callback is None:
            return call_with_retries(
                self._retry, lambda: call.reply(*call.transport.request_json("POST", call.path, call.body)), lambda: ""
            )
        state = call.stream_state(ComponentInfo.from_component(self))

        def streamed() -> tuple[str, dict[str, Any]]:
            state.reset()
            try:
                with call.transport.stream_lines(call.path, call.body) as lines:
                    for line in lines:
                        if (chunk := state.feed_line(line)) is not None:
                            callback(chunk)
                        if state.done:
                            break
                    else:
                        if (chunk := state.feed_end()) is not None:
                            callback(chunk)
            except HuggingFaceAPIError:
                if not state.complete:
                    raise  # otherwise the reply is whole; only the stream's tail broke
            callback(state.final_chunk())
            return state.delivered, state.meta()

        return call_with_retries(self._retry, streamed, lambda: state.delivered)

    async def _agenerate(
        self, route: Route, request: GenerationRequest, callback: Callable[[StreamingChunk], Any] | None
    ) -> tuple[str, dict[str, Any]]:
        call = self._call(route, request, stream=callback is not None)
        if callback is None:

            async def one_piece() -> tuple[str, dict[str, Any]]:
                return call.reply(*await call.transport.arequest_json("POST", call.path, call.body))

            return await acall_with_retries(self._retry, one_piece, lambda: "")
        state = call.stream_state(ComponentInfo.from_component(self))

        async def deliver(chunk: StreamingChunk) -> None:
            result = callback(chunk)
            if inspect.isawaitable(result):
                await result

        async def streamed() -> tuple[str, dict[str, Any]]:
            state.reset()
            try:
                async with call.transport.astream_lines(call.path, call.body) as lines:
                    async for line in lines:
                        if (chunk := state.feed_line(line)) is not None:
                            await deliver(chunk)
                        if state.done:
                            break
                    else:
                        if (chunk := state.feed_end()) is not None:
                            await deliver(chunk)
            except HuggingFaceAPIError:
                if not state.complete:
                    raise  # otherwise the reply is whole; only the stream's tail broke
            await deliver(state.final_chunk())
            return state.delivered, state.meta()

        return await acall_with_retries(self._retry, streamed, lambda: state.delivered)


@dataclass(frozen=True, slots=True)
class _Call:
    """One generation request, ready to send: what sync and async runs share."""

    protocol: Protocol
    transport: HTTPTransport
    path: str
    body: dict[str, Any]
    request: GenerationRequest
    model: str | None
    where: str

    def reply(self, payload: Any, headers: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """The reply and meta of a one-piece answer."""
        generation = self.protocol.parse_generation(payload, headers.get("x-prompt-tokens"))
        return reply_from_generation(generation, self.request, self.protocol, self.model, self.where)

    def stream_state(self, component_info: ComponentInfo) -> StreamState:
        """A fresh follower for the streamed answer."""
        return StreamState(self.request, self.protocol, self.model, component_info, self.where)


# Pipelines saved by Haystack 2.x name the old module; registering the alias lets them load once this
# package is imported (from_dict migrates their content).
component.registry[LEGACY_TYPE] = HuggingFaceAPIGenerator

__all__ = ["HuggingFaceAPIGenerator"]
