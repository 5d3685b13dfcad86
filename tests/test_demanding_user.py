"""
Issue 20, the component's side: what a demanding user hits next. Settings changed after `__init__`, copies and
pickles, the environment's TLS and proxy settings, NumPy values, text that cannot be sent, a run-time None,
a server whose limit is below the default `max_new_tokens`, a 401 where the host policy withheld HF_TOKEN,
and a server-sent event of many megabytes. Real HTTP to fakes on 127.0.0.1 throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from haystack import Pipeline
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import (
    AuthenticationError,
    ConfigurationError,
    HuggingFaceAPIGenerator,
    ResponseFormatError,
)
from haystack_integrations.generators.hugging_face_api._http import MAX_RESPONSE_BYTES
from haystack_integrations.generators.hugging_face_api._sse import SSEDecoder
from tests.fakes import FakeTGI, Fault, TGILimits
from tests.helpers import TEXT, call, posts


def make(url: str, **kwargs: Any) -> HuggingFaceAPIGenerator:
    return HuggingFaceAPIGenerator("text_generation_inference", {"url": url, "max_retries": 0}, **kwargs)


def last_parameters(server: FakeTGI) -> dict[str, Any]:
    return [r for r in server.requests if r.method == "POST"][-1].json["parameters"]  # type: ignore[no-any-return]


# --- one truth for settings -------------------------------------------------------------------------


def test_a_url_changed_after_init_is_the_one_used_and_saved() -> None:
    with FakeTGI() as first, FakeTGI() as second:
        generator = make(first.url)
        assert generator.run("q")["replies"] == [TEXT]
        generator.api_params["url"] = second.url
        assert generator.to_dict()["init_parameters"]["api_params"]["url"] == second.url
        assert generator.run("q")["replies"] == [TEXT]
        assert asyncio.run(generator.run_async("q"))["replies"] == [TEXT]
        assert (posts(first), posts(second)) == (1, 2)  # what to_dict() says is what run() uses
        generator.close()


def test_every_public_setting_changed_after_init_takes_effect() -> None:
    with FakeTGI() as server:
        generator = make(server.url)
        generator.generation_kwargs = {"max_new_tokens": 3}
        generator.stop_words = [" Language"]
        generator.api_type = "inference_endpoints"  # a string, as in YAML
        generator.api_params = {"url": server.url, "max_retries": 0, "scale_up_timeout": 0}
        generator.token = Secret.from_token("hf_changed_token_1234")
        result = generator.run("q")
        request = [r for r in server.requests if r.method == "POST"][-1]
        assert result["replies"] == ["Natural"]
        assert request.json["parameters"]["max_new_tokens"] == 3
        assert request.headers["authorization"] == "Bearer hf_changed_token_1234"
        assert "x-scale-up-timeout" not in request.headers  # inference_endpoints with the wait turned off


def test_a_setting_changed_to_something_invalid_is_refused_by_name_before_any_request() -> None:
    with FakeTGI() as server:
        generator = make(server.url)
        generator.api_params["timeout"] = -1
        with pytest.raises(ValueError, match=r"api_params\['timeout'\]"):
            generator.run("q")
        generator.api_params["timeout"] = 5
        generator.stop_words = ["ok", ""]
        with pytest.raises(ValueError, match="stop_words"):
            generator.run("q")
        assert posts(server) == 0


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_the_component_and_a_pipeline_holding_it_survive_copies(how: str) -> None:
    def duplicate(thing: Any) -> Any:
        return copy.deepcopy(thing) if how == "deepcopy" else pickle.loads(pickle.dumps(thing))

    with FakeTGI() as server:
        generator = make(server.url, generation_kwargs={"max_new_tokens": 3})
        generator.run("q")  # connected: the copy must not share (or choke on) the connections
        copied = duplicate(generator)
        assert copied.to_dict() == generator.to_dict()
        assert copied.run("q")["replies"] == ["Natural Language Processing"]
        pipeline = Pipeline()
        pipeline.add_component("llm", generator)
        result = duplicate(pipeline).run({"llm": {"prompt": "q"}})
        assert result["llm"]["replies"] == ["Natural Language Processing"]
        generator.close()
        copied.close()


# --- the environment --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("case", ["missing file", "not certificates", "missing folder"])
def test_tls_settings_from_the_environment_that_cannot_be_used_are_named(
    case: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case == "missing file":
        variable, value = "SSL_CERT_FILE", str(tmp_path / "nowhere.pem")
    elif case == "not certificates":
        variable, value = "SSL_CERT_FILE", str(tmp_path / "notes.txt")
        Path(value).write_text("these are my notes\n")
    else:
        variable, value = "SSL_CERT_DIR", str(tmp_path / "no-such-folder")
    monkeypatch.setenv(variable, value)
    # The TLS settings are read before any connection: nothing needs to listen there.
    generator = make("https://127.0.0.1:9")
    with pytest.raises(ConfigurationError) as raised:
        call(generator, mode, None)
    assert variable in str(raised.value) and value in str(raised.value)


@pytest.fixture
def socks_port() -> Iterator[tuple[int, list[bytes]]]:
    """A listener where a SOCKS proxy would be: it records whatever a client sends it."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(65536))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    stop.set()
    thread.join()
    listener.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("variable", ["ALL_PROXY", "HTTP_PROXY"])
