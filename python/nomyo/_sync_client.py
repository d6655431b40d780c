"""``SyncSecureCompletionClient``: the blocking twin of ``SecureCompletionClient``.

A thin shell over the pipeline (``_pipeline``) that drives its flows blocking. One pooled
``httpx.Client`` (or native pool) per client, safe to share by many threads: the one-time
server key fetch is guarded by a lock, everything else is per call. The native crypto
calls release the GIL, so threads encrypt and decrypt in parallel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._effects import Flow, T, drive
from ._lifecycle import Closeable
from ._pipeline import PipelineClient
from ._response import ChatCompletion
from ._signature import takes_arguments_of

if TYPE_CHECKING:
    import httpx  # noqa: F401  (the generic arguments name it)

__all__ = ["SyncSecureCompletionClient"]


class SyncSecureCompletionClient(PipelineClient["httpx.BaseTransport", "httpx.Client"], Closeable):
    """Blocking client of ``/v1/chat/secure_completion``; thread-safe.

    Takes the arguments of :class:`~nomyo.SecureCompletionClient`, with ``transport`` an
    ``httpx.BaseTransport`` and ``http_client`` an ``httpx.Client``. Close it with
    :meth:`close` or use it as a context manager.
    """

    @staticmethod
    def _new_lock() -> threading.Lock:
        return threading.Lock()

    def _drive(self, flow: Flow[T]) -> T:
        return drive(flow, self._transport)

    def fetch_server_public_key(self) -> str:
        """Fetch, validate and cache the server's public key; returns its PEM (blocking).

        Raises:
            SecurityError / KeyFormatError / APIError / APIConnectionError: as
                :meth:`SecureCompletionClient.fetch_server_public_key`.
        """
        return self._drive(self._fetch_key_flow())

    def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Encrypt a request for the server (blocking); see
        :meth:`SecureCompletionClient.encrypt_payload`."""
        return self._drive(self._seal_flow(payload))

    def decrypt_response(
        self, encrypted_response: bytes, payload_id: str, *, reply_binding: str | None = None
    ) -> ChatCompletion:
        """Open a reply sealed to our key (blocking); see
        :meth:`SecureCompletionClient.decrypt_response`."""
        return self._drive(self._open_flow(encrypted_response, payload_id, reply_binding))

    @takes_arguments_of(PipelineClient._request_flow)
    def send_secure_request(self, *args: Any, **kwargs: Any) -> ChatCompletion:
        """Encrypt, send (with retries), and decrypt one chat completion (blocking).

        Takes and raises what :meth:`SecureCompletionClient.send_secure_request` does.
        """
        return self._drive(self._request_flow(*args, **kwargs))

    def close(self) -> None:
        """Close the connection pool (if this client created it); later requests raise
        ``RuntimeError``."""
        self._closed = True
        self._transport.close()
