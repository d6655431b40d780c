"""``nomyo doctor``: what this machine and process give secrets, and what to change.

Prints the memory-locking limit and capability, the core-dump setting and dumpable flag,
what a probe page gets (mlock, dump exclusion, wipe-on-fork), the crypto library and its seed
source, the trust store and the proxy variables seen, then one line of advice per problem.
The exit code is non-zero when ``secure_memory="require"`` would refuse a request of
``--size`` bytes: that is tried for real, by serializing such a request into secret buffers
under ``require`` in this process.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import _core
from .._ephemeral import resolve_rotation_interval
from .._exceptions import ConfigurationError, SecureMemoryError
from .._memory import get_memory_protection_info
from .._params import NOT_GIVEN
from ._args import command_parser, whole_number

__all__ = ["DEFAULT_SIZE", "add_parser", "cmd_doctor", "diagnose"]

_HELP = "check what secret memory gets here (memlock, core dumps, crypto, trust)"
_DESCRIPTION = (
    "Report what this machine and process give secrets: the memlock limit "
    "and CAP_IPC_LOCK, core-dump settings, whether a probe page is locked, "
    "dump-excluded and wiped on fork, the crypto library and its seed, the trust store "
    "and proxy variables; with one line of advice per problem. Exit code 1 when "
    'secure_memory="require" would refuse a request of --size bytes (tried for real).'
)

#: Request size ``--size`` checks by default (JSON bytes): a long conversation.
DEFAULT_SIZE = 1 << 20

EXIT_OK = 0
EXIT_REQUIRE_FAILS = 1

_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
_PR_GET_DUMPABLE = 3


def _size(value: int | None) -> str:
    if value is None:
        return "unlimited"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << (shift - 3)) == 0:
            return f"{value / (1 << shift):g} {unit} ({value} bytes)"
    return f"{value} bytes"


def _rlimit(which: int) -> tuple[int | None, int | None]:
    soft, hard = resource.getrlimit(which)
    inf = resource.RLIM_INFINITY
    return (None if soft == inf else soft, None if hard == inf else hard)


def _dumpable() -> int | None:
    """``prctl(PR_GET_DUMPABLE)``: 1 dumpable, 0 not, 2 root-only; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    value = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    return None if value < 0 else int(value)


