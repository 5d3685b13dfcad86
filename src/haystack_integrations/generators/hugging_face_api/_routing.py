"""
Which server, route and protocol a generator uses, decided once (at `warm_up()` or the first run).

The decisions are written as generators that yield the GET requests they need (`Probe`) and receive
the answers (`ProbeAnswer`), so the same logic runs under `run` and `run_async`, and tests drive it by
hand. Which failed probe still answers a question (`answers_probe`) and when a route falls back to
another protocol (`Route.after_failure`) are decided here too.

- URL-based api types: TGI's native routes when `GET /info` answers like TGI; otherwise the
  OpenAI-compatible `/v1/completions` (with `/v1/chat/completions` as a fallback, confirmed by the
  first request), naming the model that `GET /v1/models` lists.
- Serverless: the model's Inference Provider mapping from the Hub picks a provider and a route on
  the router.

The same probes tell which engine answers (`_engines`), kept with the route's protocol: TGI by `/info`,
the OpenAI-compatible engines by how `/v1/models` describes their model (`owned_by`). TGI's `/v1/models`
only hints at TGI; when `/info` was not asked yet (a protocol set by the user), it is asked then. Nothing
else is probed: a server that does not say what it is gets the OpenAI API's parameters only, unless the
user names its engine (`api_params["engine"]`), which also spares the probes that only served to find it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from ._config import APISettings
from ._engines import PROVIDERS, TGI, UNKNOWN, Engine, engine_from_model_card, engine_named, may_be_tgi
from ._generation import GenerationRequest
from ._protocols import ChatProtocol, CompletionsProtocol, Protocol, TGIProtocol
from ._retry import is_transient
from .errors import (
    APIStatusError,
    AuthenticationError,
    EndpointPausedError,
    HuggingFaceAPIError,
    ProviderResolutionError,
    RedirectError,
    ResponseFormatError,
)

DEFAULT_HUB_URL = "https://huggingface.co"
_ROUTER_POLICIES = ("fastest", "cheapest", "preferred")
DEFAULT_ROUTER_URL = "https://router.huggingface.co"


def hub_url() -> str:
    """The Hub's base URL: `HF_ENDPOINT`, as huggingface_hub reads it, or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_URL).rstrip("/")


def router_url() -> str:
    """The Inference Providers router: `HF_ROUTER_URL` or router.huggingface.co."""
    return (os.environ.get("HF_ROUTER_URL") or DEFAULT_ROUTER_URL).rstrip("/")


@dataclass(frozen=True, slots=True)
class Probe:
    """A GET request that a decision needs."""

    target: Literal["server", "hub"]
    path: str


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """The answer: status and decoded JSON (None when not JSON); `error` for error statuses."""

    status: int
    payload: Any = None
    error: HuggingFaceAPIError | None = None


def answers_probe(error: HuggingFaceAPIError) -> bool:
    """
    Whether a failed probe still answers "does this server speak that protocol?": a client error (404 from
    a vLLM server asked for /info) or a body that is not JSON does. A busy or failing server (408, 429, 5xx,
    connection errors) answers nothing yet, so the probe is retried; a redirect, a paused endpoint or a
    refused token is the user's to fix, so it is raised at once rather than read as "no such route".
    """
    if isinstance(error, ResponseFormatError):
        return True
    if not isinstance(error, APIStatusError) or is_transient(error):
        return False
    return not isinstance(error, RedirectError | EndpointPausedError | AuthenticationError)


