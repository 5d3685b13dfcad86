"""
What a generator does, written once for `run` and `run_async`: the sans-I/O core.

A *flow* is a generator that yields *effects* for a client to perform and receives their outcomes:

- an `Exchange` (`_exchange`): one HTTP attempt. The client sends its request and reports what happens on
  the wire; the exchange returns the chunks to hand to the streaming callback as they complete. The outcome
  sent back is the exchange's `Answer`, or the `HuggingFaceAPIError` it failed with (thrown into the flow);
- `Sleep(seconds)`: wait before a retry;
- `Together(flows)`: run several flows at once (the replies of `n` on an engine without `n`, a request each);
  the outcome is their results in order, or the failure that ended them all.

`ClientCore` holds everything that is not I/O (validated settings, credentials, retry policy, the
resolved route) and writes the two flows: `resolution()` decides the route (probing the server or the
Hub), `generation()` produces the replies with retries, the completions-to-chat fallback and stop words.
The sync client (`_sync`, urllib3) and the async client (`_async`, aiohttp) run them with `Driver`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

from haystack.dataclasses import ComponentInfo
from haystack.utils import Secret

from ._auth import Credentials, origin_of, withheld_variable
from ._config import APISettings, HFGenerationAPIType
from ._engines import requests_for_replies
from ._exchange import Exchange
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
    server_base_url,
)
from .errors import AuthenticationError, HuggingFaceAPIError, ResponseFormatError

T = TypeVar("T")


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


Effect = Exchange | Sleep | Together
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


class ClientCore:
    """
    The decisions of one generator, shared by its sync and async clients. Safe to share between threads:
    the route is one reference, replaced whole; the resolution count and its failure change only under a
    client's route lock; the per-server caches are filled idempotently (a race computes the same value twice).
    """

    def __init__(self, settings: APISettings, token: Secret | None) -> None:
        self.settings = settings
        self._token = token
        self._credentials: Credentials | None = None
        self._targets: dict[str, _Target] = {}  # per server base URL
        self.policy = RetryPolicy(max_retries=settings.max_retries, scale_up_timeout=settings.scale_up_timeout)
        #: The resolved route, once known.
        self.route: Route | None = None
        #: How many route resolutions have finished, and how the last one failed (shared with its waiters).
        self.resolutions = 0
        self._resolution_failure: HuggingFaceAPIError | None = None
        timeout = settings.timeout
        self._connect, self._read = timeout.connect, timeout.read

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
            endpoint = (
                settings.api_type is HFGenerationAPIType.INFERENCE_ENDPOINTS
                and settings.url is not None
                and origin_of(base) == origin_of(settings.url)
            )
            held = settings.scale_up_timeout if endpoint else 0.0
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

    def resolution(self, ticket: int) -> Flow[Route]:
        """
        Decides (and remembers) the route: the probes of `_routing`, each with retries.

        :param ticket: `resolutions` as the caller read it before waiting for its turn. When a resolution
            finished and failed meanwhile, its error is raised again instead of starting over: callers queued
            behind a failing resolution fail with it, not one full resolution after another.
        """
        if ticket != self.resolutions and self._resolution_failure is not None:
            raise copy.copy(self._resolution_failure)  # a copy: each caller's traceback is its own
        try:
            route = yield from self._resolve()
        except HuggingFaceAPIError as error:
            self._resolution_failure = error
            raise
        except BaseException:  # interrupted (a cancellation, a closed flow): no failure to share
            self._resolution_failure = None
            raise
        else:
            self._resolution_failure = None
        finally:
            self.resolutions += 1
        return route

    def _resolve(self) -> Flow[Route]:
        settings = self.settings
        if settings.url is not None:
            decision = resolve_url_route(settings)
        else:
            decision = resolve_provider_route(settings, self.credentials.available)
        try:
            probe = next(decision)
            while True:
                request = self._probe_request(probe)
                answer = yield from self._send(request, self._read_probe, ())
                probe = decision.send(answer)
        except StopIteration as decided:
            route: Route = decided.value
            self.route = route
            return route

    def _probe_request(self, probe: Probe) -> Request:
        if probe.target == "hub":
            hint = "the Hub may have moved the model: check api_params['model']"
            return self._request("GET", hub_url(), probe.path, redirect_hint=hint)
        assert self.settings.url is not None
        return self._request("GET", server_base_url(self.settings.url), probe.path)

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
        self, route: Route, request: GenerationRequest, stream: bool, component_info: ComponentInfo | None = None
    ) -> Flow[Replies]:
        """
        The replies of one call: `n` of them (one by default), streamed (chunks handed to the callback as the
        events arrive) or in one piece. One request gives them all, unless the engine has no `n`: then each
        reply is a request of its own, with a seed derived from the user's, and they run `Together`.
        """
        params = request.params
        if params.get("n", 1) == 1 or route.protocol.rules.sends_n:
            return (yield from self._request_replies(route, request, stream, component_info))
        route.check(params, request.stop_words, stream)  # the whole call, `n` included, before any request
        per_reply = requests_for_replies(params, sends_n=False)
        flows = [
            self._request_replies(route, replace(request, params=reply_params), stream, component_info, index)
            for index, reply_params in enumerate(per_reply)
        ]
        results: list[Replies] = yield Together(flows)
        return [texts[0] for texts, _ in results], [metas[0] for _, metas in results]

    def _request_replies(
        self,
        route: Route,
        request: GenerationRequest,
        stream: bool,
        component_info: ComponentInfo | None,
        index: int = 0,
    ) -> Flow[Replies]:
        """
        The replies of one request: through `route`, or its fallback when the server lacks the route. `index`:
        the place of its reply among the call's, when the call makes one request per reply.
        """
        request = route.fitted(request)
        while True:
            route.check(request.params, request.stop_words, stream)
            protocol = route.protocol
            body = protocol.build_body(request.prompt, request.params, request.stop_words, stream=stream)
            http = self._request("POST", route.base_url, protocol.path(stream), body)
            del body  # not kept alive while the request is in flight
            try:
                if not stream:
                    replies = yield from self._send(http, self._read_reply, (route, request))
                else:
                    state = self._stream_state(route, request, component_info, http.where, index)
                    replies = yield from self._send(http, self._read_stream, (state,), state)
            except HuggingFaceAPIError as error:
                route = route.after_failure(error)  # re-raises unless there is a fallback for this error
                continue
            confirmed = route.confirmed()
            if confirmed is not self.route:
                self.route = confirmed
            return replies

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
                budget = budget or self.policy.budget(request.where, started)
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
