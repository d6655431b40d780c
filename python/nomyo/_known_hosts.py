"""Trust on first use: remember each router's key fingerprint, refuse a changed one."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ._exceptions import SecurityError

__all__ = ["KnownHosts", "default_known_hosts_path", "trust_server_key"]

_lock = threading.Lock()


def default_known_hosts_path() -> Path:
    """``$NOMYO_KNOWN_HOSTS``, else ``~/.config/nomyo/known_hosts``."""
    configured = os.environ.get("NOMYO_KNOWN_HOSTS")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nomyo" / "known_hosts"


class KnownHosts:
    """A small file of ``<base_url> sha256:<hex>`` lines, created 0600.

    Several lines for one URL accept several keys (rotation).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_known_hosts_path()

    def entries(self) -> dict[str, set[str]]:
        """Every URL with its accepted fingerprints."""
        out: dict[str, set[str]] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                out.setdefault(parts[0], set()).add(parts[1])
        return out

    def _write(self, entries: dict[str, set[str]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = [f"{url} {fp}" for url in sorted(entries) for fp in sorted(entries[url])]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# nomyo known hosts: <base_url> <sha256 fingerprint of the server key>\n")
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def check(self, url: str, fingerprint: str) -> None:
        """Accept a known key, remember a first key, refuse a changed one.

        Raises:
            SecurityError: the URL is known with other keys only.
        """
        with _lock:
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
        with _lock:
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
