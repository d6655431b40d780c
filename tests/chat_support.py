"""What the chat-client tests share: a message, the transports, clients on a given key.

Their fixtures (``client_key``, ``router``, ``_clean``, ``transport``, ``fast_retries``) are
in ``conftest.py``.
"""

from __future__ import annotations

from typing import Any

import nomyo
from nomyo import _core

__all__ = ["HELLO", "TRANSPORTS", "async_chat", "sync_chat"]

HELLO = [{"role": "user", "content": "hello"}]

#: The two transports a client can run on (``NOMYO_TRANSPORT``).
TRANSPORTS = ["native", "httpx"]


def sync_chat(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SyncSecureChatCompletion:
    """A blocking chat client of the router at ``url`` (plain HTTP) sealing under ``key``."""
    client = nomyo.SyncSecureChatCompletion(base_url=url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client


def async_chat(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureChatCompletion:
    """The async twin of :func:`sync_chat`."""
    client = nomyo.SecureChatCompletion(base_url=url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client
