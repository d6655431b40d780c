"""``nomyo keys``: client key pairs, the server key fingerprint, the known-hosts file."""

from __future__ import annotations

import argparse
import asyncio
import stat
from pathlib import Path
from typing import Any

from .. import _core
from .._client import SecureCompletionClient
from .._constants import KEY_SIZE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from .._keys import generate_key, load_private_key, save_key_pair
from .._known_hosts import KnownHosts, normalise_fingerprint
from ._args import KEY_SIZES, add_server_args, command_parser
from ._support import (
    EXIT_KEY,
    EXIT_OK,
    CLIError,
    check_file,
    client_transport,
    err,
    out,
    read_password,
    resolve_base_url,
)

__all__ = ["add_parser"]

_GENERATE_HELP = "create a key pair in a directory"
_GENERATE_DESCRIPTION = (
    "Generate an RSA key pair and save it as DIR/private_key.pem (mode 0600, "
    "created atomically) and DIR/public_key.pem; use it with `nomyo chat --key-dir DIR` "
    "or key_dir= in Python."
)
_SHOW_HELP = "describe a key directory"
_SHOW_DESCRIPTION = (
    "Print the fingerprint, size, password protection and file modes of the "
    "key pair in DIR, and check that the two files belong together."
)
_FINGERPRINT_HELP = "print sha256:<hex> of the router's public key (SPKI DER)"
_FINGERPRINT_DESCRIPTION = (
    "Fetch the router's public key and print its fingerprint, sha256:<hex> "
    "over the SPKI DER; compare it out of band, then pin it (server_key_fingerprint=)."
)
_TRUST_HELP = "accept a router's key in the known-hosts file (trust on first use)"
_TRUST_DESCRIPTION = (
    "Record the router's key fingerprint (fetched, or given with "
    "--fingerprint) as trusted for its URL in the known-hosts file; this is how a "
    "changed key is accepted after checking it."
)


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """``nomyo keys generate``: a new key pair in a directory."""
    password = read_password(confirm=True) if args.password_stdin else None
    key = generate_key(args.bits)
    try:
        private_path, public_path = save_key_pair(key, args.dir, password, overwrite=args.force)
    except FileExistsError as exc:
        raise CLIError(f"{exc}; use --force to replace it") from None
    protection = "password-protected" if password else "NOT password-protected"
    out(f"private key:  {private_path} (mode {_mode(private_path)}, {protection})")
    out(f"public key:   {public_path} (mode {_mode(public_path)})")
    out(f"fingerprint:  {key.public_key().fingerprint()}")
    out(f"key size:     {key.key_size} bits")
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    """``nomyo keys show``: what a key directory holds."""
    directory = Path(args.dir)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    has_private, has_public = private_path.is_file(), public_path.is_file()
    if not has_private and not has_public:
        raise CLIError(f"no key pair in {directory}", EXIT_KEY)
    encrypted = has_private and b"ENCRYPTED PRIVATE KEY" in private_path.read_bytes()
    password = read_password() if args.password_stdin else None
    public: _core.PublicKey | None = None
    if has_private and (password is not None or not encrypted):
        private = load_private_key(
            private_path, password if encrypted else None, allow_readable=True
        )
        public = private.public_key()
        unlocked = "yes (password checked)" if encrypted else "no"
        if has_public and _core.PublicKey.from_pem(public_path.read_bytes()) != public:
            raise CLIError(f"{public_path} does not belong to {private_path}", EXIT_KEY)
    elif has_public:
        public = _core.PublicKey.from_pem(public_path.read_bytes())
        unlocked = "yes (not unlocked; --password-stdin checks it)" if encrypted else "no"
    else:
        raise CLIError(
            f"{private_path} is password-protected and there is no {PUBLIC_KEY_FILE}; "
            "pass --password-stdin",
            EXIT_KEY,
        )
    out(f"directory:    {directory}")
    out(f"fingerprint:  {public.fingerprint()}")
    out(f"key size:     {public.key_size} bits")
    out(f"password:     {unlocked if has_private else 'unknown (no private key)'}")
    for label, path in (("private key:", private_path), ("public key: ", public_path)):
        out(f"{label}  {path} (mode {_mode(path)})" if path.is_file() else f"{label}  missing")
    if has_private and stat.S_IMODE(private_path.stat().st_mode) & 0o077:
        err(f"nomyo: warning: {private_path} is accessible by others; chmod 600 it")
    return EXIT_OK


