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
    EPILOG,
    add_forwarding_args,
    api_key,
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
    return asyncio.run(_run_proxy(args, host, port))


@contextlib.asynccontextmanager
async def serving_proxy(
    args: argparse.Namespace, host: str, port: int, *, auth_token: str | None
) -> AsyncIterator[ChatProxy]:
    """The client and the running proxy of ``nomyo proxy`` and ``nomyo run``."""
    from .._http_server import Limits
    from .._proxy import MAX_BUFFERED_BYTES, MAX_REQUEST_BYTES, ChatProxy

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
                "nomyo proxy: no --auth-token: every local user who can reach this port can "
                "use it (and its API key)"
            )
        if not is_loopback_host(host):
            err("nomyo proxy: WARNING: listening beyond loopback; requests arrive in clear")
        code = await signals.wait()
    signals.close()  # (asyncio.run's loop.close() also removes the handlers on errors)
    err("nomyo proxy: stopped")
    return code


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    proxy = sub.add_parser(
        "proxy",
        parents=[common],
        help="a local OpenAI-compatible endpoint that forwards end-to-end encrypted",
        description="Serve POST /v1/chat/completions (streaming too), GET /v1/models and "
        "GET /healthz on a local address; every completion is encrypted to the NOMYO router. "
        "Without --auth-token (or $NOMYO_PROXY_TOKEN) any local user who can reach the port "
        "uses the proxy, and with it your API key: set a token on a shared host.",
        epilog=EPILOG,
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
    add_forwarding_args(proxy, callers=True)
    proxy.set_defaults(handler=cmd_proxy)
