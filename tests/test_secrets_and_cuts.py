"""
Failures named for what they are, secrets never in them (issue 14): credentials in URLs are refused,
a token echoed by a server is redacted everywhere, and a stream cut inside an event is a cut.
(Redirects are in tests/test_http_stack.py.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import (
    AuthenticationError,
    HuggingFaceAPIError,
    HuggingFaceAPIGenerator,
    IncompleteStreamError,
    ServerError,
)
from tests.fakes import FakeOpenAI, FakeServer, FakeTGI, Fault
from tests.helpers import MODE_IDS, MODES, TEXT, Chunks, call, posts

SECRET = "hf_echoed_secret_value_0123456789"


@pytest.fixture(params=["tgi", "openai"])
def engine(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server: FakeServer = FakeTGI() if request.param == "tgi" else FakeOpenAI()
    with server:
        yield server


# --- no credentials in URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://user:PASSWORD@host:9", "https://user@host", "http://:PASSWORD@host", "http://a%40b:c@h"]
)
@pytest.mark.parametrize("api_type", ["text_generation_inference", "inference_endpoints"])
def test_a_url_with_credentials_is_refused_and_the_error_says_what_to_do(api_type: str, url: str) -> None:
    with pytest.raises(ValueError, match="user name or password") as raised:
        HuggingFaceAPIGenerator(api_type, {"url": url})
    message = str(raised.value)
    assert "api_params['url'] must not contain a user name or password" in message
    assert "pipeline YAML" in message and "Secret.from_env_var" in message and "Basic" in message
    assert "PASSWORD" not in message


def test_a_url_with_a_query_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValueError, match="without a query or fragment") as raised:
        HuggingFaceAPIGenerator("text_generation_inference", {"url": "https://host/?api_key=PASSWORD"})
    assert "PASSWORD" not in str(raised.value)


def test_basic_auth_goes_through_token_instead(tgi: FakeTGI) -> None:
    HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=Secret.from_token("Basic dTpw")).run(
        "q"
    )
    assert {r.headers.get("authorization") for r in tgi.requests} == {"Basic dTpw"}


# --- a token echoed by the server is redacted ------------------------------------------------------


@pytest.mark.parametrize("token", [SECRET, f"Bearer {SECRET}", f"Basic {SECRET}"])
@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (500, ServerError)])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_echoed_token_never_reaches_errors_or_logs(
    engine: FakeServer, caplog: pytest.LogCaptureFixture, token: str, status: int, error: type, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": engine.url, "max_retries": 1}, token=Secret.from_token(token)
    )
    generator.warm_up()
    engine.faults.extend([Fault.echo_authorization(status)] * 2)
    with pytest.raises(error) as raised:
        call(generator, mode, None)
    assert engine.requests[-1].headers["authorization"].endswith(SECRET)  # the server did get it, and echoed it
    texts = [str(raised.value), repr(raised.value), raised.value.server_message or "", caplog.text]
    assert all(SECRET not in text for text in texts)
    assert "<redacted>" in (raised.value.server_message or "")
    if status == 500:
        assert "<redacted>" in caplog.text  # the retry warning quotes the redacted message


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_echoed_token_in_a_stream_error_event_is_redacted(tgi: FakeTGI, mode: str) -> None:
    tgi.faults.append(Fault.echo_authorization(401, stream=True))
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=Secret.from_token(SECRET))
    with pytest.raises(HuggingFaceAPIError) as raised:
        call(generator, mode, Chunks())
    assert SECRET not in str(raised.value) and SECRET not in (raised.value.server_message or "")
    assert "<redacted>" in str(raised.value)


# --- a cut is a cut --------------------------------------------------------------------------------


@pytest.mark.parametrize("clean_end", [False, True], ids=["connection-dropped", "body-ended"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cut_inside_an_event_before_any_text_is_retried(engine: FakeServer, clean_end: bool, mode: str) -> None:
    engine.faults.append(Fault.cut_in_event(after_events=0, clean_end=clean_end))
    chunks = Chunks()
    assert call(HuggingFaceAPIGenerator("text_generation_inference", {"url": engine.url}), mode, chunks)["replies"] == [
        TEXT
    ]
    assert chunks.text == TEXT  # delivered once
    assert posts(engine) == 2


@pytest.mark.parametrize("clean_end", [False, True], ids=["connection-dropped", "body-ended"])
@pytest.mark.parametrize(("mode", "streamed"), [m for m in MODES if m[1]], ids=[i for i in MODE_IDS if "stream" in i])
def test_a_cut_inside_an_event_after_text_is_an_incomplete_stream(
    engine: FakeServer, clean_end: bool, mode: str, streamed: bool
) -> None:
    engine.faults.append(Fault.cut_in_event(after_events=2, clean_end=clean_end))
    chunks = Chunks()
    with pytest.raises(IncompleteStreamError) as raised:
        call(HuggingFaceAPIGenerator("text_generation_inference", {"url": engine.url}), mode, chunks)
    assert raised.value.delivered_text == chunks.text
    assert chunks.text and TEXT.startswith(chunks.text) and chunks.text != TEXT
    assert all(c.finish_reason is None for c in chunks.received)  # nothing claimed to be the end
    assert posts(engine) == 1  # never retried: the chunks would be delivered again


SLASHED = "Zm9vYmFy/c2VjcmV0+dG9rZW4="  # a base64 key: JSON encoders may write its "/" as "\/"


def _echoing_faults(token: str) -> list[tuple[str, Fault, bool]]:
    """(name, fault, streamed): servers quoting the token in answers that are not errors by status."""
    cut = "x" * 280 + token  # the token straddles the 300-character excerpt
    return [
        ("non-JSON body", Fault.status(200, f"<html>echo: Authorization: Bearer {token}</html>"), False),
        ("JSON of the wrong shape", Fault.status(200, {"echo": f"Bearer {token}"}), False),
        ("token across the excerpt's cut", Fault.status(200, cut), False),
        (
            "escaped in a JSON error body",
            Fault.status(401, '{"error": "bad key ' + token.replace("/", "\\/") + '"}'),
            False,
        ),
        ("malformed stream event", Fault.malformed(after_events=0, line=f"data: echo {token}".encode()), True),
        (
            "stream event of the wrong shape",
            Fault.malformed(after_events=0, line=f'data: {{"token": "{token}"}}'.encode()),
            True,
        ),
    ]


@pytest.mark.parametrize("case", range(6), ids=[name for name, _, _ in _echoing_faults(SLASHED)])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_text_quoted_in_any_error_is_redacted(
    tgi: FakeTGI, caplog: pytest.LogCaptureFixture, case: int, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    name, fault, streamed = _echoing_faults(SLASHED)[case]
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": tgi.url, "max_retries": 0}, token=Secret.from_token(SLASHED)
    )
    generator.warm_up()
    tgi.faults.append(fault)
    with pytest.raises(HuggingFaceAPIError) as raised:
        call(generator, mode, Chunks() if streamed else None)
    texts = [str(raised.value), repr(raised.value), raised.value.server_message or "", caplog.text]
    fragments = [SLASHED, SLASHED[:8], SLASHED[-8:]]  # not even part of it
    assert not any(fragment in text for fragment in fragments for text in texts), name
    assert "<redacted>" in str(raised.value), name  # the server's words are quoted, without the token


def test_the_cli_never_writes_an_echoed_token_to_a_batch_output(
    tgi: FakeTGI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_integrations.generators.hugging_face_api.cli import main

    monkeypatch.setenv("MY_TGI_KEY", SECRET)
    tgi.faults.extend([Fault.status(200, f"<html>Authorization: Bearer {SECRET}</html>")] * 8)
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"id": 1, "prompt": "q"}\n')
    output = tmp_path / "out.jsonl"
    main(["--batch", str(prompts), "--output", str(output), "--url", tgi.url, "--token-env", "MY_TGI_KEY"])
    assert "<redacted>" in output.read_text()
    assert SECRET not in output.read_text() + capsys.readouterr().err
