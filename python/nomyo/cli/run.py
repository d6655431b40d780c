"""``nomyo run -- CMD ARGS...``: a program whose OpenAI SDK talks to a private proxy."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ._args import add_forwarding_args, command_parser
from ._egress import add_egress_args, check_egress_args, egress_guard
from ._support import EXIT_USAGE, CLIError, check_file, display_url, err
from .proxy import serving_proxy

__all__ = ["add_parser", "cmd_run"]

_HELP = "run a program built on the OpenAI SDK through a private encrypting proxy"
_DESCRIPTION = (
    "Start the proxy on a free loopback port with a fresh random token, run "
    "CMD with OPENAI_BASE_URL, OPENAI_API_BASE and OPENAI_API_KEY pointing at it, forward "
    "signals to it, and exit with its status. The program's requests are encrypted end to "
    "end without a code change. ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY point at it too. "
    "An egress guard (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY of the program) refuses every other "
    "destination unless allowed with --allow-egress. CMD does not get NOMYO_API_KEY, "
    "NOMYO_KEY_PASSWORD, NOMYO_PROXY_TOKEN or NOMYO_BASE_URL (--pass-env hands one over), "
    "and on Linux it cannot outlive nomyo run: it is killed when nomyo run dies, and "
    "whatever it leaves running is ended when nomyo run exits."
)


def cmd_run(args: argparse.Namespace) -> int:
    """``nomyo run -- CMD ARGS...``: CMD with OpenAI variables pointing at a private proxy."""
    command = list(args.child)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("nomyo run: give the command to run after '--'", EXIT_USAGE)
    check_file(args.ca_file, "CA file")
    check_egress_args(args)
    return asyncio.run(_run_child(args, command))


async def _run_child(args: argparse.Namespace, command: list[str]) -> int:
    from ._child import new_token, run_with_proxy

    token = new_token()
    async with serving_proxy(args, "127.0.0.1", 0, auth_token=token) as proxy:
        err(f"nomyo run: proxy on {proxy.url}/v1 -> {display_url(proxy.chat.client.router_url)}")
        async with egress_guard(args, proxy.port) as guard_env:
            return await run_with_proxy(
                command, proxy.url + "/v1", token, guard_env, pass_env=args.pass_env
            )


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    run = command_parser(
        sub, common, "run", _HELP, _DESCRIPTION, usage="nomyo run [options] -- CMD [ARGS...]"
    )
    add_forwarding_args(run, callers=False)
    add_egress_args(run)
    run.set_defaults(handler=cmd_run, auth_token=None)
    run.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="hand this withheld variable (NOMYO_API_KEY, NOMYO_KEY_PASSWORD, "
        "NOMYO_PROXY_TOKEN, NOMYO_BASE_URL) to CMD on purpose; repeatable",
    )
    run.add_argument("child", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
