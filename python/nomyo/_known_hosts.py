"""Trust on first use: remember each router's key fingerprint, refuse a changed one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError, SecurityError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["KnownHosts", "default_known_hosts_path", "normalise_url", "trust_server_key"]

_lock = threading.Lock()


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


class KnownHosts:
    """A small file of ``<base_url> sha256:<hex>`` lines, created 0600.

    Several lines for one URL accept several keys (rotation).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_known_hosts_path()

    def entries(self) -> dict[str, set[str]]:
        """Every URL with its accepted fingerprints.

        Raises:
            SecurityError: the file is writable by group or others, or unreadable.
        """
        out: dict[str, set[str]] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                if os.name == "posix" and mode & (stat.S_IWGRP | stat.S_IWOTH):
                    raise SecurityError(
                        f"{self.path} is writable by group or others (mode "
                        f"{stat.S_IMODE(mode):04o}); fix it with: chmod 600 {self.path}"
                    )
                text = f.read()
        except FileNotFoundError:
            return out
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"cannot read the known-hosts file {self.path}: {exc}") from None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                out.setdefault(normalise_url(parts[0]), set()).add(parts[1])
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write across threads and processes."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
                if fcntl is not None:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise ConfigurationError(f"cannot update {self.path}: {exc}") from None

    def _write(self, entries: dict[str, set[str]]) -> None:
        lines = [f"{url} {fp}" for url in sorted(entries) for fp in sorted(entries[url])]
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("# nomyo known hosts: <base_url> <sha256 fingerprint of the server key>\n")
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def check(self, url: str, fingerprint: str) -> None:
        """Accept a known key, remember a first key, refuse a changed one.

        Raises:
            SecurityError: the URL is known with other keys only.
        """
        url = normalise_url(url)
        with self._locked():
            entries = self.entries()
            known = entries.get(url)
            if known is None:
                entries[url] = {fingerprint}
                self._write(entries)
                return
        if fingerprint not in known:
            raise SecurityError(
                f"the server key of {url} changed to {fingerprint}, which is not in "
                f"{self.path}; if the change is expected, accept it with: "
                f"nomyo keys trust --base-url {url} --fingerprint {fingerprint}"
            )

    def trust(self, url: str, fingerprint: str, *, replace: bool = True) -> None:
        """Accept ``fingerprint`` for ``url`` (replacing the keys known so far by default)."""
        url = normalise_url(url)
        with self._locked():
            entries = self.entries()
            if replace or url not in entries:
                entries[url] = set()
            entries[url].add(fingerprint)
            self._write(entries)


def trust_server_key(
    base_url: str, fingerprint: str, known_hosts: str | os.PathLike[str] | None = None
) -> None:
    """Accept a (changed) server key for ``base_url`` in the known-hosts file."""
    KnownHosts(known_hosts).trust(base_url.rstrip("/"), fingerprint.strip().lower())
