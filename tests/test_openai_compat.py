"""Protocol detection and OpenAI-compatible engines (vLLM-like, chat-only, transformers-serve-like)."""

from __future__ import annotations

from typing import Any

import pytest
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import GenerationError, HuggingFaceAPIGenerator, NotFoundError
from tests.fakes import FakeOpenAI, FakeTGI, Fault

TEXT = "Natural Language Processing is a field."
PROMPT = "What's Natural Language Processing?"


def make(url: str, **kwargs: Any) -> HuggingFaceAPIGenerator:
    api_params = {"url": url, "max_retries": 0, **kwargs.pop("api_params", {})}
    return HuggingFaceAPIGenerator(api_type="inference_endpoints", api_params=api_params, **kwargs)


def posts(server: Any) -> list[Any]:
    return [r for r in server.requests if r.method == "POST"]


def test_auto_picks_completions_with_the_served_model_name(openai_server: FakeOpenAI) -> None:
    result = make(openai_server.url).run(PROMPT)
    assert result["replies"] == [TEXT]
    request = posts(openai_server)[0]
    assert request.path == "/v1/completions"
    assert request.json["model"] == openai_server.model_id
    assert request.json["prompt"] == PROMPT
    assert request.json["max_tokens"] == 512
    meta = result["meta"][0]
    assert meta["protocol"] == "completions"
    assert meta["route"] == "/v1/completions"
    assert meta["finish_reason"] == "stop"
    assert meta["usage"]["prompt_tokens"] == len(PROMPT.split())
    assert meta["usage"]["total_tokens"] == meta["usage"]["prompt_tokens"] + meta["usage"]["completion_tokens"]


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_url_with_or_without_v1(openai_server: FakeOpenAI, suffix: str) -> None:
    assert make(openai_server.url + suffix).run(PROMPT)["replies"] == [TEXT]


def test_auto_picks_tgi_native_routes_when_info_answers_like_tgi(tgi: FakeTGI) -> None:
    result = make(tgi.url).run(PROMPT)
    assert result["meta"][0]["protocol"] == "tgi"
    assert posts(tgi)[0].path == "/generate"


def test_forced_completions_protocol_on_tgi(tgi: FakeTGI) -> None:
    result = make(tgi.url, api_params={"protocol": "completions"}).run(PROMPT)
    assert result["meta"][0]["protocol"] == "completions"


def test_chat_only_server_falls_back_to_chat_and_remembers() -> None:
    with FakeOpenAI(routes={"chat"}) as server:
        generator = make(server.url)
        first = generator.run(PROMPT)
        second = generator.run(PROMPT)
    assert first["replies"] == second["replies"] == [TEXT]
    assert first["meta"][0]["protocol"] == "chat"
    paths = [r.path for r in posts(server)]
    assert paths == ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions"]
    assert posts(server)[-1].json["messages"] == [{"role": "user", "content": PROMPT}]


