"""Streamed chunks built on the fast path are the objects Haystack's constructor builds."""

import dataclasses
import json

from haystack.dataclasses import ComponentInfo, StreamingChunk

from haystack_integrations.generators.hugging_face_api._generation import FAST_CHUNKS, GenerationRequest, StreamState
from haystack_integrations.generators.hugging_face_api._protocols import TGIProtocol


def event(text: str) -> bytes:
    token = {"id": 1, "text": text, "logprob": 0, "special": False}
    return f"data: {json.dumps({'index': 1, 'token': token, 'generated_text': None})}\n\n".encode()


def test_fast_path_is_active_and_chunks_equal_constructed_ones() -> None:
    assert FAST_CHUNKS, "Haystack's StreamingChunk changed: check _copy_chunk (the constructor is used meanwhile)"
    info = ComponentInfo(type="t", name="llm")
    state = StreamState(GenerationRequest("p", {}, [], False), TGIProtocol("m"), "m", info, "POST x", str)
    chunks = [state.feed(event(word))[0] for word in ["a", "b", "c", "d"]]
    for position, chunk in enumerate(chunks):
        assert type(chunk) is StreamingChunk
        expected = StreamingChunk(
            content="abcd"[position], meta={"model": "m"}, component_info=info, index=0, start=position == 0
        )
        assert chunk == expected
        assert dataclasses.asdict(chunk) == dataclasses.asdict(expected)
    # Each chunk owns its meta: changing one does not change another.
    assert chunks[2].meta is not chunks[3].meta
