"""Trust on first use: remember each router's key fingerprint, refuse a changed one.

The file is never silently reset: an entry that does not parse leaves its URL known with no
acceptable key (refused until fixed or replaced with ``nomyo keys trust``), a line naming no
URL refuses every URL, and a file owned by another user or writable by group or others is
refused. The file and its lock are never opened through a symlink (``nomyo._files``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError, SecurityError
from ._files import UnsafeFileError, locked, read_text, replace_file

__all__ = [
    "KnownHosts",
    "default_known_hosts_path",
    "normalise_fingerprint",
    "normalise_fingerprints",
    "normalise_url",
    "trust_server_key",
]

_HEADER = "# nomyo known hosts: <base_url> <sha256 fingerprint of the server key>"


def normalise_fingerprint(value: str) -> str:
    """``sha256:<64 hex>`` from a fingerprint with or without prefix, colons or upper case.

    Raises:
        ConfigurationError: not a SHA-256 fingerprint.
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    hexpart = text.removeprefix("sha256:").replace(":", "")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ConfigurationError(f"not a SHA-256 key fingerprint: {value!r}")
    return "sha256:" + hexpart


def normalise_fingerprints(pins: str | Iterable[str] | None) -> frozenset[str]:
    """Every fingerprint of one or several pins, normalised (see :func:`normalise_fingerprint`).

    Raises:
        ConfigurationError: a pin is not a SHA-256 fingerprint.
    """
    if pins is None:
        return frozenset()
    items = [pins] if isinstance(pins, str) else list(pins)
    return frozenset(normalise_fingerprint(pin) for pin in items)


def default_known_hosts_path() -> Path:
    """``$NOMYO_KNOWN_HOSTS``, else ``~/.config/nomyo/known_hosts``."""
    configured = os.environ.get("NOMYO_KNOWN_HOSTS")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nomyo" / "known_hosts"


def normalise_url(url: str) -> str:
    """One spelling per router: lower-case scheme and host, no default port, no trailing /."""
    parts = urlsplit(url.strip().rstrip("/"))
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}{parts.path}"


def _url_of(token: str) -> str | None:
    """The normalised URL a line starts with, or None when it names none."""
    try:
        parts = urlsplit(token)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return None
        return normalise_url(token)
    except ValueError:
        return None


@dataclass
class _Contents:
    """A parsed known-hosts file."""

    #: URL -> accepted fingerprints (lines that parse).
    entries: dict[str, set[str]] = field(default_factory=dict)
    #: URL -> (line number, raw line) of its entries that do not parse.
    broken: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Line numbers of lines that name no URL at all.
    orphans: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> _Contents:
        out = cls()
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split()
            url = _url_of(parts[0])
            if url is None:
                out.orphans.append(number)
                continue
            try:
                if len(parts) != 2:
                    raise ConfigurationError("not two fields")
                fingerprint = normalise_fingerprint(parts[1])
            except ConfigurationError:
                out.broken.setdefault(url, []).append((number, line))
                continue
            out.entries.setdefault(url, set()).add(fingerprint)
        return out


