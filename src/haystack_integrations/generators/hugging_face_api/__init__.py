"""
`HuggingFaceAPIGenerator` for Haystack 3: prompt in, text out, through TGI, OpenAI-compatible engines
(vLLM, SGLang, llama.cpp, transformers serve), Inference Endpoints and Inference Providers.

The exceptions it raises are those of `errors` (documented there as a tree), re-exported here.
"""

from . import errors as _errors
from ._config import HFGenerationAPIType, Timeout
from .errors import *  # noqa: F403 (the exception tree, exactly `errors.__all__`)
from .generator import HuggingFaceAPIGenerator

__all__ = ["HFGenerationAPIType", "HuggingFaceAPIGenerator", "Timeout", *_errors.__all__]
