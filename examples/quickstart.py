"""
The original documentation's first example, against the local model server.

Starts `transformers serve` with SmolLM2-135M-Instruct on localhost:8080 (unless something already serves there),
streams the answer to the terminal, and stops the server. `--url URL` uses a server that is already running instead.

The model is an instruct (chat) model, so the generator uses `protocol: "chat"`: the prompt goes to
`/v1/chat/completions` as one user message and the server applies the model's chat template. Sent raw to
`/v1/completions`, the same prompt is text to continue, and a 135M-parameter instruct model continues it in a loop.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence

from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.local_model import LocalModelServer

PROMPT = "What's Natural Language Processing?"


def print_chunk(chunk: StreamingChunk) -> None:
    print(chunk.content, end="", flush=True)


@contextlib.contextmanager
def model_server(url: str | None) -> Iterator[str]:
    """The given server's URL, or a local model server on port 8080 for the duration of the block."""
    if url:
        yield url
        return
    print("Starting the local model server on http://localhost:8080 ...", file=sys.stderr)
    with LocalModelServer(port=8080) as server:
        yield server.url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Stream an answer from the local model through HuggingFaceAPIGenerator."
    )
    parser.add_argument("prompt", nargs="*", help=f"the prompt (default: {PROMPT!r})")
    parser.add_argument("--url", help="a running TGI or OpenAI-compatible server (default: start the local one)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default 128 (~3 s on 2 CPU cores)")
    args = parser.parse_args(argv)
    prompt = " ".join(args.prompt) or PROMPT
    with model_server(args.url) as url:
        generator = HuggingFaceAPIGenerator(
            api_type="text_generation_inference",
            api_params={"url": url, "protocol": "chat"},
            generation_kwargs={"max_new_tokens": args.max_new_tokens},
            streaming_callback=print_chunk,
        )
        print(f"\n>>> {prompt}\n", file=sys.stderr)
        with generator:
            result = generator.run(prompt=prompt)
        print()
        print(f"\n[meta] {result['meta'][0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