def cmd_keys_server_fingerprint(args: argparse.Namespace) -> int:
    """``nomyo keys server-fingerprint``: SHA-256 over the router key's SPKI DER."""
    check_file(args.ca_file, "CA file")
    url = resolve_base_url(args.base_url)
    key = asyncio.run(_fetch_server_key(url, args.allow_http, args.ca_file))
    out(key.fingerprint())
    return EXIT_OK


def cmd_keys_trust(args: argparse.Namespace) -> int:
    """``nomyo keys trust``: accept a (changed) server key in the known-hosts file."""
    url = resolve_base_url(args.base_url)
    fingerprint = args.fingerprint
    if fingerprint is None:
        check_file(args.ca_file, "CA file")
        fingerprint = asyncio.run(
            _fetch_server_key(url, args.allow_http, args.ca_file)
        ).fingerprint()
    fingerprint = normalise_fingerprint(fingerprint)  # "" or any other text: exit 2
    hosts = KnownHosts(args.known_hosts)
    hosts.trust(url.rstrip("/"), fingerprint)
    out(f"trusted {fingerprint} for {url} in {hosts.path}")
    return EXIT_OK


async def _fetch_server_key(url: str, allow_http: bool, ca_file: str | None) -> _core.PublicKey:
    client = SecureCompletionClient(
        url,
        allow_http=allow_http,
        max_retries=0,
        verify=ca_file or True,
        transport=client_transport(url, ca_file),
    )
    async with client:
        await client.fetch_server_public_key()
        key = client.server_public_key
    assert key is not None
    return key


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser(
        "keys",
        help="client key pairs and the server key fingerprint",
        description="Manage client key directories (private_key.pem, public_key.pem), print "
        "a router's key fingerprint for pinning, and accept a router's key in the known-hosts "
        "file.",
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    generate = command_parser(
        ksub, common, "generate", _GENERATE_HELP, _GENERATE_DESCRIPTION, epilog=None
    )
    generate.add_argument(
        "--dir",
        required=True,
        metavar="DIR",
        help="directory to write private_key.pem and public_key.pem to (created if missing)",
    )
    generate.add_argument(
        "--password-stdin",
        action="store_true",
        help="encrypt the private key with a password read from stdin (asked twice at a "
        "terminal); without it the key is saved unencrypted",
    )
    generate.add_argument(
        "--force", action="store_true", help="replace an existing key pair in DIR"
    )
    generate.add_argument(
        "--bits",
        type=int,
        choices=KEY_SIZES,
        default=KEY_SIZE,
        help="RSA key size in bits (default %(default)s)",
    )
    generate.set_defaults(handler=cmd_keys_generate)
    show = command_parser(ksub, common, "show", _SHOW_HELP, _SHOW_DESCRIPTION, epilog=None)
    show.add_argument("--dir", required=True, metavar="DIR", help="the key directory to describe")
    show.add_argument(
        "--password-stdin", action="store_true", help="check the password read from stdin"
    )
    show.set_defaults(handler=cmd_keys_show)
    fingerprint = command_parser(
        ksub,
        common,
        "server-fingerprint",
        _FINGERPRINT_HELP,
        _FINGERPRINT_DESCRIPTION,
        epilog=None,
    )
    add_server_args(fingerprint, api_key=False)
    fingerprint.set_defaults(handler=cmd_keys_server_fingerprint)
    trust = command_parser(ksub, common, "trust", _TRUST_HELP, _TRUST_DESCRIPTION, epilog=None)
    add_server_args(trust, api_key=False)
    trust.add_argument("--fingerprint", help="sha256:<hex> to accept (default: fetch it)")
    trust.add_argument("--known-hosts", metavar="PATH", help="default ~/.config/nomyo/known_hosts")
    trust.set_defaults(handler=cmd_keys_trust)
