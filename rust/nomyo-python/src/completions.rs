//! `Completions`: where the I/O workers put finished requests for an asyncio event loop.
//!
//! The queue and its wake-up descriptor are `nomyo_core::completions::Queue`: a worker
//! appends the outcome and, when the queue was empty, makes `fileno()` readable; the loop
//! (`loop.add_reader(completions.fileno(), ...)`) then calls `drain()`, which turns the
//! outcomes into Python objects. Workers never wait for the GIL.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use nomyo_core::completions::Queue;
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::reply::{outcome_to_py, Outcome};

/// Append `(token, ok, Reply | exception)` for one request to `list`, leaving `outcome`
/// as it was, so that it can be handed over again if this fails. PyO3 panics where CPython
/// cannot allocate an object it assumed it could; that counts as a failure here too, and so
/// does a request's exception that came out as a MemoryError while it was being made.
fn handed_over(list: &Bound<'_, PyList>, token: u64, outcome: &Outcome) -> PyResult<()> {
    let py = list.py();
    let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| -> PyResult<()> {
        let (ok, value) = outcome_to_py(py, outcome.clone())?;
        if !ok && value.bind(py).is_instance_of::<PyMemoryError>() {
            return Err(PyErr::from_value(value.into_bound(py))); // not the request's own error
        }
        list.append((token, ok, value))
    }));
    attempt.unwrap_or_else(|_| {
        Err(PyMemoryError::new_err(
            "could not hand over a finished request",
        ))
    })
}

/// Finished requests for one event loop (see the module documentation).
#[pyclass(frozen, name = "Completions", module = "nomyo._core")]
pub struct PyCompletions {
    pub(crate) queue: Arc<Queue<Outcome>>,
}

#[pymethods]
impl PyCompletions {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(PyCompletions {
            queue: Arc::new(Queue::new()?),
        })
    }

    /// The descriptor that becomes readable when requests have finished.
    fn fileno(&self) -> i32 {
        self.queue.fd()
    }

    /// The requests finished since the last call: `[(token, ok, Reply | exception)]`.
    ///
    /// Nothing is lost when Python runs out of memory on the way: a request leaves the queue
    /// only once it is in the returned list. Those that could not be handed over stay
    /// queued, in order, and the loop is woken again to come back for them; when not even
    /// the first could, the error is raised (the event loop reports it and calls again).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Before the wake bytes are read: if this fails the descriptor stays readable.
        let list = std::panic::catch_unwind(|| PyList::new(py, std::iter::empty::<Py<PyAny>>()))
            .unwrap_or_else(|_| Err(PyMemoryError::new_err(())))?;
        let refused = self
            .queue
            .hand_over(|token, item| handed_over(&list, token, item))?;
        match refused {
            Some((0, err)) => Err(err), // not even the first: all are queued again
            _ => Ok(list),
        }
    }

    fn __repr__(&self) -> String {
        format!("<Completions fd={}>", self.queue.fd())
    }
}
