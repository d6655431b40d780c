"""``nomyo chat``: one end-to-end encrypted chat completion."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .._chat import SecureChatCompletion
from .._keys import password_from_env
from ._args import (
    DEFAULT_MODEL,
    add_key_rotation_arg,
    add_memory_arg,
    add_server_args,
    add_trust_args,
    api_key,
    command_parser,
    key_rotation_kwargs,
    memory_kwargs,
    model,
    positive_int,
    temperature,
    trust_kwargs,
)
from ._support import (
    ENV_KEY_PASSWORD,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    check_file,
    client_transport,
    display_url,
    err,
    out,
    read_stdin_text,
    resolve_base_url,
)

__all__ = ["add_parser", "attestation_line", "cmd_chat"]

_HELP = "one end-to-end encrypted chat completion"
_DESCRIPTION = (
    "Send one encrypted chat completion and print the reply. The prompt is "
    "read from stdin when not given."
)


def _read_prompt(given: str | None) -> str:
    if given is not None:
        prompt = given
    else:
        if sys.stdin is None:
            raise CLIError("no prompt given and no stdin to read it from", EXIT_USAGE)
        if sys.stdin.isatty():
            err("nomyo: type the prompt, end with Ctrl-D")
        prompt = read_stdin_text()
    if not prompt.strip():
        raise CLIError("the prompt is empty", EXIT_USAGE)
    return prompt.strip()


def cmd_chat(args: argparse.Namespace) -> int:
    """``nomyo chat``: one encrypted chat completion."""
    if args.local and args.base_url:
        raise CLIError("--local and --base-url cannot be combined", EXIT_USAGE)
    check_file(args.ca_file, "CA file")
    prompt = _read_prompt(args.prompt)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    response, summary = asyncio.run(_chat(args, messages))
    if not args.quiet:
        err(summary)
    if args.json:
        out(json.dumps(response, indent=2, ensure_ascii=False))
    else:
        out(_reply_text(response))
    return EXIT_OK


async def _chat(
    args: argparse.Namespace, messages: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    if not args.local:
        url = resolve_base_url(args.base_url)
        return await _chat_once(args, url, args.allow_http, messages, "")
    from ..testing import DevRouter

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
        api_key=api_key(args.api_key),
        key_dir=args.key_dir,
        max_retries=args.max_retries,
        key_password=password_from_env(ENV_KEY_PASSWORD),
        verify=args.ca_file or True,
        transport=client_transport(url, args.ca_file),
        **trust_kwargs(args),
        **memory_kwargs(args),
        **key_rotation_kwargs(args),
    )
    async with chat:
        options: dict[str, Any] = {}
        if args.security_tier:
            options["security_tier"] = args.security_tier
        if args.temperature is not None:
            options["temperature"] = args.temperature
        if args.max_tokens is not None:
            options["max_tokens"] = args.max_tokens
        response = await chat.create(model(args.model), messages, **options)
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
    result = metadata.get("attestation_verification")
    if isinstance(result, dict):
        summary += "\n" + attestation_line(result)
    return response, summary


def attestation_line(result: dict[str, Any]) -> str:
    """What the quote proved and what it did not, in the words of docs/security.md."""
    if not result.get("valid"):
        return (
            f"nomyo: attestation NOT verified: {result.get('reason')} ({result.get('detail')}); "
            "nothing about the router's TPM is proven"
        )
    banks = result.get("pcr_values") or {}
    pcrs = "+".join(f"{b}:{','.join(sorted(v, key=int))}" for b, v in sorted(banks.items()))
    proven = f"signed by the AIK sent with it, made for this request, covers PCR {pcrs}"
    remembered = result.get("pcr_remembered")
    if remembered == "first_use":
        proven += " (values remembered now: first use)"
    elif remembered == "matched":
        proven += " with the remembered values"
    elif result.get("pcr_policy_matched"):
        proven += " with the expected values"
    not_proven = "that the measured machine decrypted the request, software after boot"
    if result.get("genuine_tpm_proven"):
        proven += f", made by the pinned AIK {result.get('aik_fingerprint')}"
    else:
        not_proven = "that a genuine TPM made it (the AIK is not certified), " + not_proven
    return f"nomyo: attestation verified: {proven}; not proven: {not_proven} (docs/security.md)"


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


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    chat = command_parser(sub, common, "chat", _HELP, _DESCRIPTION)
    chat.add_argument("prompt", nargs="?", help="the user message (default: stdin)")
    add_server_args(chat)
    add_trust_args(chat)
    add_memory_arg(chat)
    add_key_rotation_arg(chat)
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
        "--temperature", type=temperature, metavar="T", help="sampling temperature (0-2)"
    )
    chat.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="at most N tokens in the reply"
    )
    chat.set_defaults(handler=cmd_chat)
