"""
What each engine answers, as the generator hands it out: `n` replies (one request on engines that have `n`,
a request per reply elsewhere), token details in `meta["tokens"]` in one shape, the prompt's tokens, checked
structured replies and the engine in `meta`. Every test goes through `run` / `run_async` (streamed and in one
piece) against the strict fakes (tests/fakes/engines.py), over real HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from haystack_integrations.generators.hugging_face_api import (
    HuggingFaceAPIError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    ResponseFormatError,
    ServerError,
    StructuredOutputError,
)
from haystack_integrations.generators.hugging_face_api._protocols import Generation
from tests.fakes import Fault
from tests.fakes._common import _logprob, count_prompt_tokens
from tests.fakes.engines import (
    BY_ENGINE,
    JSON_TOKENS,
    LLAMA_CPP,
    SGLANG,
    TRANSFORMERS,
    VLLM,
    FakeEngine,
    StrictTGI,
)
from tests.helpers import MODE_IDS, MODES, Chunks, call

PROMPT = "What is in the name of a language?"
TEXT = "Natural Language Processing is a field."
WORDS = ["Natural", " Language", " Processing", " is", " a", " field", "."]
PROMPT_TOKENS = count_prompt_tokens(PROMPT)
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
_PROFILES = BY_ENGINE


@dataclass
class Target:
    """An engine reached through a protocol: its strict fake, and generators for it."""

    engine: str
    protocol: str
    server: Any

    def make(self, **kwargs: Any) -> HuggingFaceAPIGenerator:
        api_params = {
            "url": self.server.url,
            "max_retries": 0,
            "protocol": "auto" if self.protocol == "tgi" else self.protocol,
        }
        return HuggingFaceAPIGenerator("inference_endpoints", api_params, **kwargs)

    def posts(self) -> list[Any]:
        return [r for r in self.server.requests if r.method == "POST"]


def serve(engine: str, stack: ExitStack, **kwargs: Any) -> Any:
    server = StrictTGI(**kwargs) if engine == "tgi" else FakeEngine(_PROFILES[engine], **kwargs)
    return stack.enter_context(server)


def targets(*pairs: tuple[str, str]) -> Callable[[Any], Any]:
    """A `target` fixture over these (engine, protocol) pairs."""

    @pytest.fixture(params=pairs, ids=[f"{engine}-{protocol}" for engine, protocol in pairs])
    def fixture(request: pytest.FixtureRequest) -> Iterator[Target]:
        engine, protocol = request.param
        with ExitStack() as stack:
            yield Target(engine, protocol, serve(engine, stack))

    return fixture


#: Every shape of token details: TGI's, chat's `content` (TGI's /v1 without `bytes`), the legacy completions
#: lists, llama.cpp's chat shape on completions; from engines that have them and from one that did not say.
EVERY_SHAPE = [
    ("tgi", "tgi"),
    ("tgi", "chat"),
    ("vllm", "completions"),
    ("vllm", "chat"),
    ("sglang", "completions"),
    ("sglang", "chat"),
    ("llama.cpp", "completions"),
    ("llama.cpp", "chat"),
    ("llama-cpp-python", "completions"),
    ("llama-cpp-python", "chat"),
    ("unknown", "completions"),
    ("unknown", "chat"),
]
every_shape = targets(*EVERY_SHAPE)
#: Engines with `n`: one request gives the replies.
with_n = targets(("vllm", "completions"), ("vllm", "chat"), ("sglang", "completions"), ("sglang", "chat"))
#: Engines without `n`: a request per reply.
without_n = targets(("tgi", "tgi"), ("llama.cpp", "chat"), ("llama-cpp-python", "completions"), ("unknown", "chat"))


def by_index(chunks: Chunks) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for chunk in chunks.received:
        found.setdefault(chunk.index, []).append(chunk)
    return found


def check_chunks_per_reply(chunks: Chunks, result: dict[str, Any]) -> None:
    """Each reply's chunks (by `index`): their text is the reply, the first starts it, the last ends it with its meta."""
    replies = by_index(chunks)
    assert sorted(replies) == list(range(len(result["replies"])))
    for index, own in replies.items():
        assert "".join(c.content for c in own) == result["replies"][index]
        assert [c.start for c in own] == [True] + [False] * (len(own) - 1)
        assert [c.finish_reason is not None for c in own] == [False] * (len(own) - 1) + [True]
        assert own[-1].meta == result["meta"][index]


# --- token details, one shape --------------------------------------------------------------------------


