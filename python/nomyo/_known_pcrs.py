"""Remembered measurements: each router's first verified PCR values, a changed one refused.

With ``expected_pcrs="tofu"`` the first quote that verifies for a router records its PCR
values here; a later verified quote with other values is refused (``attestation="require"``)
or reported invalid (``"verify"``) before the reply reaches the caller, with an error that
names the changed PCR indexes and this file. The values seen are kept as *pending* for that
router, so that ``nomyo attest trust URL`` can accept them; every accepted change (first use,
trust, forget) is appended to the file's history with the old and new values and the time.

The file (JSON, default ``known_pcrs`` beside the known-hosts file, ``$NOMYO_KNOWN_PCRS``)
follows the known_hosts rules: 0600, replaced atomically under a lock, never through a
symbolic link, refused when not the user's own or writable by others, never silently reset
(a file that does not parse is refused until fixed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError, SecurityError
from ._files import UnsafeFileError, locked, read_text, replace_file
from ._known_hosts import default_known_hosts_path, normalise_url

__all__ = ["ENV_KNOWN_PCRS", "KnownPcrs", "PcrValues", "changed_pcrs", "default_known_pcrs_path"]

#: Environment variable naming the known-PCRs file.
ENV_KNOWN_PCRS = "NOMYO_KNOWN_PCRS"
#: ``{bank: {index: lower-case hex}}`` (indexes as strings, as JSON keys are).
PcrValues = dict[str, dict[str, str]]
_WHAT = "known-PCRs file"
_VERSION = 1


def default_known_pcrs_path() -> Path:
    """``$NOMYO_KNOWN_PCRS``, else ``known_pcrs`` beside the known-hosts file."""
    configured = os.environ.get(ENV_KNOWN_PCRS)
    if configured:
        return Path(configured).expanduser()
    return default_known_hosts_path().with_name("known_pcrs")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _event(url: str, event: str, old: PcrValues | None, new: PcrValues | None) -> dict[str, Any]:
    """One history entry: what was accepted (or forgotten) for ``url``, when."""
    return {"router": url, "time": _now(), "event": event, "old": old, "new": new}


def _normalised(values: Mapping[str, Mapping[Any, Any]]) -> PcrValues:
    out: PcrValues = {}
    for bank, pcrs in values.items():
        if not isinstance(bank, str) or not isinstance(pcrs, Mapping):
            raise ConfigurationError("PCR values must map bank -> {index: hex digest}")
        bank_out: dict[str, str] = {}
        for index, digest in pcrs.items():
            text = str(index)
            if not text.isdigit() or not isinstance(digest, str):
                raise ConfigurationError("PCR values must map bank -> {index: hex digest}")
            hexpart = digest.strip().lower()
            if not hexpart or any(c not in "0123456789abcdef" for c in hexpart):
                raise ConfigurationError(f"PCR {bank}:{text} is not a hex digest")
            bank_out[str(int(text))] = hexpart
        out[bank.lower()] = bank_out
    return out


def changed_pcrs(old: PcrValues, new: PcrValues) -> list[str]:
    """``bank:index`` of every PCR whose value differs, or that only one side has."""
    names = set()
    for bank in set(old) | set(new):
        a, b = old.get(bank, {}), new.get(bank, {})
        names |= {f"{bank}:{i}" for i in set(a) | set(b) if a.get(i) != b.get(i)}
    return sorted(names, key=lambda n: (n.split(":")[0], int(n.split(":")[1])))


class KnownPcrs:
    """The known-PCRs file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_known_pcrs_path()

    def __repr__(self) -> str:
        return f"KnownPcrs({str(self.path)!r})"

    def _trust_hint(self, url: str) -> str:
        return f"nomyo attest trust {shlex.quote(url)} --known-pcrs {shlex.quote(str(self.path))}"

    def load(self) -> dict[str, Any]:
        """The whole file: ``{"routers": {url: {...}}, "history": [...]}`` (empty if none).

        Raises:
            SecurityError: the file is a link, not the user's own, writable by others, or
                does not parse (it is never reset silently).
        """
        try:
            text = read_text(self.path, what=_WHAT)
        except FileNotFoundError:
            return {"nomyo_known_pcrs": _VERSION, "routers": {}, "history": []}
        except UnsafeFileError as exc:
            raise SecurityError(str(exc)) from None
        except OSError as exc:
            raise SecurityError(f"cannot read the {_WHAT} {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecurityError(f"the {_WHAT} {self.path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("nomyo_known_pcrs") != _VERSION:
                raise ValueError("not a known-PCRs file of version 1")
            if not isinstance(data.get("routers"), dict) or not isinstance(
                data.get("history"), list
            ):
                raise ValueError("routers or history missing")
            for entry in data["routers"].values():
                _normalised(entry["pcrs"])
        except (ValueError, KeyError, TypeError, ConfigurationError) as exc:
            raise SecurityError(
                f"the {_WHAT} {self.path} does not parse ({exc}); no remembered measurement "
                "can be relied on: fix it, or remove it to start over"
            ) from None
        return data

    def _save(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        replace_file(self.path, text.encode("utf-8"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the file's lock (:func:`nomyo._files.locked`) for a read-modify-write.

        Raises:
            SecurityError: the lock file is a link, not the user's own, or writable by others.
            ConfigurationError: the folder or the lock file cannot be created.
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self.path, what="known-PCRs lock file"))
            except UnsafeFileError as exc:
                raise SecurityError(str(exc)) from None
            except OSError as exc:
                raise ConfigurationError(f"cannot update {self.path}: {exc.strerror}") from None
            yield

    def check(self, url: str, quoted: Mapping[str, Mapping[Any, Any]]) -> tuple[str, str]:
        """Compare verified PCR values with the ones remembered for ``url``.

        Returns ``("first_use", "")`` when they were just remembered, ``("matched", "")``,
        or ``("changed", why)`` with the reason to refuse (naming the changed PCRs and the
        file); changed values are kept as pending for ``nomyo attest trust``.

        Raises:
            SecurityError: the file cannot be trusted (see :meth:`load`).
            ConfigurationError: the file cannot be written.
        """
        url = normalise_url(url)
        values = _normalised(quoted)
        with self._locked():
            data = self.load()
            entry = data["routers"].get(url)
            if entry is None:
                data["routers"][url] = {"pcrs": values, "since": _now()}
                data["history"].append(
                    {
                        "router": url,
                        "time": _now(),
                        "event": "first_use",
                        "old": None,
                        "new": values,
                    }
                )
                self._save(data)
                return "first_use", ""
            known = _normalised(entry["pcrs"])
            changed = changed_pcrs(known, values)
            if not changed:
                return "matched", ""
            if entry.get("pending", {}).get("pcrs") != values:
                entry["pending"] = {"pcrs": values, "seen": _now()}
                self._save(data)
        return "changed", (
            f"the measured software of {url} changed: PCR {', '.join(changed)} differ from "
            f"the values remembered in {self.path}; if the change is expected, accept it "
            f"with: {self._trust_hint(url)}"
        )

    def trust(self, url: str, values: Mapping[str, Mapping[Any, Any]] | None = None) -> PcrValues:
        """Accept ``values`` (default: the pending ones last refused) for ``url``; returns them.

        Raises:
            ConfigurationError: no values given and none pending, or values malformed.
            SecurityError: the file cannot be trusted (see :meth:`load`).
        """
        url = normalise_url(url)
        with self._locked():
            data = self.load()
            entry = data["routers"].get(url)
            if values is None:
                pending = (entry or {}).get("pending")
                if pending is None:
                    raise ConfigurationError(
                        f"no changed PCR values are pending for {url} in {self.path}: make a "
                        "request that is refused first, or pass the values"
                    )
                values = pending["pcrs"]
            new = _normalised(values)
            old = None if entry is None else _normalised(entry["pcrs"])
            data["routers"][url] = {"pcrs": new, "since": _now()}
            data["history"].append(_event(url, "trust", old, new))
            self._save(data)
        return new

    def forget(self, url: str) -> bool:
        """Drop the values remembered for ``url`` (the next quote is a first use again).

        Returns False when none were remembered.
        """
        url = normalise_url(url)
        with self._locked():
            data = self.load()
            entry = data["routers"].pop(url, None)
            if entry is None:
                return False
            data["history"].append(
                {
                    "router": url,
                    "time": _now(),
                    "event": "forget",
                    "old": entry["pcrs"],
                    "new": None,
                }
            )
            self._save(data)
        return True
