//! The one place core errors become Python exceptions.

use nomyo_core::http::HttpError;
use nomyo_core::Error;
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::PyErr;

pyo3::import_exception!(nomyo._exceptions, SecurityError);
pyo3::import_exception!(nomyo._exceptions, EnvelopeError);
pyo3::import_exception!(nomyo._exceptions, KeyFormatError);
pyo3::import_exception!(nomyo._exceptions, ConfigurationError);
pyo3::import_exception!(nomyo._exceptions, SecureMemoryError);

pyo3::create_exception!(
    nomyo._core,
    TransportError,
    pyo3::exceptions::PyException,
    "A network failure of the native transport; `kind` names it (timeout, connect, closed)."
);

/// Convert a native-transport error. Oversized or compressed replies are structural
/// (EnvelopeError); a bad URL or header is a configuration error; the rest are network
/// failures that the client maps to APIConnectionError or APITimeoutError.
pub fn http_to_py(err: HttpError) -> PyErr {
    let kind = err.kind();
    match err {
        HttpError::TooLarge(m) | HttpError::Encoding(m) => EnvelopeError::new_err(m),
        HttpError::Config(m) => ConfigurationError::new_err(m),
        other => {
            let err = TransportError::new_err(other.to_string());
            pyo3::Python::attach(|py| {
                // Setting an attribute on a fresh exception instance cannot fail.
                let _ = err.value(py).setattr("kind", kind);
            });
            err
        }
    }
}

/// Convert a core error. Crypto failures carry one fixed message and nothing else.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::Security => {
            SecurityError::new_err("Decryption failed: integrity check or authentication failed")
        }
        Error::Envelope(m) => {
            EnvelopeError::new_err(format!("Invalid encrypted envelope: {}", clip(&m)))
        }
        Error::Key(m) => KeyFormatError::new_err(m),
        Error::Value(m) => PyValueError::new_err(m),
        Error::Io(std::io::ErrorKind::AlreadyExists, m) => PyFileExistsError::new_err(m),
        Error::Io(std::io::ErrorKind::NotFound, m) => PyFileNotFoundError::new_err(m),
        Error::Io(std::io::ErrorKind::PermissionDenied, m) => PyPermissionError::new_err(m),
        Error::Io(_, m) => PyOSError::new_err(m),
        Error::Internal(m) => PyRuntimeError::new_err(m),
        Error::Memory(shortfall) => {
            let err = SecureMemoryError::new_err(shortfall.to_string());
            pyo3::Python::attach(|py| {
                let value = err.value(py);
                // Setting attributes on a fresh exception instance cannot fail.
                let _ = value.setattr("needed", shortfall.needed);
                let _ = value.setattr("limit", shortfall.limit);
                let _ = value.setattr("locked", shortfall.locked);
            });
            err
        }
    }
}

/// Longest structural-error detail kept: it can echo attacker-chosen names and values.
const MAX_DETAIL: usize = 300;

fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_DETAIL {
        return message.to_owned();
    }
    let mut out: String = message.chars().take(MAX_DETAIL).collect();
    out.push_str("… (truncated)");
    out
}

/// `Result` conversion for binding code.
pub trait IntoPy<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for nomyo_core::Result<T> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
