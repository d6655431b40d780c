"""Helpers of the ``nomyo`` command: exit codes, error messages, addresses, passwords, signals."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx

from .. import _config, _core
from .._config import is_loopback_host
from .._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    SecurityError,
)
from .._retry import is_certificate_failure

if TYPE_CHECKING:
    from ..testing import DevCertificates

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
    "ShutdownSignals",
    "check_file",
    "client_transport",
    "describe_error",
    "display_url",
    "err",
    "exit_code_for",
    "is_loopback_host",
    "local_certificates",
    "out",
    "parse_listen",
    "read_password",
    "read_stdin_text",
    "resolve_base_url",
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


def out(line: str) -> None:
    """One line on stdout, flushed (a pipe reader sees it at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    """One line on stderr, flushed."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def check_file(path: str | None, what: str) -> None:
    """Refuse (exit 2) a named file that does not exist."""
    if path is not None and not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}", EXIT_USAGE)


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
        return EXIT_SECURITY if is_certificate_failure(exc) else EXIT_UNREACHABLE
    if isinstance(exc, (SecurityError, EnvelopeError)):
        return EXIT_SECURITY
    if isinstance(exc, KeyFormatError):
        return EXIT_KEY
    if isinstance(exc, APIError):
        return EXIT_HTTP
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    return EXIT_FAILURE


#: What ``describe_error`` puts before these errors' messages (the first that matches).
_PREFIXES: tuple[tuple[type[NomyoError], str], ...] = (
    (APITimeoutError, "the server did not answer in time"),
    (APIConnectionError, "cannot reach the server"),
    (EnvelopeError, "the server's reply was refused"),
    (KeyFormatError, "key error"),
)


def describe_error(exc: BaseException) -> str:
    """One line for stderr. nomyo's messages never hold keys, API keys or plaintext."""
    if isinstance(exc, CLIError):
        return exc.message
    if isinstance(exc, APIConnectionError) and is_certificate_failure(exc):
        return f"the server's TLS certificate was refused (see --ca-file): {exc}"
    if isinstance(exc, SecurityError):
        hint = " (command line: --allow-http)" if exc.plain_http else ""
        return f"security check failed: {exc}{hint}"
    for kind, prefix in _PREFIXES:
        if isinstance(exc, kind):
            return f"{prefix}: {exc}"
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
    """``--base-url``, else ``$NOMYO_BASE_URL``, else the public router (an empty
    ``--base-url`` counts as not given); :func:`nomyo._config.resolve_base_url`'s rule."""
    return _config.resolve_base_url(given or None)


def client_transport(url: str, ca_file: str | None) -> httpx.AsyncBaseTransport | None:
    """A direct transport for loopback URLs when a proxy is configured, so that proxy
    variables never capture them.

    Returns None (the client's own choice: the native engine, or httpx where the
    environment names a proxy) for any other host, and for loopback when no proxy is
    configured or ``NO_PROXY`` covers it. httpx ignores ``HTTP(S)_PROXY`` when a transport is
    given, so its TLS settings go here.
    """
    from .._transports.native import environment_proxies, proxy_configured, proxy_for

    host = urlsplit(url).hostname
    if host is None or not is_loopback_host(host) or not proxy_configured():
        return None
    rules = environment_proxies()
    if rules and proxy_for(url, rules) is None:
        return None  # NO_PROXY covers the router: the native engine goes direct too
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=ca_file)
    return httpx.AsyncHTTPTransport(verify=verify, trust_env=True)


#: Validity of the certificates ``nomyo serve-dev --tls`` makes; renewed a day before the end.
DEV_TLS_DAYS = 30


def default_dev_tls_dir() -> Path:
    """``$XDG_CONFIG_HOME/nomyo/dev-tls``, else ``~/.config/nomyo/dev-tls``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nomyo" / "dev-tls"


def local_certificates(directory: str | None) -> DevCertificates:
    """The local CA and server certificate of ``serve-dev --tls`` in ``directory``.

    Files made earlier are reused while they have more than a day left, so that a client
    trusting ``ca.pem`` keeps working across restarts; otherwise new ones are made by the
    native module (aws-lc: P-256 keys, ECDSA signatures), without ``cryptography`` or the
    ``openssl`` tool. The paths returned are absolute.

    Raises:
        CLIError: the directory or the files cannot be written (exit code 1).
    """
    from ..testing import DevCertificates

    target = (Path(directory).expanduser() if directory else default_dev_tls_dir()).absolute()
    certs = DevCertificates(
        ca_cert=str(target / "ca.pem"),
        cert=str(target / "server.pem"),
        key=str(target / "server-key.pem"),
    )
    try:
        if all(os.path.isfile(p) for p in (certs.ca_cert, certs.cert, certs.key)):
            age = time.time() - os.stat(certs.cert).st_mtime
            if 0 <= age < (DEV_TLS_DAYS - 1) * 86400 and _usable(certs):
                return certs
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        _core.write_dev_certificates(certs.ca_cert, certs.cert, certs.key, DEV_TLS_DAYS)
    except OSError as exc:
        raise CLIError(f"cannot write the TLS files in {target}: {exc.strerror or exc}") from None
    return certs


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


def _usable(certs: DevCertificates) -> bool:
    """The key belongs to the certificate, and the CA file loads (as OpenSSL sees them)."""
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(certs.cert, certs.key)
        ssl.create_default_context(cafile=certs.ca_cert)
    except (ssl.SSLError, OSError, ValueError):
        return False
    return True


def read_stdin_text() -> str:
    """All of stdin, decoded as UTF-8 whatever the locale says (a leading BOM is dropped).

    Raises:
        CLIError: stdin is not valid UTF-8 (exit code 2).
    """
    stdin = sys.stdin
    if stdin is None:
        raise CLIError("no stdin to read from", EXIT_USAGE)
    return _read_stdin_text(stdin, line=False)


def _read_stdin_line(stdin: TextIO) -> str:
    """One line of stdin, decoded as strict UTF-8 (stdin's own decoder may be lenient)."""
    return _read_stdin_text(stdin, line=True)


def _read_stdin_text(stdin: TextIO, *, line: bool) -> str:
    """All of stdin, or one line, decoded as strict UTF-8.

    Raises:
        CLIError: not valid UTF-8 (exit code 2).
    """
    buffer = getattr(stdin, "buffer", None)
    try:
        if buffer is None:
            return stdin.readline() if line else stdin.read()
        raw = buffer.readline() if line else buffer.read()
        return bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CLIError("stdin is not valid UTF-8", EXIT_USAGE) from None


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
        line = _read_stdin_line(stdin) if stdin is not None else ""
        password = line.rstrip("\r\n")
    if not password:
        raise CLIError("--password-stdin: no password was given on stdin", EXIT_USAGE)
    return password


class ShutdownSignals:
    """SIGINT and SIGTERM caught from construction (inside the running loop) until ``close``.

    Create it before a server says it is listening, so that a signal sent as soon as the
    address is printed is not lost to the default handlers (on platforms without signal
    handlers nothing is caught and ``wait`` never returns).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._received: list[signal.Signals] = []
        self._installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._installed.append(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._received.append(sig)
        self._stop.set()

    async def wait(self) -> int:
        """Wait for the first signal; its exit code: 130 (interrupted) after SIGINT (Ctrl-C),
        0 after SIGTERM (a service manager stopping the server)."""
        await self._stop.wait()
        return EXIT_INTERRUPTED if self._received[0] == signal.SIGINT else EXIT_OK

    def close(self) -> None:
        """Give the signals back to their previous handlers."""
        for sig in self._installed:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)
        self._installed.clear()
