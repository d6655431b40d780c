"""``nomyo serve-dev``: the development router as a long-running server."""

from __future__ import annotations

import argparse
import asyncio
import shlex
from typing import TYPE_CHECKING, Any

from .._constants import KEY_SIZE
from ._args import KEY_SIZES, command_parser
from ._support import (
    EXIT_USAGE,
    CLIError,
    ShutdownSignals,
    check_file,
    display_url,
    err,
    is_loopback_host,
    local_certificates,
    out,
)

if TYPE_CHECKING:
    from ..testing import DevRouter, SwtpmAttestation

__all__ = ["add_parser", "cmd_serve_dev"]

_HELP = "run the development router (echo backend) until Ctrl-C"
_DESCRIPTION = (
    "The development NOMYO router: speaks the secure-completion protocol with "
    "a deterministic echo backend, or forwards to an OpenAI-compatible --upstream."
)

_SERVE_DEV_EPILOG = """\
Try it locally: `nomyo serve-dev --tls` makes a local CA and a certificate for localhost,
127.0.0.1 and ::1 (kept in ~/.config/nomyo/dev-tls and reused while valid), serves HTTPS and
prints the two lines that point clients in another shell at it:
  export NOMYO_BASE_URL=https://127.0.0.1:12434
  export SSL_CERT_FILE=.../dev-tls/ca.pem
`nomyo serve-dev --tpm` adds a real quote from a software TPM to every reply; restart it with
`--tpm-measure v2` to change PCR 10 and see `--expected-pcrs tofu` refuse the change.
exit codes: 0 stopped by SIGTERM, 1 failure (for example the port is in use), 2 usage,
130 stopped by Ctrl-C (SIGINT)."""