def check_tokens(tokens: list[dict[str, Any]], top: int, engine: str, protocol: str) -> None:
    assert [t["text"] for t in tokens] == WORDS  # special tokens left out, as from the text
    for token in tokens:
        assert set(token) == {"text", "logprob", "top"}
        assert token["logprob"] == _logprob(token["text"])  # the fake model's, whatever the engine's shape
        assert all(set(alt) == {"text", "logprob"} for alt in token["top"])
        alternatives = [alt["logprob"] for alt in token["top"]]
        assert alternatives == sorted(alternatives, reverse=True)
        if top:
            assert token["top"][0] == {"text": token["text"], "logprob": token["logprob"]}
    if (engine, protocol) != ("tgi", "tgi"):  # the TGI fake lists the token alone among its top tokens
        assert all(len(t["top"]) == top for t in tokens)


@pytest.mark.parametrize(("kwargs", "top"), [({"details": True}, 0), ({"top_n_tokens": 2}, 2)], ids=["details", "top"])
@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_token_details_in_one_shape_from_every_engine(
    every_shape: Target, kwargs: dict[str, Any], top: int, mode: str, streamed: bool
) -> None:
    chunks = Chunks() if streamed else None
    result = call(every_shape.make(), mode, chunks, PROMPT, generation_kwargs=kwargs)
    (meta,) = result["meta"]
    check_tokens(meta["tokens"], top, every_shape.engine, every_shape.protocol)
    assert meta["engine"] == every_shape.engine
    if chunks is not None:
        assert chunks.received[-1].meta["tokens"] == meta["tokens"]
        assert chunks.text == result["replies"][0] == TEXT


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_token_details_of_a_reply_cut_at_a_stop_word_end_with_it(mode: str, streamed: bool) -> None:
    with FakeEngine(VLLM) as server:
        generator = Target("vllm", "chat", server).make(stop_words=[" Proc"])
        chunks = Chunks() if streamed else None
        result = call(generator, mode, chunks, PROMPT, generation_kwargs={"details": True})
    assert result["replies"] == ["Natural Language"]
    assert [t["text"] for t in result["meta"][0]["tokens"]] == ["Natural", " Language"]


@pytest.mark.parametrize("engine", ["vllm", "tgi"])
def test_no_token_details_unless_asked(engine: str) -> None:
    with ExitStack() as stack:
        target = Target(engine, "chat", serve(engine, stack))
        for streamed in (False, True):
            result = target.make().run(PROMPT, streaming_callback=Chunks() if streamed else None)
            assert "tokens" not in result["meta"][0] and "prefill_tokens" not in result["meta"][0]


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_token_details_asked_for_and_not_sent_are_a_format_error(mode: str, streamed: bool) -> None:
    # transformers serve accepts `logprobs` and ignores it: named as vLLM, it is asked for them and sends none.
    with FakeEngine(TRANSFORMERS) as server:
        api_params = {"url": server.url, "protocol": "completions", "engine": "vllm", "max_retries": 0}
        generator = HuggingFaceAPIGenerator("inference_endpoints", api_params)
        chunks = Chunks() if streamed else None
        with pytest.raises(ResponseFormatError, match=r"token details were asked for .*; the server sent none") as e:
            call(generator, mode, chunks, PROMPT, generation_kwargs={"details": True})
    assert server.requests[-1].resolved["ignored"] == ["logprobs"]
    if chunks is not None:  # the text came; no last chunk claims a complete reply
        assert e.value.delivered_text == chunks.text == TEXT
        assert all(c.finish_reason is None for c in chunks.received)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tgi_prompt_tokens_with_decoder_input_details(mode: str) -> None:
    with StrictTGI() as tgi:
        generator = Target("tgi", "tgi", tgi).make()
        result = call(generator, mode, None, PROMPT, generation_kwargs={"decoder_input_details": True})
    prefill = result["meta"][0]["prefill_tokens"]
    assert [t["text"] for t in prefill] == PROMPT.split()
    assert prefill[0]["logprob"] is None and prefill[1] == {"text": PROMPT.split()[1], "logprob": -0.5, "top": []}


@pytest.mark.parametrize(
    "raw",
    [
        {"tokens": ["a"], "token_logprobs": [-0.1, -0.2], "top_logprobs": None},
        {"content": [{"token": "a", "logprob": "high"}]},
        {"content": "a"},
        {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [["a"]]},
        ["a"],
    ],
)
def test_token_details_in_an_undocumented_shape_are_a_format_error(raw: Any) -> None:
    with FakeEngine(VLLM) as server:
        generator = Target("vllm", "completions", server).make()
        generator.warm_up()
    assert generator._connection.core.route is not None
    with pytest.raises(ResponseFormatError):
        generator._connection.core.route.protocol.tokens(Generation("a", logprobs=raw), 1)


