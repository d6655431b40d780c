"""Checking the server's TPM 2.0 attestation against the request it answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from . import _core
from ._exceptions import ConfigurationError, SecurityError

__all__ = ["AttestationMode", "PcrPolicy", "apply_attestation_policy", "check_mode"]

#: ``off``: pass the block through unread (the reference's behaviour); ``verify``: attach
#: the verification result as ``_metadata.attestation_verification``; ``require``: also
#: refuse (SecurityError) a reply whose attestation is absent or fails any check.
AttestationMode = Literal["off", "verify", "require"]
#: Expected PCR values: ``{"sha256": {0: "<hex>", 7: "<hex>"}}``.
PcrPolicy = Mapping[str, Mapping[int, str]]

_MODES = ("off", "verify", "require")


def check_mode(mode: str) -> AttestationMode:
    """Validate an ``attestation=`` argument."""
    if mode not in _MODES:
        raise ConfigurationError(f"attestation must be one of {', '.join(_MODES)}, not {mode!r}")
    return mode  # type: ignore[return-value]


def apply_attestation_policy(
    metadata: dict[str, Any],
    payload_id: str,
    mode: AttestationMode,
    expected_pcrs: PcrPolicy | None,
) -> None:
    """Verify ``metadata["tpm_attestation"]`` as ``mode`` says; raise before any plaintext
    reaches the caller when ``require`` fails.

    Raises:
        SecurityError: ``require`` and the attestation is absent, invalid, not bound to
            this request, or does not match ``expected_pcrs``.
    """
    if mode == "off":
        return
    block = metadata.get("tpm_attestation")
    policy = None if expected_pcrs is None else {k: dict(v) for k, v in expected_pcrs.items()}
    result = _core.verify_attestation(block, payload_id, policy)
    metadata["attestation_verification"] = result
    if mode == "require" and not result["valid"]:
        why = "absent" if not result["available"] else f"invalid ({result['reason']})"
        raise SecurityError(f"TPM attestation is required but {why}")
