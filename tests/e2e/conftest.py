"""Shared fixtures of the end-to-end tests: ONE real local model server (SmolLM2-135M on CPU) for the session.

The server is slow (~45 tokens/s) and serves requests one at a time, so tests keep `max_new_tokens` small (<= 16).
Greedy decoding is deterministic here (`transformers serve` ignores `temperature`), so a prompt always gets the same
reply: tests rely on that to compare replies across protocols, processes and runs.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haystack_integrations.generators.hugging_face_api.local_model import LocalModelServer, prepare_model

# Port the README and docs use for a server started by hand: never take it, a developer may be running one.
_RESERVED_PORTS = {8080}
# Executables of the environment running the tests (the console scripts live beside the interpreter).
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that nothing listens on right now (never 8080)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port


def subprocess_env(**extra: str) -> dict[str, str]:
    """
    The environment for child processes (CLI, Hayhooks): no proxy for loopback traffic, no telemetry.

    :param extra: Variables to add or override.
    :returns: A copy of `os.environ` with the changes.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("HAYHOOKS_")}
    env.update(
        {
            "HAYSTACK_TELEMETRY_ENABLED": "False",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is end-to-end, whether or not its module says so (`-m "not e2e"` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    """The local model server shared by all end-to-end tests; stopped at the end of the session."""
    model_dir = prepare_model()  # ~20 s the first time on this machine, instant afterwards
    log_path = tmp_path_factory.mktemp("local-model") / "server.log"  # pytest's temp dirs are rotated, not /tmp
    server = LocalModelServer(port=free_port(), model_dir=model_dir, log_path=log_path)
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_url(local_model: LocalModelServer) -> str:
    """Base URL of the shared server, e.g. `http://127.0.0.1:40123`."""
    return local_model.url
