"""The bounds of the embedded HTTP server (``nomyo._http_server``): sizes, timeouts, open
connections and the bytes held for peers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "default_max_connections"]


@dataclass(frozen=True)
class Limits:
    """Connection limits.

    Attributes:
        max_body: largest accepted request body in bytes (larger -> 413).
        max_header_bytes: largest accepted request head (larger -> 400).
        request_timeout: seconds allowed to receive one request, head and body.
        idle_timeout: seconds a keep-alive connection may sit idle before it is closed.
        write_timeout: seconds a reader may take no byte of a reply before it is dropped.
    """

    max_body: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    request_timeout: float = 30.0
    idle_timeout: float = 60.0
    write_timeout: float = 30.0
    #: Open connections at most; past it the longest-idle one is closed, or the new one
    #: gets a 503 when none is idle. None: derived from the descriptor limit.
    max_connections: int | None = None
    #: Request body bytes buffered at once over all connections (beyond it -> 503). The
    #: first 64 KiB of each body do not count, so small requests are always served.
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: Reply bytes waiting for their readers at once over all connections; when they are
    #: over it no more replies are opened (503 with ``Retry-After``). The first 64 KiB of
    #: each reply do not count. None: the same as ``max_buffered_bytes``.
    max_reply_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_buffered_bytes < 1:
            raise ValueError("max_buffered_bytes must be at least 1")
        if self.max_reply_bytes is not None and self.max_reply_bytes < 1:
            raise ValueError("max_reply_bytes must be at least 1")

    @property
    def reply_bytes(self) -> int:
        """The reply budget in force."""
        return self.max_reply_bytes or self.max_buffered_bytes

    @property
    def connections(self) -> int:
        """The connection cap in force."""
        return self.max_connections or default_max_connections()


def default_max_connections() -> int:
    """A quarter of the soft descriptor limit (at least 16, at most 4096).

    The rest stays for the server's own outbound connections, files and the event loop, so a
    flood of idle sockets can never use up the descriptors a real request needs.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - non-POSIX
        return 256
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft // 4))
