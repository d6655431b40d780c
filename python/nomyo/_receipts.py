"""Receipts: one JSON line per completed request, and their offline verification.

A receipt says that a request went sealed to a given server key and came back with a given
TPM quote: router URL, both key fingerprints, ``payload_id``, model, security tier, SHA-256
of the sealed request and reply bodies as sent and received, the ``tpm_attestation`` block as
received, nomyo's verification result per check, the reply-binding result (``off``, ``ok``,
``failed``, or ``not_checked`` for a reply that did not open) and nomyo's version. It never
holds plaintext, a key or a token. Streamed replies (``stream=True``, emulated from one sealed
reply) and refused replies (a 200 reply nomyo refused: attestation, remembered PCR values,
reply binding, or a reply that does not open) get one too, marked as such.

The file follows the known_hosts rules (``nomyo._files``): created 0600, never
opened through a symbolic link, refused when another user owns it or others can write it, and
each line appended in one write.

:func:`verify_receipt` re-checks a receipt offline: its ``receipt_sha256`` over every other
field, and the quote with the same verifier as at call time (signature, nonce binding to the
receipt's payload id, PCR digest, and an optional PCR policy or pinned AIK). What this does
and does not prove is in ``docs/security.md`` ("Receipts").
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._attestation import PcrPolicy
from ._core import __version__ as _NATIVE_VERSION
from ._core import verify_attestation
from ._exceptions import ConfigurationError, SecurityError
from ._files import UnsafeFileError, append_line

__all__ = [
    "ENV_RECEIPTS",
    "RECEIPT_VERSION",
    "ReceiptContext",
    "ReceiptWriter",
    "receipt_digest",
    "receipts_writer",
    "streamed",
    "verify_receipt",
]

#: Environment variable naming the receipts file when ``receipts=`` is not given.
ENV_RECEIPTS = "NOMYO_RECEIPTS"
#: The ``nomyo_receipt`` field: the version of the receipt format.
RECEIPT_VERSION = 1
_WHAT = "receipts file"
#: The verification result's fields kept in a receipt (the per-check outcome).
_CHECKS = (
    "available",
    "valid",
    "reason",
    "signature_valid",
    "bound_to_request",
    "pcr_digest_valid",
    "pcr_policy_matched",
    "pcr_remembered",
    "aik_type",
    "aik_fingerprint",
    "signature_scheme",
    "aik_trusted",
    "genuine_tpm_proven",
)
#: The checks that do not depend on the caller's policy (compared by :func:`verify_receipt`).
_INTRINSIC = (
    "available",
    "signature_valid",
    "bound_to_request",
    "pcr_digest_valid",
    "aik_type",
    "aik_fingerprint",
    "signature_scheme",
)
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "nomyo_receipt": int,
    "time": str,
    "router": str,
    "server_key": str,
    "client_key": str,
    "payload_id": str,
    "request_sha256": str,
    "reply_sha256": str,
    "outcome": str,
    "streamed": bool,
    "verification": dict,
    "receipt_sha256": str,
}

_streaming: contextvars.ContextVar[bool] = contextvars.ContextVar("nomyo_streamed", default=False)


@contextlib.contextmanager
def streamed(flag: bool) -> Iterator[None]:
    """Mark the requests made inside as answered with a (emulated) stream."""
    token = _streaming.set(flag)
    try:
        yield
    finally:
        _streaming.reset(token)


def receipt_digest(record: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON of every field but ``receipt_sha256``."""
    body = {k: v for k, v in record.items() if k != "receipt_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


class ReceiptWriter:
    """Appends receipts to one file (see the module docstring for its rules)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not os.fspath(path):
            raise ConfigurationError("receipts must name a file")
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"ReceiptWriter({str(self.path)!r})"

    def write(self, record: dict[str, Any]) -> None:
        """Add ``receipt_sha256`` and append the record as one line.

        Raises:
            SecurityError: the file is a link, not the user's own, or writable by others.
            ConfigurationError: it cannot be created or written.
        """
        record["receipt_sha256"] = receipt_digest(record)
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        if not self.path.parent.exists():
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            append_line(self.path, (line + "\n").encode("ascii"), what=_WHAT)
        except UnsafeFileError as exc:
            raise SecurityError(str(exc)) from None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the {_WHAT} {self.path}: {exc.strerror}"
            ) from None


def receipts_writer(receipts: bool | str | os.PathLike[str] | None) -> ReceiptWriter | None:
    """The writer of a ``receipts=`` argument: a path, None (``$NOMYO_RECEIPTS`` if set) or
    False (none, whatever the environment says).

    Raises:
        ConfigurationError: ``receipts=True`` without ``$NOMYO_RECEIPTS``, or an empty path.
    """
    if receipts is False:
        return None
    if receipts is None or receipts is True:
        configured = os.environ.get(ENV_RECEIPTS)
        if configured:
            return ReceiptWriter(configured)
        if receipts is True:
            raise ConfigurationError(f"receipts=True needs ${ENV_RECEIPTS} (or pass a path)")
        return None
    return ReceiptWriter(receipts)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _checks(result: Mapping[str, Any]) -> dict[str, Any]:
    return {name: result.get(name) for name in _CHECKS}


@dataclass
class ReceiptContext:
    """What the pipeline knows of one answered (200) request when its reply arrives."""

    writer: ReceiptWriter
    router: str
    server_key: str
    client_key: str
    payload_id: str
    model: object
    security_tier: str | None
    request_sha256: bytes
    reply_sha256: bytes
    attestation_mode: str
    policy: str
    streamed: bool

    @classmethod
    def of(
        cls, client: Any, request: Any, digests: Callable[[], tuple[bytes, bytes]] | None
    ) -> ReceiptContext | None:
        """The context of a 200 reply to ``request`` (a ``SealedRequest``) of ``client`` (a
        ``PipelineClient``); None without ``receipts=``."""
        writer: ReceiptWriter | None = client._receipts
        if writer is None or digests is None:
            return None
        sent, received = digests()
        headers: Mapping[str, str] = request.headers
        tier = next((v for k, v in headers.items() if k.lower() == "x-security-tier"), None)
        policy = "fixed" if client.expected_pcrs else "none"
        return cls(
            writer,
            client.router_url,
            request.server_key.fingerprint(),
            request.client_key.public_key().fingerprint(),
            request.payload_id,
            request.payload.get("model"),
            tier,
            sent,
            received,
            client.attestation,
            "tofu" if client._known_pcrs is not None else policy,
            _streaming.get(),
        )

    def write(
        self,
        metadata: Mapping[str, Any] | None,
        reply_binding: str,
        refused: BaseException | None = None,
    ) -> None:
        """Append the receipt of this reply (accepted, or ``refused`` by ``refused``)."""
        block = None if metadata is None else metadata.get("tpm_attestation")
        result = None if metadata is None else metadata.get("attestation_verification")
        if not isinstance(result, Mapping):
            result = verify_attestation(block, self.payload_id, None)
        reported = None if metadata is None else metadata.get("security_tier")
        record: dict[str, Any] = {
            "nomyo_receipt": RECEIPT_VERSION,
            "time": _now(),
            "router": self.router,
            "server_key": self.server_key,
            "client_key": self.client_key,
            "payload_id": self.payload_id,
            "model": self.model if isinstance(self.model, str) else None,
            "security_tier": reported if isinstance(reported, str) else self.security_tier,
            "request_sha256": self.request_sha256.hex(),
            "reply_sha256": self.reply_sha256.hex(),
            "streamed": self.streamed,
            "outcome": "accepted" if refused is None else "refused",
            "refused_by": None if refused is None else type(refused).__name__,
            "refused_because": None if refused is None else str(refused),
            "attestation_mode": self.attestation_mode,
            "pcr_policy": self.policy,
            "tpm_attestation": block if isinstance(block, Mapping) else None,
            "verification": _checks(result),
            "reply_binding": reply_binding,
            "nomyo_version": _NATIVE_VERSION,
        }
        self.writer.write(record)


def _shape_error(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kind in _REQUIRED.items():
        if not isinstance(record.get(name), kind):
            return f"field {name!r} missing or of the wrong type"
    if record["nomyo_receipt"] != RECEIPT_VERSION:
        return f"unknown receipt version {record['nomyo_receipt']!r}"
    return None


def verify_receipt(
    record: object,
    expected_pcrs: PcrPolicy | None = None,
    trusted_aiks: Collection[str] = (),
) -> dict[str, Any]:
    """Re-check one receipt offline.

    Returns ``{"ok", "reason", "detail", "payload_id", "outcome", "streamed", "checks"}``:
    ``ok`` when the receipt is intact (``receipt_sha256``), its quote verifies for its payload
    id (and matches ``expected_pcrs`` / ``trusted_aiks`` when given), and the result it
    recorded agrees. ``reason``: ``ok``, ``malformed``, ``altered``, a verifier reason
    (``signature_invalid``, ``extra_data_mismatch``, ``pcr_digest_mismatch``,
    ``not_available``, ...), or ``result_mismatch``.
    """
    shape = _shape_error(record)
    if shape is not None:
        return {"ok": False, "reason": "malformed", "detail": shape, "checks": {}}
    assert isinstance(record, dict)
    out: dict[str, Any] = {
        "ok": False,
        "payload_id": record["payload_id"],
        "outcome": record["outcome"],
        "streamed": record["streamed"],
        "router": record["router"],
        "checks": {},
    }
    policy = None if expected_pcrs is None else {k: dict(v) for k, v in expected_pcrs.items()}
    pins = sorted(trusted_aiks) if trusted_aiks else None
    result = verify_attestation(record.get("tpm_attestation"), record["payload_id"], policy, pins)
    out["checks"] = _checks(result)
    if receipt_digest(record) != record["receipt_sha256"]:
        out.update(reason="altered", detail="receipt_sha256 does not match the receipt's fields")
    elif not result["valid"]:
        out.update(reason=result["reason"], detail=result["detail"])
    elif any(result.get(k) != record["verification"].get(k) for k in _INTRINSIC):
        out.update(reason="result_mismatch", detail="the recorded result differs from a re-check")
    else:
        out.update(ok=True, reason="ok", detail="")
    return out
