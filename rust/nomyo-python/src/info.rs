//! `crypto_info()`, and how any core report becomes Python objects (a dict).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A core report (a `Serialize` struct) as Python objects, keys in the struct's order.
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    report: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let encoded = serde_json::to_vec(report)
        .map_err(|e| PyValueError::new_err(format!("cannot encode the result: {e}")))?;
    crate::json::loads(py, &encoded)
}

/// The crypto library, how it seeds its random generator, and how many RSA key generations
/// `PrivateKey.generate` races here.
#[pyfunction]
pub fn crypto_info(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    to_python(py, &nomyo_core::info::crypto_info())
}
