//! `Transport`: the native HTTP/1.1 and HTTP/2 client (direct or through a forward proxy).
//!
//! One request runs as one task on the process's Tokio runtime, without the GIL:
//! [`nomyo_core::sealed::start`] seals it, sends it and opens the reply into locked memory.
//! Python only turns the payload into JSON before (see `request`) and the opened JSON into
//! objects after (`Reply.reply`). A finished request reaches asyncio through `Completions`
//! (no GIL on the workers) or, where a loop cannot watch a descriptor, through a callback run
//! on a blocking-pool thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nomyo_core::http::{self, Client};
use nomyo_core::sealed::{self, Deliver, Waiting};
use nomyo_core::secret::Policy;
use pyo3::prelude::*;
use tokio::task::AbortHandle;

#[cfg(unix)]
use crate::completions::PyCompletions;
use crate::errors::CoreError;
use crate::reply::{outcome_to_py, Outcome, PyReply};
use crate::request::PyRequest;

/// A request in flight; `cancel()` stops it (the connection it used is closed).
#[pyclass(frozen, name = "Pending", module = "nomyo._core")]
pub struct PyPending {
    abort: AbortHandle,
}

#[pymethods]
impl PyPending {
    fn cancel(&self) {
        self.abort.abort();
    }

    #[getter]
    fn done(&self) -> bool {
        self.abort.is_finished()
    }
}

/// Call `done(ok, value)` with `outcome` (on a blocking-pool thread: waiting for the GIL
/// never holds up an I/O worker).
fn call_back(done: Py<PyAny>, outcome: Outcome) {
    // Not attachable means the interpreter is shutting down: nobody waits.
    Python::try_attach(|py| {
        let (ok, value) =
            outcome_to_py(py, outcome).unwrap_or_else(|err| (false, err.into_value(py).into_any()));
        // An error here means the event loop has closed: nobody is waiting.
        let _ = done.call1(py, (ok, value));
        drop(done);
    });
}

/// The native HTTP/1.1 + HTTP/2 transport: verified TLS (rustls) with the given trust anchors, a
/// keep-alive pool, and requests that seal and open envelopes without the GIL.
#[pyclass(frozen, name = "Transport", module = "nomyo._core")]
pub struct PyTransport {
    client: Arc<Client>,
    policy: Policy,
}

#[pymethods]
impl PyTransport {
    #[new]
    #[pyo3(signature = (
        ca_paths, *, max_connections = 100, max_idle = 32, keepalive = 5.0,
        secure_memory = "best_effort"
    ))]
    fn new(
        py: Python<'_>,
        ca_paths: Vec<PathBuf>,
        max_connections: usize,
        max_idle: usize,
        keepalive: f64,
        secure_memory: &str,
    ) -> PyResult<Self> {
        let policy = crate::memory::policy(secure_memory)?;
        let keepalive = http::seconds(Some(keepalive), "keepalive").map_err(CoreError)?;
        let config = py
            .detach(|| http::client_config(&ca_paths))
            .map_err(CoreError)?;
        Ok(PyTransport {
            client: Arc::new(Client::new(
                config,
                max_connections,
                max_idle,
                keepalive.unwrap_or_default(),
            )),
            policy,
        })
    }

    /// Start `request`. When it ends, its outcome (a `Reply`, or the exception to raise) goes
    /// to `done`: a `Completions` queue under `token`, or a callable `done(ok, value)` called
    /// from a worker thread. Returns a `Pending` to cancel it.
    #[pyo3(signature = (done, request, *, token = 0))]
    fn start(
        &self,
        done: Bound<'_, PyAny>,
        request: PyRequest<'_>,
        token: u64,
    ) -> PyResult<PyPending> {
        let (client, request) = (self.client.clone(), request.into_core(self.policy)?);
        #[cfg(unix)]
        if let Ok(completions) = done.cast::<PyCompletions>() {
            let queue = completions.get().queue.clone();
            let push = move |outcome: nomyo_core::Result<_>| {
                queue.push(token, outcome.map(PyReply::from));
            };
            let started = sealed::start(client, request, Deliver::OnWorker, push);
            return Ok(PyPending {
                abort: started.map_err(CoreError)?,
            });
        }
        let _ = token; // only a `Completions` queue files outcomes under it
        let done = done.unbind();
        let call = move |outcome: nomyo_core::Result<_>| {
            call_back(done, outcome.map(PyReply::from));
        };
        let started = sealed::start(client, request, Deliver::OnBlockingThread, call);
        Ok(PyPending {
            abort: started.map_err(CoreError)?,
        })
    }

    /// The blocking twin of `start`: waits without the GIL (Ctrl-C still interrupts).
    fn send(&self, py: Python<'_>, request: PyRequest<'_>) -> PyResult<PyReply> {
        let request = request.into_core(self.policy)?;
        let waiting = Waiting::start(self.client.clone(), request).map_err(CoreError)?;
        loop {
            if let Some(outcome) = py.detach(|| waiting.wait(Duration::from_millis(100))) {
                return Ok(outcome.map(PyReply::from).map_err(CoreError)?);
            }
            if let Err(interrupted) = py.check_signals() {
                waiting.abort();
                return Err(interrupted);
            }
        }
    }

    /// Close idle keep-alive connections (requests in flight are not affected).
    fn close_idle(&self) {
        self.client.close_idle();
    }

    /// Connections currently open (with no request in flight: the idle keep-alive ones).
    #[getter]
    fn idle_connections(&self) -> usize {
        self.client.idle_connections()
    }
}