def test_a_socks_proxy_is_refused_the_same_way_on_both_paths_and_never_spoken_to(
    variable: str, mode: str, socks_port: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = socks_port
    monkeypatch.setenv(variable, f"socks5://user:secret@127.0.0.1:{port}")
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": "http://tgi.test:8080"}, token=Secret.from_token("hf_never_sent_1234")
    )
    with pytest.raises(ConfigurationError) as raised:
        call(generator, mode, None)
    message = str(raised.value)
    assert variable in message and "socks5" in message and f"127.0.0.1:{port}" in message
    assert "secret" not in message  # the proxy's credentials are not repeated
    assert received == []  # not a byte, least of all the request and its token


# --- values and text --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_numpy_scalars_are_taken_as_their_python_values(mode: str) -> None:
    with FakeTGI() as server:
        generator = make(server.url, generation_kwargs={"max_new_tokens": np.int64(3), "do_sample": np.bool_(True)})
        result = call(generator, mode, None, generation_kwargs={"temperature": np.float32(0.5), "seed": np.int32(7)})
        parameters = last_parameters(server)
    assert result["replies"] == ["Natural Language Processing"]
    assert parameters["max_new_tokens"] == 3 and parameters["do_sample"] is True and parameters["seed"] == 7
    assert parameters["temperature"] == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_prompt_that_cannot_be_encoded_is_refused_by_name_before_any_request(mode: str) -> None:
    with FakeTGI() as server:
        generator = make(server.url)
        with pytest.raises(ValueError, match=r"prompt cannot be encoded as UTF-8: character 5"):
            call(generator, mode, None, prompt="Hello\ud800 world")
        with pytest.raises(ValueError, match=r"generation_kwargs\['stop'\] cannot be encoded"):
            call(generator, mode, None, generation_kwargs={"stop": ["\udfff"]})
        assert server.requests == []  # not even the route probe


def test_a_run_time_none_removes_an_init_value() -> None:
    with FakeTGI() as server:
        generator = make(server.url, generation_kwargs={"temperature": 0.7, "top_k": 5, "max_new_tokens": 4})
        generator.run("q", generation_kwargs={"temperature": None, "max_new_tokens": None})
        parameters = last_parameters(server)
    assert parameters["top_k"] == 5
    assert "temperature" not in parameters and "max_new_tokens" not in parameters  # the server's defaults
    assert generator.generation_kwargs == {"temperature": 0.7, "top_k": 5, "max_new_tokens": 4}  # untouched


@pytest.mark.parametrize("value", ["café", "line\r\nInjected: yes", "tab\tok\x00"])
def test_header_values_both_stacks_cannot_send_alike_are_refused_naming_the_header(value: str) -> None:
    with pytest.raises(ValueError, match=r"api_params\['headers'\]\['X-Note'\] cannot be sent") as raised:
        HuggingFaceAPIGenerator("text_generation_inference", {"url": "http://h:1", "headers": {"X-Note": value}})
    assert value not in str(raised.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_printable_header_values_reach_the_server_byte_for_byte(mode: str) -> None:
    with FakeTGI() as server:
        api_params = {"url": server.url, "headers": {"X-Note": "plain ascii; tab\there"}}
        call(HuggingFaceAPIGenerator("text_generation_inference", api_params), mode, None)
        assert server.requests[-1].headers["x-note"] == "plain ascii; tab\there"


# --- the server's limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_default_max_new_tokens_gives_way_to_a_smaller_server_limit_but_a_chosen_one_does_not(mode: str) -> None:
    with FakeTGI(limits=TGILimits(max_input_tokens=200, max_total_tokens=256)) as server:
        assert call(make(server.url), mode, None)["replies"] == [TEXT]
        assert "max_new_tokens" not in last_parameters(server)  # the server generates what fits
        chosen = make(server.url, generation_kwargs={"max_new_tokens": 512})
        with pytest.raises(ValueError, match=r"generation_kwargs\['max_new_tokens'\] is 512"):
            call(chosen, mode, None)
        assert posts(server) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_401_says_when_the_host_policy_withheld_hf_token(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_ambient_token_123456")
    with FakeTGI() as server:
        server.faults.append(Fault.status(401, {"error": "Unauthorized"}))
        with pytest.raises(AuthenticationError) as raised:
            call(HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url}), mode, None)
    message = str(raised.value)
    assert "HF_TOKEN is set but was not sent to http://127.0.0.1" in message
    assert "token=Secret.from_env_var('MY_SERVER_TOKEN')" in message
    assert "hf_ambient_token_123456" not in message


# --- streams ----------------------------------------------------------------------------------------


def test_a_long_event_arriving_in_pieces_is_decoded_whole() -> None:
    decoder = SSEDecoder()
    payload = b"x" * (16 * 1024 * 1024)
    block = b"data: " + payload + b"\n\n"
    events = []
    for start in range(0, len(block), 65536):  # as the socket delivers it
        events += decoder.feed(block[start : start + 65536])
    assert events == [payload]


def test_an_event_over_the_size_limit_is_refused() -> None:
    decoder = SSEDecoder()
    piece = b"y" * (1024 * 1024)
    decoder.feed(b"data: ")
    for _ in range(MAX_RESPONSE_BYTES // len(piece) - 1):
        assert decoder.feed(piece) == []  # up to the limit: held, waiting for the event's end
    with pytest.raises(ResponseFormatError, match="more than"):
        decoder.feed(piece * 2)
