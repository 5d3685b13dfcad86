"""
What a generator does, written once for `run` and `run_async`: the sans-I/O core.

A *flow* is a generator that yields *effects* for a client to perform and receives their outcomes:

- an `Exchange` (`_exchange`): one HTTP attempt. The client sends its request and reports what happens on
  the wire; the exchange returns the chunks to hand to the streaming callback as they complete. The outcome
  sent back is the exchange's `Answer`, or the `HuggingFaceAPIError` it failed with (thrown into the flow);
- `Sleep(seconds)`: wait before a retry;
- `Together(flows)`: run several flows at once (the replies of `n` on an engine without `n`, a request each);
  the outcome is their results in order, or the failure that ended them all;
- `Resolve(core, base)`: the route to a server, resolved once by whichever caller comes first;
- `WaitForSlot(fleet, avoid)`: wait, without blocking an event loop, until a replica may take the request.

`ClientCore` holds everything that is not I/O (validated settings, credentials, retry policy, the fleet of
replicas and their routes, the fallback's core) and writes the two flows: `resolution()` decides a server's
route (probing it or the Hub), `generation()` produces the replies: admitted to a replica, with retries
(elsewhere when another replica can take them), the completions-to-chat fallback, the fallback backend
while the primary cannot serve, and stop words. The sync client (`_sync`, urllib3) and the async client
(`_async`, aiohttp) run them with `Driver`.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

from haystack.dataclasses import ComponentInfo
from haystack.utils import Secret

from ._auth import Credentials, origin_of, withheld_variable
from ._config import APISettings, HFGenerationAPIType, server_base_url
from ._engines import requests_for_replies
from ._exchange import Exchange
from ._fleet import Fleet, Lease, Outcome, Replica
from ._generation import (
    ChoicesStreamState,
    GenerationRequest,
    Replies,
    StreamState,
    replies_from_generations,
    reply_from_generation,
)
from ._http import Answer, Request, is_event_stream, json_body, raise_for_status
from ._retry import RetryBudget, RetryPolicy
from ._routing import (
    Probe,
    ProbeAnswer,
    Route,
    answers_probe,
    hub_url,
    resolve_provider_route,
    resolve_url_route,
)
from .errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    EndpointPausedError,
    HuggingFaceAPIError,
    IncompleteStreamError,
    OverloadedError,
    ResponseFormatError,
    StructuredOutputError,
)

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` (without blocking an event loop)."""

    seconds: float


