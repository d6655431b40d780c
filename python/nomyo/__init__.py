"""nomyo-rs: the NOMYO secure chat client, with its cryptography in Rust.

A drop-in replacement for the ``nomyo`` package: ``from nomyo import SecureChatCompletion``.
Requests are encrypted end to end (AES-256-GCM + RSA-OAEP-SHA256) in native memory that is
locked, excluded from core dumps and zeroed; see ``nomyo._exceptions`` for the error tree.
"""

from ._chat import SecureChatCompletion
from ._client import SecureCompletionClient
from ._core import PrivateKey, PublicKey
from ._core import __version__ as __version__
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    EnvelopeError,
    ForbiddenError,
    InvalidRequestError,
    KeyFormatError,
    NomyoError,
    RateLimitError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)
from ._memory import (
    SecureBuffer,
    disable_secure_memory,
    enable_secure_memory,
    get_memory_protection_info,
    secure_bytearray,
    secure_bytes,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ConfigurationError",
    "EnvelopeError",
    "ForbiddenError",
    "InvalidRequestError",
    "KeyFormatError",
    "NomyoError",
    "PrivateKey",
    "PublicKey",
    "RateLimitError",
    "SecureBuffer",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "secure_bytearray",
    "secure_bytes",
]