# --- several replies, one request ----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_engines_with_n_give_n_replies_from_one_request(with_n: Target, mode: str, streamed: bool) -> None:
    chunks = Chunks() if streamed else None
    kwargs = {"n": 3, "do_sample": True, "details": True}
    result = call(with_n.make(), mode, chunks, PROMPT, generation_kwargs=kwargs)
    assert result["replies"] == [f"{TEXT} #{i}" for i in range(3)]
    (request,) = with_n.posts()
    assert request.json["n"] == 3 and request.resolved["ignored"] == []
    # Each reply: 7 words, " #i", end of sequence. The server counts them together.
    totals = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 27, "total_tokens": PROMPT_TOKENS + 27}
    for index, meta in enumerate(result["meta"]):
        assert meta["finish_reason"] == "stop" and meta["engine"] == with_n.engine
        assert meta["usage"] == {"prompt_tokens": PROMPT_TOKENS}  # no per-reply count is invented
        assert meta["request_usage"] == totals
        assert [t["text"] for t in meta["tokens"]] == [*WORDS, f" #{index}"]
    if chunks is not None:
        check_chunks_per_reply(chunks, result)
        assert len({c.index for c in chunks.received[:6]}) > 1  # the replies' events came interleaved


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run-stream"])
def test_each_reply_of_one_request_has_its_own_stop_word_and_finish_reason(streamed: bool) -> None:
    with FakeEngine(VLLM) as server:
        # The server stops the replies that hold " field" (all); the stop word " #1" only reply 1 holds.
        generator = Target("vllm", "completions", server).make(stop_words=[" #1"])
        chunks = Chunks() if streamed else None
        kwargs = {"n": 3, "do_sample": True, "max_new_tokens": 8}
        result = call(generator, "sync", chunks, PROMPT, generation_kwargs=kwargs)
    assert result["replies"] == [f"{TEXT} #0", TEXT, f"{TEXT} #2"]
    assert [m["finish_reason"] for m in result["meta"]] == ["length", "stop", "length"]
    if chunks is not None:
        check_chunks_per_reply(chunks, result)


def test_a_stream_with_a_reply_missing_fails_naming_it() -> None:
    with FakeEngine(VLLM) as server:
        # 9 events a reply, interleaved: reply 0 ends at the 25th, replies 1 and 2 would at the 26th and 27th.
        server.faults.append(Fault.no_final(after_events=25))
        chunks = Chunks()
        with pytest.raises(IncompleteStreamError, match=r"replies \[1, 2\] of 3 were complete") as raised:
            Target("vllm", "chat", server).make().run(
                PROMPT, streaming_callback=chunks, generation_kwargs={"n": 3, "do_sample": True}
            )
    received = by_index(chunks)
    assert raised.value.delivered_replies == ["".join(c.content for c in received[i]) for i in range(3)]
    assert raised.value.delivered_text == "".join(raised.value.delivered_replies)
    assert raised.value.delivered_replies[0] == f"{TEXT} #0"  # complete, but not the others
    assert all(c.finish_reason is None for c in chunks.received)


# --- several replies, a request each ---------------------------------------------------------------------


def _seed(request: Any) -> int:
    body = request.json
    seed: int = body["parameters"]["seed"] if "parameters" in body else body["seed"]
    return seed


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_engines_without_n_give_n_replies_from_a_request_each_with_derived_seeds(
    without_n: Target, mode: str, streamed: bool
) -> None:
    chunks = Chunks() if streamed else None
    kwargs = {"n": 3, "seed": 41, "do_sample": True}
    result = call(without_n.make(), mode, chunks, PROMPT, generation_kwargs=kwargs)
    posts = without_n.posts()
    assert sorted(_seed(p) for p in posts) == [41, 42, 43]
    assert all(
        p.resolved["ignored"] == [] and "n" not in p.json and "n" not in p.json.get("parameters", {}) for p in posts
    )
    tgi = without_n.engine == "tgi"
    if not tgi:  # these fakes end a seeded reply with its seed: reply i is the request with seed 41 + i
        assert result["replies"] == [f"{TEXT} #{seed}" for seed in (41, 42, 43)]
    generated = len(WORDS) + (1 if tgi else 2)  # the words (and the seed), then the end of sequence
    # Each reply's own request: its own counts (llama-cpp-python's streams have none).
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": generated, "total_tokens": PROMPT_TOKENS + generated}
    if streamed and without_n.engine == "llama-cpp-python":
        usage = {}
    for meta in result["meta"]:
        assert meta["finish_reason"] == "stop" and meta["engine"] == without_n.engine
        assert meta["usage"] == usage
        assert "request_usage" not in meta
    if chunks is not None:
        check_chunks_per_reply(chunks, result)