class Together:
    """
    Run `flows` at the same time, each as a client runs a flow, their chunks to the same callback (one chunk at
    a time); the outcome is their results, in order. The first to fail ends the others at once (their
    connections closed, no new attempt), and the call fails with its error (`outcome`): never fewer replies
    than asked for.
    """

    __slots__ = ("_delivered", "flows")

    def __init__(self, flows: Sequence[Flow[Any]]) -> None:
        self.flows = list(flows)
        self._delivered: list[list[str]] = [[] for _ in self.flows]

    def recording(self, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`callback`, noting the text each reply hands it (chunks say which reply by `index`) for `outcome`."""
        delivered = self._delivered

        def record(chunk: Any) -> Any:
            delivered[chunk.index].append(chunk.content)
            return callback(chunk)

        return record

    def outcome(self, results: Sequence[Any], failure: tuple[int, BaseException] | None) -> Any:
        """
        What the flow that yielded this receives: the flows' `results` in order, or, after `failure` (the first
        flow to fail, by its place, and its exception), the package's error naming that reply, to raise.

        :raises BaseException: A failure that is not the package's (the callback's own exception, an
            interruption), as it is.
        """
        if failure is None:
            return list(results)
        index, error = failure
        if not isinstance(error, HuggingFaceAPIError):
            raise error
        count = len(self.flows)
        error.reply_index = index
        error.delivered_replies = ["".join(pieces) for pieces in self._delivered]
        error.delivered_text = error.delivered_replies[index]
        error.message = (
            f"reply {index} of {count} (generation_kwargs['n'], a request each) failed, so the call returns "
            f"none: {error.message}"
        )
        error.args = (error.message,)
        return error


@dataclass(frozen=True, slots=True, eq=False)
class Resolve:
    """
    The route to `base` (a replica of `core`'s fleet; None: its one server, or the provider the Hub names),
    resolved once by whichever caller comes first while the others wait: the outcome is the `Route`, or the
    error the resolution failed with.
    """

    core: ClientCore
    base: str | None


@dataclass(frozen=True, slots=True, eq=False)
class WaitForSlot:
    """
    Wait (without blocking an event loop) until `fleet` may have a slot, or until a replica that is out opens
    again: the outcome is a `Lease` taken meanwhile, or None to look again.
    """

    fleet: Fleet
    avoid: Replica | None


Effect = Exchange | Sleep | Together | Resolve | WaitForSlot
Flow = Generator[Effect, Any, T]


class Driver(Generic[T]):
    """
    Runs a flow for a client: `start()` and `send(outcome)` return the next effect, or None once the flow
    has finished (then `result` holds its value). An outcome that is a `HuggingFaceAPIError` is raised
    inside the flow, where the retry logic sees it; a flow's own error propagates out of `send`.
    """

    __slots__ = ("_flow", "result")

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow

    def start(self) -> Effect | None:
        return self.send(None)

    def send(self, outcome: Any) -> Effect | None:
        try:
            if isinstance(outcome, HuggingFaceAPIError):
                return self._flow.throw(outcome)
            return self._flow.send(outcome)
        except StopIteration as finished:
            self.result: T = finished.value
            return None

    def close(self) -> None:
        """Ends a flow abandoned by an exception outside it (a callback's, a cancellation)."""
        self._flow.close()


def _user_agent() -> str:
    try:
        return f"hugging-face-api-generator-haystack/{version('hugging-face-api-generator-haystack')}"
    except PackageNotFoundError:  # running from a source tree
        return "hugging-face-api-generator-haystack"


_USER_AGENT = _user_agent()


@dataclass(frozen=True, slots=True)
class _Target:
    """What requests to one server carry: headers (with a JSON body too), the proxy's hold, endpoint or not."""

    headers: dict[str, str]
    post_headers: dict[str, str]
    held: float
    endpoint: bool


def _merge_headers(base: dict[str, str], winners: Mapping[str, str]) -> dict[str, str]:
    """`base` updated with `winners`; header names are case-insensitive, so a name is never sent twice."""
    taken = {name.lower() for name in winners}
    return {**{name: value for name, value in base.items() if name.lower() not in taken}, **winners}


#: The token of a fallback backend: the Hugging Face variables, as a generator's default token.
FALLBACK_TOKEN = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False)

#: How long a call that a replica refused for overload keeps waiting for admission, without using up
#: `max_retries`: overload is the fleet's to absorb, not the caller's retry budget; past this, it is.
OVERLOAD_PATIENCE = 60.0
#: With a fallback, how long an Inference Endpoint that is scaling up (or paused) is left to the fallback
#: before the primary is tried again (a request to it also keeps the scale-up going), unless it says when.
WAKE_RECHECK = 10.0


class _RouteState:
    """The route to one server, and its resolutions: how many finished, how the last failed."""

    __slots__ = ("failure", "lock", "resolutions", "route")

    def __init__(self) -> None:
        self.route: Route | None = None
        self.resolutions = 0
        self.failure: HuggingFaceAPIError | None = None
        self.lock = threading.Lock()  # the sync client's: one resolution at a time


class ClientCore:
    """
    The decisions of one generator, shared by its sync and async clients. Safe to share between threads:
    a route is one reference, replaced whole; a route's resolution count and failure change only under a
    client's lock for that route; the per-server caches are filled idempotently (a race computes the same
    value twice); the fleet has its own lock.

    A URL-based api type has a `Fleet` (one replica per URL: admission and health apply to one server too);
    each replica has its route. `fallback`: the core of the backend that answers while this one cannot.
    """

    def __init__(self, settings: APISettings, token: Secret | None) -> None:
        self.settings = settings
        self._token = token
        self._credentials: Credentials | None = None
        self._targets: dict[str, _Target] = {}  # per server base URL
        # The fallback is (usually) Hugging Face's: it gets the Hugging Face token variables, never a token
        # meant for the primary's own server.
        self.fallback = None if settings.fallback is None else ClientCore(settings.fallback, FALLBACK_TOKEN)
        # With a fallback, an Inference Endpoint's scale-up is not waited for: the fallback answers meanwhile.
        scale_up_timeout = settings.scale_up_timeout if self.fallback is None else 0.0
        self.policy = RetryPolicy(max_retries=settings.max_retries, scale_up_timeout=scale_up_timeout)
        self.bases = tuple(server_base_url(url) for url in settings.urls)
        self.fleet = Fleet(self.bases, settings.admission, spare=self.fallback is not None) if self.bases else None
        # Among replicas, or with a fallback, a probe that fails is not retried on that server: the call moves
        # on to another replica, or to the fallback.
        elsewhere = len(self.bases) > 1 or self.fallback is not None
        self._probe_policy = RetryPolicy(max_retries=0) if elsewhere else self.policy
        self._routes: dict[str | None, _RouteState] = {base: _RouteState() for base in self.bases or (None,)}
        timeout = settings.timeout
        self._connect, self._read = timeout.connect, timeout.read

    @property
    def route(self) -> Route | None:
        """The route of the first server (the only one, mostly), once resolved."""
        return self._routes[self.keys[0]].route

    @property
    def resolutions(self) -> int:
        """How many resolutions of the first server's route have finished."""
        return self._routes[self.keys[0]].resolutions

    def route_state(self, base: str | None) -> _RouteState:
        return self._routes[base]

    @property
    def keys(self) -> tuple[str | None, ...]:
        """The servers to resolve routes for: every replica, or the one server / provider."""
        return self.bases or (None,)

    def warmed_up(self, failures: Sequence[HuggingFaceAPIError]) -> None:
        """
        After resolving every server's route at warm-up: one server's failure is raised; among replicas, the
        warm-up fails only when none answered (the others are named in a warning, and calls go elsewhere
        until they answer).

        :raises HuggingFaceAPIError: The first failure, when no server's route could be resolved.
        """
        if not failures:
            return
        if len(failures) == len(self.keys) and self.fallback is None:
            raise failures[0]
        for failure in failures:
            logger.warning("A server could not be reached at warm-up; calls go elsewhere: %s", failure.message)

    def needs_warm_up(self, base: str | None) -> bool:
        """Whether warm-up resolves `base`'s route: not known yet, and not left out (calls resolve it later)."""
        if self._routes[base].route is not None:
            return False
        return (
            self.fleet is None
            or base is None
            or self.fleet.replica(base).slots(time.monotonic(), self.fleet.admission) > 0
        )

    def unreachable_at_warm_up(self, base: str | None) -> None:
        if self.fleet is not None and base is not None:
            self.fleet.mark_unreachable(base)

    # --- requests --------------------------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """The token, resolved at first use (not in `__init__`: an env var may be set later)."""
        if self._credentials is None:
            self._credentials = Credentials(self._token)
        return self._credentials

    def redact(self, text: str) -> str:
        """Server text without the token in use."""
        return self.credentials.redact(text)

    def _target(self, base: str) -> _Target:
        """How requests to the server at `base` look: computed once per server."""
        target = self._targets.get(base)
        if target is None:
            settings = self.settings
            endpoint = settings.api_type is HFGenerationAPIType.INFERENCE_ENDPOINTS and origin_of(base) in {
                origin_of(url) for url in settings.urls
            }
            held = self.policy.scale_up_timeout if endpoint else 0.0
            # The user's headers win over our User-Agent; ours win for what the protocol and the policy need.
            ours: dict[str, str] = {}
            if authorization := self.credentials.authorization(base):
                ours["Authorization"] = authorization
            if settings.bill_to:
                ours["X-HF-Bill-To"] = settings.bill_to
            if held:  # the endpoint's proxy then holds the request until a replica is ready, instead of a 503
                ours["X-Scale-Up-Timeout"] = f"{held:g}"
            headers = _merge_headers(_merge_headers({"User-Agent": _USER_AGENT}, settings.headers), ours)
            post_headers = _merge_headers(headers, {"Content-Type": "application/json"})
            target = self._targets[base] = _Target(headers, post_headers, held, endpoint)
        return target

    def _request(
        self, method: str, base: str, path: str, body: Any = None, redirect_hint: str | None = None
    ) -> Request:
        target = self._target(base)
        headers, data = target.headers, None
        if body is not None:
            headers, data = target.post_headers, json.dumps(body, ensure_ascii=False).encode()
        url = base + path
        hint = redirect_hint or "set api_params['url'] to the address the redirect points to"
        first_byte = self._read + target.held
        where = f"{method} {url}"
        return Request(
            method, base, url, headers, data, self._connect, self._read, first_byte, where, hint, target.endpoint
        )

    # --- route resolution ------------------------------------------------------------------------

    def resolution(self, base: str | None, ticket: int) -> Flow[Route]:
        """
        Decides (and remembers) the route to `base` (see `Resolve`): the probes of `_routing`, each with retries.

        :param ticket: the route's `resolutions` as the caller read it before waiting for its turn. When a
            resolution finished and failed meanwhile, its error is raised again instead of starting over:
            callers queued behind a failing resolution fail with it, not one full resolution after another.
        """
        state = self._routes[base]
        if ticket != state.resolutions and state.failure is not None:
            raise copy.copy(state.failure)  # a copy: each caller's traceback is its own
        try:
            route = yield from self._resolve(base)
        except HuggingFaceAPIError as error:
            state.failure = error
            raise
        except BaseException:  # interrupted (a cancellation, a closed flow): no failure to share
            state.failure = None
            raise
        else:
            state.failure = None
            state.route = route
        finally:
            state.resolutions += 1
        if self.fleet is not None and base is not None:
            self.fleet.seed(base, route.capacity)
        return route

    def _resolve(self, base: str | None) -> Flow[Route]:
        settings = self.settings
        if base is not None:
            decision = resolve_url_route(settings, base)
        else:
            decision = resolve_provider_route(settings, self.credentials.available)
        try:
            probe = next(decision)
            while True:
                request = self._probe_request(probe, base)
                answer = yield from self._send(request, self._read_probe, (), policy=self._probe_policy)
                probe = decision.send(answer)
        except StopIteration as decided:
            route: Route = decided.value
            return route

    def _probe_request(self, probe: Probe, base: str | None) -> Request:
        if probe.target == "hub":
            hint = "the Hub may have moved the model: check api_params['model']"
            return self._request("GET", hub_url(), probe.path, redirect_hint=hint)
        assert base is not None
        return self._request("GET", base, probe.path)

    def _read_probe(self, request: Request, answer: Answer) -> ProbeAnswer:
        try:
            raise_for_status(request, answer, self.redact)
            return ProbeAnswer(answer.status, json_body(request, answer))
        except HuggingFaceAPIError as error:
            if answers_probe(error):
                return ProbeAnswer(error.status_code or 200, error=error)
            raise

    # --- generation ------------------------------------------------------------------------------

    def generation(
        self, request: GenerationRequest, stream: bool, component_info: ComponentInfo | None = None
    ) -> Flow[Replies]:
        """
        The replies of one call: `n` of them (one by default), streamed (chunks handed to the callback as the
        events arrive) or in one piece. One request gives them all, unless the engine has no `n`: then each
        reply is a request of its own, with a seed derived from the user's, and they run `Together`.
        """
        return (yield from self._replies(request, stream, component_info, 0, whole_call=True))

    def _separately(
        self, route: Route, request: GenerationRequest, stream: bool, component_info: ComponentInfo | None
    ) -> Flow[Replies]:
        """The `n` replies of a call to an engine without `n`: a request each, `Together`."""
        route.check(request.params, request.stop_words, stream)  # the whole call, `n` included, before any request
        flows = [
            self._replies(replace(request, params=params), stream, component_info, index, whole_call=False)
            for index, params in enumerate(requests_for_replies(request.params, sends_n=False))
        ]
        results: list[Replies] = yield Together(flows)
        return [texts[0] for texts, _ in results], [metas[0] for _, metas in results]

    def _replies(
        self,
        request: GenerationRequest,
        stream: bool,
        component_info: ComponentInfo | None,
        index: int,
        whole_call: bool,
    ) -> Flow[Replies]:
        """
        The replies of one request, with its attempts: each on the replica the fleet admits it to (waiting
        for a slot while every replica is full), through that replica's route; tried again as `_retry` and
        the fleet decide; answered by the fallback backend while the primary cannot serve. `index`: the place
        of its reply among the call's, when the call makes one request per reply (then not `whole_call`).
        """
        fleet, fallback = self.fleet, self.fallback
        call = (stream, component_info, index, whole_call)  # the same for the fallback
        started = time.monotonic()
        budget: RetryBudget | None = None  # made at the first failure: most calls never need one
        switched: dict[str | None, Route] = {}  # routes switched to their fallback protocol, until confirmed
        avoid: Replica | None = None
        overloads = 0
        while True:
            lease: Lease | None = None
            if fleet is not None:
                lease = fleet.acquire(avoid)
                while lease is None:
                    if fallback is not None and fleet.cannot_serve:
                        return (yield from self._on_fallback(fallback._replies(request, *call)))
                    if fleet.all_out:
                        # Every replica left out, and no fallback: waiting out cooldowns would only delay the
                        # failure. The call tries one anyway, on its retry budget, as it would a lone server.
                        lease = fleet.acquire(avoid, despite_health=True)
                        if lease is not None:
                            break
                    lease = yield WaitForSlot(fleet, avoid)
            base = lease.replica.base_url if lease is not None else None
            exchange: Exchange | None = None
            state: StreamState | None = None
            http: Request | None = None
            resolving = True
            try:
                known = switched.get(base) or self._routes[base].route
                route = known or (yield Resolve(self, base))
                resolving = False
                if lease is not None and known is None and not fleet.admits(lease):  # type: ignore[union-attr]
                    # The replica just said what it takes (TGI's /info), less than what was let through
                    # before it was known: back to admission.
                    fleet.release(lease, Outcome.UNKNOWN)  # type: ignore[union-attr]
                    continue
                if whole_call and request.params.get("n", 1) > 1 and not route.protocol.rules.sends_n:
                    if lease is not None:  # each reply's request takes a slot of its own
                        fleet.release(lease, Outcome.UNKNOWN)  # type: ignore[union-attr]
                        lease = None
                    return (yield from self._separately(route, request, stream, component_info))
                fitted = route.fitted(request)
                route.check(fitted.params, fitted.stop_words, stream)
                protocol = route.protocol
                body = protocol.build_body(fitted.prompt, fitted.params, fitted.stop_words, stream=stream)
                http = self._request("POST", route.base_url, protocol.path(stream), body)
                del body  # not kept alive while the request is in flight
                if stream:
                    state = self._stream_state(route, fitted, component_info, http.where, index)
                exchange = Exchange(http, state)
                answer: Answer = yield exchange
                if state is None:
                    replies = self._read_reply(http, answer, route, fitted)
                else:
                    replies = self._read_stream(http, answer, state)
            except HuggingFaceAPIError as error:
                if resolving and len(self.bases) < 2 and self.fallback is None:
                    # One server, nowhere else to go: its probes had their retries already.
                    if lease is not None:
                        fleet.release(lease, Outcome.UNKNOWN)  # type: ignore[union-attr]
                    raise
                delivered = "" if state is None else state.delivered
                if isinstance(error, AuthenticationError) and http is not None:
                    self._explain_refusal(error, http)
                error.redact(self.redact)  # before it is logged or raised: servers echo what they received
                outcome = self._outcome(error, exchange, base)
                if lease is not None:
                    fleet.release(lease, outcome, retry_after=error.retry_after or 0.0)  # type: ignore[union-attr]
                    avoid, lease = lease.replica, None
                if not resolving and route.fallback is not None and error.status_code in (404, 405):
                    switched[base] = route.after_failure(error)  # completions → chat, kept once it works
                    continue
                if delivered:
                    error.delivered_text = delivered
                    raise
                if fallback is not None and fleet is not None and fleet.cannot_serve:
                    logger.info("%s; the fallback answers while the primary cannot", error.message)
                    return (yield from self._on_fallback(fallback._replies(request, *call)))
                if (
                    outcome is Outcome.OVERLOADED
                    and self._admitting
                    and avoid is not None
                    and fleet.others_in_flight(avoid)  # type: ignore[union-attr]
                    and time.monotonic() - started < OVERLOAD_PATIENCE
                ):
                    # Refused while our other requests keep the replica busy: back to admission, whose limit just
                    # fell, after a short pause; not a retry of the caller's own. (A refusal that our load does
                    # not explain goes to `max_retries`, as without admission.)
                    overloads += 1
                    yield Sleep(random.uniform(0, min(1.0, 0.05 * 2**overloads)))
                    continue
                where = http.where if http is not None else f"the route to {base or 'the provider'}"
                budget = budget or self.policy.budget(where, started)
                elsewhere = None
                if fleet is not None and outcome in (Outcome.UNREACHABLE, Outcome.FAILED) and fleet.has_slot(avoid):
                    elsewhere = "another replica"  # which one, admission decides at the next attempt
                wait = budget.wait_before_retry(error, "", elsewhere)
                if wait:
                    yield Sleep(wait)
                continue
            except BaseException:
                if lease is not None:
                    fleet.release(lease, Outcome.UNKNOWN)  # type: ignore[union-attr]
                raise
            if budget is not None:
                budget.succeeded()  # ends (and logs the end of) a scale-up wait
            if lease is not None:
                first_byte = None
                if stream and exchange.head_at is not None:  # a one-piece answer's head is its whole generation
                    first_byte = exchange.head_at - exchange.started
                fleet.release(lease, Outcome.ANSWERED, first_byte=first_byte)  # type: ignore[union-attr]
            confirmed, route_state = route.confirmed(), self._routes[base]
            if route_state.route is not confirmed:  # the fallback protocol worked, or the route was just confirmed
                route_state.route = confirmed
            return self._labelled(replies, base)

    @property
    def _admitting(self) -> bool:
        return self.fleet is not None and self.fleet.admission.mode != "off"

    def _labelled(self, replies: Replies, base: str | None) -> Replies:
        """Meta says which replica answered (when there are several) and which backend (when there is a fallback)."""
        several = len(self.bases) > 1
        if not several and self.fallback is None:
            return replies
        for meta in replies[1]:
            if several:
                meta["replica"] = base
            if self.fallback is not None:
                meta["backend"] = "primary"
        return replies

    @staticmethod
    def _on_fallback(flow: Flow[Replies]) -> Flow[Replies]:
        """The replies of the fallback core's `flow`, labelled as the fallback's."""
        texts, metas = yield from flow
        for meta in metas:
            meta["backend"] = "fallback"
        return texts, metas

    def _outcome(self, error: HuggingFaceAPIError, exchange: Exchange | None, base: str | None) -> Outcome:
        """What a failed attempt (its route's resolution, or its `exchange`) says of its replica (`_fleet.Outcome`)."""
        status = error.status_code
        if isinstance(error, OverloadedError):
            return Outcome.OVERLOADED
        if status == 503 or isinstance(error, EndpointPausedError):
            endpoint = base is not None and self._target(base).endpoint
            if endpoint or isinstance(error, EndpointPausedError):
                # An Inference Endpoint scaling up from zero, or paused: asleep, not failing or busy.
                return Outcome.ASLEEP if self.fallback is not None else Outcome.UNKNOWN
            return Outcome.OVERLOADED  # a busy engine
        if status in (500, 502, 504) or isinstance(error, IncompleteStreamError):
            return Outcome.FAILED
        if isinstance(error, APITimeoutError):
            return Outcome.UNREACHABLE if error.phase == "connect" else Outcome.UNKNOWN
        if isinstance(error, APIConnectionError):
            return Outcome.UNREACHABLE if exchange is None or exchange.head_at is None else Outcome.FAILED
        if isinstance(error, ResponseFormatError) and not isinstance(error, StructuredOutputError):
            return Outcome.FAILED
        return Outcome.ANSWERED  # the replica works; the request was wrong (a 4xx of its own)

    def _stream_state(
        self, route: Route, request: GenerationRequest, component_info: ComponentInfo | None, where: str, index: int
    ) -> StreamState:
        args = (request, route.protocol, route.model, component_info, where, self.redact)
        return StreamState(*args, index) if request.params.get("n", 1) == 1 else ChoicesStreamState(*args)

    def _read_reply(self, http: Request, answer: Answer, route: Route, request: GenerationRequest) -> Replies:
        raise_for_status(http, answer, self.redact)
        protocol = route.protocol
        payload = json_body(http, answer)
        prompt_tokens = answer.headers.get("x-prompt-tokens")
        n = request.params.get("n", 1)
        if n == 1:
            text, meta = reply_from_generation(
                protocol.parse_generation(payload, prompt_tokens), request, protocol, route.model, http.where
            )
            return [text], [meta]
        generations = protocol.parse_generations(payload, prompt_tokens, n)
        return replies_from_generations(
            generations, protocol.usage(payload), request, protocol, route.model, http.where
        )

    def _read_stream(self, http: Request, answer: Answer, state: StreamState) -> Replies:
        raise_for_status(http, answer, self.redact)
        if not is_event_stream(answer.headers):  # e.g. a gateway that ignores `stream: true`
            kind = answer.headers.get("content-type")
            error = ResponseFormatError(f"{http.where} answered a streamed request with {kind}, not server-sent events")
            raise error.quoting(answer.body)
        return state.replies()

    def _send(
        self,
        request: Request,
        read: Callable[..., T],
        args: tuple[Any, ...],
        stream: StreamState | None = None,
        policy: RetryPolicy | None = None,
    ) -> Flow[T]:
        """
        Sends `request` until `read(request, answer, *args)` gives a result, or a failure is not worth another
        try (`_retry` decides). With `stream`, the body goes to it, and nothing is tried again once text
        reached the callback.
        """
        started = time.monotonic()
        budget: RetryBudget | None = None  # made at the first failure: most calls never need one
        while True:
            if stream is not None:
                stream.reset()
            try:
                answer: Answer = yield Exchange(request, stream)
                result = read(request, answer, *args)
            except HuggingFaceAPIError as error:
                if isinstance(error, AuthenticationError):
                    self._explain_refusal(error, request)
                error.redact(self.redact)  # before it is logged or raised: servers echo what they received
                budget = budget or (policy or self.policy).budget(request.where, started)
                yield Sleep(budget.wait_before_retry(error, "" if stream is None else stream.delivered))
                continue
            if budget is not None:
                budget.succeeded()  # ends (and logs the end of) a scale-up wait
            return result

    def _explain_refusal(self, error: AuthenticationError, request: Request) -> None:
        """A 401/403 where the host policy kept the token from HF_TOKEN away says so, and how to send one."""
        variable = withheld_variable(self._token, request.url)
        if variable is not None:
            error.message += (
                f". {variable} is set but was not sent to {origin_of(request.url)}: the token in HF_TOKEN / "
                "HF_API_TOKEN goes only to Hugging Face hosts over https, so that a pipeline file from elsewhere "
                "cannot send it to its own server. To send a token there on purpose, put it in a variable of your "
                "own and pass token=Secret.from_env_var('MY_SERVER_TOKEN')"
            )
