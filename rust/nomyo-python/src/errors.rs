//! The one place core errors become Python exceptions: `From<CoreError> for PyErr`.
//!
//! Every message is the core's `Display`; what callers decide on travels as attributes
//! (`TransportError.kind`, `.cause`, `.status`, `.phase`, `SecureMemoryError.needed`, ...),
//! never as text.

use nomyo_core::{Cause, Error, Phase};
use pyo3::exceptions::{
    PyBaseException, PyFileExistsError, PyFileNotFoundError, PyOSError, PyPermissionError,
    PyRecursionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;

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

/// `exception` with the attributes `set` gives it (on a fresh instance this cannot fail).
fn with_attrs(
    exception: PyErr,
    set: impl FnOnce(&Bound<'_, PyBaseException>) -> PyResult<()>,
) -> PyErr {
    Python::attach(|py| {
        let _ = set(exception.value(py));
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
            Error::Type(_) => PyTypeError::new_err(message),
            Error::TooDeep(_) => PyRecursionError::new_err(message),
            Error::Config(_) => ConfigurationError::new_err(message),
            Error::Io(std::io::ErrorKind::AlreadyExists, _) => PyFileExistsError::new_err(message),
            Error::Io(std::io::ErrorKind::NotFound, _) => PyFileNotFoundError::new_err(message),
            Error::Io(std::io::ErrorKind::PermissionDenied, _) => {
                PyPermissionError::new_err(message)
            }
            Error::Io(..) => PyOSError::new_err(message),
            Error::Internal(_) => PyRuntimeError::new_err(message),
            Error::Memory(s) => with_attrs(SecureMemoryError::new_err(message), |e| {
                e.setattr("needed", s.needed)?;
                e.setattr("limit", s.limit)?;
                e.setattr("locked", s.locked)
            }),
            Error::Connect(..) | Error::Proxy(..) | Error::Timeout(_) | Error::Closed(_) => {
                with_attrs(TransportError::new_err(message), |e| {
                    e.setattr("kind", err.kind())?;
                    e.setattr("cause", err.cause().map(Cause::as_str))?;
                    e.setattr("status", err.status())?;
                    e.setattr("phase", err.phase().map(Phase::as_str))
                })
            }
        }
    }
}
