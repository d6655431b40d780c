"""Configuration from the environment: router URL, API key, and ``NOMYO_LOG`` logging.

Every argument given explicitly wins; the environment fills in what is not given:

=================  =========================================================
``NOMYO_BASE_URL``  the router (default ``https://api.nomyo.ai``); a trailing ``/v1``
                    (an OpenAI-style base URL) is dropped
``NOMYO_API_KEY``   the bearer API key
``NOMYO_LOG``       ``debug``, ``info``, ``warning`` or ``error``: log the ``nomyo`` logger to
                    stderr at that level; any other non-empty value is refused
``NOMYO_TRANSPORT`` ``native`` (default) or ``httpx`` (see ``nomyo._native``)
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
import sys

from ._constants import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_LOG
from ._exceptions import ConfigurationError

__all__ = [
    "configure_logging",
    "is_loopback_host",
    "normalise_base_url",
    "resolve_api_key",
    "resolve_base_url",
]

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
