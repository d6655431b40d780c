"""Drive the REFERENCE client (PyPI nomyo 0.2.9) in a subprocess; prints one JSON object.

Run as ``PYTHONPATH=.cache/reference-nomyo python tests/reference_driver.py <cmd> ...``
(folder from scripts/install-reference.sh; NOMYO_REFERENCE_DIR overrides where it is
expected). Exit codes: 0 ok, 2 usage error, 3 the reference client raised
({"error", "message", "status_code"}), 4 driver or environment problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

REFERENCE_VERSION = "0.2.9"
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "reference-nomyo"
_STDOUT = sys.stdout  # the JSON result goes here; everything else is sent to stderr


class UsageError(Exception):
    """Bad command line or missing input (exit 2)."""


class DriverError(Exception):
    """The environment or a driver-side check is wrong (exit 4)."""


class ReferenceRaisedError(Exception):
    """Wraps an exception raised by the reference client (exit 3)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _emit({"error": "UsageError", "message": message}, 2)


def _emit(obj: dict[str, Any], code: int = 0) -> NoReturn:
    _STDOUT.write(json.dumps(obj) + "\n")
    _STDOUT.flush()
    sys.exit(code)


@contextlib.contextmanager
def _reference_errors() -> Iterator[None]:
    """Turn anything the reference client raises into ReferenceRaisedError."""
    try:
        yield
    except Exception as exc:
        raise ReferenceRaisedError(exc) from exc


def reference_module() -> ModuleType:
    """Import nomyo and make sure it is the reference 0.2.9 from the reference folder."""
    ref_dir = Path(os.environ.get("NOMYO_REFERENCE_DIR", DEFAULT_REFERENCE_DIR)).resolve()
    try:
        import nomyo
    except ImportError as exc:
        raise DriverError(f"cannot import the reference nomyo: {exc}") from exc
    version = getattr(nomyo, "__version__", None)
    if version != REFERENCE_VERSION:
        raise DriverError(f"nomyo.__version__ is {version!r}, expected {REFERENCE_VERSION!r}")
    where = Path(nomyo.__file__ or "").resolve()
    if ref_dir not in where.parents:
        raise DriverError(f"nomyo imported from {where}, not from {ref_dir}")
    module: ModuleType = nomyo
    return module


def _password(var: str | None) -> str | None:
    if var is None:
        return None
    if var not in os.environ:
        raise UsageError(f"environment variable {var} is not set")
    return os.environ[var]


def _load_client(key_dir: str, password_env: str | None) -> Any:
    """A reference SecureCompletionClient with the keys of key_dir loaded."""
    nomyo = reference_module()
    password = _password(password_env)
    public_path = os.path.join(key_dir, "public_key.pem")
    with _reference_errors():
        client = nomyo.SecureCompletionClient.SecureCompletionClient()
        client.load_keys(
            os.path.join(key_dir, "private_key.pem"),
            public_path if os.path.exists(public_path) else None,
            password=password,
        )
    return client


def cmd_gen_keys(args: argparse.Namespace) -> dict[str, Any]:
    """Generate and save a key pair with the reference client."""
    nomyo = reference_module()
    password = _password(args.password_env)
    with _reference_errors():
        client = nomyo.SecureCompletionClient.SecureCompletionClient()
        client.generate_keys(save_to_file=True, key_dir=args.dir, password=password)
    return {"public_key_pem": client.public_key_pem, "key_size": client.private_key.key_size}


def cmd_load_keys(args: argparse.Namespace) -> dict[str, Any]:
    """Load a key pair with the reference client."""
    client = _load_client(args.dir, args.password_env)
    return {"public_key_pem": client.public_key_pem, "key_size": client.private_key.key_size}