def test_without_a_seed_each_request_lets_the_server_pick_one() -> None:
    with FakeEngine(LLAMA_CPP) as server:
        result = Target("llama.cpp", "chat", server).make().run(PROMPT, generation_kwargs={"n": 2, "temperature": 0.5})
    assert len(result["replies"]) == 2
    assert [("seed" in p.json) for p in server.requests if p.method == "POST"] == [False, False]


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_one_failing_request_fails_the_call_naming_its_reply(without_n: Target, mode: str, streamed: bool) -> None:
    without_n.server.faults.append(Fault.status(500, {"error": "boom"}))  # whichever request comes first
    chunks = Chunks() if streamed else None
    with pytest.raises(ServerError) as raised:
        call(without_n.make(), mode, chunks, PROMPT, generation_kwargs={"n": 3, "seed": 41, "do_sample": True})
    (failed,) = [p for p in without_n.posts() if p.fault is not None]
    index = _seed(failed) - 41
    error = raised.value
    assert error.reply_index == index
    assert str(error).startswith(f"reply {index} of 3 (generation_kwargs['n'], a request each) failed")
    received = by_index(chunks) if chunks is not None else {}
    assert error.delivered_replies == ["".join(c.content for c in received.get(i, [])) for i in range(3)]
    assert error.delivered_text == ""  # its request failed before any text
    if chunks is not None:  # no reply was given a last chunk after the failure
        assert all(c.finish_reason is None for c in chunks.received if c.index == index)


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_failure_stops_the_other_requests_at_once(mode: str, streamed: bool) -> None:
    words = [f" w{i}" for i in range(100)]
    with FakeEngine(LLAMA_CPP, words) as server:
        server.faults.append(Fault.status(500, {"error": "out of memory"}))  # the first request to arrive
        if streamed:
            server.token_delay = 0.05  # the others stream for 5 s
        else:
            server.faults.extend([Fault.delay(5), Fault.delay(5)])  # the others wait 5 s for their answer
        generator = Target("llama.cpp", "completions", server).make()
        chunks = Chunks() if streamed else None
        started = time.monotonic()
        with pytest.raises(ServerError, match=r"reply \d of 3"):
            call(generator, mode, chunks, PROMPT, generation_kwargs={"n": 3, "do_sample": True})
        took = time.monotonic() - started
        if streamed:
            assert server.wait_aborted(timeout=2.0, count=2) is not None  # both other streams were closed
        assert len([r for r in server.requests if r.method == "POST"]) == 3  # and none was tried again
    assert took < 2.5, f"the call waited {took:.1f} s for requests it had no use for"


def test_the_callback_gets_one_chunk_at_a_time_and_its_own_exception_unchanged() -> None:
    words = [f" w{i}" for i in range(30)]
    with FakeEngine(LLAMA_CPP, words) as server:
        server.token_delay = 0.005
        inside, overlaps, seen = [0], [0], []

        def callback(chunk: Any) -> None:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
            time.sleep(0.001)
            seen.append(chunk.index)
            inside[0] -= 1
            if len(seen) == 40:
                raise KeyError("the callback's own")

        generator = Target("llama.cpp", "chat", server).make()
        with pytest.raises(KeyError, match="the callback's own"):
            generator.run(PROMPT, streaming_callback=callback, generation_kwargs={"n": 3, "do_sample": True})
    assert overlaps == [0]
    assert len(set(seen)) == 3


def test_the_fallback_to_chat_works_for_each_request() -> None:
    with FakeEngine(LLAMA_CPP) as server:
        for _ in range(2):  # as a server without the route answers each request
            server.faults_for("POST", "/v1/completions").append(Fault.status(404, {"detail": "Not Found"}))
        api_params = {"url": server.url, "max_retries": 0}
        generator = HuggingFaceAPIGenerator("text_generation_inference", api_params)
        result = generator.run(PROMPT, generation_kwargs={"n": 2, "seed": 5, "do_sample": True})
    assert result["replies"] == [f"{TEXT} #5", f"{TEXT} #6"]
    assert [m["protocol"] for m in result["meta"]] == ["chat", "chat"]


