//! The one place core errors become Python exceptions: `From<CoreError> for PyErr`.
//!
//! Every message is the core's `Display`; what callers decide on travels as attributes
//! (`TransportError.kind`, `.cause`, `.status`, `.phase`, `SecureMemoryError.needed`, ...),
//! never as text.

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
    "A network failure of the native transport. `kind` names it (connect, proxy, timeout, \
     closed); `cause` says why a connection failed (dns, dns-transient, refused, reset, \
     unreachable, tls, certificate), `status` what a forward proxy answered (None: no usable \
     answer), `phase` what timed out (connect, read, pool); each is None where it does not apply."
);

/// A core error on its way to Python (the newtype the orphan rule asks for).
#[derive(Debug)]
pub struct CoreError(pub Error);

impl From<Error> for CoreError {
    fn from(err: Error) -> Self {
        CoreError(err)
    }
}

/// A `TransportError` carrying what Python decides on as attributes.
fn transport(err: &Error) -> PyErr {
    let (cause, status, phase) = match err {
        Error::Connect(cause, _) => (Some(cause.as_str()), None, None),
        Error::Proxy(status, _) => (None, *status, None),
        Error::Timeout(phase) => (None, None, Some(phase.as_str())),
        _ => (None, None, None),
    };
    let exception = TransportError::new_err(err.to_string());
    Python::attach(|py| {
        let value = exception.value(py);
        // Setting attributes on a fresh exception instance cannot fail.
        let _ = value.setattr("kind", err.kind());
        let _ = value.setattr("cause", cause);
        let _ = value.setattr("status", status);
        let _ = value.setattr("phase", phase);
    });
    exception
}

impl From<CoreError> for PyErr {
    fn from(CoreError(err): CoreError) -> PyErr {
        let message = err.to_string();
        match err {
            Error::Security => SecurityError::new_err(message),
            Error::Envelope(_) | Error::TooLarge(_) | Error::Encoding(_) => {
                EnvelopeError::new_err(message)
            }
            Error::Key(_) => KeyFormatError::new_err(message),
            Error::Value(_) => PyValueError::new_err(message),
            Error::Config(_) => ConfigurationError::new_err(message),
            Error::Io(std::io::ErrorKind::AlreadyExists, _) => PyFileExistsError::new_err(message),
            Error::Io(std::io::ErrorKind::NotFound, _) => PyFileNotFoundError::new_err(message),
            Error::Io(std::io::ErrorKind::PermissionDenied, _) => {
                PyPermissionError::new_err(message)
            }
            Error::Io(..) => PyOSError::new_err(message),
            Error::Internal(_) => PyRuntimeError::new_err(message),
            Error::Memory(shortfall) => {
                let exception = SecureMemoryError::new_err(message);
                Python::attach(|py| {
                    let value = exception.value(py);
                    // Setting attributes on a fresh exception instance cannot fail.
                    let _ = value.setattr("needed", shortfall.needed);
                    let _ = value.setattr("limit", shortfall.limit);
                    let _ = value.setattr("locked", shortfall.locked);
                });
                exception
            }
            Error::Connect(..) | Error::Proxy(..) | Error::Timeout(_) | Error::Closed(_) => {
                transport(&err)
            }
        }
    }
}
