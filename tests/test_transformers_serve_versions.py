"""Streamed usage from both releases of `transformers serve` that users run (docs/local-model.md has the facts).

5.24 puts `usage` in the event that carries the finish reason, asked or not. 5.25 sends it, as OpenAI does, in an
extra last event with `"choices": []`, and only when the request asks with `stream_options.include_usage`. The
lock pins one of them for the end-to-end tests; a user's server may be either, so the generator is run through the
fake behaving like each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from tests.fakes import FakeOpenAI

PROMPT = "What's Natural Language Processing?"
# How each release streams usage, in the fake's terms; both keep the stop text and send no `data: [DONE]`.
RELEASES = {"5.24": "final_choice", "5.25": "request"}


@pytest.fixture(params=sorted(RELEASES))
def serve(request: pytest.FixtureRequest) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(keep_stop_text=True, done_marker=False, stream_usage=RELEASES[request.param]) as server:
        yield server


def stream_events(server: FakeOpenAI, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    text = httpx.post(server.url + path, json={**body, "stream": True}, trust_env=False).text
    payloads = [line[len("data: ") :] for line in text.splitlines() if line]
    assert "[DONE]" not in payloads
    return [json.loads(payload) for payload in payloads]


@pytest.mark.parametrize("asked", [False, True])
def test_the_fake_streams_usage_like_each_release(serve: FakeOpenAI, asked: bool) -> None:
    body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 4}
    if asked:
        body["stream_options"] = {"include_usage": True}
    events = stream_events(serve, "/v1/completions", body)
    with_usage = [event for event in events if "usage" in event]
    usage = {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    if serve.stream_usage == "final_choice":  # 5.24
        assert with_usage == [events[-1]]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"] == usage
    elif asked:  # 5.25, asked
        assert with_usage == [events[-1]]
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == usage
        assert events[-2]["choices"][0]["finish_reason"] == "length"
    else:  # 5.25, not asked
        assert with_usage == []
        assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("protocol", ["completions", "chat"])
@pytest.mark.parametrize("stop_words", [None, [" Processing"]])
def test_the_generator_reports_usage_from_either_release(
    serve: FakeOpenAI, protocol: str, stop_words: list[str] | None
) -> None:
    api_params = {"url": serve.url, "protocol": protocol, "max_retries": 0}
    with HuggingFaceAPIGenerator(
        api_type="text_generation_inference", api_params=api_params, stop_words=stop_words
    ) as generator:
        whole = generator.run(PROMPT, generation_kwargs={"max_new_tokens": 6})
        chunks: list[StreamingChunk] = []
        streamed = generator.run(PROMPT, generation_kwargs={"max_new_tokens": 6}, streaming_callback=chunks.append)
    assert streamed["replies"] == whole["replies"]
    usage = whole["meta"][0]["usage"]
    completion_tokens = 3 if stop_words else 6  # "Natural Language Processing" is 3 of the fake's tokens
    assert usage == {"prompt_tokens": 4, "completion_tokens": completion_tokens, "total_tokens": 4 + completion_tokens}
    assert streamed["meta"][0]["usage"] == usage
    assert chunks[-1].meta["usage"] == usage
    assert chunks[-1].finish_reason == ("stop" if stop_words else "length")
