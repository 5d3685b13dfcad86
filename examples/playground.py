"""
The Playground: the local model server, Hayhooks serving `hf_generate`, and Hayhooks' Chainlit chat UI, in one command.

    bash scripts/playground.sh        # or: python examples/playground.py [--port 1416] [--model-port 8080]

Starts SmolLM2-135M-Instruct with `transformers serve` (reused if it already runs on --model-port), then
`examples/hayhooks/serve.py --with-chainlit` (Hayhooks with the example pipeline), waits until both answer and prints
the URL to open. Ctrl-C (or SIGTERM) stops Hayhooks, then the model server. Give --model-url to use a model server
that is already running (any TGI or OpenAI-compatible server) instead of starting the local one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from haystack_integrations.generators.hugging_face_api.local_model import LocalModelServer

SERVE = Path(__file__).resolve().parent / "hayhooks" / "serve.py"
PIPELINE = "hf_generate"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _ready(url: str) -> bool:
    try:
        with _DIRECT.open(f"{url}/status", timeout=2) as response:
            return response.status == 200 and PIPELINE.encode() in response.read()
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="playground", description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--host", default="127.0.0.1", help="address Hayhooks binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1416, help="Hayhooks' port (default 1416)")
    parser.add_argument("--model-port", type=int, default=8080, help="the local model server's port (default 8080)")
    parser.add_argument("--model-url", help="use this running model server instead of starting the local one")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each server to be ready")
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM take the same clean path (SIGINT explicitly: a shell starting us in the background ignores it).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    model = None if args.model_url else LocalModelServer(port=args.model_port)
    hayhooks: subprocess.Popen[bytes] | None = None
    try:
        if model is not None:
            print(f"Starting the local model server on port {args.model_port} ...", flush=True)
            model_url = model.start(timeout=args.timeout)
        else:
            model_url = args.model_url.rstrip("/")
        print(f"Model server: {model_url}", flush=True)
        env = {**os.environ, "HF_API_GENERATOR_URL": model_url, "HAYSTACK_TELEMETRY_ENABLED": "False"}
        env.setdefault("NO_PROXY", "127.0.0.1,localhost")  # Chainlit talks to Hayhooks over loopback
        command = [sys.executable, str(SERVE), "--host", args.host, "--port", str(args.port), "--with-chainlit"]
        # Its own session: a Ctrl-C in the terminal reaches only this process, which stops the children in order.
        hayhooks = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
        url = f"http://{'127.0.0.1' if args.host in {'0.0.0.0', ''} else args.host}:{args.port}"  # noqa: S104
        deadline = time.monotonic() + args.timeout
        while not _ready(url):
            if hayhooks.poll() is not None:
                print(
                    f"error: Hayhooks exited with code {hayhooks.returncode} (is port {args.port} free?)",
                    file=sys.stderr,
                )
                return 1
            if time.monotonic() > deadline:
                print(f"error: Hayhooks was not ready after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.25)
        print(
            f"\nPlayground ready: open {url}/chat   (OpenAI-compatible API: {url}/v1, model {PIPELINE!r})", flush=True
        )
        print("Press Ctrl-C to stop.", flush=True)
        code = hayhooks.wait()
        print(f"Hayhooks exited by itself with code {code}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the Playground ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as error:  # the model server could not start
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the children's shutdown short
            signal.signal(signum, signal.SIG_IGN)
        if hayhooks is not None:
            _stop(hayhooks)
        if model is not None:
            model.stop()


if __name__ == "__main__":
    sys.exit(main())
