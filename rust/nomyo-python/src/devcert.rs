//! Development TLS certificates (`nomyo serve-dev --tls`), written straight to files.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::CoreError;

/// Make a throwaway CA and a server certificate for localhost/127.0.0.1/::1, valid for
/// `days` days, and write them: `ca_path` and `cert_path` 0644, `key_path` 0600 (the
/// server's key never becomes a Python object; the CA's key is never written).
#[pyfunction]
#[pyo3(signature = (ca_path, cert_path, key_path, days = 30))]
pub fn write_dev_certificates(
    py: Python<'_>,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    days: u32,
) -> PyResult<()> {
    let written = py.detach(|| {
        nomyo_core::devcert::write_dev_certificates(&ca_path, &cert_path, &key_path, days)
    });
    Ok(written.map_err(CoreError)?)
}