def test_n_refused_without_sampling_before_any_request(without_n: Target) -> None:
    with pytest.raises(ValueError, match="greedy and would give the same reply 2 times"):
        without_n.make().run(PROMPT, generation_kwargs={"n": 2})
    assert without_n.posts() == []


# --- structured output, checked ----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_constrained_reply_is_returned_once_it_follows_its_schema(mode: str, streamed: bool) -> None:
    with FakeEngine(VLLM) as server:
        kwargs = {"grammar": {"type": "json", "value": SCHEMA}, "validate_schema": True}
        result = call(
            Target("vllm", "chat", server).make(),
            mode,
            Chunks() if streamed else None,
            PROMPT,
            generation_kwargs=kwargs,
        )
    assert result["replies"] == ["".join(JSON_TOKENS)]


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_a_reply_that_is_not_the_json_asked_for_is_reported_not_returned(mode: str, streamed: bool) -> None:
    with FakeEngine(VLLM) as server:
        server.engine.json_tokens = ['{"name": ', '"Ada', '", ']  # what an engine that gave up halfway sends
        chunks = Chunks() if streamed else None
        kwargs = {"grammar": {"type": "json", "value": SCHEMA}}
        with pytest.raises(
            StructuredOutputError, match=r"not the JSON document asked for .*; vLLM did not constrain"
        ) as e:
            call(Target("vllm", "completions", server).make(), mode, chunks, PROMPT, generation_kwargs=kwargs)
    assert e.value.reply == '{"name": "Ada", '
    assert isinstance(e.value, ResponseFormatError)
    if chunks is not None:  # every piece reached the callback; no last chunk called it complete
        assert e.value.delivered_text == chunks.text == e.value.reply
        assert all(c.finish_reason is None for c in chunks.received)


@pytest.mark.parametrize(("mode", "streamed"), MODES, ids=MODE_IDS)
def test_json_against_the_schema_only_when_asked(mode: str, streamed: bool) -> None:
    with FakeEngine(SGLANG) as server:
        server.engine.json_tokens = ['{"age": ', "3}"]
        generator = Target("sglang", "chat", server).make()
        grammar = {"type": "json", "value": SCHEMA}
        result = call(generator, mode, Chunks() if streamed else None, PROMPT, generation_kwargs={"grammar": grammar})
        assert result["replies"] == ['{"age": 3}']  # JSON: what was checked without validate_schema
        kwargs = {"grammar": grammar, "validate_schema": True}
        with pytest.raises(StructuredOutputError, match="does not follow the JSON schema at the document: 'name'"):
            call(generator, mode, Chunks() if streamed else None, PROMPT, generation_kwargs=kwargs)


def test_a_regex_reply_is_checked_whole_and_the_prompt_is_not_part_of_it() -> None:
    with StrictTGI() as tgi:
        generator = Target("tgi", "tgi", tgi).make()
        kwargs = {"grammar": {"type": "regex", "value": r"[0-9]{3}-[0-9]{2}"}, "return_full_text": True}
        assert generator.run(PROMPT, generation_kwargs=kwargs)["replies"] == [PROMPT + "123-45"]
        assert generator.run(PROMPT, streaming_callback=Chunks(), generation_kwargs=kwargs)["replies"] == [
            PROMPT + "123-45"
        ]
        with pytest.raises(StructuredOutputError, match="does not match"):
            generator.run(PROMPT, generation_kwargs={**kwargs, "grammar": {"type": "regex", "value": "[0-9]{3}"}})


def test_a_bad_reply_among_several_is_named() -> None:
    with FakeEngine(VLLM) as server:
        server.engine.json_tokens = ['{"name": "Ada"}']
        kwargs = {"grammar": {"type": "json", "value": SCHEMA}, "n": 2, "do_sample": True}
        # Each reply ends with " #i" (the fake marks the replies of n): not JSON any more.
        with pytest.raises(StructuredOutputError, match="not the JSON document") as raised:
            Target("vllm", "chat", server).make().run(PROMPT, generation_kwargs=kwargs)
    assert raised.value.reply_index == 0 and raised.value.reply == '{"name": "Ada"} #0'


def test_structured_output_error_is_part_of_the_documented_tree() -> None:
    from haystack_integrations.generators.hugging_face_api import errors

    assert "StructuredOutputError" in errors.__all__
    assert issubclass(StructuredOutputError, ResponseFormatError) and issubclass(
        StructuredOutputError, HuggingFaceAPIError
    )
    assert StructuredOutputError("x", "the reply").reply == "the reply"
