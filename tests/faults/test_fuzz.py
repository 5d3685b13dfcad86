"""
Fuzzing the stream parser and the stop-word trimmer: for any input, the outcome is a correct reply or
one of the documented exceptions, never anything else (no KeyError, TypeError, hang or wrong text).
"""

from __future__ import annotations

import json
from typing import Any

from haystack.dataclasses import ComponentInfo
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIError
from haystack_integrations.generators.hugging_face_api._generation import GenerationRequest, StreamState
from haystack_integrations.generators.hugging_face_api._protocols import (
    ChatProtocol,
    CompletionsProtocol,
    Protocol,
    TGIProtocol,
)
from haystack_integrations.generators.hugging_face_api._stop import StopWordFilter, cut_at_stop_words

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def tgi_event(text: str, special: bool, final: bool) -> dict[str, Any]:
    return {
        "index": 1,
        "token": {"id": 1, "text": text, "logprob": 0.0, "special": special},
        "generated_text": "x" if final else None,
        "details": {"finish_reason": "length", "generated_tokens": 1, "input_length": 1} if final else None,
    }


# Lines a stream may contain: well-formed events, JSON of any shape, garbage, comments, blank lines.
lines = st.one_of(
    st.builds(
        lambda t, s, f: "data: " + json.dumps(tgi_event(t, s, f)), st.text(max_size=5), st.booleans(), st.booleans()
    ),
    st.builds(lambda v: "data:" + json.dumps(v), json_values),
    st.builds(lambda v: "data: " + json.dumps({"choices": [v]}), json_values),
    st.builds(lambda v: "data: " + json.dumps({"error": v, "error_type": "generation"}), json_values),
    st.text(max_size=20).map(lambda s: s.replace("\n", " ").replace("\r", " ")),
    st.sampled_from(["", ":", ": keep-alive", "data: [DONE]", "event: error", "data:", "data: null"]),
)
protocols: list[Protocol] = [TGIProtocol(None), CompletionsProtocol(None), ChatProtocol(None)]


@settings(max_examples=1500, deadline=None)
@given(st.lists(lines, max_size=30), st.sampled_from(protocols), st.lists(st.text(min_size=1, max_size=3), max_size=3))
def test_stream_parser_gives_a_reply_or_a_documented_error(
    stream: list[str], protocol: Protocol, stop_words: list[str]
) -> None:
    request = GenerationRequest("p", {}, stop_words, False)
    state = StreamState(request, protocol, "m", ComponentInfo(type="t"), "POST x", str)
    chunks = []
    for line in [*stream, ""]:
        chunks.extend(state.feed(line.encode() + b"\n"))
        if state.done:
            break
    chunks.extend(state.feed(b""))  # the body ends
    assert state.done
    if state.failure is not None:
        assert isinstance(state.failure, HuggingFaceAPIError)
        return
    reply = "".join(chunk.content for chunk in chunks)
    assert reply == state.delivered == state.reply()[0]
    assert not any(word in reply for word in stop_words)
    assert [chunk.finish_reason is not None or chunk.meta.keys() == {"model"} for chunk in chunks]
    final = chunks[-1]
    assert final.meta.get("protocol") == protocol.name  # the last chunk carries the reply's meta
    assert final.finish_reason in (None, "stop", "length", "content_filter", "tool_calls")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=10), st.lists(st.text(min_size=1, max_size=4), max_size=4))
def test_trimmer_on_arbitrary_unicode(pieces: list[str], stop_words: list[str]) -> None:
    trimmer = StopWordFilter(stop_words)
    out = "".join(trimmer.feed(piece) for piece in pieces)
    if not trimmer.stopped:
        out += trimmer.flush()
    assert out == cut_at_stop_words("".join(pieces), stop_words)[0]
