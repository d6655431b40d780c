"""Configuration from the environment: router URL, API key, and ``NOMYO_LOG`` logging.

Every argument given explicitly wins; the environment fills in what is not given:

=================  =========================================================
``NOMYO_BASE_URL``  the router (default ``https://api.nomyo.ai``)
``NOMYO_API_KEY``   the bearer API key
``NOMYO_LOG``       ``debug``, ``info`` or ``warning``: log the ``nomyo`` logger to stderr
``NOMYO_TRANSPORT`` ``native`` (default) or ``httpx`` (see ``nomyo._native``)
=================  =========================================================

Logs never hold plaintext, keys, API keys or passwords: at ``debug`` each request logs its
payload id, attempt, sizes, status and timings only.
"""

from __future__ import annotations

import logging
import os
import sys

from ._constants import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_LOG

__all__ = ["configure_logging", "resolve_api_key", "resolve_base_url"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def resolve_base_url(given: str | None) -> str:
    """``given``, else ``$NOMYO_BASE_URL``, else the public router."""
    if given is not None:
        return given
    return os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL


def resolve_api_key(given: str | None) -> str | None:
    """``given``, else ``$NOMYO_API_KEY`` (None when unset or empty)."""
    if given is not None:
        return given
    return os.environ.get(ENV_API_KEY) or None


class _NomyoHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler installed by ``NOMYO_LOG`` (marked so it is installed once)."""


def configure_logging(level: str | None = None) -> logging.Logger:
    """Attach a stderr handler to the ``nomyo`` logger at ``level`` (default: ``$NOMYO_LOG``).

    Does nothing when neither is set, so applications keep their own logging setup.
    Unknown levels are ignored.
    """
    logger = logging.getLogger("nomyo")
    name = (level if level is not None else os.environ.get(ENV_LOG, "")).strip().lower()
    if name not in _LEVELS:
        return logger
    logger.setLevel(_LEVELS[name])
    if not any(isinstance(h, _NomyoHandler) for h in logger.handlers):
        handler = _NomyoHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger
