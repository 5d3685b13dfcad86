"""
Property, end to end through real HTTP: however a text is split into stream events and whatever the
stop words, the streamed reply equals the one-piece reply, and the callback saw exactly the reply.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from haystack.dataclasses import StreamingChunk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._stop import cut_at_stop_words
from tests.fakes import FakeOpenAI, FakeTGI

alphabet = st.sampled_from("ab \n.:")
tokens_strategy = st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=12)
stop_words_strategy = st.lists(st.text(alphabet, min_size=1, max_size=3), max_size=3, unique=True)


@pytest.fixture(scope="module", params=["tgi", "completions"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeTGI | FakeOpenAI]:
    fake = FakeTGI() if request.param == "tgi" else FakeOpenAI(keep_stop_text=True)
    with fake:
        yield fake


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=tokens_strategy, stop_words=stop_words_strategy)
def test_streamed_reply_equals_one_piece_reply(
    server: FakeTGI | FakeOpenAI, tokens: list[str], stop_words: list[str]
) -> None:
    server.tokens = tokens
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": server.url, "max_retries": 0}, stop_words=stop_words or None
    )
    chunks: list[StreamingChunk] = []
    streamed = generator.run("prompt", streaming_callback=chunks.append)["replies"][0]
    whole = generator.run("prompt")["replies"][0]
    generator.close()
    assert streamed == whole == cut_at_stop_words("".join(tokens), stop_words)[0]
    assert "".join(c.content for c in chunks) == streamed
    assert chunks[-1].finish_reason is not None
