"""Import path of the reference client: ``from nomyo.SecureCompletionClient import ...``."""

from ._client import SecureCompletionClient
from ._exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    RateLimitError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)

# The reference's nomyo.SecureCompletionClient.SecureCompletionClient spelling, for code that
# reaches the class through the package attribute (which is the class itself here).
SecureCompletionClient.SecureCompletionClient = SecureCompletionClient  # type: ignore[attr-defined]

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidRequestError",
    "RateLimitError",
    "SecureCompletionClient",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
]
