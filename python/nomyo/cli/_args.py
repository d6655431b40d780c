"""The options ``nomyo`` commands share: the router, trust, memory, the model, limits."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from .._constants import SECURITY_TIERS
from .._ephemeral import ENV_KEY_ROTATION
from .._params import NOT_GIVEN
from ._support import ENV_API_KEY, ENV_KEY_PASSWORD, ENV_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "ENV_PROXY_TOKEN",
    "EPILOG",
    "KEY_SIZES",
    "add_forwarding_args",
    "add_key_rotation_arg",
    "add_memory_arg",
    "add_server_args",
    "add_trust_args",
    "api_key",
    "command_parser",
    "common",
    "key_rotation_kwargs",
    "memory_kwargs",
    "model",
    "pcr_policy",
    "positive_int",
    "temperature",
    "trust_kwargs",
    "whole_number",
]

ENV_PROXY_TOKEN = "NOMYO_PROXY_TOKEN"

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
KEY_SIZES = (2048, 3072, 4096)
EPILOG = f"""\
environment: NOMYO_BASE_URL, NOMYO_API_KEY, NOMYO_MODEL (defaults for --base-url, --api-key,
--model), {ENV_KEY_PASSWORD} (password of the key in --key-dir), NOMYO_PROXY_TOKEN
(the proxy's --auth-token), NOMYO_RECEIPTS (--receipts), NOMYO_KNOWN_HOSTS, NOMYO_KNOWN_PCRS,
NOMYO_KEY_ROTATION (--key-rotation), HTTPS_PROXY/NO_PROXY, SSL_CERT_FILE.
exit codes: 0 ok, 1 failure, 2 usage, 3 server unreachable, 4 plain HTTP or TLS certificate
refused or security check failed, 5 bad key or wrong password, 6 server answered 4xx/5xx,
130 interrupted."""


def model(given: str | None) -> str:
    return given or os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def api_key(given: str | None) -> str | None:
    return given or os.environ.get(ENV_API_KEY) or None


def command_parser(
    sub: Any,
    common: argparse.ArgumentParser,
    name: str,
    help: str,
    description: str,
    *,
    epilog: str | None = EPILOG,
    usage: str | None = None,
) -> argparse.ArgumentParser:
    """A command's parser on ``sub``, with the shared options of ``common``.

    With an ``epilog`` (``None``: none) the description and epilog are printed as written.
    """
    extra: dict[str, Any] = {}
    if epilog is not None:
        extra["epilog"] = epilog
        extra["formatter_class"] = argparse.RawDescriptionHelpFormatter
    if usage is not None:
        extra["usage"] = usage
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=help, description=description, **extra
    )
    return parser


def common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    return parent


def add_server_args(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
    parser.add_argument("--base-url", metavar="URL", help="the NOMYO router ($NOMYO_BASE_URL)")
    if api_key:
        parser.add_argument(
            "--api-key", metavar="KEY", help="bearer API key (prefer $NOMYO_API_KEY)"
        )
        parser.add_argument(
            "--security-tier", choices=SECURITY_TIERS, help="ask the router for this tier"
        )
    parser.add_argument(
        "--allow-http", action="store_true", help="allow plain http:// (local development)"
    )
    parser.add_argument("--ca-file", metavar="PEM", help="trust this CA bundle for HTTPS")


def add_trust_args(parser: argparse.ArgumentParser) -> None:
    """What the router must prove (``chat``, ``proxy``, ``run``); see :func:`trust_kwargs`."""
    group = parser.add_argument_group(
        "trust", "what the router must prove before a reply is accepted (docs/security.md)"
    )
    group.add_argument(
        "--pin",
        "--server-key-fingerprint",
        dest="pins",
        action="append",
        metavar="SHA256",
        help="accept only this server key (sha256:<hex>, from 'nomyo keys server-fingerprint'"
        "); repeat to accept several",
    )
    group.add_argument(
        "--tofu",
        action="store_true",
        help="trust on first use: remember the server key in the known-hosts file and refuse "
        "a changed one (the file of 'nomyo keys trust')",
    )
    group.add_argument(
        "--known-hosts",
        metavar="PATH",
        help="the known-hosts file (implies --tofu; default $NOMYO_KNOWN_HOSTS, else "
        "~/.config/nomyo/known_hosts)",
    )
    group.add_argument(
        "--attestation",
        choices=("off", "verify", "require"),
        help="check the router's TPM quote: verify reports it, require refuses a reply "
        "without a valid one (default off; require with --trusted-aik)",
    )
    group.add_argument(
        "--trusted-aik",
        dest="trusted_aiks",
        action="append",
        metavar="SHA256",
        help="accept quotes only from this attestation key (sha256:<hex> of its "
        "SubjectPublicKeyInfo); repeatable; implies --attestation require",
    )
    group.add_argument(
        "--expected-pcrs",
        type=pcr_policy_or_tofu,
        metavar="JSON|tofu",
        help='PCR values the quote must hold, as JSON ({"sha256": {"7": "<hex>"}}), or tofu: '
        "remember each router's first verified values in the known-PCRs file and refuse a "
        "change until 'nomyo attest trust URL'; implies --attestation require",
    )
    group.add_argument(
        "--known-pcrs",
        metavar="PATH",
        help="the known-PCRs file (implies --expected-pcrs tofu; default $NOMYO_KNOWN_PCRS, "
        "else known_pcrs beside the known-hosts file)",
    )
    group.add_argument(
        "--receipts",
        metavar="FILE",
        help="append one JSON receipt per answered request to FILE (0600; no plaintext, keys "
        "or tokens; default $NOMYO_RECEIPTS); check them with 'nomyo verify FILE'",
    )
    group.add_argument(
        "--reply-binding",
        choices=("off", "require"),
        default="off",
        help="seal a random secret into each request and refuse a reply that does not "
        "return it (the router must support this extension; default off)",
    )


def trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword arguments of :func:`add_trust_args`' options."""
    known_hosts: str | bool | None = args.known_hosts or (True if args.tofu else None)
    trusted = args.trusted_aiks or None
    expected = args.expected_pcrs or ("tofu" if args.known_pcrs else None)
    return {
        "server_key_fingerprint": args.pins or None,
        "known_hosts": known_hosts,
        "attestation": args.attestation or ("require" if trusted or expected else "off"),
        "trusted_aik": trusted,
        "expected_pcrs": expected,
        "known_pcrs": args.known_pcrs,
        "receipts": args.receipts,
        "reply_binding": args.reply_binding,
    }


def pcr_policy(text: str) -> dict[str, dict[int, str]]:
    """``--expected-pcrs`` JSON: ``{"sha256": {"7": "<hex>"}}`` (indexes as strings or ints)."""
    shape = 'expected PCR values as JSON, e.g. {"sha256": {"7": "<64 hex digits>"}}'
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(shape)
        return {
            str(bank): {int(index): str(digest) for index, digest in pcrs.items()}
            for bank, pcrs in value.items()
        }
    except (ValueError, TypeError, AttributeError):
        raise argparse.ArgumentTypeError(f"not {shape}: {text!r}") from None


def pcr_policy_or_tofu(text: str) -> dict[str, dict[int, str]] | str:
    """:func:`pcr_policy`, or ``tofu``."""
    return "tofu" if text == "tofu" else pcr_policy(text)


def add_memory_arg(parser: argparse.ArgumentParser) -> None:
    """``--secure-memory`` (``chat``, ``proxy``, ``run``); see :func:`memory_kwargs`."""
    parser.add_argument(
        "--secure-memory",
        choices=("require", "best-effort", "off"),
        help="require: refuse (before sending) a request whose plaintext and keys cannot be "
        "held in locked, dump-excluded memory; best-effort (default): lock when the OS "
        "allows; off: do not lock. $NOMYO_SECURE_MEMORY=require forces require; "
        "`nomyo doctor` shows what this machine allows",
    )


def memory_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword argument of ``--secure-memory`` (none when not given)."""
    choice = getattr(args, "secure_memory", None)
    if choice is None:
        return {}
    return {"secure_memory": {"require": "require", "best-effort": True, "off": False}[choice]}


def _rotation(text: str) -> float | None:
    if text.strip().lower() in ("none", "never", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def add_key_rotation_arg(parser: argparse.ArgumentParser) -> None:
    """``--key-rotation`` (``chat``, ``proxy``, ``run``); see :func:`key_rotation_kwargs`."""
    parser.add_argument(
        "--key-rotation",
        type=_rotation,
        default=NOT_GIVEN,
        metavar="SECONDS",
        help="rotate the process's in-memory client key pair every SECONDS ('never': keep "
        f"one; default ${ENV_KEY_ROTATION}, else 86400); a --key-dir key never rotates",
    )


def key_rotation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword argument of ``--key-rotation`` (none when not given)."""
    if getattr(args, "key_rotation", NOT_GIVEN) is NOT_GIVEN:
        return {}
    return {"key_rotation_interval": args.key_rotation}


def temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0-2")
    return value


def whole_number(text: str, what: str = "whole number") -> int:
    """``text`` as an int; otherwise an argparse error naming ``what`` it should be."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def add_forwarding_args(parser: argparse.ArgumentParser, *, callers: bool) -> None:
    """What ``nomyo proxy`` and ``nomyo run`` share: the router, trust, the model, limits.

    ``callers``: the proxy serves callers of its own (``--forward-api-key``).
    """
    add_server_args(parser)
    add_trust_args(parser)
    add_memory_arg(parser)
    add_key_rotation_arg(parser)
    parser.add_argument(
        "--model", help=f"model listed and used by default (default {DEFAULT_MODEL})"
    )
    if callers:
        parser.add_argument(
            "--forward-api-key",
            action="store_true",
            help="without --api-key/$NOMYO_API_KEY, send the caller's 'Authorization: Bearer' "
            "token to the router as its API key (off: a tool's OPENAI_API_KEY stays local)",
        )
    else:
        parser.set_defaults(forward_api_key=False)
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="open connections at most (default: a quarter of the open-file limit)",
    )
    parser.add_argument(
        "--max-buffered-mib",
        type=positive_int,
        metavar="MIB",
        help="request bodies held at once over all connections, and apart from them replies "
        "waiting for slow readers, MiB each (default 64); beyond it: 503 with Retry-After",
    )