class KnownHosts:
    """A small file of ``<base_url> sha256:<hex>`` lines, created 0600.

    Several lines for one URL accept several keys (rotation). The file must belong to the
    current user and must not be writable by group or others.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_known_hosts_path()

    def _trust_hint(self, url: str, fingerprint: str) -> str:
        """The command that accepts ``fingerprint`` in THIS file."""
        return (
            f"nomyo keys trust --base-url {shlex.quote(url)} --fingerprint {fingerprint} "
            f"--known-hosts {shlex.quote(str(self.path))}"
        )

    def _read(self) -> _Contents:
        """Parse the file (a missing file is empty).

        Raises:
            SecurityError: the file belongs to another user, is writable by group or others,
                or cannot be read.
        """
        try:
            text = read_text(self.path, what="known-hosts file")
        except FileNotFoundError:
            return _Contents()
        except UnsafeFileError as exc:
            raise SecurityError(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"cannot read the known-hosts file {self.path}: {exc}") from None
        return _Contents.parse(text)

    def _refuse_orphans(self, contents: _Contents) -> None:
        if contents.orphans:
            lines = ", ".join(str(n) for n in contents.orphans[:5])
            raise SecurityError(
                f"{self.path}: line {lines} is not '<base_url> sha256:<hex>' and names no "
                "router, so no entry of the file can be relied on; fix or remove it"
            )

    def entries(self) -> dict[str, set[str]]:
        """Every URL with its accepted fingerprints (a URL whose entries do not parse maps
        to an empty set: known, with no acceptable key).

        Raises:
            SecurityError: the file is not the user's own, is writable by group or others,
                is unreadable, or holds a line that names no URL.
        """
        contents = self._read()
        self._refuse_orphans(contents)
        out = {url: set(fps) for url, fps in contents.entries.items()}
        for url in contents.broken:
            out.setdefault(url, set())
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write across threads and processes."""
        try:
            with locked(self.path, what="known-hosts lock file"):
                yield
        except UnsafeFileError as exc:
            raise SecurityError(str(exc)) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot update {self.path}: {exc}") from None

    def _write(self, contents: _Contents) -> None:
        entries = contents.entries
        lines = [f"{url} {fp}" for url in sorted(entries) for fp in sorted(entries[url])]
        # Entries that do not parse stay as they are: dropping them would reset their URL.
        lines += [raw for url in sorted(contents.broken) for _, raw in contents.broken[url]]
        text = _HEADER + "\n" + "".join(line + "\n" for line in lines)
        replace_file(self.path, text.encode("utf-8"))

    def check(self, url: str, fingerprint: str) -> None:
        """Accept a known key, remember a first key, refuse a changed one.

        Raises:
            SecurityError: the URL is known with other keys only, or its entry does not
                parse; or the file cannot be trusted (see :meth:`entries`).
        """
        url = normalise_url(url)
        fingerprint = normalise_fingerprint(fingerprint)
        with self._locked():
            contents = self._read()
            self._refuse_orphans(contents)
            known = contents.entries.get(url)
            if known is None and url not in contents.broken:
                contents.entries[url] = {fingerprint}
                self._write(contents)
                return
        if known is not None and fingerprint in known:
            return
        if url in contents.broken:
            number = contents.broken[url][0][0]
            raise SecurityError(
                f"the entry for {url} in {self.path} (line {number}) does not parse, so no "
                f"key is accepted for it; fix the line, or accept this key ({fingerprint}) "
                f"with: {self._trust_hint(url, fingerprint)}"
            )
        raise SecurityError(
            f"the server key of {url} changed to {fingerprint}, which is not in "
            f"{self.path}; if the change is expected, accept it with: "
            f"{self._trust_hint(url, fingerprint)}"
        )

    def trust(self, url: str, fingerprint: str, *, replace: bool = True) -> None:
        """Accept ``fingerprint`` for ``url`` (replacing the keys known so far, and any entry
        of it that does not parse, by default).

        Raises:
            ConfigurationError: ``fingerprint`` is not a SHA-256 fingerprint.
            SecurityError: the file cannot be trusted (see :meth:`entries`).
        """
        url = normalise_url(url)
        fingerprint = normalise_fingerprint(fingerprint)
        with self._locked():
            contents = self._read()
            self._refuse_orphans(contents)
            if replace:
                contents.entries[url] = set()
                contents.broken.pop(url, None)
            contents.entries.setdefault(url, set()).add(fingerprint)
            self._write(contents)


def trust_server_key(
    base_url: str, fingerprint: str, known_hosts: str | os.PathLike[str] | None = None
) -> None:
    """Accept a (changed) server key for ``base_url`` in the known-hosts file.

    Raises:
        ConfigurationError: ``fingerprint`` is not a SHA-256 fingerprint.
    """
    KnownHosts(known_hosts).trust(base_url.rstrip("/"), fingerprint)
