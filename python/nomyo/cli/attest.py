"""``nomyo attest show | trust URL | forget URL``: the remembered PCR values (known-PCRs file)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._known_pcrs import KnownPcrs, changed_pcrs
from ._args import command_parser
from ._support import EXIT_FAILURE, EXIT_OK, out

__all__ = ["add_parser", "cmd_attest_forget", "cmd_attest_show", "cmd_attest_trust"]

_HELP = "remembered PCR values of routers (--expected-pcrs tofu): show, trust, forget"
_DESCRIPTION = "Manage the known-PCRs file: each router's remembered TPM measurements."

_EPILOG = """\
With --expected-pcrs tofu (library: expected_pcrs="tofu") the first verified quote of a router
is remembered; a quote with other PCR values is refused and its values kept as pending.
`nomyo attest trust URL` accepts the pending values (or --pcrs JSON); every accepted change is
kept in the file's history with the old and new values and the time."""


def _values(values: dict[str, dict[str, str]]) -> str:
    return ", ".join(
        f"{bank}:{index}={digest[:16]}…"
        for bank in sorted(values)
        for index, digest in sorted(values[bank].items(), key=lambda kv: int(kv[0]))
    )


def cmd_attest_show(args: argparse.Namespace) -> int:
    """``nomyo attest show``: every router's remembered values, pending changes, history."""
    store = KnownPcrs(args.known_pcrs)
    data = store.load()
    if args.json:
        out(json.dumps({"file": str(store.path), **data}, indent=2, sort_keys=True))
        return EXIT_OK
    out(f"known-PCRs file: {store.path}")
    routers: dict[str, Any] = data["routers"]
    if not routers:
        out("no router remembered yet")
    for url in sorted(routers):
        entry = routers[url]
        out(f"{url} (since {entry['since']}): {_values(entry['pcrs'])}")
        pending = entry.get("pending")
        if pending:
            changed = ", ".join(changed_pcrs(entry["pcrs"], pending["pcrs"]))
            out(f"  pending (seen {pending['seen']}, refused): PCR {changed} changed; accept with")
            out(f"  nomyo attest trust {url} --known-pcrs {store.path}")
    for event in data["history"]:
        changed = (
            ", ".join(changed_pcrs(event["old"] or {}, event["new"] or {}))
            if event["old"] and event["new"]
            else "all"
        )
        out(f"history: {event['time']} {event['event']} {event['router']} (PCR {changed})")
    return EXIT_OK


def cmd_attest_trust(args: argparse.Namespace) -> int:
    """``nomyo attest trust URL``: accept the pending (or given) values for URL."""
    store = KnownPcrs(args.known_pcrs)
    values = store.trust(args.url, args.pcrs)
    out(f"nomyo attest: {args.url} now expects {_values(values)} (in {store.path})")
    return EXIT_OK


def cmd_attest_forget(args: argparse.Namespace) -> int:
    """``nomyo attest forget URL``: drop URL's values (its next quote is a first use)."""
    store = KnownPcrs(args.known_pcrs)
    if not store.forget(args.url):
        out(f"nomyo attest: no values remembered for {args.url} in {store.path}")
        return EXIT_FAILURE
    out(f"nomyo attest: forgot the values of {args.url} (in {store.path})")
    return EXIT_OK


def _pcrs_json(text: str) -> dict[str, dict[str, str]]:
    try:
        value = json.loads(text)
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError('PCR values as JSON, e.g. {"sha256": {"10": "<hex>"}}')


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    attest = command_parser(sub, common, "attest", _HELP, _DESCRIPTION, epilog=_EPILOG)
    asub = attest.add_subparsers(dest="attest_command", metavar="ACTION", required=True)
    file_help = "default $NOMYO_KNOWN_PCRS, else known_pcrs beside the known-hosts file"
    show = asub.add_parser("show", parents=[common], help="remembered values and history")
    show.add_argument("--json", action="store_true", help="the whole file as JSON")
    show.set_defaults(handler=cmd_attest_show)
    trust = asub.add_parser(
        "trust", parents=[common], help="accept a router's changed values (the pending ones)"
    )
    trust.add_argument("url", metavar="URL", help="the router's base URL")
    trust.add_argument(
        "--pcrs", type=_pcrs_json, metavar="JSON", help="accept these values instead"
    )
    trust.set_defaults(handler=cmd_attest_trust)
    forget = asub.add_parser("forget", parents=[common], help="forget a router's values")
    forget.add_argument("url", metavar="URL", help="the router's base URL")
    forget.set_defaults(handler=cmd_attest_forget)
    for parser in (show, trust, forget):
        parser.add_argument("--known-pcrs", metavar="PATH", help=file_help)
