"""
Tokens per second through the generator versus the same requests sent directly, against the real local
model server (`transformers serve` on SmolLM2-135M, from the package's `local_model` module).

Prints one JSON object on stdout: either the measurements or `{"skipped": "why"}`. The server is
always stopped, even on errors. Greedy decoding and one prompt, so both sides generate the same tokens;
the two clients alternate request by request (and swap who goes first) so drift hits both alike.

Run with the project's venv: python benchmarks/local_model_bench.py [--tokens 48] [--reps 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import sys
import time
from typing import Any

PROMPT = "The three most useful things to know about benchmarks are"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _skip(reason: str) -> None:
    print(json.dumps({"skipped": reason}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()

    if importlib.util.find_spec("transformers") is None:
        return _skip("transformers is not installed in the project's venv (extra `local`)")
    try:
        from haystack_integrations.generators.hugging_face_api import local_model
    except ImportError as error:
        return _skip(f"haystack_integrations.generators.hugging_face_api.local_model is not importable: {error}")
    if not hasattr(local_model, "LocalModelServer"):
        return _skip("local_model has no LocalModelServer yet")
    try:
        local_model.find_gguf()
    except FileNotFoundError as error:
        return _skip(str(error))

    import urllib3

    from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

    server = local_model.LocalModelServer(port=_free_port())
    try:
        started = time.perf_counter()
        server.start(timeout=300)
        startup_s = time.perf_counter() - started
        # protocol "auto": GET /info finds no TGI, GET /v1/models names the model, /v1/completions it is.
        generator = HuggingFaceAPIGenerator(
            api_type="text_generation_inference",
            api_params={"url": server.url},
            generation_kwargs={"max_new_tokens": args.tokens, "temperature": 0},
        )
        generator.warm_up()
        direct = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=300))
        url = server.url + "/v1/completions"
        # The body the generator sends on the completions protocol, written out by hand.
        body: dict[str, Any] = {"model": server.model_id, "max_tokens": args.tokens, "temperature": 0}

        def post(payload: dict[str, Any]) -> Any:
            response = direct.request("POST", url, json=payload, preload_content=False)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
            return response

        def direct_call() -> int:
            response = post({**body, "stream": False, "prompt": PROMPT})
            try:
                return int(json.loads(response.read())["usage"]["completion_tokens"])
            finally:
                response.release_conn()

        def direct_stream() -> int:
            response = post({**body, "stream": True, "stream_options": {"include_usage": True}, "prompt": PROMPT})
            pieces, usage, rest = 0, None, b""
            try:
                for chunk in response.stream(65536):
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                            continue
                        event = json.loads(line[5:])
                        usage = event.get("usage") or usage
                        pieces += bool(event.get("choices") and event["choices"][0].get("text"))
            finally:
                response.release_conn()
            return int(usage["completion_tokens"]) if usage else pieces

        def ours_call() -> int:
            return int(generator.run(PROMPT)["meta"][0]["usage"]["completion_tokens"])

        def ours_stream() -> int:
            pieces = []
            meta = generator.run(PROMPT, streaming_callback=lambda chunk: pieces.append(chunk.content))["meta"][0]
            return int(meta["usage"].get("completion_tokens", len(pieces)))

        modes = {"call": (direct_call, ours_call), "stream": (direct_stream, ours_stream)}
        for direct_fn, ours_fn in modes.values():  # warm-up: first requests compile kernels, fill caches
            direct_fn()
            ours_fn()
        results: dict[str, Any] = {"startup_s": startup_s, "tokens": args.tokens, "model": server.model_id}
        for mode, (direct_fn, ours_fn) in modes.items():
            rates: dict[str, list[float]] = {"direct": [], "ours": []}
            for rep in range(args.reps):
                pair = [("direct", direct_fn), ("ours", ours_fn)]
                for name, fn in pair if rep % 2 == 0 else pair[::-1]:
                    start = time.perf_counter()
                    tokens = fn()
                    rates[name].append(tokens / (time.perf_counter() - start))
            results[mode] = {
                "direct_tps": statistics.median(rates["direct"]),
                "ours_tps": statistics.median(rates["ours"]),
                "ratios": [o / d for o, d in zip(rates["ours"], rates["direct"], strict=True)],
                "raw": rates,
            }
        print(json.dumps(results))
    except Exception as error:  # reported in BENCHMARKS.md instead of numbers
        _skip(f"the local model server could not be benchmarked: {type(error).__name__}: {error}"[:600])
    finally:
        server.stop()
    return None


if __name__ == "__main__":
    sys.exit(main())
