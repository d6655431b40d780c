"""Import path of the reference client: ``from nomyo.SecureMemory import ...``."""

from ._memory import (
    SecureBuffer,
    disable_secure_memory,
    enable_secure_memory,
    get_memory_protection_info,
    secure_bytearray,
    secure_bytes,
)

__all__ = [
    "SecureBuffer",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "secure_bytearray",
    "secure_bytes",
]
