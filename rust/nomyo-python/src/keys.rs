//! `PrivateKey` and `PublicKey`: native handles; key bytes reach Python only on explicit export.

use std::path::PathBuf;
use std::sync::Arc;

use nomyo_core::keys::{PrivateKey, PublicKey};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use zeroize::Zeroizing;

use crate::errors::CoreError;

/// Bytes of a password given as `str` or `bytes`, in memory wiped on drop.
pub fn password(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Zeroizing<Vec<u8>>>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    let bytes = if let Ok(s) = obj.cast::<PyString>() {
        s.to_str()?.as_bytes().to_vec()
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "password must be str or bytes",
        ));
    };
    Ok(Some(Zeroizing::new(bytes)))
}

fn pem_bytes(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = data.cast::<PyString>() {
        Ok(s.to_str()?.as_bytes().to_vec())
    } else if let Ok(b) = data.cast::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "key data must be bytes or str",
        ))
    }
}

/// An RSA private key held in native memory.
#[pyclass(frozen, weakref, name = "PrivateKey", module = "nomyo._core")]
pub struct PyPrivateKey {
    /// Shared with requests in flight on the native transport.
    pub inner: Arc<PrivateKey>,
}

#[pymethods]
impl PyPrivateKey {
    #[staticmethod]
    #[pyo3(signature = (bits = 4096))]
    fn generate(py: Python<'_>, bits: usize) -> PyResult<Self> {
        let inner = py
            .detach(|| PrivateKey::generate(bits))
            .map_err(CoreError)?;
        Ok(PyPrivateKey {
            inner: Arc::new(inner),
        })
    }

    #[staticmethod]
    #[pyo3(signature = (data, password = None))]
    fn from_pem(
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        password: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let pem = Zeroizing::new(pem_bytes(data)?);
        let pw = self::password(password)?;
        let inner = py
            .detach(|| PrivateKey::from_pem(&pem, pw.as_deref().map(Vec::as_slice)))
            .map_err(CoreError)?;
        Ok(PyPrivateKey {
            inner: Arc::new(inner),
        })
    }

    /// Load a PEM private key file; its bytes never pass through a Python object.
    #[staticmethod]
    #[pyo3(signature = (path, password = None, allow_readable = false))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        password: Option<&Bound<'_, PyAny>>,
        allow_readable: bool,
    ) -> PyResult<Self> {
        let pw = self::password(password)?;
        let inner = py
            .detach(|| PrivateKey::load(&path, pw.as_deref().map(Vec::as_slice), allow_readable))
            .map_err(CoreError)?;
        Ok(PyPrivateKey {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn key_size(&self) -> usize {
        self.inner.key_size()
    }

    fn public_key(&self) -> PyPublicKey {
        PyPublicKey {
            inner: self.inner.public_key().clone(),
        }
    }

    #[pyo3(signature = (password = None))]
    fn to_pem<'py>(
        &self,
        py: Python<'py>,
        password: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pw = self::password(password)?;
        let pem = py
            .detach(|| self.inner.to_pem(pw.as_deref().map(Vec::as_slice)))
            .map_err(CoreError)?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    #[pyo3(signature = (path, password = None, overwrite = false))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        password: Option<&Bound<'_, PyAny>>,
        overwrite: bool,
    ) -> PyResult<()> {
        let pw = self::password(password)?;
        py.detach(|| {
            self.inner
                .save(&path, pw.as_deref().map(Vec::as_slice), overwrite)
        })
        .map_err(CoreError)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<PrivateKey rsa-{} {}>",
            self.inner.key_size(),
            self.inner.public_key().fingerprint()
        )
    }
}

/// Write `data` to a new file at `path` atomically (see `nomyo_core::keys::write_new_file`).
#[pyfunction]
#[pyo3(signature = (path, data, overwrite = false, mode = 0o644))]
pub fn write_file(
    py: Python<'_>,
    path: PathBuf,
    data: &Bound<'_, PyAny>,
    overwrite: bool,
    mode: u32,
) -> PyResult<()> {
    if mode > 0o7777 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "mode must be permission bits (at most 0o7777)",
        ));
    }
    let data = if let Ok(s) = data.cast::<PyString>() {
        Zeroizing::new(s.to_str()?.as_bytes().to_vec())
    } else if let Ok(b) = data.cast::<PyBytes>() {
        Zeroizing::new(b.as_bytes().to_vec())
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "data must be bytes or str",
        ));
    };
    py.detach(|| nomyo_core::keys::write_new_file(&path, &data, overwrite, mode))
        .map_err(CoreError)?;
    Ok(())
}

/// An RSA public key.
#[pyclass(frozen, eq, hash, name = "PublicKey", module = "nomyo._core")]
#[derive(PartialEq, Clone)]
pub struct PyPublicKey {
    pub inner: PublicKey,
}

impl std::hash::Hash for PyPublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.to_der().hash(state);
    }
}

#[pymethods]
impl PyPublicKey {
    #[staticmethod]
    fn from_pem(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let inner = PublicKey::from_pem(&pem_bytes(data)?).map_err(CoreError)?;
        Ok(PyPublicKey { inner })
    }

    #[staticmethod]
    fn from_der(data: &[u8]) -> PyResult<Self> {
        Ok(PyPublicKey {
            inner: PublicKey::from_der(data).map_err(CoreError)?,
        })
    }

    #[getter]
    fn key_size(&self) -> usize {
        self.inner.key_size()
    }

    fn to_pem(&self) -> String {
        self.inner.to_pem()
    }

    fn to_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.to_der())
    }

    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    fn __repr__(&self) -> String {
        format!(
            "<PublicKey rsa-{} {}>",
            self.inner.key_size(),
            self.inner.fingerprint()
        )
    }
}
