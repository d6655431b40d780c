"""The ``nomyo`` command: encrypted chat, a local OpenAI-compatible proxy, a dev router, keys.

Exit codes: 0 ok, 1 other failure, 2 usage, 3 server unreachable, 4 refused plain HTTP, a
refused TLS certificate or a failed security check, 5 bad key or wrong password, 6 the server
answered 4xx/5xx, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import _core
from ._chat import SecureChatCompletion
from ._cli_support import (
    ENV_API_KEY,
    ENV_KEY_PASSWORD,
    ENV_MODEL,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_KEY,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    ShutdownSignals,
    client_transport,
    describe_error,
    display_url,
    exit_code_for,
    is_loopback_host,
    local_certificates,
    parse_listen,
    read_password,
    read_stdin_text,
    resolve_base_url,
)
from ._client import SecureCompletionClient
from ._constants import KEY_SIZE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, SECURITY_TIERS
from ._doctor import add_parser as add_doctor_parser
from ._exceptions import NomyoError
from ._keys import generate_key, load_private_key, password_from_env, save_key_pair
from ._known_hosts import KnownHosts, normalise_fingerprint

if TYPE_CHECKING:
    from ._proxy import ChatProxy

__all__ = ["DEFAULT_MODEL", "build_parser", "main"]

ENV_PROXY_TOKEN = "NOMYO_PROXY_TOKEN"

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
KEY_SIZES = (2048, 3072, 4096)
_EPILOG = f"""\
environment: NOMYO_BASE_URL, NOMYO_API_KEY, NOMYO_MODEL (defaults for --base-url, --api-key,
--model), {ENV_KEY_PASSWORD} (password of the key in --key-dir), NOMYO_PROXY_TOKEN
(the proxy's --auth-token), HTTPS_PROXY/NO_PROXY, SSL_CERT_FILE.
exit codes: 0 ok, 1 failure, 2 usage, 3 server unreachable, 4 plain HTTP or TLS certificate
refused or security check failed, 5 bad key or wrong password, 6 server answered 4xx/5xx,
130 interrupted."""
_SERVE_DEV_EPILOG = """\
Try it locally: `nomyo serve-dev --tls` makes a local CA and a certificate for localhost,
127.0.0.1 and ::1 (kept in ~/.config/nomyo/dev-tls and reused while valid), serves HTTPS and
prints the two lines that point clients in another shell at it:
  export NOMYO_BASE_URL=https://127.0.0.1:12434
  export SSL_CERT_FILE=.../dev-tls/ca.pem
exit codes: 0 stopped by SIGTERM, 1 failure (for example the port is in use), 2 usage,
130 stopped by Ctrl-C (SIGINT)."""

_log_handler: logging.Handler | None = None


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _model(given: str | None) -> str:
    return given or os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def _api_key(given: str | None) -> str | None:
    return given or os.environ.get(ENV_API_KEY) or None


def _check_file(path: str | None, what: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}", EXIT_USAGE)


# -- chat ---------------------------------------------------------------------------------


def _read_prompt(given: str | None) -> str:
    if given is not None:
        prompt = given
    else:
        if sys.stdin is None:
            raise CLIError("no prompt given and no stdin to read it from", EXIT_USAGE)
        if sys.stdin.isatty():
            _err("nomyo: type the prompt, end with Ctrl-D")
        prompt = read_stdin_text()
    if not prompt.strip():
        raise CLIError("the prompt is empty", EXIT_USAGE)
    return prompt.strip()


def cmd_chat(args: argparse.Namespace) -> int:
    """``nomyo chat``: one encrypted chat completion."""
    if args.local and args.base_url:
        raise CLIError("--local and --base-url cannot be combined", EXIT_USAGE)
    _check_file(args.ca_file, "CA file")
    prompt = _read_prompt(args.prompt)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    response, summary = asyncio.run(_chat(args, messages))
    if not args.quiet:
        _err(summary)
    if args.json:
        _out(json.dumps(response, indent=2, ensure_ascii=False))
    else:
        _out(_reply_text(response))
    return EXIT_OK


async def _chat(
    args: argparse.Namespace, messages: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    if not args.local:
        url = resolve_base_url(args.base_url)
        return await _chat_once(args, url, args.allow_http, messages, "")
    from .testing import DevRouter

    async with DevRouter("127.0.0.1", 0, key_bits=2048) as router:
        return await _chat_once(args, router.url, True, messages, " (local dev router)")


async def _chat_once(
    args: argparse.Namespace,
    url: str,
    allow_http: bool,
    messages: list[dict[str, Any]],
    label: str,
) -> tuple[dict[str, Any], str]:
    chat = SecureChatCompletion(
        base_url=url,
        allow_http=allow_http,
        api_key=_api_key(args.api_key),
        key_dir=args.key_dir,
        max_retries=args.max_retries,
        key_password=password_from_env(ENV_KEY_PASSWORD),
        verify=args.ca_file or True,
        transport=client_transport(url, args.ca_file),
        **_trust_kwargs(args),
        **_memory_kwargs(args),
    )
    async with chat:
        options: dict[str, Any] = {}
        if args.security_tier:
            options["security_tier"] = args.security_tier
        if args.temperature is not None:
            options["temperature"] = args.temperature
        if args.max_tokens is not None:
            options["max_tokens"] = args.max_tokens
        response = await chat.create(_model(args.model), messages, **options)
        key = chat.client.server_public_key
    metadata = response.get("_metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    attestation = metadata.get("tpm_attestation")
    attested = isinstance(attestation, dict) and bool(attestation.get("is_available"))
    tier = metadata.get("security_tier") or args.security_tier or "standard"
    summary = (
        f"nomyo: {display_url(url)}{label} | tier {tier} | server key "
        f"{key.fingerprint() if key is not None else 'unknown'} | "
        f"TPM attestation {'present' if attested else 'absent'}"
    )
    return response, summary


def _reply_text(response: dict[str, Any]) -> str:
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                return content
            return json.dumps(message, indent=2, ensure_ascii=False)
    return json.dumps(response, indent=2, ensure_ascii=False)


# -- proxy --------------------------------------------------------------------------------


def cmd_proxy(args: argparse.Namespace) -> int:
    """``nomyo proxy``: a local OpenAI-compatible endpoint."""
    host, port = parse_listen(args.listen)
    if not is_loopback_host(host) and not args.allow_remote:
        raise CLIError(
            f"refusing to listen on non-loopback address {host!r}: anyone who can reach it "
            "could use the proxy (and its API key) and would send plaintext over the network; "
            "pass --allow-remote if that is really wanted",
            EXIT_USAGE,
        )
    _check_file(args.ca_file, "CA file")
    return asyncio.run(_run_proxy(args, host, port))


@contextlib.asynccontextmanager
async def _serving_proxy(
    args: argparse.Namespace, host: str, port: int, *, auth_token: str | None
) -> AsyncIterator[ChatProxy]:
    """The client and the running proxy of ``nomyo proxy`` and ``nomyo run``."""
    from ._http_server import Limits
    from ._proxy import MAX_BUFFERED_BYTES, MAX_REQUEST_BYTES, ChatProxy

    url = resolve_base_url(args.base_url)
    chat = SecureChatCompletion(
        base_url=url,
        allow_http=args.allow_http,
        api_key=_api_key(args.api_key),
        verify=args.ca_file or True,
        transport=client_transport(url, args.ca_file),
        **_trust_kwargs(args),
        **_memory_kwargs(args),
    )
    limits = Limits(
        max_body=MAX_REQUEST_BYTES,
        request_timeout=60.0,
        idle_timeout=60.0,
        max_connections=args.max_connections,
        max_buffered_bytes=(
            args.max_buffered_mib * 1024 * 1024 if args.max_buffered_mib else MAX_BUFFERED_BYTES
        ),
    )
    async with chat:
        await asyncio.to_thread(chat.client.generate_keys)
        try:
            await chat.client.fetch_server_public_key()
        except NomyoError as exc:
            logging.getLogger("nomyo.proxy").warning(
                "cannot fetch the router's key yet (%s); retrying on the first request",
                describe_error(exc),
            )
        try:
            proxy = ChatProxy(
                chat,
                host,
                port,
                model=_model(args.model),
                security_tier=args.security_tier,
                allow_remote=getattr(args, "allow_remote", False),
                auth_token=auth_token,
                forward_api_key=args.forward_api_key,
                limits=limits,
            )
        except NomyoError as exc:
            raise CLIError(str(exc), EXIT_USAGE) from None
        try:
            await proxy.start()
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        try:
            yield proxy
        finally:
            await proxy.stop()


def _proxy_token(args: argparse.Namespace) -> str | None:
    """``--auth-token``, else ``$NOMYO_PROXY_TOKEN``, else None (no token required)."""
    token: str | None = args.auth_token
    if token is None:
        token = os.environ.get(ENV_PROXY_TOKEN) or None
    if token is not None and not token.strip():
        raise CLIError("--auth-token must not be empty", EXIT_USAGE)
    if token is not None and args.forward_api_key:
        raise CLIError(
            "--forward-api-key cannot be combined with --auth-token: the caller's bearer "
            "token is then the proxy's token",
            EXIT_USAGE,
        )
    return token


async def _run_proxy(args: argparse.Namespace, host: str, port: int) -> int:
    token = _proxy_token(args)
    signals = ShutdownSignals()  # caught before "listening" is printed: none is lost
    async with _serving_proxy(args, host, port, auth_token=token) as proxy:
        key = proxy.chat.client.server_public_key
        _out(f"nomyo proxy: listening on {proxy.url} (OpenAI base URL {proxy.url}/v1)")
        _out(
            f"nomyo proxy: forwarding end-to-end encrypted to "
            f"{display_url(proxy.chat.client.router_url)} (server key "
            f"{key.fingerprint() if key is not None else 'not fetched yet'})"
        )
        if token is None:
            _err(
                "nomyo proxy: no --auth-token: every local user who can reach this port can "
                "use it (and its API key)"
            )
        if not is_loopback_host(host):
            _err("nomyo proxy: WARNING: listening beyond loopback; requests arrive in clear")
        code = await signals.wait()
    signals.close()  # (asyncio.run's loop.close() also removes the handlers on errors)
    _err("nomyo proxy: stopped")
    return code


# -- run ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``nomyo run -- CMD ARGS...``: CMD with OpenAI variables pointing at a private proxy."""
    command = list(args.child)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("nomyo run: give the command to run after '--'", EXIT_USAGE)
    _check_file(args.ca_file, "CA file")
    return asyncio.run(_run_child(args, command))


async def _run_child(args: argparse.Namespace, command: list[str]) -> int:
    from ._run import new_token, run_with_proxy

    token = new_token()
    async with _serving_proxy(args, "127.0.0.1", 0, auth_token=token) as proxy:
        _err(f"nomyo run: proxy on {proxy.url}/v1 -> {display_url(proxy.chat.client.router_url)}")
        return await run_with_proxy(command, proxy.url + "/v1", token)


# -- serve-dev ----------------------------------------------------------------------------


def cmd_serve_dev(args: argparse.Namespace) -> int:
    """``nomyo serve-dev``: the development router as a long-running server."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CLIError("--tls-cert and --tls-key must be given together", EXIT_USAGE)
    if args.tls is not None and args.tls_cert is not None:
        raise CLIError("--tls cannot be combined with --tls-cert/--tls-key", EXIT_USAGE)
    _check_file(args.tls_cert, "TLS certificate")
    _check_file(args.tls_key, "TLS key")
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
    from .testing import DevRouter

    router = await asyncio.to_thread(
        DevRouter,
        args.host,
        args.port,
        api_keys=args.api_key or None,
        key_bits=args.key_bits,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        upstream=args.upstream,
        max_recorded=0,  # a long-running server keeps no decrypted requests in memory
    )
    try:
        await router.start()
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        raise CLIError(f"cannot start the dev router on {where}: {exc.strerror or exc}") from None
    try:
        _out(f"nomyo serve-dev: listening on {router.url}")
        _out(f"nomyo serve-dev: server key {router.public_key.fingerprint()} (RSA-{args.key_bits})")
        backend = f"upstream {display_url(args.upstream)}" if args.upstream else "echo"
        auth = f"{len(args.api_key)} API key(s) required" if args.api_key else "no API key"
        _out(f"nomyo serve-dev: backend {backend}, {auth}; Ctrl-C stops")
        if not is_loopback_host(args.host) and args.tls_cert is None:
            _err("nomyo serve-dev: WARNING: plain HTTP beyond loopback; for development only")
        if ca_file is not None:
            if not is_loopback_host(args.host):
                _err(
                    "nomyo serve-dev: WARNING: the --tls certificate names only localhost, "
                    "127.0.0.1 and ::1"
                )
            _out("nomyo serve-dev: point clients in another shell at it with:")
            _out(f"export NOMYO_BASE_URL={shlex.quote(router.url)}")
            _out(f"export SSL_CERT_FILE={shlex.quote(ca_file)}")
        code = await signals.wait()
    finally:
        await router.stop()
    _err("nomyo serve-dev: stopped")
    return code


# -- keys ---------------------------------------------------------------------------------


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
    _out(f"private key:  {private_path} (mode {_mode(private_path)}, {protection})")
    _out(f"public key:   {public_path} (mode {_mode(public_path)})")
    _out(f"fingerprint:  {key.public_key().fingerprint()}")
    _out(f"key size:     {key.key_size} bits")
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
    _out(f"directory:    {directory}")
    _out(f"fingerprint:  {public.fingerprint()}")
    _out(f"key size:     {public.key_size} bits")
    _out(f"password:     {unlocked if has_private else 'unknown (no private key)'}")
    for label, path in (("private key:", private_path), ("public key: ", public_path)):
        _out(f"{label}  {path} (mode {_mode(path)})" if path.is_file() else f"{label}  missing")
    if has_private and stat.S_IMODE(private_path.stat().st_mode) & 0o077:
        _err(f"nomyo: warning: {private_path} is accessible by others; chmod 600 it")
    return EXIT_OK


def cmd_keys_server_fingerprint(args: argparse.Namespace) -> int:
    """``nomyo keys server-fingerprint``: SHA-256 over the router key's SPKI DER."""
    _check_file(args.ca_file, "CA file")
    url = resolve_base_url(args.base_url)
    key = asyncio.run(_fetch_server_key(url, args.allow_http, args.ca_file))
    _out(key.fingerprint())
    return EXIT_OK


def cmd_keys_trust(args: argparse.Namespace) -> int:
    """``nomyo keys trust``: accept a (changed) server key in the known-hosts file."""
    url = resolve_base_url(args.base_url)
    fingerprint = args.fingerprint
    if fingerprint is None:
        _check_file(args.ca_file, "CA file")
        fingerprint = asyncio.run(
            _fetch_server_key(url, args.allow_http, args.ca_file)
        ).fingerprint()
    fingerprint = normalise_fingerprint(fingerprint)  # "" or any other text: exit 2
    hosts = KnownHosts(args.known_hosts)
    hosts.trust(url.rstrip("/"), fingerprint)
    _out(f"trusted {fingerprint} for {url} in {hosts.path}")
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


# -- parser -------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    return parent


def _add_server_args(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
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


def _add_trust_args(parser: argparse.ArgumentParser) -> None:
    """What the router must prove (``chat``, ``proxy``, ``run``); see :func:`_trust_kwargs`."""
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
        "--reply-binding",
        choices=("off", "require"),
        default="off",
        help="seal a random secret into each request and refuse a reply that does not "
        "return it (the router must support this extension; default off)",
    )


def _trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword arguments of :func:`_add_trust_args`' options."""
    known_hosts: str | bool | None = args.known_hosts or (True if args.tofu else None)
    trusted = args.trusted_aiks or None
    return {
        "server_key_fingerprint": args.pins or None,
        "known_hosts": known_hosts,
        "attestation": args.attestation or ("require" if trusted else "off"),
        "trusted_aik": trusted,
        "reply_binding": args.reply_binding,
    }


def _add_memory_arg(parser: argparse.ArgumentParser) -> None:
    """``--secure-memory`` (``chat``, ``proxy``, ``run``); see :func:`_memory_kwargs`."""
    parser.add_argument(
        "--secure-memory",
        choices=("require", "best-effort", "off"),
        help="require: refuse (before sending) a request whose plaintext and keys cannot be "
        "held in locked, dump-excluded memory; best-effort (default): lock when the OS "
        "allows; off: do not lock. $NOMYO_SECURE_MEMORY=require forces require; "
        "`nomyo doctor` shows what this machine allows",
    )


def _memory_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword argument of ``--secure-memory`` (none when not given)."""
    choice = getattr(args, "secure_memory", None)
    if choice is None:
        return {}
    return {"secure_memory": {"require": "require", "best-effort": True, "off": False}[choice]}


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0-2")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def _add_chat(sub: Any, common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="one end-to-end encrypted chat completion",
        description="Send one encrypted chat completion and print the reply. The prompt is "
        "read from stdin when not given.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("prompt", nargs="?", help="the user message (default: stdin)")
    _add_server_args(chat)
    _add_trust_args(chat)
    _add_memory_arg(chat)
    chat.add_argument("--model", help=f"model name ($NOMYO_MODEL, default {DEFAULT_MODEL})")
    chat.add_argument("--system", metavar="TEXT", help="a system message")
    chat.add_argument(
        "--json",
        action="store_true",
        help='print the whole response as JSON; on failure {"error": {...}} on stdout',
    )
    chat.add_argument(
        "--local",
        action="store_true",
        help="start the development router in-process on loopback and talk to it",
    )
    chat.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    chat.add_argument(
        "--key-dir",
        metavar="DIR",
        help=f"use (or create) the key pair in DIR; password from ${ENV_KEY_PASSWORD}",
    )
    chat.add_argument("--max-retries", type=int, default=2, metavar="N", help="default 2")
    chat.add_argument(
        "--temperature", type=_temperature, metavar="T", help="sampling temperature (0-2)"
    )
    chat.add_argument(
        "--max-tokens", type=_positive_int, metavar="N", help="at most N tokens in the reply"
    )
    chat.set_defaults(handler=cmd_chat)


def _add_forwarding_args(parser: argparse.ArgumentParser, *, callers: bool) -> None:
    """What ``nomyo proxy`` and ``nomyo run`` share: the router, trust, the model, limits.

    ``callers``: the proxy serves callers of its own (``--forward-api-key``).
    """
    _add_server_args(parser)
    _add_trust_args(parser)
    _add_memory_arg(parser)
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
        type=_positive_int,
        metavar="N",
        help="open connections at most (default: a quarter of the open-file limit)",
    )
    parser.add_argument(
        "--max-buffered-mib",
        type=_positive_int,
        metavar="MIB",
        help="request bodies held at once over all connections, MiB (default 64)",
    )


def _add_proxy(sub: Any, common: argparse.ArgumentParser) -> None:
    proxy = sub.add_parser(
        "proxy",
        parents=[common],
        help="a local OpenAI-compatible endpoint that forwards end-to-end encrypted",
        description="Serve POST /v1/chat/completions (streaming too), GET /v1/models and "
        "GET /healthz on a local address; every completion is encrypted to the NOMYO router. "
        "Without --auth-token (or $NOMYO_PROXY_TOKEN) any local user who can reach the port "
        "uses the proxy, and with it your API key: set a token on a shared host.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proxy.add_argument(
        "--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default %(default)s"
    )
    proxy.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --listen address"
    )
    proxy.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' from callers (default $NOMYO_PROXY_TOKEN); "
        "never forwarded to the router",
    )
    _add_forwarding_args(proxy, callers=True)
    proxy.set_defaults(handler=cmd_proxy)


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a program built on the OpenAI SDK through a private encrypting proxy",
        usage="nomyo run [options] -- CMD [ARGS...]",
        description="Start the proxy on a free loopback port with a fresh random token, run "
        "CMD with OPENAI_BASE_URL, OPENAI_API_BASE and OPENAI_API_KEY pointing at it, forward "
        "signals to it, and exit with its status. The program's requests are encrypted end to "
        "end without a code change.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_forwarding_args(run, callers=False)
    run.set_defaults(handler=cmd_run, auth_token=None)
    run.add_argument("child", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _add_serve_dev(sub: Any, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser(
        "serve-dev",
        parents=[common],
        help="run the development router (echo backend) until Ctrl-C",
        description="The development NOMYO router: speaks the secure-completion protocol with "
        "a deterministic echo backend, or forwards to an OpenAI-compatible --upstream.",
        epilog=_SERVE_DEV_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    serve.set_defaults(handler=cmd_serve_dev)


def _add_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser(
        "keys",
        help="client key pairs and the server key fingerprint",
        description="Manage client key directories (private_key.pem, public_key.pem), print "
        "a router's key fingerprint for pinning, and accept a router's key in the known-hosts "
        "file.",
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    generate = ksub.add_parser(
        "generate",
        parents=[common],
        help="create a key pair in a directory",
        description="Generate an RSA key pair and save it as DIR/private_key.pem (mode 0600, "
        "created atomically) and DIR/public_key.pem; use it with `nomyo chat --key-dir DIR` "
        "or key_dir= in Python.",
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
    show = ksub.add_parser(
        "show",
        parents=[common],
        help="describe a key directory",
        description="Print the fingerprint, size, password protection and file modes of the "
        "key pair in DIR, and check that the two files belong together.",
    )
    show.add_argument("--dir", required=True, metavar="DIR", help="the key directory to describe")
    show.add_argument(
        "--password-stdin", action="store_true", help="check the password read from stdin"
    )
    show.set_defaults(handler=cmd_keys_show)
    fingerprint = ksub.add_parser(
        "server-fingerprint",
        parents=[common],
        help="print sha256:<hex> of the router's public key (SPKI DER)",
        description="Fetch the router's public key and print its fingerprint, sha256:<hex> "
        "over the SPKI DER; compare it out of band, then pin it (server_key_fingerprint=).",
    )
    _add_server_args(fingerprint, api_key=False)
    fingerprint.set_defaults(handler=cmd_keys_server_fingerprint)
    trust = ksub.add_parser(
        "trust",
        parents=[common],
        help="accept a router's key in the known-hosts file (trust on first use)",
        description="Record the router's key fingerprint (fetched, or given with "
        "--fingerprint) as trusted for its URL in the known-hosts file; this is how a "
        "changed key is accepted after checking it.",
    )
    _add_server_args(trust, api_key=False)
    trust.add_argument("--fingerprint", help="sha256:<hex> to accept (default: fetch it)")
    trust.add_argument("--known-hosts", metavar="PATH", help="default ~/.config/nomyo/known_hosts")
    trust.set_defaults(handler=cmd_keys_trust)


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
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nomyo-rs {_core.__version__}")
    common = _common()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_chat(sub, common)
    _add_proxy(sub, common)
    _add_run(sub, common)
    _add_serve_dev(sub, common)
    _add_keys(sub, common)
    add_doctor_parser(sub, common)
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
    _configure_logging(args.verbose, args.handler in (cmd_proxy, cmd_serve_dev))
    if args.handler is cmd_run:
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
    _err(f"{prefix}{line}")
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
            _out(json.dumps({"error": error}, ensure_ascii=False))
    return code
