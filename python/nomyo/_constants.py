"""Protocol constants and client defaults, in one place."""

from __future__ import annotations

from typing import Final

DEFAULT_BASE_URL: Final = "https://api.nomyo.ai"
PUBLIC_KEY_PATH: Final = "/pki/public_key"
COMPLETION_PATH: Final = "/v1/chat/secure_completion"

#: Client RSA key size (the protocol's production size).
KEY_SIZE: Final = 4096
PRIVATE_KEY_FILE: Final = "private_key.pem"
PUBLIC_KEY_FILE: Final = "public_key.pem"

SECURITY_TIERS: Final = ("standard", "high", "maximum")

DEFAULT_MAX_RETRIES: Final = 2
#: Statuses worth another try (PROTOCOL.md section 4).
RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
#: A Retry-After longer than this (e.g. the 30-minute cool-down) raises at once.
MAX_RETRY_AFTER: Final = 60.0

#: Timeouts in seconds: connecting fails fast; inference may take minutes.
CONNECT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 300.0
WRITE_TIMEOUT: Final = 60.0
POOL_TIMEOUT: Final = 60.0

#: Largest reply body read from the server, in bytes.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
#: The largest ``max_response_size`` a client accepts (the native transport's bound too).
MAX_RESPONSE_LIMIT: Final = 1 << 30
#: Reserved request key of the reply-binding extension (docs/security.md): a random secret
#: sealed inside the request, which a supporting router removes before inference and returns
#: as ``_metadata.reply_binding`` inside the sealed reply.
REPLY_BINDING_KEY: Final = "_nomyo_reply_binding"
#: Default ``max_request_size``: the most text (characters in the request's strings, a lower
#: bound of its JSON bytes) a request may hold; larger ones are refused before encrypting.
#: Sealed, 32 MiB of text is about 43 MiB on the wire (base64 adds a third).
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024
#: Largest error body read from the server, in bytes.
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
#: Largest server public key reply read, in bytes (a PEM key is a few KiB).
MAX_KEY_BYTES: Final = 64 * 1024
#: Longest server ``detail`` kept in an exception message.
MAX_DETAIL_CHARS: Final = 500

#: Environment variables read when the corresponding argument is not given.
ENV_BASE_URL: Final = "NOMYO_BASE_URL"
ENV_API_KEY: Final = "NOMYO_API_KEY"
ENV_LOG: Final = "NOMYO_LOG"

#: The public rate limit (PROTOCOL.md section 4): 2 requests per second per key, with a burst
#: of up to 4 in one second allowed once every 10 seconds.
RATE_LIMIT_REQUESTS: Final = 2
RATE_LIMIT_BURST: Final = 4
RATE_LIMIT_PERIOD: Final = 1.0
RATE_LIMIT_BURST_INTERVAL: Final = 10.0
