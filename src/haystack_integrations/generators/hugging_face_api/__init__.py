"""
`HuggingFaceAPIGenerator` for Haystack 3: prompt in, text out, through TGI, OpenAI-compatible engines
(vLLM, SGLang, llama.cpp, transformers serve), Inference Endpoints and Inference Providers.
"""

from ._config import HFGenerationAPIType, Timeout
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    EndpointNotReadyError,
    EndpointPausedError,
    GenerationError,
    HuggingFaceAPIError,
    IncompleteStreamError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProviderResolutionError,
    RedirectError,
    ResponseFormatError,
    ServerError,
    ValidationError,
)
from .generator import HuggingFaceAPIGenerator

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "EndpointNotReadyError",
    "EndpointPausedError",
    "GenerationError",
    "HFGenerationAPIType",
    "HuggingFaceAPIError",
    "HuggingFaceAPIGenerator",
    "IncompleteStreamError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProviderResolutionError",
    "RedirectError",
    "ResponseFormatError",
    "ServerError",
    "Timeout",
    "ValidationError",
]
