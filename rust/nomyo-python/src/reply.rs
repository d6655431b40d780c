//! `Reply`: one finished request of the native transport (see `nomyo_core::sealed::Reply`).

use nomyo_core::sealed;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict};

use crate::envelope::opened_to_py;
use crate::errors::CoreError;

/// What one request ended with.
pub(crate) type Outcome = Result<PyReply, nomyo_core::Error>;

/// `outcome` as Python sees it: `(True, Reply)` or `(False, the exception to raise)`.
pub(crate) fn outcome_to_py(py: Python<'_>, outcome: Outcome) -> PyResult<(bool, Py<PyAny>)> {
    Ok(match outcome {
        Ok(reply) => (true, Py::new(py, reply)?.into_any()),
        Err(err) => (false, PyErr::from(CoreError(err)).into_value(py).into_any()),
    })
}

/// One finished request: status, headers, timings, digests, and the body or the opened reply.
/// Shared, so that a Python object for it can be made again if making one failed (see
/// `Completions.drain`).
#[pyclass(frozen, name = "Reply", module = "nomyo._core")]
#[derive(Clone)]
pub(crate) struct PyReply(sealed::Shared);

impl From<sealed::Reply> for PyReply {
    fn from(reply: sealed::Reply) -> Self {
        PyReply(reply.into())
    }
}

#[pymethods]
impl PyReply {
    #[getter]
    fn status(&self) -> u16 {
        self.0.reply().status
    }

    /// Bytes sent (the request body).
    #[getter]
    fn sent_bytes(&self) -> usize {
        self.0.reply().sent_bytes
    }

    /// Bytes received (the reply body).
    #[getter]
    fn received_bytes(&self) -> usize {
        self.0.reply().received_bytes
    }

    /// Seconds spent `(sealing, exchanging, opening)`.
    #[getter]
    fn timings(&self) -> (f64, f64, f64) {
        let t = &self.0.reply().timings;
        let seconds = |d: std::time::Duration| d.as_secs_f64();
        (seconds(t.seal), seconds(t.exchange), seconds(t.open))
    }

    /// SHA-256 of the request body exactly as sent (the sealed envelope), 32 bytes.
    #[getter]
    fn request_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.reply().request_sha256)
    }

    /// SHA-256 of the reply body exactly as received (before opening), 32 bytes.
    #[getter]
    fn reply_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.reply().reply_sha256)
    }

    /// The reply headers: lower-case names, repeated headers joined with ", ".
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.0.reply().joined_headers().into_py_dict(py)
    }

    /// The reply body as read (empty when the reply was opened: see `reply`).
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.reply().body)
    }

    /// True when the request asked for the reply to be opened and the status was 200.
    #[getter]
    fn opened(&self) -> bool {
        self.0.has_opened()
    }

    /// The opened reply parsed from JSON: `(value, processed_at, algorithm)`, once.
    ///
    /// Raises SecurityError or EnvelopeError when the reply could not be opened.
    fn reply<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
        let opened = (self.0.take_opened())
            .ok_or_else(|| PyRuntimeError::new_err("no opened reply (or it was taken)"))?
            .map_err(CoreError)?;
        opened_to_py(py, opened)
    }

    fn __repr__(&self) -> String {
        let reply = self.0.reply();
        format!(
            "<Reply status={} sent={} received={}>",
            reply.status, reply.sent_bytes, reply.received_bytes
        )
    }
}