def test_forced_completions_on_chat_only_server_raises() -> None:
    with FakeOpenAI(routes={"chat"}) as server, pytest.raises(NotFoundError):
        make(server.url, api_params={"protocol": "completions"}).run(PROMPT)


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_streaming_stop_words_and_usage(protocol: str) -> None:
    with FakeOpenAI(keep_stop_text=True, done_marker=False) as server:
        chunks: list[StreamingChunk] = []
        generator = make(server.url, api_params={"protocol": protocol}, stop_words=[" is"])
        streamed = generator.run(PROMPT, streaming_callback=chunks.append)
        whole = generator.run(PROMPT)
    assert streamed["replies"] == whole["replies"] == ["Natural Language Processing"]
    assert "".join(c.content for c in chunks) == "Natural Language Processing"
    assert chunks[0].start and chunks[-1].finish_reason == "stop"
    assert whole["meta"][0]["usage"]["completion_tokens"] >= 1
    body = posts(server)[0].json
    assert body["stop"] == [" is"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_usage_from_final_chunk() -> None:
    with FakeOpenAI() as server:
        result = make(server.url).run(PROMPT, streaming_callback=lambda chunk: None)
    usage = result["meta"][0]["usage"]
    assert usage["prompt_tokens"] == len(PROMPT.split())
    assert usage["completion_tokens"] >= 7


def test_parameters_are_mapped(openai_server: FakeOpenAI) -> None:
    kwargs = {"max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 3, "seed": 1, "repetition_penalty": 1.1}
    make(openai_server.url, generation_kwargs=kwargs).run(PROMPT)
    body = posts(openai_server)[0].json
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty")} == {
        "max_tokens": 5,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 3,
        "seed": 1,
        "repetition_penalty": 1.1,
    }
    make(openai_server.url, generation_kwargs={"do_sample": False}).run(PROMPT)
    assert posts(openai_server)[-1].json["temperature"] == 0


@pytest.mark.parametrize(("name", "value"), [("typical_p", 0.5), ("watermark", True), ("best_of", 2)])
def test_parameter_the_engine_cannot_honour_is_an_error(openai_server: FakeOpenAI, name: str, value: Any) -> None:
    # FakeOpenAI is vLLM-like (owned_by "vllm"); tests/test_engines.py covers every engine and parameter.
    with pytest.raises(ValueError, match=rf"generation_kwargs\['{name}'\] cannot be honoured by vLLM"):
        make(openai_server.url).run(PROMPT, generation_kwargs={name: value})
    assert posts(openai_server) == []


def test_best_of_is_refused_by_chat() -> None:
    with FakeOpenAI() as server, pytest.raises(ValueError, match="best_of"):
        make(server.url, api_params={"protocol": "chat"}).run(PROMPT, generation_kwargs={"best_of": 2})


def test_return_full_text_on_completions(openai_server: FakeOpenAI) -> None:
    result = make(openai_server.url, generation_kwargs={"return_full_text": True}).run(PROMPT)
    assert result["replies"] == [PROMPT + TEXT]
    assert "return_full_text" not in posts(openai_server)[0].json


async def test_run_async_on_completions_and_chat_fallback() -> None:
    with FakeOpenAI(routes={"chat"}) as server:
        chunks: list[StreamingChunk] = []

        async def callback(chunk: StreamingChunk) -> None:
            chunks.append(chunk)

        generator = make(server.url)
        result = await generator.run_async(PROMPT, streaming_callback=callback)
        assert result["replies"] == [TEXT]
        assert "".join(c.content for c in chunks) == TEXT
        assert result["meta"][0]["protocol"] == "chat"
        await generator.aclose()


def test_explicit_model_name_is_used(openai_server: FakeOpenAI) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        make(openai_server.url, api_params={"model": "other/model"}).run(PROMPT)


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_streamed_meta_with_stop_word_matches_one_piece_meta(protocol: str) -> None:
    # transformers serve style: the stop text is kept and usage comes in the last event, after the stop word.
    with FakeOpenAI(keep_stop_text=True, done_marker=False, stream_usage="always") as server:
        generator = make(server.url, api_params={"protocol": protocol}, stop_words=[" Processing"])
        streamed = generator.run(PROMPT, streaming_callback=lambda chunk: None)["meta"][0]
        whole = generator.run(PROMPT)["meta"][0]
    del streamed["completion_start_time"]
    assert streamed == whole
    assert whole["usage"]["completion_tokens"] == 3


def test_greedy_unless_sampling_is_asked_for_like_tgi(openai_server: FakeOpenAI) -> None:
    make(openai_server.url).run(PROMPT)
    assert posts(openai_server)[-1].json["temperature"] == 0
    make(openai_server.url, generation_kwargs={"do_sample": True}).run(PROMPT)
    assert "temperature" not in posts(openai_server)[-1].json
    make(openai_server.url, generation_kwargs={"top_p": 0.9}).run(PROMPT)
    assert "temperature" not in posts(openai_server)[-1].json


def test_a_transient_404_does_not_switch_a_working_server_to_chat() -> None:
    with FakeOpenAI(routes={"completions"}) as server:
        server.faults.append(Fault.status(404, {"detail": "Not Found"}))
        generator = make(server.url)
        with pytest.raises(NotFoundError):
            generator.run(PROMPT)
        assert generator.run(PROMPT)["meta"][0]["protocol"] == "completions"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("reason", ["abort", "error"])
def test_aborted_generation_is_an_error_not_a_reply(stream: bool, reason: str) -> None:
    with FakeOpenAI() as server:
        server.engine.finish_reason_override = reason
        generator = make(server.url)
        with pytest.raises(GenerationError, match=reason):
            generator.run(PROMPT, streaming_callback=(lambda chunk: None) if stream else None)


def test_non_string_finish_reason_is_ignored_not_a_crash() -> None:
    with FakeOpenAI() as server:
        server.engine.finish_reason_override = {"type": "stop"}
        result = make(server.url).run(PROMPT)
    assert result["replies"] == [TEXT]
    assert result["meta"][0]["finish_reason"] is None


def test_reset_after_the_final_chunk_keeps_the_complete_reply() -> None:
    # The OpenAI stream carried its finish reason; only the closing [DONE] was lost.
    with FakeOpenAI(stream_usage="never") as server:
        server.faults.append(Fault.reset(after_events=8))
        chunks: list[StreamingChunk] = []
        result = make(server.url).run(PROMPT, streaming_callback=chunks.append)
    assert result["replies"] == [TEXT]
    assert chunks[-1].finish_reason == "stop"


def test_neutral_top_p_does_not_ask_for_sampling(openai_server: FakeOpenAI) -> None:
    make(openai_server.url, generation_kwargs={"top_p": 1.0}).run(PROMPT)
    assert posts(openai_server)[-1].json["temperature"] == 0