def _core_pattern() -> str | None:
    try:
        with open("/proc/sys/kernel/core_pattern", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _redact(url: str) -> str:
    """A proxy URL without its password (user names are kept: they help diagnose)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _proxies() -> dict[str, str]:
    seen: dict[str, str] = {}
    for name in _PROXY_VARIABLES:
        for variant in (name, name.lower()):
            value = os.environ.get(variant)
            if value:
                seen[variant] = value if name == "NO_PROXY" else _redact(value)
    return seen


def _trust_store() -> str:
    from .._transports.native import native_trust

    try:
        paths = native_trust(True, False)
    except ConfigurationError as exc:
        return f"invalid: {exc}"
    if paths is None:
        return "httpx (an https:// or SOCKS proxy, or NOMYO_TRANSPORT=httpx): httpx's default CAs"
    return ", ".join(paths)


def _trial(size: int) -> tuple[bool, str]:
    """Serialize a request of about ``size`` JSON bytes under ``require``, for real."""
    payload = {"model": "doctor", "messages": [{"role": "user", "content": "x" * size}]}
    try:
        buf = _core.dumps(payload, secure_memory="require")
    except SecureMemoryError as exc:
        return False, str(exc)
    locked = buf.locked and buf.dump_excluded
    buf.close()
    return locked, "" if locked else "the buffer was not locked and dump-excluded"


def diagnose(size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """Everything ``nomyo doctor`` reports, as a dict (what ``--json`` prints)."""
    memory = get_memory_protection_info()
    core_soft, core_hard = _rlimit(resource.RLIMIT_CORE)
    ok, why = _trial(size)
    return {
        "memory": memory,
        "core_dump_limit": core_soft,
        "core_dump_hard_limit": core_hard,
        "core_pattern": _core_pattern(),
        "dumpable": _dumpable(),
        "crypto": _core.crypto_info(),
        "client_keys": _client_keys(),
        "trust_store": _trust_store(),
        "proxy_variables": _proxies(),
        "secure_memory_env": os.environ.get("NOMYO_SECURE_MEMORY", ""),
        "require_size": size,
        "require_needs": _core.secure_memory_needed(size),
        "require_ok": ok,
        "require_error": why,
    }


def _advice(report: dict[str, Any]) -> list[str]:
    memory = report["memory"]
    tips: list[str] = []
    limit, hard = memory["memlock_limit"], memory["memlock_hard_limit"]
    unbounded = limit is None or memory["has_ipc_lock"]
    if not report["require_ok"] or not memory["has_memory_locking"]:
        if not unbounded:
            if hard is None or hard > limit:
                kib = "unlimited" if hard is None else hard // 1024
                how = f"with `ulimit -l {kib}` in this shell, or"
            else:
                how = "as root (the hard limit is reached too):"
            tips.append(
                f"memlock limit {_size(limit)} is too small for a {_size(report['require_size'])}"
                f" request: raise it {how} `<user> - memlock unlimited` in "
                "/etc/security/limits.conf, or LimitMEMLOCK=infinity for a systemd service"
            )
        tips.append(
            "in Docker: `docker run --ulimit memlock=-1:-1 ...` (or --cap-add IPC_LOCK); "
            "Kubernetes has no per-pod memlock setting: the limit comes from the container "
            "runtime (set LimitMEMLOCK=infinity on containerd/CRI-O's systemd unit), or add "
            "IPC_LOCK to the container's securityContext.capabilities"
        )
    if memory["protection_level"] == "partial":
        tips.append(
            "this process already held secrets in unlocked pages (see the counters); use "
            'secure_memory="require" to refuse instead'
        )
    if not memory["has_dump_exclusion"]:
        tips.append(
            "secret pages cannot be excluded from core dumps here: disable core dumps "
            "(`ulimit -c 0`, or nomyo.disable_core_dumps() at start-up)"
        )
    elif report["core_dump_limit"] != 0 and report["dumpable"] != 0:
        tips.append(
            "core dumps are on: secret buffers are excluded from them, but prompts and "
            "replies as Python objects are not; `ulimit -c 0` or nomyo.disable_core_dumps() "
            "if a dump could leave the machine"
        )
    if not memory["has_wipe_on_fork"] and sys.platform.startswith("linux"):
        tips.append("MADV_WIPEONFORK is unsupported (Linux < 4.14): forked children copy secrets")
    if report["crypto"].get("rng_seed") not in (None, "os"):
        tips.append(
            f"the crypto library seeds from {report['crypto'].get('rng_seed')!r}, not the OS: "
            "rebuild with the project's cargo settings"
        )
    if report["proxy_variables"]:
        tips.append(
            "a proxy is set: requests go through it where NO_PROXY does not exempt the router "
            "(envelopes stay end-to-end encrypted; the proxy sees the router's host name and "
            "sizes)"
        )
    return tips


def _client_keys() -> dict[str, Any]:
    """Where client private keys live, and how the process-wide pair rotates."""
    try:
        rotation: float | str | None = resolve_rotation_interval(NOT_GIVEN)
    except ConfigurationError as exc:
        rotation = f"invalid: {exc}"
    return {
        # aws-lc allocates them on its own heap (OPENSSL_malloc): see docs/security.md for
        # why its allocator hook is not pointed at the locked arena.
        "locked": False,
        "dump_excluded": False,
        "zeroed_when_freed": True,
        "process_key_rotation_seconds": rotation,
    }


def _lines(report: dict[str, Any]) -> list[str]:
    memory = report["memory"]
    crypto = report["crypto"]
    yes = {True: "yes", False: "NO"}
    dumpable = {None: "n/a", 0: "no", 1: "yes", 2: "root only"}[report["dumpable"]]
    size = report["require_size"]
    verdict = "ok" if report["require_ok"] else "REFUSED"
    lines = [
        "nomyo doctor: secret memory of this process",
        f"  memlock limit (RLIMIT_MEMLOCK): soft {_size(memory['memlock_limit'])}, "
        f"hard {_size(memory['memlock_hard_limit'])}",
        f"  CAP_IPC_LOCK: {yes[memory['has_ipc_lock']]}"
        + (" (the limit does not apply)" if memory["has_ipc_lock"] else ""),
        f"  locked now: {_size(memory['locked_bytes'])}; lockable now: "
        f"{_size(memory['lockable_bytes'])}; largest request fully lockable: "
        f"{_size(memory['largest_lockable_request'])}",
        f"  probe page: mlock {yes[memory['has_memory_locking']]}, dump exclusion "
        f"{yes[memory['has_dump_exclusion']]}, wipe-on-fork {yes[memory['has_wipe_on_fork']]}",
        f"  protection level: {memory['protection_level']} (secret buffers locked "
        f"{memory['secret_buffers_locked']}, not locked {memory['secret_buffers_not_locked']}, "
        f"lock failures {memory['lock_failures']}, dump-exclusion failures "
        f"{memory['dump_exclusion_failures']}, refused {memory['require_refusals']})",
        f"  core dumps: RLIMIT_CORE soft {_size(report['core_dump_limit'])}, hard "
        f"{_size(report['core_dump_hard_limit'])}; pattern {report['core_pattern']!r}; "
        f"dumpable {dumpable}",
        f"  crypto: {crypto.get('library')}, seeded from {crypto.get('rng_seed')}; RSA private "
        "keys live on its heap (zeroed when freed, not locked or dump-excluded)",
        "  client key: one in-memory pair per process for clients without a key of their own, "
        f"rotated every {report['client_keys']['process_key_rotation_seconds']} s (None: never)",
        f"  trust store: {report['trust_store']}",
        "  proxy variables: "
        + (", ".join(f"{k}={v}" for k, v in report["proxy_variables"].items()) or "none"),
        f"  NOMYO_SECURE_MEMORY: {report['secure_memory_env'] or '(unset)'}",
        f'  secure_memory="require" for a {_size(size)} request (needs about '
        f"{_size(report['require_needs'])} locked): {verdict}",
    ]
    tips = _advice(report)
    lines.extend(f"advice: {tip}" for tip in tips)
    if not tips:
        lines.append("advice: none, secrets get locked, dump-excluded memory here")
    return lines


def cmd_doctor(args: argparse.Namespace) -> int:
    """``nomyo doctor``: print the report; non-zero when ``require`` would refuse ``--size``."""
    report = diagnose(args.size)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write("\n".join(_lines(report)) + "\n")
    sys.stdout.flush()
    return EXIT_OK if report["require_ok"] else EXIT_REQUIRE_FAILS


def _nonnegative(text: str) -> int:
    value = whole_number(text, "whole number of bytes")
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``nomyo doctor`` on the CLI's subcommands."""
    doctor = command_parser(sub, common, "doctor", _HELP, _DESCRIPTION, epilog=None)
    doctor.add_argument(
        "--size",
        type=_nonnegative,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help="request size (JSON bytes) that require must accept (default %(default)s)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=cmd_doctor)