@dataclass(frozen=True, slots=True)
class Route:
    """Where and how generation requests go."""

    base_url: str
    protocol: Protocol
    #: The model name for meta (the server's, when it told us).
    model: str | None
    #: TGI's limits from /info, checked before sending.
    max_stop_sequences: int | None = None
    max_total_tokens: int | None = None
    #: Tried once if the first request finds no route (404/405): completions → chat.
    fallback: Protocol | None = None
    #: How many requests the server says it serves at once (TGI's /info: `max_batch_size` when set, else
    #: `max_concurrent_requests`): admission's ceiling for it.
    capacity: int | None = None

    @property
    def engine(self) -> Engine:
        """The engine answering this route (its protocol takes parameters as that engine does)."""
        return self.protocol.engine

    def confirmed(self) -> Route:
        """This route, known to work: no fallback any more."""
        return self if self.fallback is None else replace(self, fallback=None)

    def after_failure(self, error: HuggingFaceAPIError) -> Route:
        """
        The route to try when the first request through this one failed with `error`: the fallback protocol
        when the server has no such route (404/405); otherwise `error` is raised. The fallback is kept only
        once a request through it succeeds (see `confirmed`).
        """
        if self.fallback is None or error.status_code not in (404, 405):
            raise error
        return replace(self, protocol=self.fallback, fallback=None)

    def fitted(self, request: GenerationRequest) -> GenerationRequest:
        """
        `request` as this server can take it: the default `max_new_tokens`, when not below the server's
        `max_total_tokens`, is left out (TGI then generates what fits); a value the user chose stays, for
        `check` to refuse.
        """
        limit = self.max_total_tokens
        if not request.default_max_new_tokens or limit is None or request.params.get("max_new_tokens", 0) < limit:
            return request
        return replace(request, params={k: v for k, v in request.params.items() if k != "max_new_tokens"})

    def check(self, params: Mapping[str, Any], stop_words: list[str], stream: bool = False) -> None:
        """
        Raises `ValueError` naming what this route cannot honour (in a streamed request when `stream`): a
        parameter, or too many stop words / tokens.
        """
        self.protocol.check_parameters(params, stream)
        if self.max_stop_sequences is not None and len(stop_words) > self.max_stop_sequences:
            raise ValueError(
                f"stop_words: {len(stop_words)} stop words (stop_words plus generation_kwargs['stop']) "
                f"but the server accepts at most {self.max_stop_sequences}"
            )
        max_new_tokens = params.get("max_new_tokens")
        limit = self.max_total_tokens
        if limit is not None and max_new_tokens is not None and max_new_tokens >= limit:
            raise ValueError(
                f"generation_kwargs['max_new_tokens'] is {max_new_tokens} but the server's max_total_tokens "
                f"(prompt plus reply) is {limit}"
            )


Resolution = Generator[Probe, ProbeAnswer, Route]


def _looks_like_tgi(answer: ProbeAnswer) -> bool:
    info = answer.payload
    return answer.status == 200 and isinstance(info, Mapping) and "model_id" in info and "max_total_tokens" in info


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve_url_route(settings: APISettings, base_url: str) -> Resolution:
    """
    Decides the protocol for `text_generation_inference` and `inference_endpoints` at `base_url` (the
    server, or one of its replicas), and learns the engine.
    """
    requested = settings.protocol
    declared = engine_named(settings.engine) if settings.engine else None
    info: ProbeAnswer | None = None
    if requested in ("auto", "tgi") and declared in (None, TGI):
        info = yield Probe("server", "/info")
        if _looks_like_tgi(info) or requested == "tgi" or declared is TGI:
            details = info.payload if _looks_like_tgi(info) else {}
            return Route(
                base_url,
                TGIProtocol(settings.model or details.get("model_id")),
                model=settings.model or details.get("model_id") or base_url,
                max_stop_sequences=_int(details.get("max_stop_sequences")),
                max_total_tokens=_int(details.get("max_total_tokens")),
                capacity=_int(details.get("max_batch_size")) or _int(details.get("max_concurrent_requests")),
            )
    model, engine = settings.model, declared
    if model is None or engine is None:
        # vLLM refuses any model name but the one it serves; transformers serve needs one at all. How the
        # server describes its model also says which engine it is.
        answer = yield Probe("server", "/v1/models")
        data = answer.payload.get("data") if isinstance(answer.payload, Mapping) else None
        card = data[0] if isinstance(data, list) and data and isinstance(data[0], Mapping) else {}
        if model is None and isinstance(card.get("id"), str):
            model = card["id"]
        if engine is None:
            engine = engine_from_model_card(card)
        if engine is None and info is None and may_be_tgi(card):
            info = yield Probe("server", "/info")
            engine = TGI if _looks_like_tgi(info) else None
    engine = engine or UNKNOWN
    if requested == "chat":
        return Route(base_url, ChatProtocol(model, engine=engine), model=model or base_url)
    return Route(
        base_url,
        CompletionsProtocol(model, engine=engine),
        model=model or base_url,
        fallback=ChatProtocol(model, engine=engine) if requested == "auto" else None,
    )


