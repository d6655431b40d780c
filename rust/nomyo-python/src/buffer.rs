//! `SecretBuffer`: a native secret buffer as a Python object.

use std::sync::Mutex;

use nomyo_core::secret::SecretBuf;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyTuple};
use zeroize::Zeroize;

use crate::errors::CoreError;

/// Page-aligned, best-effort locked, dump-excluded memory, zeroed on close and on drop.
#[pyclass(frozen, name = "SecretBuffer", module = "nomyo._core")]
pub struct PySecretBuffer {
    buf: Mutex<SecretBuf>,
}

impl PySecretBuffer {
    pub fn from_buf(buf: SecretBuf) -> Self {
        PySecretBuffer {
            buf: Mutex::new(buf),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SecretBuf) -> T) -> T {
        let mut guard = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

#[pymethods]
impl PySecretBuffer {
    /// Copy `data` into secret memory; a `bytearray` source is wiped after the copy.
    #[new]
    #[pyo3(signature = (data = None, lock = true))]
    fn new(data: Option<&Bound<'_, PyAny>>, lock: bool) -> PyResult<Self> {
        let mut buf = SecretBuf::with_capacity_and_lock(0, lock).map_err(CoreError)?;
        if let Some(d) = data.filter(|d| !d.is_none()) {
            if let Ok(ba) = d.cast::<PyByteArray>() {
                // SAFETY: no Python code runs while the slice is borrowed.
                let src = unsafe { ba.as_bytes_mut() };
                let copied = buf.extend_from_slice(src);
                src.zeroize();
                nomyo_core::secret::scrub();
                copied.map_err(CoreError)?;
            } else {
                let b = d
                    .cast::<PyBytes>()
                    .map_err(|_| PyTypeError::new_err("SecretBuffer takes bytes or bytearray"))?;
                buf.extend_from_slice(b.as_bytes()).map_err(CoreError)?;
            }
        }
        Ok(Self::from_buf(buf))
    }

    fn __len__(&self) -> usize {
        self.with(|b| b.len())
    }

    /// An explicit copy of the contents as `bytes` (which cannot be wiped: use with care).
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.with(|b| PyBytes::new(py, b.as_slice()))
    }

    /// Copy the contents into a new `bytearray` (which the caller can wipe).
    fn to_bytearray<'py>(&self, py: Python<'py>) -> Bound<'py, PyByteArray> {
        self.with(|b| PyByteArray::new(py, b.as_slice()))
    }

    #[getter]
    fn locked(&self) -> bool {
        self.with(|b| b.locked())
    }

    #[getter]
    fn dump_excluded(&self) -> bool {
        self.with(|b| b.dump_excluded())
    }

    /// Overwrite the contents with zeros (the length is kept).
    fn zero(&self) {
        self.with(|b| b.as_mut_slice().zeroize());
    }

    /// Wipe and release the memory now.
    fn close(&self) {
        self.with(SecretBuf::release);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(&self, _exc_info: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        self.with(|b| format!("<SecretBuffer {} bytes, locked={}>", b.len(), b.locked()))
    }
}
