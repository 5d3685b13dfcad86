"""The component against a fake TGI server speaking TGI's native protocol over real HTTP."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import (
    GenerationError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    OverloadedError,
    ValidationError,
)
from tests.fakes import FakeTGI, Fault
from tests.helpers import posts

TEXT = "Natural Language Processing is a field."
PROMPT = "What's Natural Language Processing?"


def make(server: FakeTGI, **kwargs: object) -> HuggingFaceAPIGenerator:
    kwargs.setdefault("api_params", {"url": server.url, "max_retries": 0})
    return HuggingFaceAPIGenerator(api_type="text_generation_inference", **kwargs)  # type: ignore[arg-type]


def collect() -> tuple[list[StreamingChunk], object]:
    chunks: list[StreamingChunk] = []
    return chunks, chunks.append


def test_run_uses_generate_route_and_returns_reply_without_prompt(tgi: FakeTGI) -> None:
    result = make(tgi).run(PROMPT)
    assert result["replies"] == [TEXT]
    generate_calls = [r for r in tgi.requests if r.method == "POST"]
    assert [r.path for r in generate_calls] == ["/generate"]
    params = generate_calls[0].json["parameters"]
    assert params["return_full_text"] is False
    assert params["max_new_tokens"] == 512
    assert PROMPT not in result["replies"][0]


def test_meta_has_model_normalised_finish_reason_and_usage(tgi: FakeTGI) -> None:
    meta = make(tgi).run(PROMPT)["meta"][0]
    assert meta["model"] == tgi.model_id
    assert meta["finish_reason"] == "stop"
    assert meta["server_finish_reason"] == "eos_token"
    prompt_tokens = len(PROMPT.split())
    assert meta["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 8,  # 7 text tokens and the EOS token
        "total_tokens": prompt_tokens + 8,
    }
    assert meta["protocol"] == "tgi"
    assert "completion_start_time" not in meta


def test_length_finish_reason(tgi: FakeTGI) -> None:
    result = make(tgi, generation_kwargs={"max_new_tokens": 2}).run(PROMPT)
    assert result["replies"] == ["Natural Language"]
    assert result["meta"][0]["finish_reason"] == "length"


def test_return_full_text_prepends_prompt_on_both_paths(tgi: FakeTGI) -> None:
    generator = make(tgi, generation_kwargs={"return_full_text": True})
    assert generator.run(PROMPT)["replies"] == [PROMPT + TEXT]
    chunks, callback = collect()
    reply = generator.run(PROMPT, streaming_callback=callback)["replies"][0]
    assert reply == PROMPT + TEXT
    assert "".join(c.content for c in chunks) == reply


def test_streaming_chunks_follow_haystack_conventions(tgi: FakeTGI) -> None:
    chunks, callback = collect()
    generator = make(tgi, streaming_callback=callback)
    result = generator.run(PROMPT)
    assert [r.path for r in tgi.requests if r.method == "POST"] == ["/generate_stream"]
    assert result["replies"] == [TEXT]
    assert "".join(c.content for c in chunks) == TEXT
    assert chunks[0].start is True
    assert all(c.start is False for c in chunks[1:])
    assert all(c.index == 0 for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert all(
        c.component_info is not None and c.component_info.type.endswith("HuggingFaceAPIGenerator") for c in chunks
    )
    meta = result["meta"][0]
    assert meta["usage"]["completion_tokens"] == 8
    assert meta["usage"]["prompt_tokens"] == len(PROMPT.split())
    datetime.fromisoformat(meta["completion_start_time"])
    assert chunks[-1].meta == meta


def test_special_tokens_never_reach_replies_or_callbacks(tgi: FakeTGI) -> None:
    chunks, callback = collect()
    reply = make(tgi).run(PROMPT, streaming_callback=callback)["replies"][0]
    assert "</s>" not in reply
    assert all("</s>" not in c.content for c in chunks)


def test_runtime_callback_wins_over_init_callback(tgi: FakeTGI) -> None:
    init_chunks, init_cb = collect()
    run_chunks, run_cb = collect()
    make(tgi, streaming_callback=init_cb).run(PROMPT, streaming_callback=run_cb)
    assert init_chunks == []
    assert "".join(c.content for c in run_chunks) == TEXT


@pytest.mark.parametrize(("sse_space", "keepalive", "done_marker"), [(True, False, False), (False, True, True)])
def test_stream_framings(sse_space: bool, keepalive: bool, done_marker: bool) -> None:
    with FakeTGI(sse_space=sse_space, keepalive=keepalive, done_marker=done_marker) as server:
        chunks, callback = collect()
        result = make(server).run(PROMPT, streaming_callback=callback)
    assert result["replies"] == [TEXT]
    assert "".join(c.content for c in chunks) == TEXT


def test_runtime_generation_kwargs_override_init_key_by_key_without_mutation(tgi: FakeTGI) -> None:
    init_kwargs = {"max_new_tokens": 3, "temperature": 0.5}
    runtime_kwargs = {"max_new_tokens": 5}
    generator = make(tgi, generation_kwargs=init_kwargs)
    generator.run(PROMPT, generation_kwargs=runtime_kwargs)
    params = tgi.requests[-1].json["parameters"]
    assert params["max_new_tokens"] == 5
    assert params["temperature"] == 0.5
    assert init_kwargs == {"max_new_tokens": 3, "temperature": 0.5}
    assert runtime_kwargs == {"max_new_tokens": 5}


def test_temperature_zero_and_top_p_one_mean_greedy_and_no_filter_on_tgi(tgi: FakeTGI) -> None:
    make(tgi, generation_kwargs={"temperature": 0, "top_p": 1.0}).run(PROMPT)
    params = tgi.requests[-1].json["parameters"]
    assert "temperature" not in params
    assert "top_p" not in params
    assert params["do_sample"] is False


def test_stop_words_are_sent_and_trimmed(tgi: FakeTGI) -> None:
    stop_words = [" is"]
    generator = make(tgi, stop_words=stop_words, generation_kwargs={"stop": [" field"]})
    result = generator.run(PROMPT)
    assert tgi.requests[-1].json["parameters"]["stop"] == [" is", " field"]
    assert result["replies"] == ["Natural Language Processing"]
    assert result["meta"][0]["finish_reason"] == "stop"
    assert result["meta"][0]["server_finish_reason"] == "stop_sequence"
    assert stop_words == [" is"]


def test_stop_word_split_across_events_is_trimmed_in_stream() -> None:
    with FakeTGI(tokens=["The", " answer", " is", " 4", "2", ".", "\n", "Us", "er", ":", " next"]) as server:
        chunks, callback = collect()
        generator = make(server, stop_words=["\nUser:"])
        streamed = generator.run("q", streaming_callback=callback)
        whole = generator.run("q")
    assert streamed["replies"] == whole["replies"] == ["The answer is 42."]
    assert "".join(c.content for c in chunks) == "The answer is 42."
    assert chunks[-1].finish_reason == "stop"


def test_stop_word_that_server_does_not_honour_stops_the_stream() -> None:
    # The stop word ends inside a token, so the server never stops on it: we cut and hang up.
    with FakeTGI(tokens=["Hello", " wor", "ld and", " more", " text"]) as server:
        chunks, callback = collect()
        result = make(server, stop_words=["world"]).run("q", streaming_callback=callback)
    assert result["replies"] == ["Hello "]
    assert result["meta"][0]["finish_reason"] == "stop"
    assert "".join(c.content for c in chunks) == "Hello "


def test_validation_error_carries_status_and_server_message(tgi: FakeTGI) -> None:
    tgi.faults.append(
        Fault.status(422, body={"error": "Input validation error: `top_k` must be > 0", "error_type": "validation"})
    )
    with pytest.raises(ValidationError) as raised:
        make(tgi).run(PROMPT)
    assert raised.value.status_code == 422
    assert raised.value.server_message == "Input validation error: `top_k` must be > 0"
    assert raised.value.error_type == "validation"


def test_more_stop_words_than_the_server_allows_fails_before_sending(tgi: FakeTGI) -> None:
    generator = make(tgi, stop_words=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match=r"stop_words: 5 stop words .* at most 4"):
        generator.run(PROMPT)
    assert [r.method for r in tgi.requests] == ["GET"]  # only /info


def test_server_side_validation_is_a_validation_error(tgi: FakeTGI) -> None:
    with pytest.raises(ValidationError, match="best_of") as raised:
        make(tgi, generation_kwargs={"best_of": 3, "do_sample": True}).run(PROMPT)
    assert raised.value.status_code == 422


def test_server_side_validation_in_stream(tgi: FakeTGI) -> None:
    with pytest.raises(ValidationError, match="top_n_tokens") as raised:
        make(tgi, generation_kwargs={"top_n_tokens": 50}).run(PROMPT, streaming_callback=print)
    assert raised.value.status_code == 200  # TGI's streams always answer 200, then send the error


@pytest.mark.parametrize(
    "kwargs", [{"best_of": 2, "do_sample": True}, {"decoder_input_details": True}], ids=["best_of", "prefill"]
)
def test_what_tgi_answers_in_one_piece_only_is_refused_for_a_stream_before_any_request(
    tgi: FakeTGI, kwargs: dict[str, object]
) -> None:
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"generation_kwargs\['{key}'\] cannot be honoured by TGI in a streamed"):
        make(tgi, generation_kwargs=kwargs).run(PROMPT, streaming_callback=print)
    assert posts(tgi) == 0
    assert len(make(tgi, generation_kwargs=kwargs).run(PROMPT)["replies"]) == 1  # in one piece, it is asked


def test_in_stream_error_event_raises_with_server_message(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.error_event(after_events=2, error="CUDA out of memory", error_type="generation"))
    chunks, callback = collect()
    with pytest.raises(GenerationError) as raised:
        make(tgi).run(PROMPT, streaming_callback=callback)
    assert raised.value.server_message == "CUDA out of memory"
    assert raised.value.delivered_text == "".join(c.content for c in chunks)


def test_overloaded_error_event(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.error_event(after_events=0, error="Model is overloaded", error_type="overloaded"))
    with pytest.raises(OverloadedError):
        make(tgi).run(PROMPT, streaming_callback=lambda chunk: None)


def test_stream_without_final_event_raises_and_is_never_a_reply(tgi: FakeTGI) -> None:
    tgi.faults.append(Fault.no_final(after_events=3))
    chunks, callback = collect()
    with pytest.raises(IncompleteStreamError) as raised:
        make(tgi).run(PROMPT, streaming_callback=callback)
    assert raised.value.delivered_text == "Natural Language Processing"
    assert all(c.finish_reason is None for c in chunks)


def test_compat_route_quirk_would_prepend_prompt_but_we_never_use_it(tgi: FakeTGI) -> None:
    import httpx

    quirky = httpx.post(f"{tgi.url}/", json={"inputs": PROMPT, "parameters": {}}).json()
    assert quirky[0]["generated_text"].startswith(PROMPT)
    assert make(tgi).run(PROMPT)["replies"] == [TEXT]


async def test_run_async_streams_to_async_callback(tgi: FakeTGI) -> None:
    chunks: list[StreamingChunk] = []

    async def callback(chunk: StreamingChunk) -> None:
        await asyncio.sleep(0)
        chunks.append(chunk)

    generator = make(tgi)
    result = await generator.run_async(PROMPT, streaming_callback=callback)
    assert result["replies"] == [TEXT]
    assert "".join(c.content for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    plain = await generator.run_async(PROMPT)
    assert plain["replies"] == [TEXT]
    assert plain["meta"][0]["usage"]["completion_tokens"] == 8
    await generator.aclose()


def test_sync_run_refuses_async_callback(tgi: FakeTGI) -> None:
    async def callback(chunk: StreamingChunk) -> None:
        return None

    with pytest.raises(ValueError, match="coroutine"):
        make(tgi).run(PROMPT, streaming_callback=callback)


def test_construction_does_no_network_io() -> None:
    with FakeTGI() as server:
        generator = make(server)
        assert server.requests == []
        generator.warm_up()
        assert [r.path for r in server.requests] == ["/info"]
        generator.run(PROMPT)
        generator.run(PROMPT)
        assert [r.path for r in server.requests].count("/info") == 1


def test_max_new_tokens_over_the_servers_total_limit_fails_before_sending(tgi: FakeTGI) -> None:
    with pytest.raises(ValueError, match=r"generation_kwargs\['max_new_tokens'\] is 5000 .* max_total_tokens"):
        make(tgi).run(PROMPT, generation_kwargs={"max_new_tokens": 5000})
    assert [r.method for r in tgi.requests] == ["GET"]


def test_stop_word_the_server_misses_ends_the_read_after_a_few_events() -> None:
    tokens = ["Hello", " wor", "ld and", *[f" t{i}" for i in range(40)]]
    with FakeTGI(tokens=tokens) as server:
        result = make(server, stop_words=["world"]).run("q", streaming_callback=lambda chunk: None)
    assert result["replies"] == ["Hello "]
    assert result["meta"][0]["finish_reason"] == "stop"
    # We hung up long before the server's final event: its numbers are unknown, and not made up.
    assert result["meta"][0]["usage"] == {}


def test_init_generation_kwargs_changed_after_init_take_effect_and_are_checked(tgi: FakeTGI) -> None:
    generator = make(tgi)
    generator.run(PROMPT)
    generator.generation_kwargs["max_new_tokens"] = 2  # the attribute is public: changes count
    assert generator.run(PROMPT)["replies"] == ["Natural Language"]
    generator.generation_kwargs["top_k"] = 0
    with pytest.raises(ValueError, match=r"generation_kwargs\['top_k'\] must be an integer >= 1"):
        generator.run(PROMPT)


def test_stream_meta_names_the_stream_route(tgi: FakeTGI) -> None:
    meta = make(tgi).run("q", streaming_callback=lambda chunk: None)["meta"][0]
    assert meta["route"] == "/generate_stream"
