"""The Hayhooks example's translation of OpenAI requests, in process (tests/e2e/test_hayhooks.py serves it for real)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import HTTPException
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import APIConnectionError

WRAPPER = Path(__file__).resolve().parents[1] / "examples/hayhooks/pipelines/hf_generate/pipeline_wrapper.py"


@pytest.fixture(scope="module")
def wrapper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hf_generate_wrapper", WRAPPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_of(raised: pytest.ExceptionInfo[HTTPException]) -> dict[str, Any]:
    assert raised.value.status_code == 400
    detail = raised.value.detail
    assert isinstance(detail, dict)
    assert set(detail["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = detail["error"]
    return error


def test_sampling_fields_become_generation_kwargs(wrapper: ModuleType) -> None:
    body = {
        "model": "hf_generate",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 12,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "\n",
        "seed": 7,
        "n": 1,
        "presence_penalty": 0,
        "logprobs": False,
        "response_format": {"type": "text"},
        "frequency_penalty": None,  # null: as if absent
        "user": "someone",
    }
    kwargs, sources = wrapper.generation_kwargs_from_body(body)
    assert kwargs == {"max_new_tokens": 12, "temperature": 0.2, "top_p": 0.9, "stop": ["\n"], "seed": 7}
    assert sources["max_new_tokens"] == "max_tokens"
    assert wrapper.generation_kwargs_from_body({"max_completion_tokens": 5, "stop": ["a", "b"]})[0] == {
        "max_new_tokens": 5,
        "stop": ["a", "b"],
    }
    assert wrapper.generation_kwargs_from_body({"stop": []})[0] == {}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 3}, "n", "unsupported_value"),
        ({"tools": [{"type": "function"}]}, "tools", "unsupported_value"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"typical_p": 0.5}, "typical_p", "unsupported_parameter"),
        ({"stop": [1]}, "stop", "invalid_type"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens", None),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    wrapper: ModuleType, body: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(HTTPException) as raised:
        wrapper.generation_kwargs_from_body(body)
    error = error_of(raised)
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_the_last_user_message_is_the_prompt(wrapper: ModuleType) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]},
        {"role": "assistant", "content": "trailing"},
    ]
    assert wrapper.prompt_from_messages(messages) == "second\npart"
    with pytest.raises(HTTPException) as raised:
        wrapper.prompt_from_messages([{"role": "system", "content": "x"}])
    assert error_of(raised)["param"] == "messages"
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    with pytest.raises(HTTPException) as raised:
        wrapper.prompt_from_messages([image])
    assert error_of(raised)["code"] == "unsupported_value"


async def test_a_stream_cut_after_it_started_ends_with_an_error_event(wrapper: ModuleType) -> None:
    closed: list[bool] = []

    async def rest() -> AsyncGenerator[Any, None]:
        try:
            yield StreamingChunk(content=" world")
            raise APIConnectionError("the connection broke after 2 events")
        finally:
            closed.append(True)

    first = StreamingChunk(content="Hello")
    events = [event async for event in wrapper._events(first, rest(), "hf_generate", False)]
    assert [event.choices[0].delta.content for event in events[:2]] == ["Hello", " world"]
    last = events[-1]
    assert last.choices == []
    error = last.model_dump()["error"]
    assert error["code"] == "model_server_unreachable"
    assert "the connection broke" in error["message"]
    assert closed == [True]


async def test_usage_is_the_last_event_when_asked(wrapper: ModuleType) -> None:
    async def rest() -> AsyncGenerator[Any, None]:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        yield StreamingChunk(content="", finish_reason="length", meta={"usage": usage})

    events = [event async for event in wrapper._events(StreamingChunk(content="Hi"), rest(), "hf_generate", True)]
    assert [event.choices[0].finish_reason for event in events[:2]] == [None, "length"]
    assert events[-1].choices == []
    assert events[-1].usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert len({event.id for event in events}) == 1
