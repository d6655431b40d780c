//! TPM 2.0 quote verification (`_metadata.tpm_attestation`), bound to the core verifier.

use nomyo_core::tpm::{self, PcrPolicy};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::json;

fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let buf = json::dumps(obj)?;
    serde_json::from_slice(buf.as_slice())
        .map_err(|e| PyValueError::new_err(format!("not JSON-like: {e}")))
}

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
    let trusted: Option<Vec<String>> =
        trusted_aiks.map(|t| t.iter().map(|f| f.trim().to_ascii_lowercase()).collect());
    let Ok(block) = to_value(attestation) else {
        // Not representable (e.g. nested beyond the parser's depth limit): a parse error.
        let mut result = tpm::verify_pinned(
            &serde_json::Value::Bool(false),
            payload_id,
            None,
            trusted.as_deref(),
        );
        result.detail = "the attestation block is not a JSON object of bounded depth".into();
        return encode(py, &result);
    };
    let policy: Option<PcrPolicy> = match expected_pcrs {
        Some(p) if !p.is_none() => Some(serde_json::from_value(to_value(p)?).map_err(|e| {
            PyValueError::new_err(format!(
                "expected_pcrs must map bank -> {{index: hex digest}}: {e}"
            ))
        })?),
        _ => None,
    };
    let result =
        py.detach(|| tpm::verify_pinned(&block, payload_id, policy.as_ref(), trusted.as_deref()));
    encode(py, &result)
}

fn encode<'py>(py: Python<'py>, result: &tpm::Verification) -> PyResult<Bound<'py, PyAny>> {
    let encoded = serde_json::to_vec(result)
        .map_err(|e| PyValueError::new_err(format!("cannot encode the result: {e}")))?;
    json::loads(py, &encoded)
}
