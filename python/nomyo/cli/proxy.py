"""``nomyo proxy``: a local OpenAI-compatible endpoint that forwards end-to-end encrypted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .._chat import SecureChatCompletion
from .._exceptions import NomyoError
from ._args import (
    ENV_PROXY_TOKEN,
    add_forwarding_args,
    api_key,
    command_parser,
    key_rotation_kwargs,
    memory_kwargs,
    model,
    trust_kwargs,
)
from ._support import (
    EXIT_USAGE,
    CLIError,
    ShutdownSignals,
    check_file,
    client_transport,
    describe_error,
    display_url,
    err,
    is_loopback_host,
    out,
    parse_listen,
    resolve_base_url,
)

if TYPE_CHECKING:
    from .._proxy import ChatProxy

__all__ = ["add_parser", "cmd_proxy", "serving_proxy"]

_HELP = "a local OpenAI-compatible endpoint that forwards end-to-end encrypted"
_DESCRIPTION = (
    "Serve POST /v1/chat/completions, POST /v1/responses (OpenAI's Responses "
    "API), POST /v1/messages (Anthropic's Messages API), streaming too, GET /v1/models and "
    "GET /healthz on a local address; every completion is encrypted to the NOMYO router, "
    "other routes are refused (501, nothing sent). "
    "Without a token ($NOMYO_PROXY_TOKEN or --auth-token-file) any local user who can "
    "reach the port uses the proxy, and with it your API key: set one on a shared host. "
    "Callers send it as 'Authorization: Bearer TOKEN' or 'x-api-key: TOKEN'; it is never "
    "forwarded to the router. "
    "--allow-remote needs a token (or --no-auth); web pages (an Origin header) are "
    "refused unless --allow-origin names them."
)


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
    check_file(args.ca_file, "CA file")
    token = _proxy_token(args)
    if args.allow_remote and token is None and not args.no_auth:
        raise CLIError(
            "refusing --allow-remote without a token: every host that can reach the port "
            "could use the proxy and its API key; set NOMYO_PROXY_TOKEN or "
            "--auth-token-file PATH (or pass --no-auth if that is really wanted)",
            EXIT_USAGE,
        )
    from .._proxy import normalise_origin

    for origin in args.allow_origins:
        try:
            normalise_origin(origin)
        except NomyoError as exc:
            raise CLIError(str(exc), EXIT_USAGE) from None
    return asyncio.run(_run_proxy(args, host, port, token))


@contextlib.asynccontextmanager
async def serving_proxy(
    args: argparse.Namespace, host: str, port: int, *, auth_token: str | None
) -> AsyncIterator[ChatProxy]:
    """The client and the running proxy of ``nomyo proxy`` and ``nomyo run``."""
    from .._heap import keep_large_buffers_mapped
    from .._http_server import Limits
    from .._proxy import MAX_BUFFERED_BYTES, MAX_REQUEST_BYTES, ChatProxy

    keep_large_buffers_mapped()  # replies held for slow readers are given back when freed

    url = resolve_base_url(args.base_url)
    chat = SecureChatCompletion(
        base_url=url,
        allow_http=args.allow_http,
        api_key=api_key(args.api_key),
        verify=args.ca_file or True,
        transport=client_transport(url, args.ca_file),
        **trust_kwargs(args),
        **memory_kwargs(args),
        **key_rotation_kwargs(args),
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
        await asyncio.to_thread(chat.client.process_key.wait)
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
                model=model(args.model),
                security_tier=args.security_tier,
                allow_remote=getattr(args, "allow_remote", False),
                allowed_origins=getattr(args, "allow_origins", None) or (),
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
    """``--auth-token-file``, ``--auth-token`` or ``$NOMYO_PROXY_TOKEN``; None: no token."""
    if args.no_auth and (args.auth_token is not None or args.auth_token_file is not None):
        raise CLIError("--no-auth cannot be combined with a token", EXIT_USAGE)
    if args.auth_token is not None and args.auth_token_file is not None:
        raise CLIError("give --auth-token or --auth-token-file, not both", EXIT_USAGE)
    token: str | None = args.auth_token
    if token is not None:
        err(
            f"nomyo proxy: WARNING: a token on the command line is visible to every local "
            f"user (ps, /proc/PID/cmdline); set {ENV_PROXY_TOKEN} or use --auth-token-file "
            "instead"
        )
    elif args.auth_token_file is not None:
        token = _read_token_file(args.auth_token_file)
    elif not args.no_auth:
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


def _read_token_file(path: str) -> str:
    """The token in ``path`` (one line): your own file, 0600 or stricter, not a symlink."""
    from .._files import UnsafeFileError, read_text

    try:
        text = read_text(path, what="token file", private=True)
    except (UnsafeFileError, UnicodeDecodeError) as exc:
        raise CLIError(f"--auth-token-file: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise CLIError(
            f"--auth-token-file: cannot read {path}: {exc.strerror or exc}", EXIT_USAGE
        ) from None
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise CLIError(
            f"--auth-token-file: {path} must hold one token (no spaces), not empty", EXIT_USAGE
        )
    return token


async def _run_proxy(args: argparse.Namespace, host: str, port: int, token: str | None) -> int:
    signals = ShutdownSignals()  # caught before "listening" is printed: none is lost
    async with serving_proxy(args, host, port, auth_token=token) as proxy:
        key = proxy.chat.client.server_public_key
        out(f"nomyo proxy: listening on {proxy.url} (OpenAI base URL {proxy.url}/v1)")
        out(
            f"nomyo proxy: forwarding end-to-end encrypted to "
            f"{display_url(proxy.chat.client.router_url)} (server key "
            f"{key.fingerprint() if key is not None else 'not fetched yet'})"
        )
        if token is None:
            err(
                f"nomyo proxy: no token ({ENV_PROXY_TOKEN} or --auth-token-file): every user "
                "who can reach this port can use it (and its API key)"
            )
        if not is_loopback_host(host):
            err("nomyo proxy: WARNING: listening beyond loopback; requests arrive in clear")
        code = await signals.wait()
    signals.close()  # (asyncio.run's loop.close() also removes the handlers on errors)
    err("nomyo proxy: stopped")
    return code


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    proxy = command_parser(sub, common, "proxy", _HELP, _DESCRIPTION)
    proxy.add_argument(
        "--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default %(default)s"
    )
    proxy.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --listen address (needs a token, or --no-auth)",
    )
    proxy.add_argument(
        "--auth-token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer TOKEN' with the token in PATH (your own file, "
        "not group/other-readable, not a symlink); or set $NOMYO_PROXY_TOKEN. Never "
        "forwarded to the router",
    )
    proxy.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="the token on the command line (visible to every local user: prefer "
        "$NOMYO_PROXY_TOKEN or --auth-token-file)",
    )
    proxy.add_argument(
        "--no-auth",
        action="store_true",
        help="no token, on purpose (ignores $NOMYO_PROXY_TOKEN; lets --allow-remote start "
        "without one)",
    )
    proxy.add_argument(
        "--allow-origin",
        dest="allow_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of ORIGIN (scheme://host[:port]) call the proxy; repeatable "
        "(default: every browser request is refused)",
    )
    add_forwarding_args(proxy, callers=True)
    proxy.set_defaults(handler=cmd_proxy)
