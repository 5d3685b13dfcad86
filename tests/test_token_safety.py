"""Where the token goes, and where it never shows up."""

from __future__ import annotations

import logging

import pytest
from haystack.utils import Secret

from haystack_integrations.generators.hugging_face_api import AuthenticationError, HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api._auth import may_receive_ambient_token as is_hugging_face_url
from tests.fakes import FakeTGI, Fault

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
