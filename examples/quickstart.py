"""
The original documentation's first example, against the local model server.

Starts `transformers serve` with SmolLM2-135M-Instruct on localhost:8080 (unless something already
serves there), streams the answer to the terminal, and stops the server.
"""

from __future__ import annotations

import sys

from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from haystack_integrations.generators.hugging_face_api.local_model import LocalModelServer


def print_chunk(chunk: StreamingChunk) -> None:
    print(chunk.content, end="", flush=True)


def main() -> int:
    prompt = " ".join(sys.argv[1:]) or "What's Natural Language Processing?"
    print("Starting the local model server on http://localhost:8080 ...", file=sys.stderr)
    with LocalModelServer(port=8080):
        generator = HuggingFaceAPIGenerator(
            api_type="text_generation_inference",
            api_params={"url": "http://localhost:8080"},
            generation_kwargs={"max_new_tokens": 120},
            streaming_callback=print_chunk,
        )
        print(f"\n>>> {prompt}\n", file=sys.stderr)
        result = generator.run(prompt=prompt)
        print()
        print(f"\n[meta] {result['meta'][0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