def cmd_roundtrip_with_keys(args: argparse.Namespace) -> dict[str, Any]:
    """Load keys, then OAEP-encrypt to the loaded public key and decrypt with the private."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    client = _load_client(args.dir, args.password_env)
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )
    public_key = serialization.load_pem_public_key(client.public_key_pem.encode("utf-8"))
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise DriverError("public key is not an RSA key")
    secret = secrets.token_bytes(32)
    try:
        recovered = client.private_key.decrypt(public_key.encrypt(secret, oaep), oaep)
    except ValueError as exc:
        raise DriverError("public key does not belong to the private key") from exc
    if recovered != secret:
        raise DriverError("OAEP round trip returned different bytes")
    return {"ok": True, "key_size": client.private_key.key_size}


def _trust_ca(ca_file: str | None) -> None:
    """Make the reference's httpx trust ca_file.

    httpx 0.28.1's create_ssl_context(verify=True, trust_env=True) loads SSL_CERT_FILE
    instead of certifi when it is set (httpx/_config.py), and the reference builds its
    AsyncClients with those defaults, so the environment variable suffices: no monkeypatch.
    """
    if ca_file is None:
        return
    if not os.path.isfile(ca_file):
        raise UsageError(f"CA file not found: {ca_file}")
    os.environ["SSL_CERT_FILE"] = os.path.abspath(ca_file)


async def _chat(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    nomyo = reference_module()
    if args.tier is not None:
        params["security_tier"] = args.tier
    messages = [{"role": "user", "content": args.message}]
    responses: list[Any] = []
    latencies: list[float] = []
    with _reference_errors():
        client = nomyo.SecureChatCompletion(
            base_url=args.url,
            allow_http=args.allow_http,
            api_key=args.api_key,
            key_dir=args.key_dir,
            max_retries=args.max_retries,
        )
        for _ in range(args.repeat):
            start = time.perf_counter()
            responses.append(await client.create(model=args.model, messages=messages, **params))
            latencies.append((time.perf_counter() - start) * 1000.0)
    return {"responses": responses, "latencies_ms": latencies}


def cmd_chat(args: argparse.Namespace) -> dict[str, Any]:
    """Run chat completions through the reference client."""
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise UsageError("--params must be a JSON object")
    _trust_ca(args.ca_file)
    if args.backend == "trio":  # the reference's httpx runs under trio through anyio
        import trio

        result: dict[str, Any] = trio.run(_chat, args, params)
        return result
    return asyncio.run(_chat(args, params))


def _add_key_command(sub: Any, name: str, func: Any, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("dir")
    parser.add_argument("--password-env", metavar="VAR", help="env var holding the password")
    parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    _add_key_command(sub, "gen-keys", cmd_gen_keys, "generate and save keys")
    _add_key_command(sub, "load-keys", cmd_load_keys, "load saved keys")
    _add_key_command(sub, "roundtrip-with-keys", cmd_roundtrip_with_keys, "OAEP self-check")
    chat = sub.add_parser("chat", help="secure chat completion(s)")
    chat.add_argument("url")
    chat.add_argument("--model", required=True)
    chat.add_argument("--message", required=True)
    chat.add_argument("--api-key")
    chat.add_argument("--tier")
    chat.add_argument("--allow-http", action="store_true")
    chat.add_argument("--ca-file")
    chat.add_argument("--key-dir")
    chat.add_argument("--repeat", type=int, default=1)
    chat.add_argument("--max-retries", type=int, default=2)
    chat.add_argument("--params", default="{}", help="JSON object of extra create() kwargs")
    chat.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    chat.set_defaults(func=cmd_chat)
    return parser


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)}


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse, run one command, print its JSON result and exit."""
    args = build_parser().parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except UsageError as exc:
        _emit(_error(exc), 2)
    except ReferenceRaisedError as wrapped:
        original = wrapped.original
        _emit({**_error(original), "status_code": getattr(original, "status_code", None)}, 3)
    except Exception as exc:
        _emit(_error(exc), 4)
    _emit(result)


if __name__ == "__main__":
    main()
