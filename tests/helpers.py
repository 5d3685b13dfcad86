"""Helpers the tests share: a recording streaming callback, and one way to call a generator in every mode."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack.dataclasses import StreamingChunk

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator

TEXT = "Natural Language Processing is a field."
#: (mode, streamed): every way a user calls the generator.
MODES = [("sync", False), ("sync", True), ("async", False), ("async", True)]
MODE_IDS = ["run", "run-stream", "run_async", "run_async-stream"]


class Chunks:
    """A streaming callback that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[StreamingChunk] = []

    def __call__(self, chunk: StreamingChunk) -> None:
        self.received.append(chunk)

    @property
    def text(self) -> str:
        return "".join(c.content for c in self.received)


def call(
    generator: HuggingFaceAPIGenerator, mode: str, chunks: Chunks | None, prompt: str = "q", **kwargs: Any
) -> dict[str, Any]:
    """`run` or `run_async` (on a fresh event loop, closed afterwards), streaming to `chunks` when given."""
    if mode == "sync":
        return generator.run(prompt, streaming_callback=chunks, **kwargs)

    async def main() -> dict[str, Any]:
        try:
            return await generator.run_async(prompt, streaming_callback=chunks, **kwargs)
        finally:
            await generator.close_async()

    return asyncio.run(main())


def posts(server: Any) -> int:
    """How many generation requests (POSTs) a fake received."""
    return sum(1 for r in server.requests if r.method == "POST")
