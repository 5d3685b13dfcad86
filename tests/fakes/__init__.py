"""Fake inference servers for the test suite and the benchmarks.

Real HTTP on 127.0.0.1, stdlib only, faithful to the protocols of TGI (:class:`FakeTGI`), vLLM-style
OpenAI-compatible engines (:class:`FakeOpenAI`), the Hugging Face Hub model-info API (:class:`FakeHub`)
and the Inference Providers router (:class:`FakeRouter`), with a deterministic token "model" and
injectable faults (:class:`Fault`). Example::

    with FakeTGI(tokens=["Hello", " world"]) as tgi:
        tgi.faults.append(Fault.reset(after_events=1))
        ...  # point the client at tgi.url
        assert tgi.requests[0].json["inputs"] == "Hi"

Around them: an Inference Endpoint's proxy in front of any fake (:class:`EndpointProxy`, scale to zero
and pause), a forward HTTP proxy with CONNECT (:class:`ForwardProxy`), and a local certificate
authority for https fakes (:func:`make_ca`, :func:`issue_cert`, ``FakeTGI(tls=...)``).
"""

from ._common import (
    DEFAULT_TOKENS,
    EOS_TEXT,
    AbortedStream,
    FakeServer,
    Fault,
    FaultQueue,
    RecordedRequest,
    count_prompt_tokens,
)
from .endpoint import PAUSED_BODY, PAUSED_HINT, UNAVAILABLE_BODY, EndpointEvent, EndpointProxy
from .hub import FakeHub, FakeRouter
from .openai_compat import FakeOpenAI, OpenAIEngine
from .proxy import ForwardProxy, ProxiedRequest
from .tgi import FakeTGI, TGILimits
from .tls import CertificateAuthority, ServerCertificate, issue_cert, make_ca, server_context

__all__ = [
    "DEFAULT_TOKENS",
    "EOS_TEXT",
    "PAUSED_BODY",
    "PAUSED_HINT",
    "UNAVAILABLE_BODY",
    "AbortedStream",
    "CertificateAuthority",
    "EndpointEvent",
    "EndpointProxy",
    "FakeHub",
    "FakeOpenAI",
    "FakeRouter",
    "FakeServer",
    "FakeTGI",
    "Fault",
    "FaultQueue",
    "ForwardProxy",
    "OpenAIEngine",
    "ProxiedRequest",
    "RecordedRequest",
    "ServerCertificate",
    "TGILimits",
    "count_prompt_tokens",
    "issue_cert",
    "make_ca",
    "server_context",
]
