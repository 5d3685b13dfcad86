"""The quick start (`bash scripts/demo.sh` runs examples/quickstart.py) answers well, against the real local model.

"Well" is checked mechanically: on topic (it is about language and NLP) and not a loop (no 8-word window and no
sentence occurs twice). The same prompt sent raw to `/v1/completions` fails that check: that is why the quick start
uses `protocol: "chat"` (see README).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from haystack_integrations.generators.hugging_face_api import HuggingFaceAPIGenerator
from tests.e2e.conftest import subprocess_env

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
PROMPT = "What's Natural Language Processing?"


def repetition(text: str, window: int = 8) -> str | None:
    """The first run of `window` words, or sentence (4+ words), that occurs twice; None if there is none."""
    words = re.findall(r"\w+", text.lower())
    seen: set[tuple[str, ...]] = set()
    for start in range(len(words) - window + 1):
        run = tuple(words[start : start + window])
        if run in seen:
            return " ".join(run)
        seen.add(run)
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 4]
    return next((s for s in sentences if sentences.count(s) > 1), None)


def test_repetition_detector() -> None:
    assert repetition("one two three four five six seven eight nine ten") is None
    assert repetition("a b c d e f g h x a b c d e f g h") == "a b c d e f g h"
    assert repetition("It is good. Yes it is. It is good.") is None  # 3 words: too short to count
    assert repetition("This is it now. And this is it now.") is None
    assert repetition("This one is it. Then: this one is it.") is None
    assert repetition("This one is it.\nThis one is it.") == "this one is it."


def test_quick_start_streams_a_sensible_answer(model_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--url", model_url],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = done.stdout.strip()
    assert len(answer.split()) >= 30, answer  # a real answer, streamed to stdout
    lowered = answer.lower()
    assert "language" in lowered, answer
    assert "nlp" in lowered or "natural language processing" in lowered, answer
    assert repetition(answer) is None, f"repeats {repetition(answer)!r}: {answer}"
    assert "'protocol': 'chat'" in done.stderr  # the meta line: the chat route was used


def test_the_raw_prompt_loops_which_is_why_the_quick_start_uses_chat(model_url: str) -> None:
    with HuggingFaceAPIGenerator(api_type="text_generation_inference", api_params={"url": model_url}) as raw:
        result = raw.run(PROMPT, generation_kwargs={"max_new_tokens": 128})
    assert result["meta"][0]["protocol"] == "completions"
    assert repetition(result["replies"][0]) is not None, result["replies"][0]
