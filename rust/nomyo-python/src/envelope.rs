//! Seal and open envelopes; the GIL is released around all RSA and AES work.

use nomyo_core::envelope::{self, DEFAULT_MAX_ENVELOPE};
use nomyo_core::secret::SecretBuf;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyInt};

use crate::buffer::PySecretBuffer;
use crate::errors::IntoPy;
use crate::json;
use crate::keys::{PyPrivateKey, PyPublicKey};

fn timestamp(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<serde_json::Number>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.cast::<PyInt>().is_ok() && !obj.is_instance_of::<pyo3::types::PyBool>() {
        return Ok(Some(serde_json::Number::from(obj.extract::<i64>()?)));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        if let Some(n) = serde_json::Number::from_f64(f.value()) {
            return Ok(Some(n));
        }
    }
    Err(PyTypeError::new_err(
        "processed_at must be a finite int or float",
    ))
}

fn number_to_py<'py>(
    py: Python<'py>,
    n: Option<serde_json::Number>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match n {
        None => py.None().into_bound(py),
        Some(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u), _) => u.into_pyobject(py)?.into_any(),
            (_, _, Some(f)) => f.into_pyobject(py)?.into_any(),
            _ => py.None().into_bound(py),
        },
    })
}

fn seal_buf<'py>(
    py: Python<'py>,
    mut buf: SecretBuf,
    recipient: &PyPublicKey,
    processed_at: Option<serde_json::Number>,
) -> PyResult<Bound<'py, PyBytes>> {
    let sealed = py
        .detach(|| envelope::seal_in_place(&mut buf, &recipient.inner, processed_at.as_ref()))
        .py_err()?;
    Ok(PyBytes::new(py, &sealed))
}

/// Serialize `obj` to JSON in native memory and seal it for `recipient`.
#[pyfunction]
#[pyo3(signature = (obj, recipient, processed_at = None))]
pub fn seal_json<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    recipient: &PyPublicKey,
    processed_at: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let ts = timestamp(processed_at)?;
    seal_buf(py, json::dumps(obj)?, recipient, ts)
}

/// Seal the caller's bytes for `recipient`.
#[pyfunction]
pub fn seal_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
    recipient: &PyPublicKey,
) -> PyResult<Bound<'py, PyBytes>> {
    let buf = SecretBuf::from_slice(data).py_err()?;
    seal_buf(py, buf, recipient, None)
}

/// Open an envelope and parse the plaintext JSON: `(value, processed_at, algorithm)`.
#[pyfunction]
#[pyo3(signature = (envelope, key, max_size = DEFAULT_MAX_ENVELOPE))]
pub fn open_json<'py>(
    py: Python<'py>,
    envelope: &[u8],
    key: &PyPrivateKey,
    max_size: usize,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
    let opened = py
        .detach(|| envelope::open(envelope, &key.inner, max_size))
        .py_err()?;
    let value = json::loads(py, opened.plaintext.as_slice())?;
    Ok((
        value,
        number_to_py(py, opened.processed_at)?,
        envelope::ALGORITHM,
    ))
}

/// Open an envelope into a `SecretBuffer`.
#[pyfunction]
#[pyo3(signature = (envelope, key, max_size = DEFAULT_MAX_ENVELOPE))]
pub fn open_bytes(
    py: Python<'_>,
    envelope: &[u8],
    key: &PyPrivateKey,
    max_size: usize,
) -> PyResult<PySecretBuffer> {
    let opened = py
        .detach(|| envelope::open(envelope, &key.inner, max_size))
        .py_err()?;
    Ok(PySecretBuffer::from_buf(opened.plaintext))
}

/// Serialize `obj` to compact JSON in a `SecretBuffer` (what `seal_json` encrypts).
#[pyfunction]
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<PySecretBuffer> {
    Ok(PySecretBuffer::from_buf(json::dumps(obj)?))
}
