"""The `HuggingFaceAPIGenerator` component: prompt in, text out, from any Hugging Face inference API."""

from __future__ import annotations

import asyncio
import copy
import importlib
import threading
import warnings
from typing import TYPE_CHECKING, Any

from haystack import component, default_from_dict, default_to_dict
from haystack.dataclasses import ComponentInfo, StreamingCallbackT, select_streaming_callback
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
from ._core import ClientCore
from ._generation import GenerationRequest
from ._sync import SyncClient

if TYPE_CHECKING:
    from ._async import AsyncClient

#: The serialized type Haystack 2.x wrote; pipelines saved with it still load (see `from_dict`).
LEGACY_TYPE = "haystack.components.generators.hugging_face_api.HuggingFaceAPIGenerator"


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
            `chat`; default `auto`), `max_retries` (default 3), `verify` (TLS verification, default True)
            and, for `inference_endpoints`, `scale_up_timeout` (seconds to wait for an endpoint scaled to zero
            to start a replica; default 300, 0 turns the wait off). A `url` must not hold credentials: pass
            them as `token`.
        :param token: The Hugging Face token, sent as `Authorization: Bearer <token>` (a value that has its
            own scheme, such as `Basic ...`, is sent as it is). The default reads `HF_API_TOKEN`
            or `HF_TOKEN` and sends it only to Hugging Face hosts over https (huggingface.co,
            *.huggingface.cloud; not Spaces); any other secret is sent to the configured URL.
        :param generation_kwargs: Generation parameters with TGI's names: `max_new_tokens` (default 512),
            `temperature`, `top_k`, `top_p`, `seed`, `repetition_penalty`, `do_sample`, `stop`, ...
        :param stop_words: Strings that end the reply; it is cut right before the first one.
        :param streaming_callback: Called with each `StreamingChunk` as text arrives; enables streaming.
        """
        if streaming_callback is not None and not callable(streaming_callback):
            raise TypeError("streaming_callback must be callable")
        api_type = _checked_api_type(api_type)
        _check_token(token)
        parse_api_params(api_type, api_params)
        check_generation_kwargs(generation_kwargs, "generation_kwargs")  # before copying: it may not be a dict
        self.api_type = api_type
        self.api_params = copy.deepcopy(api_params)
        if isinstance(self.api_params.get("timeout"), Timeout):  # keep api_params serializable
            self.api_params["timeout"] = self.api_params["timeout"].as_dict()
        self.token = token
        # Only a default the user did not choose may give way to a server's smaller limit (`Route.fitted`).
        self._default_max_new_tokens = not (generation_kwargs or {}).get("max_new_tokens")
        self.generation_kwargs = copy.deepcopy(generation_kwargs) if generation_kwargs else {}
        self.generation_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        self.stop_words = check_stop_words(stop_words)
        self.streaming_callback = streaming_callback

        self._checked_init_kwargs = (
            copy.deepcopy(self.generation_kwargs),
            check_generation_kwargs(self.generation_kwargs, "generation_kwargs"),
        )
        self._open_connection()

    def _open_connection(self) -> None:
        """The clients of the current settings. No I/O here: the server is contacted by warm_up() or a run."""
        self._connection = _Connection(self.api_type, self.api_params, self.token)
        self._connection_lock = threading.Lock()
        self._retired: list[_Connection] = []  # of settings changed since: closed by close() / close_async()

    def _current(self) -> _Connection:
        """
        The clients of the settings as they are now: what `to_dict()` writes is what a run uses. Changing
        `api_type`, `api_params` or `token` after `__init__` takes effect at the next call, checked as in
        `__init__` (a `ValueError` / `TypeError` naming the parameter), on new connections.
        """
        connection = self._connection
        if connection.serves(self.api_type, self.api_params, self.token):
            return connection
        with self._connection_lock:
            connection = self._connection
            if not connection.serves(self.api_type, self.api_params, self.token):
                api_type = _checked_api_type(self.api_type)
                _check_token(self.token)
                self._retired.append(connection)
                connection = self._connection = _Connection(api_type, self.api_params, self.token)
        return connection

    # --- copies and pickles ----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The settings, without connections: a copy (or an unpickled one) connects on its own, lazily."""
        state = dict(self.__dict__)
        for name in ("_connection", "_connection_lock", "_retired"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_connection()

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
        """
        Contacts the server once to choose the protocol and route (otherwise the first run does). Cheap after
        the first time: Haystack calls it at every `Pipeline.run`.
        """
        self._current().sync.warm_up()

    async def warm_up_async(self) -> None:
        """The async `warm_up`, which Haystack calls at every `Pipeline.run_async`; never blocks the event loop."""
        await (await self._async_client(self._current())).warm_up()

    def close(self) -> None:
        """
        Closes the connections of sync runs (and forgets those of event loops closed since). The generator
        reconnects if used again. In async code, use `await close_async()` on the loop that ran the requests.
        """
        for connection in self._connections():
            connection.sync.close()
            if connection.async_client is not None:
                connection.async_client.forget_closed_loops()

    async def close_async(self) -> None:
        """Closes the connections of sync runs and of runs on the running event loop (`Pipeline.close_async`)."""
        for connection in self._connections():
            connection.sync.close()
            if connection.async_client is not None:
                await connection.async_client.close()

    def _connections(self) -> list[_Connection]:
        """The current connection and those of settings changed since (forgotten once closed)."""
        with self._connection_lock:
            retired, self._retired = self._retired, []
        return [self._connection, *retired]

    async def aclose(self) -> None:
        """Same as `close_async`."""
        await self.close_async()

    def __enter__(self) -> HuggingFaceAPIGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> HuggingFaceAPIGenerator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_async()

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
        :returns: `replies`: the generated texts, one unless `generation_kwargs["n"]` asks for more; `meta`: the
            metadata of each (`model`, `finish_reason`, `server_finish_reason`, `usage`, `engine`, `protocol`,
            `route`; `completion_start_time` when streaming, `tokens` and `prefill_tokens` when asked for,
            `request_usage` for several replies of one request; see README "Outputs").
        :raises HuggingFaceAPIError: (a subclass) when the server cannot be reached or answers with an error.
        """
        request = self._request(prompt, generation_kwargs)
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=False)
        connection = self._current()
        flow = connection.core.generation(request, callback is not None, self._component_info(callback))
        replies, meta = connection.sync.run(flow, callback)
        return {"replies": replies, "meta": meta}

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
        :raises HuggingFaceAPIError: (a subclass) when the server cannot be reached or answers with an error.
        """
        request = self._request(prompt, generation_kwargs)
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=True)
        connection = self._current()
        client = await self._async_client(connection)
        flow = connection.core.generation(request, callback is not None, self._component_info(callback))
        replies, meta = await client.run(flow, callback)
        return {"replies": replies, "meta": meta}

    # --- helpers ---------------------------------------------------------------------------------

    def _request(self, prompt: Any, runtime_kwargs: dict[str, Any] | None) -> GenerationRequest:
        """
        Validates one call's input and merges it with the init configuration (copies: nothing is mutated). A
        run-time value of None removes the init value of that key for the call: the server's default applies.
        """
        prompt = check_prompt(prompt)
        params = {**self._init_kwargs(), **check_generation_kwargs(runtime_kwargs, "generation_kwargs")}
        for key in [key for key, value in (runtime_kwargs or {}).items() if value is None]:
            params.pop(key, None)
        stop_words = merge_stop_words(
            check_stop_words(self.stop_words), params.pop("stop_sequences", None), params.pop("stop", None)
        )
        return_full_text = bool(params.pop("return_full_text", False))
        default_max_new_tokens = self._default_max_new_tokens and params.get("max_new_tokens") == DEFAULT_MAX_NEW_TOKENS
        return GenerationRequest(prompt, params, stop_words, return_full_text, default_max_new_tokens)

    def _init_kwargs(self) -> dict[str, Any]:
        """The init `generation_kwargs`, checked; checked again only when someone changed the attribute."""
        source, checked = self._checked_init_kwargs
        if source != self.generation_kwargs:
            checked = check_generation_kwargs(self.generation_kwargs, "generation_kwargs")
            self._checked_init_kwargs = (copy.deepcopy(self.generation_kwargs), checked)
        return checked

    def _component_info(self, callback: Any) -> ComponentInfo | None:
        """Who the streamed chunks come from (Haystack's `StreamingChunk.component_info`)."""
        return ComponentInfo.from_component(self) if callback is not None else None

    @staticmethod
    async def _async_client(connection: _Connection) -> AsyncClient:
        """The async client, made at first async use; its module (aiohttp, ~90 ms) is imported off the loop."""
        client = connection.async_client
        if client is None:
            module = await asyncio.to_thread(importlib.import_module, f"{__package__}._async")
            client = connection.make_async_client(module.AsyncClient)
        return client


