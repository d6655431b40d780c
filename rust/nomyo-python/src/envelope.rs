//! Seal and open envelopes; the GIL is released around all RSA and AES work.

use nomyo_core::envelope::{self, Opened, DEFAULT_MAX_ENVELOPE};
use nomyo_core::secret::SecretBuf;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyInt, PyMemoryView};

use crate::buffer::PySecretBuffer;
use crate::errors::CoreError;
use crate::json;
use crate::keys::{PyPrivateKey, PyPublicKey};
use crate::memory::policy;

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

pub(crate) fn number_to_py<'py>(
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
    let len = envelope::sealed_len(buf.len(), &recipient.inner, processed_at.as_ref());
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyOverflowError::new_err("envelope too large"))?;
    // The envelope is written straight into a new `bytes` object (no intermediate copy).
    // SAFETY: a NULL source makes an uninitialized bytes object of `size` bytes; the result
    // is checked for NULL (which sets a Python exception) by from_owned_ptr_or_err.
    let bytes = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))?
            .cast_into_unchecked::<PyBytes>()
    };
    // SAFETY: `bytes` is a bytes object; its buffer has `len` bytes (plus a NUL).
    let data = unsafe { ffi::PyBytes_AsString(bytes.as_ptr()) }.cast::<u8>() as usize;
    // The object is not reachable from any other Python code until it is returned, so it is
    // filled (zeroed, then written: no uninitialized byte is ever read) with the GIL released.
    py.detach(|| {
        let data = data as *mut u8;
        // SAFETY: data points to `len` writable bytes owned by `bytes`, which outlives this
        // closure and which nothing else accesses meanwhile.
        let out = unsafe {
            std::ptr::write_bytes(data, 0, len);
            std::slice::from_raw_parts_mut(data, len)
        };
        let sealed =
            envelope::seal_in_place_into(&mut buf, &recipient.inner, processed_at.as_ref(), out);
        nomyo_core::secret::scrub();
        sealed
    })
    .map_err(CoreError)?;
    Ok(bytes)
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
    let plaintext = nomyo_core::secret::with_policy(policy(secure_memory)?, || json::dumps(obj));
    nomyo_core::secret::scrub();
    nomyo_core::secret::with_policy(policy(secure_memory)?, || {
        seal_buf(py, plaintext?, recipient, ts)
    })
}

/// Seal the caller's bytes (`bytes`, `bytearray` or `memoryview`) for `recipient`.
#[pyfunction]
pub fn seal_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    recipient: &PyPublicKey,
) -> PyResult<Bound<'py, PyBytes>> {
    let buf = if let Ok(b) = data.cast::<PyBytes>() {
        SecretBuf::from_slice(b.as_bytes()).map_err(CoreError)?
    } else if let Ok(ba) = data.cast::<PyByteArray>() {
        // SAFETY: no Python code runs while the slice is borrowed.
        SecretBuf::from_slice(unsafe { ba.as_bytes() }).map_err(CoreError)?
    } else if data.is_instance_of::<PyMemoryView>() {
        // Item by item: no intermediate `bytes` copy of the caller's data.
        let copy = zeroize::Zeroizing::new(data.extract::<Vec<u8>>()?);
        SecretBuf::from_slice(&copy).map_err(CoreError)?
    } else {
        return Err(PyTypeError::new_err(
            "seal_bytes takes bytes, bytearray or memoryview",
        ));
    };
    seal_buf(py, buf, recipient, None)
}

/// The envelope size limit: a non-negative int (default 64 MiB); ValueError otherwise.
fn size_limit(given: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let Some(obj) = given.filter(|o| !o.is_none()) else {
        return Ok(DEFAULT_MAX_ENVELOPE);
    };
    if obj.cast::<PyInt>().is_err() || obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err("max_size must be an int"));
    }
    obj.extract::<usize>()
        .map_err(|_| PyValueError::new_err("max_size must be between 0 and the address space"))
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
    let max_size = size_limit(max_size)?;
    let policy = policy(secure_memory)?;
    let opened = py
        .detach(|| {
            let opened = nomyo_core::secret::with_policy(policy, || {
                envelope::open(envelope, &key.inner, max_size)
            });
            nomyo_core::secret::scrub();
            opened
        })
        .map_err(CoreError)?;
    opened_to_py(py, opened)
}

/// An opened reply as `(value parsed from JSON, processed_at, algorithm)`.
pub fn opened_to_py<'py>(
    py: Python<'py>,
    opened: Opened,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
    let value = json::loads(py, opened.plaintext.as_slice())?;
    Ok((
        value,
        number_to_py(py, opened.processed_at)?,
        envelope::ALGORITHM,
    ))
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
    let max_size = size_limit(max_size)?;
    let opened = py
        .detach(|| {
            let opened = envelope::open(envelope, &key.inner, max_size);
            nomyo_core::secret::scrub();
            opened
        })
        .map_err(CoreError)?;
    Ok(PySecretBuffer::from_buf(opened.plaintext))
}

/// Serialize `obj` to compact JSON in a `SecretBuffer` (what `seal_json` encrypts).
#[pyfunction]
#[pyo3(signature = (obj, *, secure_memory = "best_effort"))]
pub fn dumps(obj: &Bound<'_, PyAny>, secure_memory: &str) -> PyResult<PySecretBuffer> {
    let buf = nomyo_core::secret::with_policy(policy(secure_memory)?, || json::dumps(obj));
    nomyo_core::secret::scrub();
    Ok(PySecretBuffer::from_buf(buf?))
}
