"""Checking the server's TPM 2.0 attestation against the request it answers."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

from ._core import verify_attestation
from ._exceptions import ConfigurationError, SecurityError

__all__ = [
    "AttestationMode",
    "PcrPolicy",
    "ReplyBindingMode",
    "apply_attestation_policy",
    "check_mode",
    "check_reply_binding",
]

#: ``off``: pass the block through unread (the reference's behaviour); ``verify``: attach
#: the verification result as ``_metadata.attestation_verification``; ``require``: also
#: refuse (SecurityError) a reply whose attestation is absent or fails any check.
AttestationMode = Literal["off", "verify", "require"]
#: Expected PCR values: ``{"sha256": {0: "<hex>", 7: "<hex>"}}``.
PcrPolicy = Mapping[str, Mapping[int, str]]
#: ``off`` (protocol v1 as is); ``require``: seal a random secret into each request and
#: refuse a reply that does not return it (the router must support the extension).
ReplyBindingMode = Literal["off", "require"]

_MODES = ("off", "verify", "require")
_BINDING_MODES = ("off", "require")


def check_mode(mode: str) -> AttestationMode:
    """Validate an ``attestation=`` argument."""
    if mode not in _MODES:
        raise ConfigurationError(f"attestation must be one of {', '.join(_MODES)}, not {mode!r}")
    return mode  # type: ignore[return-value]


def check_reply_binding(mode: str) -> ReplyBindingMode:
    """Validate a ``reply_binding=`` argument."""
    if mode not in _BINDING_MODES:
        raise ConfigurationError(
            f"reply_binding must be one of {', '.join(_BINDING_MODES)}, not {mode!r}"
        )
    return mode  # type: ignore[return-value]


def apply_attestation_policy(
    metadata: dict[str, Any],
    payload_id: str,
    mode: AttestationMode,
    expected_pcrs: PcrPolicy | None,
    trusted_aiks: Collection[str] = (),
) -> None:
    """Verify ``metadata["tpm_attestation"]`` as ``mode`` says; raise before any plaintext
    reaches the caller when ``require`` fails.

    Args:
        trusted_aiks: pinned ``sha256:<hex>`` AIK fingerprints (normalised); when given, a
            quote signed by any other key is invalid (reason ``aik_untrusted``).

    Raises:
        SecurityError: ``require`` and the attestation is absent, invalid, not bound to
            this request, not signed by a trusted AIK, or does not match ``expected_pcrs``.
    """
    if mode == "off":
        return
    block = metadata.get("tpm_attestation")
    policy = None if expected_pcrs is None else {k: dict(v) for k, v in expected_pcrs.items()}
    pins = sorted(trusted_aiks) if trusted_aiks else None
    result = verify_attestation(block, payload_id, policy, pins)
    metadata["attestation_verification"] = result
    if mode == "require" and not result["valid"]:
        why = "absent" if not result["available"] else f"invalid ({result['reason']})"
        raise SecurityError(f"TPM attestation is required but {why}")
