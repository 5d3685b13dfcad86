"""to_dict / from_dict, YAML pipelines (ours and Haystack 2.x's), secrets and callbacks."""

from __future__ import annotations

import warnings

import pytest
from haystack import Pipeline
from haystack.components.generators.utils import print_streaming_chunk as print_chunk
from haystack.core.errors import DeserializationError
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import HFGenerationAPIType, HuggingFaceAPIGenerator
from tests.fakes import FakeTGI

TYPE = "haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator"
TEXT = "Natural Language Processing is a field."


def test_to_dict_defaults() -> None:
    generator = HuggingFaceAPIGenerator(HFGenerationAPIType.TEXT_GENERATION_INFERENCE, {"url": "http://h:8080"})
    assert generator.to_dict() == {
        "type": TYPE,
        "init_parameters": {
            "api_type": "text_generation_inference",
            "api_params": {"url": "http://h:8080"},
            "token": {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False},
            "generation_kwargs": {"max_new_tokens": 512},
            "stop_words": None,
            "streaming_callback": None,
        },
    }


def test_round_trip_keeps_everything_and_does_not_duplicate_stop_words() -> None:
    generator = HuggingFaceAPIGenerator(
        "serverless_inference_api",
        {"model": "org/model", "provider": "together", "timeout": 30},
        token=Secret.from_env_var("MY_TOKEN"),
        generation_kwargs={"temperature": 0.2, "stop": ["###"]},
        stop_words=["\nUser:"],
        streaming_callback=print_chunk,
    )
    data = generator.to_dict()
    assert data["init_parameters"]["streaming_callback"] == "haystack.components.generators.utils.print_streaming_chunk"
    again = HuggingFaceAPIGenerator.from_dict(data)
    assert again.to_dict() == data
    assert HuggingFaceAPIGenerator.from_dict(again.to_dict()).to_dict() == data
    assert again.stop_words == ["\nUser:"]
    assert again.generation_kwargs["stop"] == ["###"]
    assert again.streaming_callback is print_chunk


def test_from_dict_does_not_mutate_input() -> None:
    data = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": "http://h"}, streaming_callback=print_chunk
    ).to_dict()
    snapshot = repr(data)
    HuggingFaceAPIGenerator.from_dict(data)
    assert repr(data) == snapshot


def test_token_secret_refuses_to_serialize_and_never_shows() -> None:
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": "http://h"}, token=Secret.from_token("hf_supersecret")
    )
    with pytest.raises(ValueError, match="Cannot serialize token-based secret"):
        generator.to_dict()
    assert "hf_supersecret" not in repr(generator)
    assert "hf_supersecret" not in repr(generator.token)


@pytest.mark.parametrize("handle", ["os.system", "tests.test_serialization.test_to_dict_defaults"])
def test_callback_outside_allowlist_is_refused(handle: str) -> None:
    data = HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://h"}).to_dict()
    data["init_parameters"]["streaming_callback"] = handle
    with pytest.raises(DeserializationError, match="allowlist"):
        HuggingFaceAPIGenerator.from_dict(data)


YAML = """
components:
  llm:
    type: haystack_integrations.generators.hugging_face_api.HuggingFaceAPIGenerator
    init_parameters:
      api_type: text_generation_inference
      api_params:
        url: {url}
      generation_kwargs:
        max_new_tokens: 3
      stop_words: null
connections: []
"""


def test_yaml_pipeline_loads_runs_and_takes_query_time_kwargs() -> None:
    with FakeTGI() as server:
        pipeline = Pipeline.loads(YAML.format(url=server.url))
        result = pipeline.run({"llm": {"prompt": "What's NLP?"}})
        assert result["llm"]["replies"] == ["Natural Language Processing"]
        result = pipeline.run({"llm": {"prompt": "What's NLP?", "generation_kwargs": {"max_new_tokens": 1}}})
        assert result["llm"]["replies"] == ["Natural"]
        assert server.requests[-1].json["parameters"]["max_new_tokens"] == 1
        # Dumping and loading again gives the same pipeline.
        assert Pipeline.loads(pipeline.dumps()).to_dict() == pipeline.to_dict()


async def test_pipeline_run_async_runs_the_component() -> None:
    with FakeTGI() as server:
        pipeline = Pipeline.loads(YAML.format(url=server.url))
        result = await pipeline.run_async({"llm": {"prompt": "What's NLP?"}})
    assert result["llm"]["replies"] == ["Natural Language Processing"]


LEGACY_YAML = """
components:
  llm:
    type: haystack.components.generators.hugging_face_api.HuggingFaceAPIGenerator
    init_parameters:
      api_type: text_generation_inference
      api_params:
        url: {url}
      token:
        type: env_var
        env_vars: [HF_API_TOKEN, HF_TOKEN]
        strict: false
      generation_kwargs:
        max_new_tokens: 512
        stop_sequences: [" is"]
      stop_words: [" is"]
      streaming_callback: null
connections: []
"""


def test_haystack_2_yaml_loads_migrates_and_runs() -> None:
    with FakeTGI() as server:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline = Pipeline.loads(LEGACY_YAML.format(url=server.url))
        assert any("Haystack 2.x" in str(w.message) for w in caught)
        result = pipeline.run({"llm": {"prompt": "What's NLP?"}})
        assert result["llm"]["replies"] == ["Natural Language Processing"]
        assert server.requests[-1].json["parameters"]["stop"] == [" is"]
    saved = pipeline.to_dict()["components"]["llm"]
    assert saved["type"] == TYPE
    assert saved["init_parameters"]["stop_words"] == [" is"]
    assert "stop_sequences" not in saved["init_parameters"]["generation_kwargs"]
