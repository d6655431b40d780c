"""The ``nomyo`` parser and entry point: one module per command beside this one."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import _core
from .._exceptions import NomyoError
from . import attest, chat, doctor, keys, proxy, run, serve_dev, verify
from ._args import EPILOG, common
from ._support import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    describe_error,
    err,
    exit_code_for,
    out,
)

__all__ = ["build_parser", "main"]

_log_handler: logging.Handler | None = None


class _UsageError(Exception):
    """A command line argparse refused (its message is argparse's ``PROG: error: ...``)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (to be reported once, also as ``--json``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nomyo``."""
    parser = _Parser(
        prog="nomyo",
        description="End-to-end encrypted chat completions with NOMYO routers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nomyo-rs {_core.__version__}")
    shared = common()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (chat, proxy, run, serve_dev, keys, verify, attest, doctor):
        command.add_parser(sub, shared)
    return parser


def _configure_logging(verbose: int, server: bool) -> None:
    global _log_handler
    level = logging.WARNING
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose or server:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    fmt = (
        "%(asctime)s %(name)s %(levelname)s %(message)s"
        if server
        else "nomyo: %(levelname)s: %(message)s"
    )
    handler.setFormatter(logging.Formatter(fmt))
    names = ["nomyo"] + (["httpx", "httpcore"] if verbose >= 2 else [])
    for name in names:
        logger = logging.getLogger(name)
        if _log_handler is not None:
            logger.removeHandler(_log_handler)
        logger.addHandler(handler)
        logger.setLevel(level)
    _log_handler = handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nomyo`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        words = sys.argv[1:] if argv is None else list(argv)
        usage = argparse.Namespace(
            json="--json" in words[: words.index("--")] if "--" in words else "--json" in words
        )
        return _failed(usage, str(exc), exc, EXIT_USAGE, prefix="")
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose, args.handler in (proxy.cmd_proxy, serve_dev.cmd_serve_dev))
    if args.handler is run.cmd_run:
        logging.getLogger("nomyo").setLevel(logging.WARNING if not args.verbose else logging.INFO)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt as exc:
        return _failed(args, "interrupted", exc, EXIT_INTERRUPTED)
    except (CLIError, NomyoError) as exc:
        return _failed(args, f"error: {describe_error(exc)}", exc, exit_code_for(exc))
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as exc:
        return _failed(args, f"error: {exc}", exc, EXIT_FAILURE)
    return code


def _failed(
    args: argparse.Namespace, line: str, exc: BaseException, code: int, *, prefix: str = "nomyo: "
) -> int:
    """Report a failure on stderr and, with ``--json``, as a JSON error object on stdout."""
    err(f"{prefix}{line}")
    if getattr(args, "json", False):
        error: dict[str, Any] = {
            "message": line.removeprefix("error: "),
            "type": "UsageError" if isinstance(exc, _UsageError) else type(exc).__name__,
            "exit_code": code,
        }
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            error["status_code"] = status
        with contextlib.suppress(BrokenPipeError):
            out(json.dumps({"error": error}, ensure_ascii=False))
    return code
