"""Fake inference servers for the test suite and the benchmarks.

Real HTTP on 127.0.0.1, stdlib only, faithful to the protocols of TGI (:class:`FakeTGI`), vLLM-style
OpenAI-compatible engines (:class:`FakeOpenAI`), the Hugging Face Hub model-info API (:class:`FakeHub`)
and the Inference Providers router (:class:`FakeRouter`), with a deterministic token "model" and
injectable faults (:class:`Fault`). Example::

    with FakeTGI(tokens=["Hello", " world"]) as tgi:
        tgi.faults.append(Fault.reset(after_events=1))
        ...  # point the client at tgi.url
        assert tgi.requests[0].json["inputs"] == "Hi"
"""

from ._common import DEFAULT_TOKENS, EOS_TEXT, FakeServer, Fault, FaultQueue, RecordedRequest, count_prompt_tokens
from .hub import FakeHub, FakeRouter
from .openai_compat import FakeOpenAI, OpenAIEngine
from .tgi import FakeTGI, TGILimits

__all__ = [
    "DEFAULT_TOKENS",
    "EOS_TEXT",
    "FakeHub",
    "FakeOpenAI",
    "FakeRouter",
    "FakeServer",
    "FakeTGI",
    "Fault",
    "FaultQueue",
    "OpenAIEngine",
    "RecordedRequest",
    "TGILimits",
    "count_prompt_tokens",
]
