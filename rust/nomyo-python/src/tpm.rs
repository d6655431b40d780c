//! TPM 2.0 quote verification (`_metadata.tpm_attestation`), bound to the core verifier.

use nomyo_core::tpm;
use pyo3::prelude::*;

use crate::errors::CoreError;
use crate::json;

/// Verify an attestation block for `payload_id`; returns what was (and was not) proven.
/// With `trusted_aiks` (`sha256:<hex>` fingerprints of AIK SubjectPublicKeyInfo DER) the
/// quote must be signed by one of those keys (else reason `aik_untrusted`).
#[pyfunction]
#[pyo3(signature = (attestation, payload_id, expected_pcrs = None, trusted_aiks = None))]
pub fn verify_attestation<'py>(
    py: Python<'py>,
    attestation: &Bound<'py, PyAny>,
    payload_id: &str,
    expected_pcrs: Option<&Bound<'py, PyAny>>,
    trusted_aiks: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyAny>> {
    // Not representable as JSON (e.g. nested too deep): the core reports a parse error.
    let block = json::dumps(attestation).ok();
    let pcrs = match expected_pcrs {
        Some(p) if block.is_some() && !p.is_none() => Some(json::dumps(p)?),
        _ => None,
    };
    let (block, pcrs) = (
        block.as_ref().map(|b| b.as_slice()),
        pcrs.as_ref().map(|p| p.as_slice()),
    );
    let result = py.detach(|| tpm::verify_json(block, payload_id, pcrs, trusted_aiks.as_deref()));
    crate::info::to_python(py, &result.map_err(CoreError)?)
}
