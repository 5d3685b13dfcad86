"""Where the token goes, and where it never shows up."""

from __future__ import annotations

import logging
import re

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import AuthenticationError, HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._auth import Credentials, chosen_env_var, withheld_variable
from haystack_integrations.generators.hugging_face_api._auth import may_receive_ambient_token as is_hugging_face_url
from tests.fakes import FakeTGI, Fault
from tests.helpers import TEXT, call

SECRET = "hf_test_value_that_must_not_leak_1234"


def authorization_headers(server: FakeTGI) -> list[str | None]:
    return [r.headers.get("authorization") for r in server.requests]


def test_ambient_token_is_not_sent_to_a_non_hugging_face_host(tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}).run("hello")
    assert authorization_headers(tgi) == [None, None]


@pytest.mark.parametrize("token", [Secret.from_token(SECRET), Secret.from_env_var("MY_TGI_KEY")])
def test_explicit_token_is_sent_to_the_configured_url(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, token: Secret
) -> None:
    monkeypatch.setenv("MY_TGI_KEY", SECRET)
    HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=token).run("hello")
    assert authorization_headers(tgi) == [f"Bearer {SECRET}"] * 2


def test_credentials_in_headers_are_refused_because_api_params_are_saved_in_plain_text() -> None:
    with pytest.raises(ValueError, match=r"api_params\['headers'\] must not carry credentials"):
        HuggingFaceAPIGenerator(
            "text_generation_inference", {"url": "http://h", "headers": {"authorization": "Basic x"}}
        )


def test_server_with_api_key_accepts_explicit_token() -> None:
    with FakeTGI(api_key=SECRET) as server:
        generator = HuggingFaceAPIGenerator(
            "text_generation_inference", {"url": server.url, "max_retries": 0}, token=Secret.from_token(SECRET)
        )
        assert generator.run("hello")["replies"][0]


def test_token_never_in_logs_errors_or_repr(tgi: FakeTGI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tgi.faults.append(Fault.status(503, body={"error": "down"}, headers={"Retry-After": "0"}))
    tgi.faults.append(Fault.status(401, body={"error": "bad token"}))
    generator = HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": tgi.url, "max_retries": 2}, token=Secret.from_token(SECRET)
    )
    with pytest.raises(AuthenticationError) as raised:
        generator.run("hello")
    assert raised.value.status_code == 401
    texts = [caplog.text, str(raised.value), repr(raised.value), repr(generator), str(generator.__dict__)]
    assert caplog.records, "the retry should have been logged"
    assert all(SECRET not in text for text in texts)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://huggingface.co/api", True),
        ("https://router.huggingface.co", True),
        ("https://abc.us-east-1.aws.endpoints.huggingface.cloud", True),
        ("https://user-space.hf.space", False),  # a Space runs its owner's code: a third party
        ("http://huggingface.co", False),  # never in clear text
        ("https://huggingface.co.evil.com", False),
        ("https://evilhuggingface.co", False),
        ("http://localhost:8080", False),
        ("http://127.0.0.1:8080", False),
    ],
)
def test_hugging_face_hosts(url: str, allowed: bool) -> None:
    assert is_hugging_face_url(url) is allowed


def test_hosts_named_by_hf_endpoint_and_router_env_are_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ROUTER_URL", "http://127.0.0.1:5555")
    assert is_hugging_face_url("http://127.0.0.1:5555/v1/chat/completions")


def test_trust_from_env_is_for_that_server_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ROUTER_URL", "http://127.0.0.1:5555")
    assert not is_hugging_face_url("http://127.0.0.1:8080")


def test_token_with_its_own_scheme_is_sent_as_it_is(tgi: FakeTGI) -> None:
    HuggingFaceAPIGenerator(
        "text_generation_inference", {"url": tgi.url}, token=Secret.from_token("Basic dXNlcjpw")
    ).run("hi")
    assert authorization_headers(tgi) == ["Basic dXNlcjpw"] * 2


# --- a token that cannot be a header value (issue 20) ----------------------------------------------