def cmd_serve_dev(args: argparse.Namespace) -> int:
    """``nomyo serve-dev``: the development router as a long-running server."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CLIError("--tls-cert and --tls-key must be given together", EXIT_USAGE)
    if args.tls is not None and args.tls_cert is not None:
        raise CLIError("--tls cannot be combined with --tls-cert/--tls-key", EXIT_USAGE)
    check_file(args.tls_cert, "TLS certificate")
    check_file(args.tls_key, "TLS key")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"invalid port {args.port}", EXIT_USAGE)
    if not is_loopback_host(args.host) and not args.allow_remote:
        raise CLIError(
            f"refusing to serve on non-loopback address {args.host}: the dev router decrypts "
            "what it receives; pass --allow-remote (and --api-key) if you mean it",
            EXIT_USAGE,
        )
    ca_file: str | None = None
    if args.tls is not None:
        certs = local_certificates(args.tls or None)
        args.tls_cert, args.tls_key, ca_file = certs.cert, certs.key, certs.ca_cert
    return asyncio.run(_serve_dev(args, ca_file))


async def _serve_dev(args: argparse.Namespace, ca_file: str | None = None) -> int:
    signals = ShutdownSignals()  # caught before "listening" is printed: none is lost
    try:
        return await _serve_dev_until_stopped(args, ca_file, signals)
    finally:
        signals.close()


async def _serve_dev_until_stopped(
    args: argparse.Namespace, ca_file: str | None, signals: ShutdownSignals
) -> int:
    from ..testing import DevRouter

    tpm = await asyncio.to_thread(_start_tpm, args) if args.tpm or args.tpm_measure else None
    try:
        return await _serve(args, ca_file, signals, DevRouter, tpm)
    finally:
        if tpm is not None:
            await asyncio.to_thread(tpm.close)


def _start_tpm(args: argparse.Namespace) -> SwtpmAttestation:
    """The software TPM of ``--tpm`` (a clear error when swtpm is missing)."""
    from ..testing import SwtpmAttestation

    if not SwtpmAttestation.available():
        raise CLIError(
            "--tpm needs swtpm and tpm2-tools (Debian/Ubuntu: sudo bash "
            "scripts/install-system-deps.sh, or apt-get install swtpm swtpm-tools tpm2-tools)"
        )
    try:
        return SwtpmAttestation(measure=args.tpm_measure or ())
    except RuntimeError as exc:
        raise CLIError(f"cannot start the software TPM: {exc}") from None


async def _serve(
    args: argparse.Namespace,
    ca_file: str | None,
    signals: ShutdownSignals,
    router_class: type[DevRouter],
    tpm: SwtpmAttestation | None,
) -> int:
    router = await asyncio.to_thread(
        router_class,
        args.host,
        args.port,
        api_keys=args.api_key or None,
        key_bits=args.key_bits,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        upstream=args.upstream,
        max_recorded=0,  # a long-running server keeps no decrypted requests in memory
        attestation_provider=tpm,
    )
    try:
        await router.start()
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        raise CLIError(f"cannot start the dev router on {where}: {exc.strerror or exc}") from None
    try:
        out(f"nomyo serve-dev: listening on {router.url}")
        out(f"nomyo serve-dev: server key {router.public_key.fingerprint()} (RSA-{args.key_bits})")
        backend = f"upstream {display_url(args.upstream)}" if args.upstream else "echo"
        auth = f"{len(args.api_key)} API key(s) required" if args.api_key else "no API key"
        out(f"nomyo serve-dev: backend {backend}, {auth}; Ctrl-C stops")
        if tpm is not None:
            measured = len(tpm.measure)
            extra = f", PCR {tpm.measure_pcr} extended with {measured} --tpm-measure text(s)"
            out(
                f"nomyo serve-dev: TPM: software TPM (swtpm) quotes of {tpm.pcr_selection} "
                f"in every reply{extra if measured else ''}"
            )
        if not is_loopback_host(args.host) and args.tls_cert is None:
            err("nomyo serve-dev: WARNING: plain HTTP beyond loopback; for development only")
        if ca_file is not None:
            if not is_loopback_host(args.host):
                err(
                    "nomyo serve-dev: WARNING: the --tls certificate names only localhost, "
                    "127.0.0.1 and ::1"
                )
            out("nomyo serve-dev: point clients in another shell at it with:")
            out(f"export NOMYO_BASE_URL={shlex.quote(router.url)}")
            out(f"export SSL_CERT_FILE={shlex.quote(ca_file)}")
        code = await signals.wait()
    finally:
        await router.stop()
    err("nomyo serve-dev: stopped")
    return code


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    serve = command_parser(sub, common, "serve-dev", _HELP, _DESCRIPTION, epilog=_SERVE_DEV_EPILOG)
    serve.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    serve.add_argument("--port", type=int, default=12434, help="default %(default)s; 0: any")
    serve.add_argument(
        "--api-key", action="append", metavar="KEY", help="accepted API key (repeatable)"
    )
    serve.add_argument("--upstream", metavar="URL", help="OpenAI-compatible base URL (…/v1)")
    serve.add_argument(
        "--tls",
        nargs="?",
        const="",
        metavar="DIR",
        help="serve HTTPS with a local CA and server certificate made in DIR (default "
        "~/.config/nomyo/dev-tls; reused while valid) and print the client's export lines",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain: serve HTTPS")
    serve.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    serve.add_argument(
        "--key-bits",
        type=int,
        choices=KEY_SIZES,
        default=KEY_SIZE,
        help="size of the router's RSA key (default %(default)s)",
    )
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    serve.add_argument(
        "--tpm",
        action="store_true",
        help="answer with real TPM 2.0 quotes from a software TPM (swtpm; installed by "
        "scripts/install-system-deps.sh): try --attestation, --expected-pcrs tofu, receipts",
    )
    serve.add_argument(
        "--tpm-measure",
        action="append",
        metavar="TEXT",
        help="extend PCR 10 with SHA-256(TEXT) at start (repeatable; implies --tpm): a "
        "changed measurement, to see a remembered one refused",
    )
    serve.set_defaults(handler=cmd_serve_dev)
