"""The transports, one interface (:class:`Transport`): the native one (``native``: HTTP/1.1
and HTTP/2 over rustls, sealing and opening in Rust) and the ``httpx`` one. Each owns its
pool, its ``close``/``aclose`` and the mapping of its network failures;
:func:`make_transport` picks one for a client's options.
"""

from __future__ import annotations

from .._config import ClientOptions
from .base import Reply, SealedRequest, Timings, Transport
from .httpx import HttpxTransport, check_caller_http
from .native import NativeTransport, native_trust

__all__ = [
    "HttpxTransport",
    "NativeTransport",
    "Reply",
    "SealedRequest",
    "Timings",
    "Transport",
    "make_transport",
]


def make_transport(options: ClientOptions, *, asynchronous: bool) -> Transport:
    """The transport of a client with ``options``: native unless something only httpx
    honours is asked for (a caller's ``transport`` or ``http_client``, an ``SSLContext``,
    an ``https://`` or SOCKS proxy, ``NOMYO_TRANSPORT=httpx``; see ``native``).

    Raises:
        ConfigurationError: verification turned off (also by a caller's transport or
            client), or an unknown ``NOMYO_TRANSPORT``.
    """
    transport, http_client = options.transport, options.http_client
    check_caller_http(transport, http_client)
    caller_http = transport is not None or http_client is not None
    trust = native_trust(options.verify, caller_http)
    if trust is not None:
        return NativeTransport(trust, options.timeouts, secure_memory=options.secure_memory_mode)
    return HttpxTransport(
        asynchronous,
        http_client,
        timeout=options.timeout,
        verify=options.verify,
        transport=transport,
    )