KEY_FILE = "hf_first_line_of_the_key_file\n# created 2024-05-01 for the batch jobs"
UNSENDABLE = {
    "line break": (KEY_FILE, "a line break"),
    "carriage return": ("hf_token_with_cr\rsecond_part_9", "a line break"),
    "NUL": ("hf_token_with_nul\x00second_part_9", "a control character"),  # a Secret.from_token only
    "escape": ("hf_token_with_esc\x1b[0msecond_part_9", "a control character"),
    "Latin-1": ("hf_token_with_é_second_part_9", "a non-ASCII character"),
    "beyond Latin-1": ("hf_token_with_€_second_part_9", "a non-ASCII character"),
}


def pieces_of(value: str) -> list[str]:
    """The value and every run of 6+ characters between the characters a header cannot hold."""
    return [value, *(p for p in re.split(r"[^\t\x20-\x7e]", value) if len(p.strip()) >= 6)]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("source", ["env_var", "token"])
@pytest.mark.parametrize("case", list(UNSENDABLE))
def test_a_token_that_cannot_be_a_header_is_refused_before_any_request_naming_its_source(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch, mode: str, source: str, case: str
) -> None:
    value, reason = UNSENDABLE[case]
    if source == "env_var":
        if "\x00" in value:
            pytest.skip("an environment variable cannot hold NUL")
        monkeypatch.setenv("MY_KEY_FILE_TOKEN", value)
    token = Secret.from_env_var("MY_KEY_FILE_TOKEN") if source == "env_var" else Secret.from_token(value)
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=token)
    with pytest.raises(ValueError, match="cannot be sent in an HTTP header") as raised:
        call(generator, mode, None)
    message = str(raised.value)
    where = "the environment variable MY_KEY_FILE_TOKEN" if source == "env_var" else "the token"
    assert message.startswith(f"{'the token in ' if source == 'env_var' else ''}{where} cannot be sent")
    assert reason in message
    assert not [piece for piece in pieces_of(value) if piece in message + repr(raised.value)]
    assert tgi.requests == []  # refused before the route probe, not by the HTTP stack


def test_the_default_token_that_is_never_sent_does_not_break_a_local_server(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", KEY_FILE)
    assert HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}).run("hi")["replies"] == [TEXT]
    assert authorization_headers(tgi) == [None, None]


def test_the_default_token_that_cannot_be_a_header_is_refused_for_hugging_face_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_API_TOKEN", KEY_FILE)
    with FakeTGI() as server:
        monkeypatch.setenv("HF_ROUTER_URL", server.url)  # a host the default token may go to
        generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": server.url})
        with pytest.raises(ValueError, match=r"^the token in the environment variable HF_API_TOKEN cannot be sent"):
            generator.run("hi")
        assert server.requests == []


@pytest.mark.parametrize("value", [KEY_FILE, f"Bearer {KEY_FILE}", "hf_short\x00x"])
def test_redaction_covers_each_piece_of_a_token(value: str) -> None:
    credentials = Credentials(Secret.from_token(value))
    for text in (value, repr(value), repr(value.encode("utf-8")), value.replace("\n", " ")):
        redacted = credentials.redact(f"Invalid header value {text}!")
        assert not [piece for piece in pieces_of(value) if piece in redacted], redacted
        assert redacted.startswith("Invalid header value ") and redacted.endswith("!")


# --- who chose the variable ------------------------------------------------------------------------


def test_hf_token_named_by_the_user_for_this_call_is_sent_to_their_url(
    tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    generator = HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=chosen_env_var("HF_TOKEN"))
    generator.run("hi")
    assert authorization_headers(tgi) == [f"Bearer {SECRET}"] * 2
    # Saved, it is an ordinary env-var secret: a pipeline file keeps the host policy.
    saved = HuggingFaceAPIGenerator.from_dict(generator.to_dict())
    assert saved.token == Secret.from_env_var("HF_TOKEN")


def test_hf_token_written_in_a_pipeline_keeps_the_host_policy(tgi: FakeTGI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline file may come from anyone: naming HF_TOKEN must not send it to the server the file names."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    token = Secret.from_env_var("HF_TOKEN")
    HuggingFaceAPIGenerator("text_generation_inference", {"url": tgi.url}, token=token).run("hi")
    assert authorization_headers(tgi) == [None, None]
    assert withheld_variable(token, tgi.url) == "HF_TOKEN"
    assert withheld_variable(token, "https://router.huggingface.co") is None
    assert withheld_variable(chosen_env_var("HF_TOKEN"), tgi.url) is None
    monkeypatch.delenv("HF_TOKEN")
    assert withheld_variable(token, tgi.url) is None  # nothing to withhold
