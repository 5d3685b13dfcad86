"""
The rule table against the real local engine, transformers serve: the parameters it takes (some only inside
its `generation_config`) give what a direct call with its own fields gives; the others are refused before
any request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.local_model import MODEL_NAME

pytestmark = pytest.mark.e2e

# A prompt the model continues in a loop when nothing stops it, so that a repetition penalty shows.
LOOPING = "I'm a language model, I'm a language model,"


@pytest.fixture(scope="module")
def generator(model_url: str) -> Iterator[HuggingFaceAPIGenerator]:
    with HuggingFaceAPIGenerator("text_generation_inference", {"url": model_url}) as component:
        yield component


def direct(model_url: str, **fields: Any) -> str:
    """The reply of a request written by hand with transformers serve's own fields."""
    body = {"model": MODEL_NAME, "prompt": LOOPING, "max_tokens": 16, **fields}
    answer = httpx.post(f"{model_url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    text: str = answer.json()["choices"][0]["text"]
    return text


def test_the_local_server_is_known_as_transformers_serve(generator: HuggingFaceAPIGenerator) -> None:
    generator.warm_up()
    assert generator._connection.core.route is not None
    assert generator._connection.core.route.engine.name == "transformers"


def test_repetition_penalty_reaches_generate_as_a_direct_call_gives_it(
    generator: HuggingFaceAPIGenerator, model_url: str
) -> None:
    ours = generator.run(LOOPING, generation_kwargs={"max_new_tokens": 16, "repetition_penalty": 1.8})["replies"][0]
    plain = generator.run(LOOPING, generation_kwargs={"max_new_tokens": 16})["replies"][0]
    assert ours == direct(model_url, temperature=0, generation_config=json.dumps({"repetition_penalty": 1.8}))
    assert ours != plain  # the penalty took effect: sent under a name the server ignored, it would not


def test_sampling_happens_when_asked_with_the_seed_and_top_k_it_was_given(
    generator: HuggingFaceAPIGenerator, model_url: str
) -> None:
    kwargs = {"max_new_tokens": 16, "temperature": 1.5, "top_k": 50, "seed": 5}
    sampled = generator.run(LOOPING, generation_kwargs=kwargs)["replies"][0]
    again = generator.run(LOOPING, generation_kwargs=kwargs)["replies"][0]
    greedy = generator.run(LOOPING, generation_kwargs={"max_new_tokens": 16})["replies"][0]
    config = json.dumps({"top_k": 50, "do_sample": True})
    assert sampled == again == direct(model_url, temperature=1.5, seed=5, generation_config=config)
    assert sampled != greedy  # before, temperature reached transformers serve and changed nothing


def test_n_is_a_request_per_reply_each_with_its_derived_seed(generator: HuggingFaceAPIGenerator) -> None:
    # transformers serve has no `n`; it serves one request at a time, so a seed gives the same text every time.
    kwargs = {"max_new_tokens": 16, "temperature": 1.5, "top_k": 50, "seed": 5}
    chunks: list[Any] = []
    result = generator.run(LOOPING, streaming_callback=chunks.append, generation_kwargs={**kwargs, "n": 2})
    alone = [generator.run(LOOPING, generation_kwargs={**kwargs, "seed": seed})["replies"][0] for seed in (5, 6)]
    assert result["replies"] == alone
    assert alone[0] != alone[1]
    for index, reply in enumerate(result["replies"]):
        assert "".join(c.content for c in chunks if c.index == index) == reply
        assert result["meta"][index]["engine"] == "transformers"
        assert result["meta"][index]["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"grammar": {"type": "json", "value": {"type": "object"}}}, "constrains no output"),
        ({"details": True}, "returns no log-probabilities"),
        ({"frequency_penalty": 0.5}, "use repetition_penalty"),
        ({"truncate": 8}, "no per-request prompt truncation"),
        ({"adapter_id": "sql"}, "no LoRA adapter"),
    ],
)
def test_what_it_cannot_honour_is_refused_naming_it(
    generator: HuggingFaceAPIGenerator, kwargs: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern) as raised:
        generator.run(LOOPING, generation_kwargs=kwargs)
    assert "cannot be honoured by transformers serve" in str(raised.value)
