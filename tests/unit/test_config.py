"""Bad input is refused at construction or call time, before any request, naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import HFGenerationAPIType, HuggingFaceAPIGenerator, Timeout

# Nothing listens on this port: any request would fail with a connection error, not the expected one.
DEAD_URL = "http://127.0.0.1:9"


def make(**kwargs: Any) -> HuggingFaceAPIGenerator:
    kwargs.setdefault("api_type", "text_generation_inference")
    kwargs.setdefault("api_params", {"url": DEAD_URL})
    return HuggingFaceAPIGenerator(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"api_type": "text_generation"}, ValueError, "api_type must be one of 'text_generation_inference'"),
        ({"api_type": 3}, TypeError, "api_type"),
        ({"api_params": {}}, ValueError, r"api_params\['url'\] is required"),
        ({"api_params": "http://x"}, TypeError, "api_params must be a dict"),
        ({"api_params": {"url": "localhost:8080"}}, ValueError, r"api_params\['url'\] must be an http\(s\) URL"),
        ({"api_params": {"url": "ftp://h"}}, ValueError, r"api_params\['url'\]"),
        ({"api_params": {"url": DEAD_URL, "timout": 3}}, ValueError, r"unknown keys \['timout'\]"),
        ({"api_params": {"url": DEAD_URL, "timeout": -1}}, ValueError, r"api_params\['timeout'\]"),
        ({"api_params": {"url": DEAD_URL, "timeout": "3"}}, TypeError, r"api_params\['timeout'\]"),
        ({"api_params": {"url": DEAD_URL, "timeout": {"conect": 1}}}, ValueError, r"api_params\['timeout'\]"),
        ({"api_params": {"url": DEAD_URL, "headers": {"X": 1}}}, TypeError, r"api_params\['headers'\]"),
        ({"api_params": {"url": DEAD_URL, "protocol": "grpc"}}, ValueError, r"api_params\['protocol'\]"),
        ({"api_params": {"url": DEAD_URL, "max_retries": -1}}, ValueError, r"api_params\['max_retries'\]"),
        ({"api_params": {"url": DEAD_URL, "verify": "no"}}, TypeError, r"api_params\['verify'\]"),
        ({"api_type": "serverless_inference_api", "api_params": {}}, ValueError, r"api_params\['model'\] is required"),
        (
            {"api_type": "serverless_inference_api", "api_params": {"model": "gpt2"}},
            ValueError,
            r"api_params\['model'\]",
        ),
        ({"api_type": "inference_endpoints", "api_params": {"model": "org/m"}}, ValueError, r"api_params\['url'\]"),
        (
            {"api_type": "serverless_inference_api", "api_params": {"model": "org/m", "url": "http://h"}},
            ValueError,
            r"api_params\['url'\] does not apply",
        ),
        ({"api_params": {"url": DEAD_URL, "timeout": Timeout(connect=-1)}}, ValueError, r"api_params\['timeout'\]"),
        ({"token": "hf_abc"}, TypeError, "token must be a haystack.utils.Secret"),
        ({"streaming_callback": "print"}, TypeError, "streaming_callback"),
        ({"stop_words": "STOP"}, ValueError, "stop_words"),
        ({"stop_words": ["ok", ""]}, ValueError, "stop_words"),
        ({"generation_kwargs": {"max_tokens": 5}}, ValueError, r"generation_kwargs\['max_tokens'\].*max_new_tokens"),
        ({"generation_kwargs": {"max_new_tokens": 0}}, ValueError, r"generation_kwargs\['max_new_tokens'\]"),
        ({"generation_kwargs": {"max_new_tokens": 2.5}}, ValueError, r"generation_kwargs\['max_new_tokens'\]"),
        ({"generation_kwargs": {"max_new_tokens": True}}, ValueError, r"generation_kwargs\['max_new_tokens'\]"),
        ({"generation_kwargs": {"temperature": -0.1}}, ValueError, r"generation_kwargs\['temperature'\]"),
        ({"generation_kwargs": {"temperature": float("nan")}}, ValueError, r"generation_kwargs\['temperature'\]"),
        ({"generation_kwargs": {"top_p": 0}}, ValueError, r"generation_kwargs\['top_p'\]"),
        ({"generation_kwargs": {"top_p": 1.5}}, ValueError, r"generation_kwargs\['top_p'\]"),
        ({"generation_kwargs": {"top_k": 0}}, ValueError, r"generation_kwargs\['top_k'\]"),
        ({"generation_kwargs": {"repetition_penalty": 0}}, ValueError, r"generation_kwargs\['repetition_penalty'\]"),
        ({"generation_kwargs": {"frequency_penalty": 3}}, ValueError, r"generation_kwargs\['frequency_penalty'\]"),
        ({"generation_kwargs": {"seed": -1}}, ValueError, r"generation_kwargs\['seed'\]"),
        ({"generation_kwargs": {"do_sample": "yes"}}, ValueError, r"generation_kwargs\['do_sample'\]"),
        ({"generation_kwargs": {"stop": "x"}}, ValueError, r"generation_kwargs\['stop'\]"),
        ({"generation_kwargs": {"stop": [""]}}, ValueError, r"generation_kwargs\['stop'\]"),
        ({"generation_kwargs": {"typical_p": 1}}, ValueError, r"generation_kwargs\['typical_p'\]"),
        ({"generation_kwargs": {"grammar": "json"}}, ValueError, r"generation_kwargs\['grammar'\]"),
        ({"generation_kwargs": ["max_new_tokens"]}, TypeError, "generation_kwargs must be a dict"),
    ],
)
def test_bad_init_parameters(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        make(**kwargs)


@pytest.mark.parametrize(
    ("prompt", "generation_kwargs", "error", "pattern"),
    [
        ("", None, ValueError, "prompt must not be empty"),
        ("   \n", None, ValueError, "prompt must not be empty"),
        (None, None, TypeError, "prompt must be a string"),
        (["a"], None, TypeError, "prompt must be a string"),
        ("hi", {"unknown_kwarg": 1}, ValueError, r"generation_kwargs\['unknown_kwarg'\]"),
        ("hi", {"max_new_tokens": -5}, ValueError, r"generation_kwargs\['max_new_tokens'\]"),
        ("hi", "max_new_tokens=5", TypeError, "generation_kwargs must be a dict"),
    ],
)
def test_bad_run_input_fails_before_any_request(
    prompt: Any, generation_kwargs: Any, error: type[Exception], pattern: str
) -> None:
    # DEAD_URL would raise a connection error if a request were attempted.
    with pytest.raises(error, match=pattern):
        make().run(prompt, generation_kwargs=generation_kwargs)


async def test_bad_run_async_input_fails_before_any_request() -> None:
    with pytest.raises(ValueError, match="prompt must not be empty"):
        await make().run_async("")


def test_inputs_are_copied_not_mutated() -> None:
    api_params = {"url": DEAD_URL, "headers": {"X-A": "1"}}
    generation_kwargs = {"temperature": 0.3, "stop": ["a"]}
    stop_words = ["b"]
    generator = make(api_params=api_params, generation_kwargs=generation_kwargs, stop_words=stop_words)
    generator.api_params["headers"]["X-A"] = "changed"
    generator.generation_kwargs["stop"].append("c")
    generator.stop_words.append("d")  # type: ignore[union-attr]
    assert api_params == {"url": DEAD_URL, "headers": {"X-A": "1"}}
    assert generation_kwargs == {"temperature": 0.3, "stop": ["a"]}
    assert stop_words == ["b"]


def test_api_type_accepts_enum_and_string_and_timeout_forms() -> None:
    assert make(api_type=HFGenerationAPIType.INFERENCE_ENDPOINTS).api_type is HFGenerationAPIType.INFERENCE_ENDPOINTS
    assert make(api_type="inference_endpoints").api_type is HFGenerationAPIType.INFERENCE_ENDPOINTS
    assert Timeout.parse(5) == Timeout(connect=5, read=5)
    assert Timeout.parse({"read": 30}) == Timeout(connect=10, read=30)


def test_timeout_object_is_stored_serializable() -> None:
    generator = make(api_params={"url": DEAD_URL, "timeout": Timeout(connect=2, read=30)})
    assert generator.to_dict()["init_parameters"]["api_params"]["timeout"] == {"connect": 2, "read": 30}


def test_default_token_is_env_var_secret() -> None:
    token = make().token
    assert isinstance(token, Secret)
    assert token.to_dict() == {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False}
