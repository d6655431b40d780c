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
