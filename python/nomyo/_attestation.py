"""Checking the server's TPM 2.0 attestation against the request it answers."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._core import verify_attestation
from ._exceptions import ConfigurationError, SecurityError

if TYPE_CHECKING:
    from ._known_pcrs import KnownPcrs

__all__ = [
    "AttestationMode",
    "PcrPolicy",
    "ReplyBindingMode",
    "apply_attestation_policy",
    "check_mode",
    "check_remembered",
    "check_reply_binding",
    "remembered_pcrs",
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


def remembered_pcrs(
    expected_pcrs: object,
    known_pcrs: str | os.PathLike[str] | None,
    mode: AttestationMode,
) -> KnownPcrs | None:
    """The known-PCRs file of ``expected_pcrs="tofu"`` (or of a ``known_pcrs=`` path), else
    None.

    Raises:
        ConfigurationError: ``tofu`` with ``attestation="off"``, or ``known_pcrs`` together
            with fixed expected values.
    """
    if expected_pcrs != "tofu" and known_pcrs is None:
        return None
    if expected_pcrs not in ("tofu", None):
        raise ConfigurationError("known_pcrs cannot be combined with fixed expected_pcrs")
    if mode == "off":
        raise ConfigurationError(
            "expected_pcrs='tofu' needs attestation='require' (or 'verify' to only report it)"
        )
    from ._known_pcrs import KnownPcrs

    return KnownPcrs(known_pcrs)


def check_remembered(
    metadata: dict[str, Any], known: KnownPcrs, url: str, mode: AttestationMode
) -> None:
    """Compare a verified quote's PCR values with the ones remembered for ``url``.

    An unverified quote is left alone (``require`` refused it already). The result gets
    ``pcr_remembered`` (``first_use``, ``matched`` or ``changed``); a change marks it invalid
    (``pcr_policy_mismatch``).

    Raises:
        SecurityError: ``require`` and the values changed (naming the PCRs and the file), or
            the known-PCRs file cannot be trusted.
    """
    result = metadata.get("attestation_verification")
    if not isinstance(result, dict) or not result.get("valid"):
        return
    outcome, refusal = known.check(url, result["pcr_values"])
    result["pcr_remembered"] = outcome
    if outcome != "changed":
        result["pcr_policy_matched"] = True
        return
    result.update(valid=False, reason="pcr_policy_mismatch", detail=refusal)
    result["pcr_policy_matched"] = False
    if mode == "require":
        raise SecurityError(f"TPM attestation is required but invalid: {refusal}")
