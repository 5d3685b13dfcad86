"""
From parsed answers to the component's output: reply text and meta, for one-piece answers and streams.

Sync and async runs share all of this; they differ only in how they read bytes and call the callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from haystack.dataclasses import ComponentInfo, StreamingChunk

from ._engines import top_tokens_wanted
from ._protocols import (
    FAILED_FINISH_REASONS,
    Generation,
    Protocol,
    Token,
    no_token_details,
    normalize_finish_reason,
    tokens_for_meta,
    tokens_within,
)
from ._sse import SSEDecoder
from ._stop import StopWordFilter, cut_at_stop_words
from ._structured import check_structured_reply
from .errors import (
    APIConnectionError,
    GenerationError,
    HuggingFaceAPIError,
    IncompleteStreamError,
    ResponseFormatError,
    error_from_event,
)


def _copy_chunk(template: dict[str, Any], content: str, meta: dict[str, Any]) -> StreamingChunk:
    """A `StreamingChunk` with the fields of `template` but `content` and `meta`, without its constructor."""
    chunk: StreamingChunk = object.__new__(StreamingChunk)
    fields = chunk.__dict__
    fields.update(template)
    fields["content"] = content
    fields["meta"] = meta
    return chunk


def _copying_chunks_works() -> bool:
    """The guard of the fast path: whether `_copy_chunk` gives what the constructor gives, here."""
    try:
        info = ComponentInfo(type="t", name="n")
        built = StreamingChunk(content="x", meta={"m": 1}, component_info=info, index=0)
        template = dict(vars(StreamingChunk(content="y", component_info=info, index=0)))
        copied = _copy_chunk(template, "x", {"m": 1})
        return copied == built and vars(copied) == vars(built) and type(copied) is StreamingChunk
    except Exception:  # any change in Haystack's dataclass: use the constructor
        return False


_decode_json = json.JSONDecoder().decode

# Haystack's StreamingChunk constructor costs ~2.5 µs (mutation tracking wraps __init__), more than all
# the rest of a streamed token's handling, and as much as urllib3 spends reading it (BENCHMARKS.md). The
# chunks between the first and the last differ only in content and meta, so they are copied from one the
# constructor built, when this check at import shows the copy is the same object the constructor makes.
FAST_CHUNKS = _copying_chunks_works()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated call: what to send and how to shape the reply."""

    prompt: str
    params: Mapping[str, Any]  # checked generation kwargs, without stop words and None values
    stop_words: list[str]
    return_full_text: bool
    #: `max_new_tokens` is the component's default, not the user's: it may give way to a server's smaller limit.
    default_max_new_tokens: bool = False


#: The replies of one request: their texts and their meta, in order.
Replies = tuple[list[str], list[dict[str, Any]]]