def _checked_api_type(api_type: Any) -> HFGenerationAPIType:
    if isinstance(api_type, str):
        return HFGenerationAPIType.from_str(api_type)
    if not isinstance(api_type, HFGenerationAPIType):
        raise TypeError(f"api_type must be an HFGenerationAPIType or a string, got {type(api_type).__name__}")
    return api_type


def _check_token(token: Any) -> None:
    if token is not None and not isinstance(token, Secret):
        raise TypeError("token must be a haystack.utils.Secret (e.g. Secret.from_env_var('HF_TOKEN')) or None")


class _Connection:
    """The core and clients of one snapshot of the settings that `to_dict()` writes (api_type, api_params, token)."""

    def __init__(self, api_type: Any, api_params: Any, token: Secret | None) -> None:
        api_type = _checked_api_type(api_type)
        self._snapshot = (api_type, copy.deepcopy(api_params), token)
        self.core = ClientCore(parse_api_params(api_type, api_params), token)
        self.sync = SyncClient(self.core)
        self.async_client: AsyncClient | None = None  # made at first async use (it imports aiohttp)
        self._lock = threading.Lock()

    def serves(self, api_type: Any, api_params: Any, token: Any) -> bool:
        """Whether these settings are the ones this connection was made for."""
        snapshot = self._snapshot
        same_type = api_type is snapshot[0] or api_type == snapshot[0].value  # the enum, or its name
        return token is snapshot[2] and same_type and api_params == snapshot[1]

    def make_async_client(self, cls: type[AsyncClient]) -> AsyncClient:
        with self._lock:
            if self.async_client is None:
                self.async_client = cls(self.core)
            return self.async_client


# Pipelines saved by Haystack 2.x name the old module; registering the alias lets them load once this
# package is imported (from_dict migrates their content).
component.registry[LEGACY_TYPE] = HuggingFaceAPIGenerator

__all__ = ["HuggingFaceAPIGenerator"]
