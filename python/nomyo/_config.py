"""Configuration: the options of a client (:class:`ClientOptions`, checked once), its
:class:`Timeouts`, and what the environment supplies (router URL, API key, ``NOMYO_LOG``).

Every argument given explicitly wins; the environment fills in what is not given:

=================  =========================================================
``NOMYO_BASE_URL``  the router (default ``https://api.nomyo.ai``); a trailing ``/v1``
                    (an OpenAI-style base URL) is dropped
``NOMYO_API_KEY``   the bearer API key
``NOMYO_LOG``       ``debug``, ``info``, ``warning`` or ``error``: log the ``nomyo`` logger to
                    stderr at that level; any other non-empty value is refused
``NOMYO_TRANSPORT`` ``native`` (default) or ``httpx`` (see ``nomyo._transports``)
=================  =========================================================

Logging follows the Python logging HOWTO for libraries: the ``nomyo`` logger has only a
``NullHandler``, so nothing reaches stderr unless the application configures logging (or sets
``NOMYO_LOG``). Retries are logged at INFO (as the openai SDK does), one line per request at
DEBUG. Logs never hold plaintext, keys, API keys or passwords: each request logs its payload
id, attempt, sizes, status and timings only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

from ._attestation import (
    AttestationMode,
    PcrPolicy,
    ReplyBindingMode,
    check_mode,
    remembered_pcrs,
)
from ._attestation import check_reply_binding as _check_reply_binding
from ._constants import (
    CONNECT_TIMEOUT,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_LOG,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_RESPONSE_LIMIT,
    POOL_TIMEOUT,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
)
from ._ephemeral import RotationInterval, resolve_rotation_interval
from ._exceptions import ConfigurationError, SecurityError
from ._known_hosts import normalise_fingerprints
from ._memory import SecureMemoryMode, SecureMemoryOption, secure_memory_mode
from ._params import NOT_GIVEN, NotGiven, TimeoutTypes
from ._ratelimit import RateLimiter, make_rate_limiter
from ._receipts import ReceiptWriter, receipts_writer

if TYPE_CHECKING:
    import httpx

    from ._known_pcrs import KnownPcrs

__all__ = [
    "ClientOptions",
    "Timeouts",
    "VerifyTypes",
    "check_base_url",
    "configure_logging",
    "is_loopback_host",
    "normalise_base_url",
    "resolve_api_key",
    "resolve_base_url",
]

VerifyTypes: TypeAlias = "bool | str | ssl.SSLContext"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: The OpenAI-style API prefix users append to a base URL; the router's paths include it.
_API_PREFIX = "/v1"


def normalise_base_url(url: str) -> str:
    """``url`` without trailing slashes and without a trailing ``/v1``.

    OpenAI users (and ``nomyo proxy``'s banner) write base URLs ending in ``/v1``; the
    router's paths (``/v1/chat/secure_completion``, ``/pki/public_key``) start at its root.
    """
    url = url.strip().rstrip("/")
    if url.lower().endswith(_API_PREFIX):
        url = url[: -len(_API_PREFIX)].rstrip("/")
    return url


def resolve_base_url(given: str | None) -> str:
    """``given``, else ``$NOMYO_BASE_URL``, else the public router; normalised by
    :func:`normalise_base_url` (no trailing ``/`` or ``/v1``)."""
    url = given if given is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return normalise_base_url(url)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and loopback IP literals (brackets
    allowed)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_api_key(given: str | None) -> str | None:
    """``given``, else ``$NOMYO_API_KEY`` (None when unset or empty)."""
    if given is not None:
        return given
    return os.environ.get(ENV_API_KEY) or None


class _NomyoHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler installed by ``NOMYO_LOG`` (marked so it is installed once)."""


def configure_logging(level: str | None = None) -> logging.Logger:
    """Attach a stderr handler to the ``nomyo`` logger at ``level`` (default: ``$NOMYO_LOG``).

    Does nothing when neither is set (or it is empty), so applications keep their own
    logging setup; the ``nomyo`` logger always has a ``NullHandler``, so without either an
    application that configured no logging sees no output from nomyo.

    Raises:
        ConfigurationError: ``level`` (or ``$NOMYO_LOG``) is not ``debug``, ``info``,
            ``warning`` or ``error``.
    """
    logger = logging.getLogger("nomyo")
    from_env = level is None
    name = (os.environ.get(ENV_LOG, "") if from_env else level or "").strip().lower()
    if not name:
        return logger
    if name not in _LEVELS:
        where = f"{ENV_LOG}={name!r}" if from_env else f"logging level {name!r}"
        raise ConfigurationError(
            f"unknown {where}: use one of {', '.join(_LEVELS)} (or leave {ENV_LOG} unset)"
        )
    logger.setLevel(_LEVELS[name])
    if not any(isinstance(h, _NomyoHandler) for h in logger.handlers):
        handler = _NomyoHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def check_base_url(base_url: str, allow_http: bool) -> str:
    """Validate and normalise a router URL; refuse plain HTTP unless explicitly allowed.

    Raises:
        SecurityError: an ``http://`` URL without ``allow_http=True``.
        ConfigurationError: not an http(s) URL.
    """
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError("base_url must be an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "base_url must not carry credentials (user:password@); pass api_key instead"
        )
    if parts.scheme == "http" and not allow_http:
        raise SecurityError(
            "refusing plain HTTP: the server key would be fetched unauthenticated. "
            "Use https://, or allow_http=True for local development only.",
            plain_http=True,
        )
    return url


@dataclass(frozen=True)
class Timeouts:
    """A client's or a call's timeouts in seconds (None: no limit), as httpx's ``Timeout``:
    the one form both transports read."""

    connect: float | None = CONNECT_TIMEOUT
    read: float | None = READ_TIMEOUT
    write: float | None = WRITE_TIMEOUT
    pool: float | None = POOL_TIMEOUT

    @classmethod
    def of(cls, timeout: TimeoutTypes) -> Timeouts:
        """A client's ``timeout=``: None for the defaults (10 s connect, 300 s read),
        seconds for all four, or an ``httpx.Timeout``."""
        if timeout is None:
            return cls()
        if isinstance(timeout, (int, float)):
            seconds = float(timeout)
            return cls(seconds, seconds, seconds, seconds)
        return cls(timeout.connect, timeout.read, timeout.write, timeout.pool)

    @classmethod
    def of_call(cls, timeout: TimeoutTypes | NotGiven) -> Timeouts | None:
        """A call's ``timeout=`` as httpx reads it: not given is the client's (None here),
        None is no limit."""
        if isinstance(timeout, NotGiven):
            return None
        if timeout is None:
            return cls(None, None, None, None)
        return cls.of(timeout)

    def seconds(self) -> tuple[float | None, float | None, float | None, float | None]:
        """``(connect, read, write, pool)``, as the native transport takes them."""
        return (self.connect, self.read, self.write, self.pool)

    def to_httpx(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True, eq=False)
class ClientOptions:
    """The options of one secure-completion client, checked once when made; the client
    constructors take exactly these arguments (see ``SecureCompletionClient``).

    ``router_url`` is resolved (``$NOMYO_BASE_URL``, no trailing ``/v1``) and checked,
    ``rate_limit`` becomes the shared limiter (or None), and the derived fields
    (``timeouts``, ``pins``, ``trusted_aiks``, ``secure_memory_mode``, ``pcr_policy``,
    ``remembered_pcrs``, ``receipt_writer``, ``rotation_interval``) are filled in.
    :meth:`for_router` makes the options of the same client for another router.

    Raises:
        ConfigurationError: an option out of range or of the wrong type.
        SecurityError: an ``http://`` URL without ``allow_http=True``.
    """

    router_url: str | None = None
    allow_http: bool = False
    secure_memory: SecureMemoryOption = True
    max_retries: int = DEFAULT_MAX_RETRIES
    _: KW_ONLY
    timeout: TimeoutTypes = None
    verify: VerifyTypes = True
    server_key_fingerprint: str | Iterable[str] | None = None
    known_hosts: bool | str | os.PathLike[str] | None = None
    attestation: AttestationMode = "off"
    expected_pcrs: PcrPolicy | Literal["tofu"] | None = None
    transport: Any = None
    http_client: Any = None
    max_response_size: int = MAX_RESPONSE_BYTES
    max_request_size: int = MAX_REQUEST_BYTES
    rate_limit: bool | RateLimiter | None = None
    trusted_aik: str | Iterable[str] | None = None
    reply_binding: ReplyBindingMode = "off"
    receipts: bool | str | os.PathLike[str] | None = None
    known_pcrs: str | os.PathLike[str] | None = None
    key_rotation_interval: float | NotGiven | None = NOT_GIVEN
    timeouts: Timeouts = field(init=False)
    pins: frozenset[str] = field(init=False)
    trusted_aiks: frozenset[str] = field(init=False)
    secure_memory_mode: SecureMemoryMode = field(init=False)
    #: The fixed expected PCR values (None with ``expected_pcrs="tofu"`` or ``known_pcrs``).
    pcr_policy: PcrPolicy | None = field(init=False)
    #: The known-PCRs file of ``expected_pcrs="tofu"`` or ``known_pcrs=`` (else None).
    remembered_pcrs: KnownPcrs | None = field(init=False)
    #: Where receipts are written (``receipts=``, else ``$NOMYO_RECEIPTS``; None: nowhere).
    receipt_writer: ReceiptWriter | None = field(init=False)
    #: Seconds between rotations of the process-wide key pair (None: never).
    rotation_interval: RotationInterval = field(init=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        if not _positive_int(self.max_request_size):
            raise ConfigurationError("max_request_size must be a positive int (bytes)")
        if not _positive_int(self.max_response_size) or self.max_response_size > MAX_RESPONSE_LIMIT:
            raise ConfigurationError(
                f"max_response_size must be an int from 1 to {MAX_RESPONSE_LIMIT} bytes (1 GiB)"
            )
        mode = check_mode(self.attestation)
        derived: dict[str, object] = {
            "router_url": check_base_url(resolve_base_url(self.router_url), self.allow_http),
            "secure_memory_mode": secure_memory_mode(self.secure_memory),
            "pins": normalise_fingerprints(self.server_key_fingerprint),
            "attestation": mode,
            "trusted_aiks": normalise_fingerprints(self.trusted_aik),
        }
        if derived["trusted_aiks"] and derived["attestation"] == "off":
            raise ConfigurationError(
                "trusted_aik needs attestation='require' (or 'verify' to only report it)"
            )
        derived["reply_binding"] = _check_reply_binding(self.reply_binding)
        derived["rate_limit"] = make_rate_limiter(self.rate_limit)
        derived["timeouts"] = Timeouts.of(self.timeout)
        remembered = remembered_pcrs(self.expected_pcrs, self.known_pcrs, mode)
        derived["remembered_pcrs"] = remembered
        tofu = remembered is not None or self.expected_pcrs == "tofu"
        derived["pcr_policy"] = None if tofu else self.expected_pcrs
        derived["rotation_interval"] = resolve_rotation_interval(self.key_rotation_interval)
        derived["receipt_writer"] = receipts_writer(self.receipts)
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def url(self) -> str:
        """The router's URL, resolved and checked."""
        assert self.router_url is not None  # resolved in __post_init__
        return self.router_url

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The limiter every request of the client waits for (shared by :meth:`for_router`)."""
        return self.rate_limit if isinstance(self.rate_limit, RateLimiter) else None

    def for_router(self, router_url: str) -> ClientOptions:
        """These options for another router (a per-call ``base_url``): the same limiter
        and transport, never the caller's ``http_client``."""
        return replace(self, router_url=router_url, http_client=None)
