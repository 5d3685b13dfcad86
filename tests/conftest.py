"""Shared fixtures: a clean environment, and fake servers on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fakes import FakeOpenAI, FakeTGI

# Tests never talk to the internet, and Haystack must not phone home either.
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HF_API_TOKEN", "HF_ENDPOINT", "HF_ROUTER_URL", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # Proxies are the tests' to set (tests/test_http_stack.py), never the machine's.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def tgi() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
