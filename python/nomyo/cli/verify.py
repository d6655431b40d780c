"""``nomyo verify RECEIPTS...``: re-check receipts offline, one line per receipt."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._known_hosts import normalise_fingerprint
from .._receipts import verify_receipt
from ._args import command_parser, pcr_policy
from ._support import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError, out

__all__ = ["add_parser", "cmd_verify"]

_HELP = "re-check receipts (--receipts files) offline"
_DESCRIPTION = "Re-check receipts offline: one line per receipt and a summary; exit 1 if any fails."

_EPILOG = """\
Each receipt is re-checked with the verifier used at call time: receipt_sha256 over its fields,
the quote's signature under the AIK it carries, the nonce binding to its payload_id, the PCR
digest, and --expected-pcrs / --trusted-aik when given. What passing proves (and what it does
not): docs/security.md, "Receipts".
exit codes: 0 every receipt verified, 1 a receipt failed (or none was found), 2 usage."""

_PROVEN = "quote signed by its AIK, bound to the payload id, PCR digest matches"


def _results(args: argparse.Namespace, pins: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
    found: list[tuple[str, int, dict[str, Any]]] = []
    for name in args.receipts:
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read {name}: {exc}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record: object = json.loads(line)
            except ValueError:
                record = None
            result = verify_receipt(record, args.expected_pcrs, pins)
            found.append((name, number, result))
    return found


def _line(name: str, number: int, result: dict[str, Any]) -> str:
    where = f"{name}:{number}"
    if result["reason"] == "malformed":
        return f"FAIL {where}: not a receipt ({result['detail']})"
    marks = [result["outcome"]] + (["streamed"] if result["streamed"] else [])
    head = f"{where} payload {result['payload_id']} ({', '.join(marks)}) {result['router']}"
    if not result["ok"]:
        return f"FAIL {head}: {result['reason']} ({result['detail']})"
    checks = result["checks"]
    pinned = "; AIK pinned" if checks["aik_trusted"] else ""
    return f"OK   {head}: {_PROVEN}{pinned}; AIK {checks['aik_fingerprint']}"


def cmd_verify(args: argparse.Namespace) -> int:
    """``nomyo verify``: exit 0 when every receipt verifies, 1 otherwise."""
    try:
        pins = [normalise_fingerprint(pin) for pin in args.trusted_aiks or ()]
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    found = _results(args, pins)
    passed = sum(1 for _, _, r in found if r["ok"])
    failed = len(found) - passed
    if args.json:
        receipts = [{"file": n, "line": i, **r} for n, i, r in found]
        out(json.dumps({"receipts": receipts, "ok": passed, "failed": failed}, indent=2))
    else:
        for name, number, result in found:
            out(_line(name, number, result))
        out(f"nomyo verify: {len(found)} receipt(s): {passed} verified, {failed} failed")
    return EXIT_OK if found and not failed else EXIT_FAILURE


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    verify = command_parser(sub, common, "verify", _HELP, _DESCRIPTION, epilog=_EPILOG)
    verify.add_argument("receipts", nargs="+", metavar="RECEIPTS", help="receipts file(s)")
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify.add_argument(
        "--expected-pcrs",
        type=pcr_policy,
        metavar="JSON",
        help='PCR values each quote must hold, e.g. {"sha256": {"7": "<hex>"}}',
    )
    verify.add_argument(
        "--trusted-aik",
        dest="trusted_aiks",
        action="append",
        metavar="SHA256",
        help="accept only quotes signed by this attestation key (repeatable)",
    )
    verify.set_defaults(handler=cmd_verify)