@dataclass(frozen=True, slots=True)
class ProviderMapping:
    """One entry of a model's `inferenceProviderMapping` on the Hub."""

    provider: str
    provider_id: str
    status: str
    task: str


def parse_provider_mappings(payload: Any) -> list[ProviderMapping]:
    """Reads the mapping in the Hub's current form (a list) and its former one (a dict keyed by provider)."""
    raw = payload.get("inferenceProviderMapping") if isinstance(payload, Mapping) else None
    if isinstance(raw, Mapping):
        raw = [{"provider": name, **entry} for name, entry in raw.items() if isinstance(entry, Mapping)]
    if not isinstance(raw, list):
        return []
    return [
        ProviderMapping(
            provider=str(entry.get("provider")),
            provider_id=str(entry.get("providerId") or ""),
            status=str(entry.get("status") or ""),
            task=str(entry.get("task") or ""),
        )
        for entry in raw
        if isinstance(entry, Mapping) and entry.get("provider")
    ]


def resolve_provider_route(settings: APISettings, has_token: bool) -> Resolution:
    """Picks an Inference Provider and route for `serverless_inference_api`."""
    assert settings.model is not None
    model, _, suffix = settings.model.partition(":")
    # ":fastest", ":cheapest" and ":preferred" are the router's selection policies, not providers.
    wanted = settings.provider or (suffix if suffix not in _ROUTER_POLICIES else "") or "auto"
    if not has_token:
        raise ProviderResolutionError(
            f"Inference Providers need a Hugging Face token to run {model!r}: set HF_TOKEN (or HF_API_TOKEN), "
            "or pass token=Secret.from_env_var('YOUR_VAR')"
        )
    answer = yield Probe("hub", f"/api/models/{quote(model, safe='/')}?expand[]=inferenceProviderMapping")
    if answer.status == 404:
        raise ProviderResolutionError(f"Model {model!r} was not found on the Hub ({hub_url()}); check the model id")
    if answer.error is not None:
        raise answer.error
    mappings = parse_provider_mappings(answer.payload)
    listing = ", ".join(f"{m.provider} ({m.task}, {m.status})" for m in mappings) or "none"
    if wanted != "auto":
        candidates = [m for m in mappings if m.provider == wanted]
        if not candidates:
            raise ProviderResolutionError(
                f"Provider {wanted!r} does not serve {model!r}; providers for it: {listing}. "
                "Set api_params['provider'] to one of them, or to 'auto'"
            )
    else:
        candidates = [m for m in mappings if m.status == "live"]
        if not candidates:
            raise ProviderResolutionError(
                f"No live Inference Provider serves {model!r} (providers: {listing}). Pick another model, "
                "or deploy it on an Inference Endpoint and use api_type='inference_endpoints'"
            )
    base_url = router_url()
    if suffix in _ROUTER_POLICIES and any(m.task == "conversational" for m in candidates):
        # The user asked the router to choose by its policy: only its chat route does that.
        return Route(base_url, ChatProtocol(f"{model}:{suffix}", engine=PROVIDERS), model=model)
    for mapping in candidates:
        if mapping.task == "text-generation":
            if mapping.provider == "hf-inference":
                path = f"/hf-inference/models/{quote(model, safe='/')}"
                protocol: Protocol = TGIProtocol(model, generate_path=path, stream_path=path, stream_in_body=True)
            else:
                path = f"/{mapping.provider}/v1/completions"
                protocol = CompletionsProtocol(mapping.provider_id or model, path, engine=PROVIDERS)
            return Route(base_url, protocol, model=model)
    for mapping in candidates:
        if mapping.task == "conversational":
            return Route(base_url, ChatProtocol(f"{model}:{mapping.provider}", engine=PROVIDERS), model=model)
    raise ProviderResolutionError(f"No provider serves {model!r} for text generation or chat (providers: {listing})")
