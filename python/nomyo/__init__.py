"""nomyo-rs: the NOMYO secure chat client, with its cryptography in Rust.

A drop-in replacement for the ``nomyo`` package: ``from nomyo import SecureChatCompletion``.
Requests are encrypted end to end (AES-256-GCM + RSA-OAEP-SHA256) in native memory that is
locked, excluded from core dumps and zeroed; see ``nomyo._exceptions`` for the error tree.
"""

import logging as _logging
from typing import TYPE_CHECKING, Any

# Load the reference's module path nomyo.SecureCompletionClient first, so that the class
# bound below stays the package attribute even after that submodule is imported elsewhere.
from . import SecureCompletionClient as _reference_module_path  # noqa: F401
from ._chat import SecureChatCompletion, SyncSecureChatCompletion
from ._client import SecureCompletionClient
from ._config import configure_logging
from ._core import PrivateKey, PublicKey
from ._core import __version__ as __version__
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    EnvelopeError,
    ForbiddenError,
    InvalidRequestError,
    KeyFormatError,
    NomyoError,
    RateLimitError,
    RequestTooLargeError,
    SecureMemoryError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)
from ._memory import (
    SecureBuffer,
    disable_core_dumps,
    disable_secure_memory,
    enable_secure_memory,
    get_memory_protection_info,
    secure_bytearray,
    secure_bytes,
)
from ._params import NOT_GIVEN, NotGiven
from ._ratelimit import RateLimiter, RateLimitPolicy
from ._response import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    Choice,
    CompletionUsage,
    FinishReason,
    Function,
    ResponseList,
    ResponseObject,
)
from ._stream import (
    AsyncStream,
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    ChunkChoice,
    Stream,
)
from ._sync_client import SyncSecureCompletionClient

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncStream",
    "AuthenticationError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChunkChoice",
    "ClientClosedError",
    "CompletionUsage",
    "ConfigurationError",
    "EnvelopeError",
    "FinishReason",
    "ForbiddenError",
    "Function",
    "InvalidRequestError",
    "KeyFormatError",
    "NomyoError",
    "NotGiven",
    "PrivateKey",
    "PublicKey",
    "RateLimitError",
    "RateLimitPolicy",
    "RateLimiter",
    "RequestTooLargeError",
    "ResponseList",
    "ResponseObject",
    "SecureBuffer",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecureMemoryError",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "Stream",
    "SyncSecureChatCompletion",
    "SyncSecureCompletionClient",
    "configure_logging",
    "disable_core_dumps",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "openai_async_http_client",
    "openai_http_client",
    "secure_bytearray",
    "secure_bytes",
]

if TYPE_CHECKING:
    from ._openai import openai_async_http_client, openai_http_client

_LAZY = {"openai_async_http_client", "openai_http_client"}


def __getattr__(name: str) -> Any:
    """The OpenAI SDK adapters load httpx; they are imported on first use."""
    if name in _LAZY:
        from . import _openai

        value = getattr(_openai, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nomyo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)


# The logging HOWTO for libraries: no output unless the application configures logging.
_logging.getLogger("nomyo").addHandler(_logging.NullHandler())
configure_logging()  # NOMYO_LOG=debug|info|warning|error: log the "nomyo" logger to stderr
