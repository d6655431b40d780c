//! Seal and open envelopes; the GIL is released around all RSA and AES work.

use nomyo_core::envelope::{self, Opened, DEFAULT_MAX_ENVELOPE};
use nomyo_core::secret::{self, secret_step, SecretBuf};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyMemoryView};

use crate::buffer::PySecretBuffer;
use crate::errors::CoreError;
use crate::json;
use crate::keys::{PyPrivateKey, PyPublicKey};
use crate::memory::policy;

/// An `int` (not a `bool`) or a finite `float`, as a JSON number.
fn timestamp(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<serde_json::Number>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.cast::<PyInt>().is_ok() && !obj.is_instance_of::<PyBool>() {
        return Ok(Some(obj.extract::<i64>()?.into()));
    }
    let finite = obj.cast::<PyFloat>().ok();
    finite
        .and_then(|f| serde_json::Number::from_f64(f.value()))
        .map(Some)
        .ok_or_else(|| PyTypeError::new_err("processed_at must be a finite int or float"))
}

/// Seal `buf` for `recipient` straight into a new `bytes` object (no intermediate copy). The
/// object is not reachable from any other Python code until it is returned, so it is filled
/// with the GIL released.
fn seal_buf<'py>(
    py: Python<'py>,
    mut buf: SecretBuf,
    recipient: &PyPublicKey,
    processed_at: Option<serde_json::Number>,
) -> PyResult<Bound<'py, PyBytes>> {
    let (key, at) = (&recipient.inner, processed_at.as_ref());
    let policy = secret::policy();
    PyBytes::new_with(py, envelope::sealed_len(buf.len(), key, at), |out| {
        let sealed = py.detach(|| {
            secret_step(policy, || {
                envelope::seal_in_place_into(&mut buf, key, at, out)
            })
        });
        Ok(sealed.map_err(CoreError)?)
    })
}

/// Serialize `obj` to JSON in native memory and seal it for `recipient`.
#[pyfunction]
#[pyo3(signature = (obj, recipient, processed_at = None, *, secure_memory = "best_effort"))]
pub fn seal_json<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    recipient: &PyPublicKey,
    processed_at: Option<&Bound<'py, PyAny>>,
    secure_memory: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let ts = timestamp(processed_at)?;
    let policy = policy(secure_memory)?;
    let plaintext = secret_step(policy, || json::dumps(obj))?;
    secret::with_policy(policy, || seal_buf(py, plaintext, recipient, ts))
}

/// Seal the caller's bytes (`bytes`, `bytearray` or `memoryview`) for `recipient`.
#[pyfunction]
pub fn seal_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    recipient: &PyPublicKey,
) -> PyResult<Bound<'py, PyBytes>> {
    let buf = if let Ok(b) = data.cast::<PyBytes>() {
        SecretBuf::from_slice(b.as_bytes())
    } else if let Ok(ba) = data.cast::<PyByteArray>() {
        // SAFETY: no Python code runs while the slice is borrowed.
        SecretBuf::from_slice(unsafe { ba.as_bytes() })
    } else if data.is_instance_of::<PyMemoryView>() {
        // Item by item: no intermediate `bytes` copy of the caller's data.
        let copy = zeroize::Zeroizing::new(data.extract::<Vec<u8>>()?);
        SecretBuf::from_slice(&copy)
    } else {
        return Err(PyTypeError::new_err(
            "seal_bytes takes bytes, bytearray or memoryview",
        ));
    };
    seal_buf(py, buf.map_err(CoreError)?, recipient, None)
}

/// The envelope size limit: a non-negative int (default 64 MiB); ValueError otherwise.
fn size_limit(given: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let Some(obj) = given.filter(|o| !o.is_none()) else {
        return Ok(DEFAULT_MAX_ENVELOPE);
    };
    if obj.cast::<PyInt>().is_err() || obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("max_size must be an int"));
    }
    obj.extract::<usize>()
        .map_err(|_| PyValueError::new_err("max_size must be between 0 and the address space"))
}

/// Open `envelope` with `key` under `policy`, without the GIL.
fn open(
    py: Python<'_>,
    envelope: &[u8],
    key: &PyPrivateKey,
    max_size: Option<&Bound<'_, PyAny>>,
    policy: secret::Policy,
) -> PyResult<Opened> {
    let max_size = size_limit(max_size)?;
    let opened =
        py.detach(|| secret_step(policy, || envelope::open(envelope, &key.inner, max_size)));
    Ok(opened.map_err(CoreError)?)
}

/// Open an envelope and parse the plaintext JSON: `(value, processed_at, algorithm)`.
#[pyfunction]
#[pyo3(signature = (envelope, key, max_size = None, *, secure_memory = "best_effort"))]
pub fn open_json<'py>(
    py: Python<'py>,
    envelope: &[u8],
    key: &PyPrivateKey,
    max_size: Option<&Bound<'_, PyAny>>,
    secure_memory: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
    let policy = policy(secure_memory)?;
    opened_to_py(py, open(py, envelope, key, max_size, policy)?)
}

/// An opened reply as `(value parsed from JSON, processed_at, algorithm)`.
pub fn opened_to_py<'py>(
    py: Python<'py>,
    opened: Opened,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
    let value = json::loads(py, opened.plaintext.as_slice())?;
    // A JSON number's text parsed back: an int stays an int, a float a float.
    let processed_at = match opened.processed_at {
        Some(n) => json::loads(py, n.to_string().as_bytes())?,
        None => py.None().into_bound(py),
    };
    Ok((value, processed_at, envelope::ALGORITHM))
}

/// Open an envelope into a `SecretBuffer`.
#[pyfunction]
#[pyo3(signature = (envelope, key, max_size = None))]
pub fn open_bytes(
    py: Python<'_>,
    envelope: &[u8],
    key: &PyPrivateKey,
    max_size: Option<&Bound<'_, PyAny>>,
) -> PyResult<PySecretBuffer> {
    let opened = open(py, envelope, key, max_size, secret::policy())?;
    Ok(PySecretBuffer::from_buf(opened.plaintext))
}

/// Serialize `obj` to compact JSON in a `SecretBuffer` (what `seal_json` encrypts).
#[pyfunction]
#[pyo3(signature = (obj, *, secure_memory = "best_effort"))]
pub fn dumps(obj: &Bound<'_, PyAny>, secure_memory: &str) -> PyResult<PySecretBuffer> {
    let buf = secret_step(policy(secure_memory)?, || json::dumps(obj))?;
    Ok(PySecretBuffer::from_buf(buf))
}
