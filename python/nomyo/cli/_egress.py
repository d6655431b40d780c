"""``nomyo run``'s egress guard options: ``--egress``, ``--allow-egress`` (``nomyo._egress``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

from .._egress import Destination, EgressGuard, parse_destination
from ._support import EXIT_USAGE, CLIError, err

__all__ = ["add_egress_args", "check_egress_args", "egress_guard"]


def add_egress_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "egress", "what the program may reach besides the encrypting proxy (docs/security.md)"
    )
    group.add_argument(
        "--egress",
        choices=("guard", "allow"),
        default="guard",
        help="guard (default): the program's HTTP(S)_PROXY/ALL_PROXY point at a local guard "
        "that refuses every destination but the proxy and --allow-egress ones, and reports "
        "each refused host once; allow: no guard (the program may send plaintext elsewhere)",
    )
    group.add_argument(
        "--allow-egress",
        dest="allow_egress",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="let the program reach this destination through the guard (all ports without "
        ":PORT; through your own HTTP(S)_PROXY when one is set); repeatable",
    )


def check_egress_args(args: argparse.Namespace) -> list[Destination]:
    """The ``--allow-egress`` destinations.

    Raises:
        CLIError: one is not ``HOST[:PORT]`` (usage), or given with ``--egress allow``.
    """
    try:
        allowed = [parse_destination(text) for text in args.allow_egress]
    except ValueError as exc:
        raise CLIError(f"--allow-egress: {exc}", EXIT_USAGE) from None
    if allowed and args.egress == "allow":
        raise CLIError("--allow-egress has no effect with --egress allow", EXIT_USAGE)
    return allowed


@contextlib.asynccontextmanager
async def egress_guard(args: argparse.Namespace, proxy_port: int) -> AsyncIterator[dict[str, str]]:
    """The running guard's variables for the child (none with ``--egress allow``, where the
    proxy is only added to the child's ``NO_PROXY``)."""
    bypass = f"127.0.0.1:{proxy_port}"
    if args.egress == "allow":
        given = os.environ.get("NO_PROXY") or os.environ.get("no_proxy")
        listed = f"{given},{bypass}" if given else bypass
        yield {"NO_PROXY": listed, "no_proxy": listed}
        return
    always = [Destination("127.0.0.1", proxy_port), Destination("localhost", proxy_port)]
    guard = EgressGuard(check_egress_args(args), always=always, report=err)
    async with guard:
        yield guard.child_environment(bypass)
