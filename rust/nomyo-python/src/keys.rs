//! `PrivateKey` and `PublicKey`: native handles; key bytes reach Python only on explicit export.

use std::path::PathBuf;
use std::sync::Arc;

use nomyo_core::keys::{PrivateKey, PublicKey};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use zeroize::Zeroizing;

use crate::errors::CoreError;

/// The bytes of a `str` (UTF-8) or `bytes` argument (a password, PEM text, file contents),
/// copied into memory that is wiped on drop.
pub struct Secret(Zeroizing<Vec<u8>>);

impl<'py> FromPyObject<'_, 'py> for Secret {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        let bytes = if let Ok(s) = obj.cast::<PyString>() {
            s.to_str()?.as_bytes().to_vec()
        } else if let Ok(b) = obj.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else {
            return Err(PyTypeError::new_err("expected str or bytes"));
        };
        Ok(Secret(Zeroizing::new(bytes)))
    }
}

/// An optional `Secret` as the core takes it.
fn bytes(secret: &Option<Secret>) -> Option<&[u8]> {
    secret.as_ref().map(|s| s.0.as_slice())
}

/// An RSA private key held in native memory.
#[pyclass(frozen, weakref, name = "PrivateKey", module = "nomyo._core")]
pub struct PyPrivateKey {
    /// Shared with requests in flight on the native transport.
    pub inner: Arc<PrivateKey>,
}

impl From<PrivateKey> for PyPrivateKey {
    fn from(key: PrivateKey) -> Self {
        PyPrivateKey {
            inner: Arc::new(key),
        }
    }
}

#[pymethods]
impl PyPrivateKey {
    #[staticmethod]
    #[pyo3(signature = (bits = 4096))]
    fn generate(py: Python<'_>, bits: usize) -> PyResult<Self> {
        let key = py.detach(|| PrivateKey::generate(bits));
        Ok(key.map_err(CoreError)?.into())
    }

    #[staticmethod]
    #[pyo3(signature = (data, password = None))]
    fn from_pem(py: Python<'_>, data: Secret, password: Option<Secret>) -> PyResult<Self> {
        let key = py.detach(|| PrivateKey::from_pem(&data.0, bytes(&password)));
        Ok(key.map_err(CoreError)?.into())
    }

    /// Load a PEM private key file; its bytes never pass through a Python object.
    #[staticmethod]
    #[pyo3(signature = (path, password = None, allow_readable = false))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        password: Option<Secret>,
        allow_readable: bool,
    ) -> PyResult<Self> {
        let key = py.detach(|| PrivateKey::load(&path, bytes(&password), allow_readable));
        Ok(key.map_err(CoreError)?.into())
    }

    #[getter]
    fn key_size(&self) -> usize {
        self.inner.key_size()
    }

    fn public_key(&self) -> PyPublicKey {
        self.inner.public_key().clone().into()
    }

    #[pyo3(signature = (password = None))]
    fn to_pem<'py>(
        &self,
        py: Python<'py>,
        password: Option<Secret>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pem = py.detach(|| self.inner.to_pem(bytes(&password)));
        Ok(PyBytes::new(py, pem.map_err(CoreError)?.as_bytes()))
    }

    #[pyo3(signature = (path, password = None, overwrite = false))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        password: Option<Secret>,
        overwrite: bool,
    ) -> PyResult<()> {
        let saved = py.detach(|| self.inner.save(&path, bytes(&password), overwrite));
        Ok(saved.map_err(CoreError)?)
    }

    fn __repr__(&self) -> String {
        format!("<PrivateKey {}>", describe(self.inner.public_key()))
    }
}

/// Write `data` to a new file at `path` atomically (see `nomyo_core::keys::write_new_file`).
#[pyfunction]
#[pyo3(signature = (path, data, overwrite = false, mode = 0o644))]
pub fn write_file(
    py: Python<'_>,
    path: PathBuf,
    data: Secret,
    overwrite: bool,
    mode: u32,
) -> PyResult<()> {
    let written = py.detach(|| nomyo_core::keys::write_new_file(&path, &data.0, overwrite, mode));
    Ok(written.map_err(CoreError)?)
}

/// An RSA public key.
#[pyclass(frozen, eq, hash, name = "PublicKey", module = "nomyo._core")]
#[derive(PartialEq, Hash, Clone)]
pub struct PyPublicKey {
    pub inner: PublicKey,
}

impl From<PublicKey> for PyPublicKey {
    fn from(inner: PublicKey) -> Self {
        PyPublicKey { inner }
    }
}

#[pymethods]
impl PyPublicKey {
    #[staticmethod]
    fn from_pem(data: Secret) -> PyResult<Self> {
        Ok(PublicKey::from_pem(&data.0).map_err(CoreError)?.into())
    }

    #[staticmethod]
    fn from_der(data: &[u8]) -> PyResult<Self> {
        Ok(PublicKey::from_der(data).map_err(CoreError)?.into())
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
        format!("<PublicKey {}>", describe(&self.inner))
    }
}

/// `rsa-<bits> sha256:<fingerprint>`, as both reprs show a key.
fn describe(key: &PublicKey) -> String {
    format!("rsa-{} {}", key.key_size(), key.fingerprint())
}