def usage_of(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    """Token counts as the server reported them: each only when known, the total only when both are."""
    usage: dict[str, int] = {}
    if prompt_tokens is not None:
        usage["prompt_tokens"] = prompt_tokens
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
    if prompt_tokens is not None and completion_tokens is not None:
        usage["total_tokens"] = prompt_tokens + completion_tokens
    return usage


def build_meta(
    *,
    model: str | None,
    protocol: Protocol,
    raw_finish_reason: str | None,
    stopped_by_stop_word: bool,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    stream: bool,
) -> dict[str, Any]:
    """The meta dict of one reply. Token counts appear only when the server reported them."""
    return {
        "model": model,
        # A stop word found client-side is a stop, whatever the server reported (it may have gone on).
        "finish_reason": "stop" if stopped_by_stop_word else normalize_finish_reason(raw_finish_reason),
        "server_finish_reason": raw_finish_reason,
        "usage": usage_of(prompt_tokens, completion_tokens),
        "engine": protocol.engine.name,
        "protocol": protocol.name,
        "route": protocol.path(stream),
    }


def check_not_failed(raw_finish_reason: str | None, where: str) -> None:
    """A generation the server gave up on is an error, not a (partial) reply."""
    if raw_finish_reason in FAILED_FINISH_REASONS:
        raise GenerationError(
            f"{where}: the server ended the generation with finish_reason {raw_finish_reason!r}",
            server_message=raw_finish_reason,
        )


def check_structure(
    text: str, request: GenerationRequest, meta: Mapping[str, Any], protocol: Protocol, where: str
) -> None:
    """
    A reply that `grammar` constrained must follow it (`check_structured_reply`): `text` is the generated text,
    stop words cut, without the prompt.
    """
    grammar = request.params.get("grammar")
    if grammar is not None:
        check_structured_reply(
            text,
            grammar,
            validate_schema=bool(request.params.get("validate_schema")),
            finish_reason=meta["finish_reason"],
            where=where,
            engine=protocol.engine.title,
        )


def reply_from_generation(
    generation: Generation, request: GenerationRequest, protocol: Protocol, model: str | None, where: str
) -> tuple[str, dict[str, Any]]:
    """
    Shapes a one-piece answer: stop words cut, token details and the prompt's tokens when asked for, a
    constrained reply checked, the prompt prepended on request, meta built.
    """
    check_not_failed(generation.finish_reason, where)
    text, stopped = cut_at_stop_words(generation.text, request.stop_words)
    meta = build_meta(
        model=generation.model or model,
        protocol=protocol,
        raw_finish_reason=generation.finish_reason,
        stopped_by_stop_word=stopped,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        stream=False,
    )
    params = request.params
    if generation.text or generation.logprobs is not None:  # an empty reply may come without any, as streams do
        tokens = tokens_for_meta(protocol, generation, params, where)
        if tokens is not None:
            # Those that made the text: not past a stop word, nor the end-of-sequence token vLLM lists after it.
            meta["tokens"] = tokens_within(tokens, len(text))
    elif top_tokens_wanted(params) is not None:
        meta["tokens"] = []
    if params.get("decoder_input_details"):
        prefill = protocol.prefill(generation)
        if not prefill:
            raise ResponseFormatError(f"{where}: decoder_input_details was asked for but no prompt tokens came")
        meta["prefill_tokens"] = prefill
    check_structure(text, request, meta, protocol, where)
    return (request.prompt + text if request.return_full_text else text), meta


def replies_from_generations(
    generations: list[Generation],
    request_usage: tuple[int | None, int | None],
    request: GenerationRequest,
    protocol: Protocol,
    model: str | None,
    where: str,
) -> Replies:
    """
    Shapes a one-piece answer holding several replies (`n`). The server counts the tokens of all of them
    together: each reply's `usage` says what is known of it (its prompt), `request_usage` the request's totals.
    """
    texts, metas = [], []
    shared = usage_of(*request_usage)
    for generation in generations:
        try:
            text, meta = reply_from_generation(generation, request, protocol, model, where)
        except HuggingFaceAPIError as error:
            error.reply_index = generation.index
            raise
        meta["request_usage"] = dict(shared)
        texts.append(text)
        metas.append(meta)
    return texts, metas


#: Once the reply is complete (a stop word, or the server's finish reason), how many more events to read
#: while waiting for the server's closing numbers (usage). A server that missed a stop word would otherwise
#: generate on and on.
EVENTS_AFTER_COMPLETE = 4


class StreamState:
    """
    Follows one streamed reply: parses events, trims stop words, and builds one `StreamingChunk` per server
    event for the callback; at the end, the reply and its meta.

    The reply is exactly the concatenation of the chunks' content. The last chunk carries the finish reason
    and the reply's meta; it is the chunk of the event that ends the stream: TGI's final event, an
    OpenAI-compatible server's usage event or `[DONE]` after the finish reason, or the end of the body. Events
    after the reply is complete (past a stop word) give no chunk: their text is not part of the reply.

    `done` tells the reader to stop reading: the stream ended (its final event, the body's end, a failure), or
    the reply was complete and the server did not close within `EVENTS_AFTER_COMPLETE` more events. What went
    wrong is in `failure`; a stream that ended before the reply was complete fails with `IncompleteStreamError`,
    a complete one that is not what was asked for (token details missing, a constrained reply that does not
    follow its grammar) with that error instead of its last chunk.

    `index` is the reply's place among several (`n`, one request each): its chunks' `StreamingChunk.index`.
    """

    def __init__(
        self,
        request: GenerationRequest,
        protocol: Protocol,
        model: str | None,
        component_info: ComponentInfo | None,
        where: str,
        redact: Callable[[str], str],
        index: int = 0,
    ) -> None:
        self._request = request
        self._protocol = protocol
        self._model = model
        self._component_info = component_info
        self._where = where
        self._redact = redact
        self._index = index
        #: Alternatives per token of `meta["tokens"]`, or None when token details were not asked for.
        self._top = top_tokens_wanted(request.params)
        self.reset()

    def reset(self) -> None:
        """Forgets a failed attempt (only ever called when nothing was delivered)."""
        self._decoder = SSEDecoder()
        self._filter = StopWordFilter(self._request.stop_words)
        self._pieces: list[str] = []
        self._raw_finish_reason: str | None = None
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._server_model: str | None = None
        self._started_at: str | None = None
        self._template: dict[str, Any] | None = None  # the fields of a middle chunk, for `_copy_chunk`
        self._events_after_complete = 0
        self._tokens: list[Token] = []
        self._meta: dict[str, Any] = {}  # the last chunk's
        #: What ended the stream early: a malformed or error event, a cut, an early end.
        self.failure: HuggingFaceAPIError | None = None
        #: The reply is whole (its finish reason, or a stop word, arrived).
        self.complete = False
        self.done = False
        #: The server ended the stream itself (its final event or `[DONE]`): nothing but its end marker follows.
        self.ended_by_server = False
        #: The body ended (the reader fed `b""`).
        self.at_eof = False

    @property
    def delivered(self) -> str:
        """The text handed out in chunks so far."""
        return "".join(self._pieces)

    def _started(self) -> bool:
        """Whether a chunk was handed out (an empty one counts: it had `start`)."""
        return bool(self._pieces)

    def _fail(self, error: HuggingFaceAPIError) -> None:
        """The stream ends with `error`."""
        self.failure = error

    def feed(self, block: bytes) -> list[StreamingChunk]:
        """
        Takes bytes of the stream as they arrived (`b""`: the body ended); returns the chunks of the events
        they complete, one per event. Never raises: a malformed or error event ends the stream (`done`) and is
        kept in `failure`, so the reader can tell the stream's failures from its own and from the callback's.
        """
        chunks: list[StreamingChunk] = []
        if not block:
            self.at_eof = True
            if not self.done:
                self._finish(chunks)
            return chunks
        try:
            for data in self._decoder.feed(block):
                if self.done:
                    break
                self._on_event(data, chunks)
        except HuggingFaceAPIError as error:
            self._fail(error)
            self.done = True
        return chunks

    def broken(self, error: HuggingFaceAPIError) -> list[StreamingChunk]:
        """
        The connection failed with `error` before the stream ended: a complete reply still ends normally (its
        last chunk is returned); otherwise the stream fails with `error` or, once text reached the callback and
        the connection broke, with `IncompleteStreamError` (caused by `error`).
        """
        chunks: list[StreamingChunk] = []
        if self.done:
            return chunks
        if self.complete:
            self._finish(chunks)
            return chunks
        self.done = True
        if self._started() and isinstance(error, APIConnectionError):
            incomplete = IncompleteStreamError(
                f"{error.message}; the stream ended before its final event, so the reply is incomplete"
            )
            incomplete.__cause__ = error
            error = incomplete
        self._fail(error)
        return chunks

    def _payload(self, data: bytes, chunks: list[StreamingChunk]) -> Mapping[str, Any] | None:
        """
        The object an event holds, or None for an event that ends the stream (`[DONE]`; an error event after the
        reply was complete), whose last chunk then goes to `chunks`. Any other error event raises.
        """
        if data == b"[DONE]":
            self.ended_by_server = True
            self._finish(chunks)
            return None
        try:
            payload = _decode_json(data.decode())  # a bound decoder on str: json.loads adds ~0.3 µs per event
        except ValueError:  # UnicodeDecodeError included
            raise ResponseFormatError(f"{self._where} sent a stream event that is not JSON").quoting(data) from None
        if type(payload) is not dict and not isinstance(payload, Mapping):  # dict first: ABC checks cost
            raise ResponseFormatError(f"{self._where} sent a stream event that is not an object").quoting(data)
        if payload.get("error"):
            self.ended_by_server = True  # an error event is the server's last (TGI), or followed by [DONE]
            if self.complete:  # the reply is whole: an error among the closing events does not undo it
                self._finish(chunks)
                return None
            raise error_from_event(payload, self._where, self._redact)
        return payload

    def _on_event(self, data: bytes, chunks: list[StreamingChunk]) -> None:
        """Takes the data of one event; its chunk, if it has one, goes to `chunks`."""
        payload = self._payload(data, chunks)
        if payload is None:
            return
        event = self._protocol.parse_event(payload)
        if self.complete:  # only the server's closing numbers are still of interest
            self._record(event)
            self._events_after_complete += 1
            if event.final or self._has_usage(event) or self._events_after_complete >= EVENTS_AFTER_COMPLETE:
                self._finish(chunks)
            return
        self._record(event)
        text = self._filter.feed(event.text) if event.text else ""
        if self._filter.stopped:
            self.complete = True
        if event.final or (self.complete and self._has_usage(event)):
            self._finish(chunks, text)
        else:
            chunks.append(self._chunk(text))

    def _take(self, event: Generation) -> StreamingChunk | None:
        """This reply's share of an event that carries several replies: its chunk, or None past its end."""
        if self.complete:
            return None
        self._record(event)
        text = self._filter.feed(event.text) if event.text else ""
        if self._filter.stopped:
            self.complete = True
        return self._chunk(text)

    @staticmethod
    def _has_usage(event: Generation) -> bool:
        return event.prompt_tokens is not None or event.completion_tokens is not None

    def _record(self, event: Generation) -> None:
        check_not_failed(event.finish_reason, self._where)
        if event.finish_reason:
            self._raw_finish_reason = event.finish_reason
            self.complete = True
        if event.final:
            self.complete = self.ended_by_server = True
        if event.prompt_tokens is not None:
            self._prompt_tokens = event.prompt_tokens
        if event.completion_tokens is not None:
            self._completion_tokens = event.completion_tokens
        if event.model:
            self._server_model = event.model
        if self._started_at is None and event.text:
            self._started_at = datetime.now(UTC).isoformat()
        if self._top is not None and event.logprobs is not None:
            self._tokens += self._protocol.tokens(event, self._top)

    def _finish(self, chunks: list[StreamingChunk], text: str = "") -> None:
        """Ends the stream: the last chunk (`text` and what the stop-word filter held back) when complete."""
        self.done = True
        if not self.complete:
            error = IncompleteStreamError(
                f"{self._where}: the stream ended before its final event; the reply is incomplete"
            )
            error.delivered_text = self.delivered
            self._fail(error)
            return
        try:
            chunks.append(self._last_chunk(text))
        except HuggingFaceAPIError as error:
            self._fail(error)

    def _last_chunk(self, text: str, request_usage: dict[str, int] | None = None) -> StreamingChunk:
        """
        The complete reply's last chunk, carrying its meta (with `request_usage`, the counts of a request that
        gave several replies, when given).

        :raises HuggingFaceAPIError: If the reply is not what was asked for: token details missing, or a
            constrained reply that does not follow its grammar.
        """
        text += self._filter.flush()
        generated = self.delivered + text
        if self._request.return_full_text and self._pieces:  # the first piece starts with the prompt
            generated = generated[len(self._request.prompt) :]
        meta = self.meta()
        if request_usage is not None:
            meta["request_usage"] = request_usage
        if self._top is not None:
            if generated and not self._tokens:
                raise no_token_details(self._where)
            meta["tokens"] = tokens_within(self._tokens, len(generated))  # as `reply_from_generation` says
        check_structure(generated, self._request, meta, self._protocol, self._where)
        self._meta = meta
        return self._chunk(text, finish_reason=meta["finish_reason"], meta=meta)

    def _chunk(self, text: str, finish_reason: Any = None, meta: dict[str, Any] | None = None) -> StreamingChunk:
        start = not self._pieces
        if start and self._request.return_full_text:
            text = self._request.prompt + text
        self._pieces.append(text)
        if meta is None:
            meta = {"model": self._server_model or self._model}
        middle = not start and finish_reason is None
        if middle and self._template is not None:
            return _copy_chunk(self._template, text, meta)
        chunk = StreamingChunk(
            content=text,
            meta=meta,
            component_info=self._component_info,
            index=self._index,
            start=start,
            finish_reason=finish_reason,
        )
        if middle and FAST_CHUNKS:
            self._template = dict(vars(chunk))
        return chunk

    def reply(self) -> tuple[str, dict[str, Any]]:
        """The reply and its meta (a copy of the last chunk's), once the stream ended without failure."""
        return self.delivered, dict(self._meta)

    def replies(self) -> Replies:
        """`reply()` as the replies of the request."""
        text, meta = self.reply()
        return [text], [meta]

    def meta(self) -> dict[str, Any]:
        """The reply's meta as known so far (token details aside)."""
        meta = build_meta(
            model=self._server_model or self._model,
            protocol=self._protocol,
            raw_finish_reason=self._raw_finish_reason,
            stopped_by_stop_word=self._filter.stopped,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            stream=True,
        )
        meta["completion_start_time"] = self._started_at
        return meta


class ChoicesStreamState(StreamState):
    """
    Several replies in one stream (`n` on vLLM and SGLang): each event's choices go to the reply of their index,
    each with its own stop-word filter, finish reason, completeness, first chunk (`start`) and token details,
    and its chunks carry that index. The stream is complete when every reply is.

    Usage comes once, for all the replies together (vLLM and SGLang send it in an event of its own at the end).
    So every reply's last chunk waits for the event that ends the stream, and each reply's meta has in `usage`
    only what is known of that reply (its prompt's tokens), and in `request_usage` the request's totals.
    """

    def reset(self) -> None:
        super().reset()
        request, protocol, model = self._request, self._protocol, self._model
        self._count: int = request.params["n"]
        info, where, redact = self._component_info, self._where, self._redact
        self._replies = [
            StreamState(request, protocol, model, info, where, redact, index) for index in range(self._count)
        ]

    @property
    def delivered(self) -> str:
        return "".join(reply.delivered for reply in self._replies)

    def _started(self) -> bool:
        return any(reply._started() for reply in self._replies)

    def _fail(self, error: HuggingFaceAPIError) -> None:
        # `delivered` joins the replies' texts in their order, not in the order their chunks came.
        error.delivered_replies = [reply.delivered for reply in self._replies]
        self.failure = error

    def _on_event(self, data: bytes, chunks: list[StreamingChunk]) -> None:
        payload = self._payload(data, chunks)
        if payload is None:
            return
        prompt_tokens, completion_tokens = self._protocol.usage(payload)
        if prompt_tokens is not None:
            self._prompt_tokens = prompt_tokens
        if completion_tokens is not None:
            self._completion_tokens = completion_tokens
        replies = self._replies
        for event in self._protocol.parse_event_choices(payload):
            if event.index >= self._count:
                message = f"{self._where} sent reply {event.index} of a stream asked for {self._count} replies"
                raise ResponseFormatError(message).quoting(data)
            chunk = replies[event.index]._take(event)
            if chunk is not None:
                chunks.append(chunk)
        counted = prompt_tokens is not None or completion_tokens is not None
        if self.complete:  # only the server's closing numbers are still of interest
            self._events_after_complete += 1
            if counted or self._events_after_complete >= EVENTS_AFTER_COMPLETE:
                self._finish(chunks)
        elif all(reply.complete for reply in replies):
            self.complete = True
            if counted:
                self._finish(chunks)

    def _finish(self, chunks: list[StreamingChunk], text: str = "") -> None:
        self.done = True
        incomplete = [reply._index for reply in self._replies if not reply.complete]
        if incomplete:
            error = IncompleteStreamError(
                f"{self._where}: the stream ended before replies {incomplete} of {self._count} were complete"
            )
            error.delivered_text = self.delivered
            self._fail(error)
            return
        usage = usage_of(self._prompt_tokens, self._completion_tokens)
        last = []
        for reply in self._replies:
            reply._prompt_tokens = self._prompt_tokens  # the prompt of every reply; their tokens, counted together
            try:
                last.append(reply._last_chunk("", dict(usage)))
            except HuggingFaceAPIError as error:
                error.reply_index = reply._index
                self._fail(error)
                return
        chunks += last

    def replies(self) -> Replies:
        texts, metas = [], []
        for reply in self._replies:
            text, meta = reply.reply()
            texts.append(text)
            metas.append(meta)
        return texts, metas
