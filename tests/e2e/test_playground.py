"""The Playground in a real browser: `examples/playground.py` (what `bash scripts/playground.sh` runs), headless Chromium.

The command starts its own local model server and Hayhooks with the Chainlit UI on free ports; the test waits for the
URL it prints, opens it in Debian's Chromium driven by playwright, types a question, and watches the reply from the
real model stream onto the page. Then it presses Ctrl-C (SIGINT to the command's process group, as a terminal does)
and checks that everything stopped. Set PLAYGROUND_SCREENSHOT=path.png to keep a screenshot (docs/playground.png is
one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, subprocess_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PLAYGROUND = ROOT / "examples" / "playground.py"
CHROMIUM = Path("/usr/bin/chromium")
# The closed network refuses Chromium's background connections; these flags keep it from trying (PROTOCOLS.md).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "What's Natural Language Processing?"


class Playground:
    """The documented command, in its own process group, its output in a log file."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.model_port = free_port()
        while self.model_port == self.port:
            self.model_port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, str(PLAYGROUND), "--port", str(self.port), "--model-port", str(self.model_port)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_url(self, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"Playground ready: open (\S+)", self.log())
            if found:
                return found.group(1)
            assert self.process.poll() is None, f"the playground exited early:\n{self.log()[-6000:]}"
            assert time.monotonic() < deadline, f"no URL after {timeout} s:\n{self.log()[-6000:]}"
            time.sleep(0.25)

    def ctrl_c(self, timeout: float = 60) -> int:
        """SIGINT to the process group, as Ctrl-C in a terminal; returns the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def playground(tmp_path: Path) -> Iterator[Playground]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: scripts/setup.sh installs it (apt-get install chromium)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    started = Playground(tmp_path / "playground.log")
    try:
        yield started
    finally:
        started.kill()


def test_the_playground_streams_a_reply_from_the_local_model(playground: Playground, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url = playground.wait_for_url()
    assert url == f"http://127.0.0.1:{playground.port}/chat"
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))  # a fresh --user-data-dir
    seen: list[str] = []  # the reply's text each time it was looked at
    with sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text("Connected to").wait_for(timeout=60_000)
            assert "hf_generate" in page.get_by_text("Connected to").inner_text()
            page.locator("#chat-input").fill(QUESTION)
            page.locator("#chat-submit").click()
            messages = page.locator("[id^=step-]")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                texts = [text.strip() for text in messages.all_inner_texts()]
                reply = texts[-1] if texts and texts[-1] != QUESTION and len(texts) >= 3 else ""
                if reply and (not seen or reply != seen[-1]):
                    seen.append(reply)
                # Done when the reply has stopped growing for 3 s (the model ends it, or reaches max_new_tokens).
                if seen and len(seen[-1]) > 200:
                    time.sleep(3)
                    if messages.all_inner_texts()[-1].strip() == seen[-1]:
                        break
                time.sleep(0.1)
            screenshot = os.environ.get("PLAYGROUND_SCREENSHOT")
            page.screenshot(path=str(tmp_path / "playground.png"))
            if screenshot:
                shutil.copyfile(tmp_path / "playground.png", screenshot)
        finally:
            browser.close()

    assert seen, f"no reply appeared on the page; log:\n{playground.log()[-6000:]}"
    final = seen[-1]
    assert "language" in final.lower(), final
    assert "Natural Language Processing" in final or "NLP" in final, final
    # Streamed: the page showed the reply growing, from its first words on (markdown may reflow the whitespace).
    assert len(seen) >= 3, seen
    first, last = " ".join(seen[0].split()), " ".join(final.split())
    assert len(first) < len(last) / 2, seen
    assert last.startswith(first[:12]), seen

    code = playground.ctrl_c()
    log = playground.log()
    assert code == 0, log[-6000:]
    assert "Stopping the Playground" in log
    assert not listening(playground.port)
    assert not listening(playground.model_port)
