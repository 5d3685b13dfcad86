"""`meta["usage"]` from the real local server, streamed and not, completions and chat, sync and async.

The locked `transformers serve` streams usage only when asked, in an extra event after the finish reason
(docs/local-model.md): the generator must ask, and read it there. The expected numbers are the server's own, from a
one-piece answer to the same request.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

pytestmark = pytest.mark.e2e

MAX_NEW_TOKENS = 5
PROMPTS = {"completions": "The capital of France is", "chat": "What is the capital of France?"}


def server_usage(model_url: str, protocol: str) -> dict[str, int]:
    """The usage the server reports for the request the generator sends, asked without the generator."""
    prompt = PROMPTS[protocol]
    if protocol == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
    else:
        path, body = "/v1/completions", {"prompt": prompt}
    answer = httpx.post(
        model_url + path, json={**body, "max_tokens": MAX_NEW_TOKENS, "temperature": 0}, timeout=120, trust_env=False
    )
    answer.raise_for_status()
    usage: dict[str, int] = answer.json()["usage"]
    assert usage["completion_tokens"] == MAX_NEW_TOKENS
    return usage


def make(model_url: str, protocol: str) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator(
        api_type="text_generation_inference",
        api_params={"url": model_url, "protocol": protocol},
        generation_kwargs={"max_new_tokens": MAX_NEW_TOKENS},
    )


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_usage_in_meta_plain_and_streamed(model_url: str, protocol: str) -> None:
    expected = server_usage(model_url, protocol)
    chunks: list[StreamingChunk] = []
    with make(model_url, protocol) as generator:
        plain = generator.run(PROMPTS[protocol])
        streamed = generator.run(PROMPTS[protocol], streaming_callback=chunks.append)
    for result in (plain, streamed):
        meta = result["meta"][0]
        assert meta["protocol"] == protocol
        assert meta["finish_reason"] == "length"
        assert meta["usage"] == expected
    assert streamed["replies"] == plain["replies"]
    assert chunks[-1].meta["usage"] == expected


@pytest.mark.parametrize("protocol", ["completions", "chat"])
async def test_usage_in_meta_async(model_url: str, protocol: str) -> None:
    expected = server_usage(model_url, protocol)
    chunks: list[StreamingChunk] = []

    async def callback(chunk: StreamingChunk) -> None:
        chunks.append(chunk)

    generator = make(model_url, protocol)
    try:
        results: list[dict[str, Any]] = [
            await generator.run_async(PROMPTS[protocol]),
            await generator.run_async(PROMPTS[protocol], streaming_callback=callback),
        ]
    finally:
        await generator.close_async()
    assert [r["meta"][0]["usage"] for r in results] == [expected, expected]
    assert chunks[-1].meta["usage"] == expected
