"""Helpers of the ``nomyo`` command: exit codes, error messages, addresses, passwords, signals."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import ipaddress
import os
import signal
import ssl
import sys
from urllib.parse import urlsplit, urlunsplit

import httpx

from ._constants import DEFAULT_BASE_URL
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    SecurityError,
)

__all__ = [
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_KEY_PASSWORD",
    "ENV_MODEL",
    "EXIT_FAILURE",
    "EXIT_HTTP",
    "EXIT_INTERRUPTED",
    "EXIT_KEY",
    "EXIT_OK",
    "EXIT_SECURITY",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CLIError",
    "client_transport",
    "describe_error",
    "display_url",
    "exit_code_for",
    "is_loopback_host",
    "parse_listen",
    "read_password",
    "resolve_base_url",
    "wait_for_shutdown",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SECURITY = 4
EXIT_KEY = 5
EXIT_HTTP = 6
EXIT_INTERRUPTED = 130

ENV_BASE_URL = "NOMYO_BASE_URL"
ENV_API_KEY = "NOMYO_API_KEY"
ENV_MODEL = "NOMYO_MODEL"
ENV_KEY_PASSWORD = "NOMYO_KEY_PASSWORD"


class CLIError(Exception):
    """A failure to report on stderr (without a traceback) and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception raised by the client."""
    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, APIConnectionError):
        return EXIT_SECURITY if _certificate_failure(exc) else EXIT_UNREACHABLE
    if isinstance(exc, (SecurityError, EnvelopeError)):
        return EXIT_SECURITY
    if isinstance(exc, KeyFormatError):
        return EXIT_KEY
    if isinstance(exc, APIError):
        return EXIT_HTTP
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    return EXIT_FAILURE


def _certificate_failure(exc: BaseException) -> bool:
    """True when a TLS certificate check is somewhere in the exception's causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def describe_error(exc: BaseException) -> str:
    """One line for stderr. nomyo's messages never hold keys, API keys or plaintext."""
    if isinstance(exc, CLIError):
        return exc.message
    if isinstance(exc, APIConnectionError) and _certificate_failure(exc):
        return f"the server's TLS certificate was refused (see --ca-file): {exc}"
    if isinstance(exc, APITimeoutError):
        return f"the server did not answer in time: {exc}"
    if isinstance(exc, APIConnectionError):
        return f"cannot reach the server: {exc}"
    if isinstance(exc, SecurityError):
        hint = " (command line: --allow-http)" if "allow_http" in str(exc) else ""
        return f"security check failed: {exc}{hint}"
    if isinstance(exc, EnvelopeError):
        return f"the server's reply was refused: {exc}"
    if isinstance(exc, KeyFormatError):
        return f"key error: {exc}"
    if isinstance(exc, APIError):
        status = f"HTTP {exc.status_code}" if exc.status_code is not None else "error"
        message = str(exc)
        return message if message.startswith("HTTP") else f"server answered {status}: {message}"
    if isinstance(exc, NomyoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def display_url(url: str) -> str:
    """``url`` without any user:password part (safe to print)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def resolve_base_url(given: str | None) -> str:
    """``--base-url``, else ``$NOMYO_BASE_URL``, else the public router."""
    return given or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (brackets allowed)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def client_transport(url: str, ca_file: str | None) -> httpx.AsyncBaseTransport | None:
    """A direct transport for loopback URLs, so that proxy variables never capture them.

    Returns None (the default, environment-aware transport) for any other host. httpx
    ignores ``HTTP(S)_PROXY`` when a transport is given, so its TLS settings go here.
    """
    host = urlsplit(url).hostname
    if host is None or not is_loopback_host(host):
        return None
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=ca_file)
    return httpx.AsyncHTTPTransport(verify=verify, trust_env=True)


def parse_listen(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT``.

    Raises:
        CLIError: not an address (exit code 2).
    """
    text = value.strip()
    host, port_text = default_host, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise CLIError(f"invalid listen address {value!r}: expected [IPv6]:PORT", EXIT_USAGE)
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise CLIError(f"invalid listen address {value!r}: write IPv6 as [ADDR]:PORT", 2)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CLIError(f"invalid port in listen address {value!r}", EXIT_USAGE)
    return host or default_host, int(port_text)


def read_password(*, confirm: bool = False) -> str:
    """Read a password for ``--password-stdin``: one line from stdin, or a hidden prompt.

    Raises:
        CLIError: no password given, or the confirmation differs (exit code 2).
    """
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        password = getpass.getpass("Key password: ")
        if confirm and getpass.getpass("Repeat the password: ") != password:
            raise CLIError("the passwords do not match", EXIT_USAGE)
    else:
        line = stdin.readline() if stdin is not None else ""
        password = line.rstrip("\r\n")
    if not password:
        raise CLIError("--password-stdin: no password was given on stdin", EXIT_USAGE)
    return password


async def wait_for_shutdown() -> None:
    """Return on SIGINT or SIGTERM (on platforms without signal handlers: never)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
