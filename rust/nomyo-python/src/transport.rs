//! `Transport`: the native HTTP/1.1 and HTTP/2 client (direct or through a forward proxy).
//!
//! One request runs as one task on the process's Tokio runtime, without the GIL:
//! [`nomyo_core::sealed::exchange`] seals it, sends it and opens the reply into locked
//! memory. Python only turns the payload into JSON before (see `request`) and the opened JSON
//! into objects after (`Reply.reply`). A finished request reaches asyncio through
//! `Completions` (no GIL on the workers) or, where a loop cannot watch a descriptor, through a
//! callback run on a blocking-pool thread.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nomyo_core::http::{self, Client};
use nomyo_core::sealed;
use nomyo_core::secret::Policy;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::task::AbortHandle;

#[cfg(unix)]
use crate::completions::{PyCompletions, Queue};
use crate::errors::CoreError;
use crate::reply::{Outcome, PyReply};
use crate::request::{seconds, PyRequest};
use crate::runtime;

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

/// Where a finished request goes.
enum Sink {
    /// A Python callable `done(ok, value)`, called on a blocking-pool thread.
    Call(Py<PyAny>),
    /// A `Completions` queue, under this token.
    #[cfg(unix)]
    Queue(Arc<Queue>, u64),
}

impl Sink {
    fn new(done: Bound<'_, PyAny>, token: u64) -> Self {
        #[cfg(unix)]
        if let Ok(completions) = done.cast::<PyCompletions>() {
            return Sink::Queue(completions.get().queue.clone(), token);
        }
        let _ = token;
        Sink::Call(done.unbind())
    }

    async fn deliver(self, outcome: Outcome) {
        match self {
            #[cfg(unix)]
            Sink::Queue(queue, token) => queue.push(token, outcome),
            Sink::Call(done) => {
                // Waiting for the GIL happens on a blocking-pool thread, never on an I/O
                // worker: the connections and timers of other requests keep running.
                let _ = tokio::task::spawn_blocking(move || {
                    // Not attachable means the interpreter is shutting down: nobody waits.
                    Python::try_attach(|py| {
                        let (ok, value) = match outcome.map(|reply| Py::new(py, reply)) {
                            Ok(Ok(reply)) => (true, reply.into_any()),
                            Ok(Err(err)) => (false, err.into_value(py).into_any()),
                            Err(err) => {
                                (false, PyErr::from(CoreError(err)).into_value(py).into_any())
                            }
                        };
                        // An error here means the event loop has closed: nobody is waiting.
                        let _ = done.call1(py, (ok, value));
                        drop(done);
                    });
                })
                .await;
            }
        }
    }
}

async fn run(client: Arc<Client>, request: sealed::Request) -> Outcome {
    sealed::exchange(&client, request).await.map(PyReply::from)
}

/// The native HTTP/1.1 + HTTP/2 transport: verified TLS (rustls) with the given trust anchors, a
/// keep-alive pool, and requests that seal and open envelopes without the GIL.
#[pyclass(frozen, name = "Transport", module = "nomyo._core")]
pub struct PyTransport {
    client: Arc<Client>,
    policy: Policy,
}

fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> PyResult<AbortHandle> {
    let handle = runtime::handle()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the I/O runtime: {e}")))?;
    Ok(handle.spawn(task).abort_handle())
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
        let keepalive = seconds(Some(keepalive), "keepalive")?.unwrap_or_default();
        let config = py
            .detach(|| http::client_config(&ca_paths))
            .map_err(CoreError)?;
        Ok(PyTransport {
            client: Arc::new(Client::new(config, max_connections, max_idle, keepalive)),
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
        let request = request.into_core(self.policy)?;
        let client = self.client.clone();
        let sink = Sink::new(done, token);
        let abort = spawn(async move { sink.deliver(run(client, request).await).await })?;
        Ok(PyPending { abort })
    }

    /// The blocking twin of `start`: waits without the GIL (Ctrl-C still interrupts).
    fn send(&self, py: Python<'_>, request: PyRequest<'_>) -> PyResult<PyReply> {
        let request = request.into_core(self.policy)?;
        let client = self.client.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let task = spawn(async move {
            let _ = tx.send(run(client, request).await);
        })?;
        let mut rx = rx;
        loop {
            let (back, outcome) = py.detach(move || {
                let outcome = rx.recv_timeout(Duration::from_millis(100));
                (rx, outcome)
            });
            rx = back;
            match outcome {
                Ok(outcome) => return Ok(outcome.map_err(CoreError)?),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(interrupted) = py.check_signals() {
                        task.abort();
                        return Err(interrupted);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(
                        "the request task ended unexpectedly",
                    ))
                }
            }
        }
    }

    /// The secure-memory policy of this transport's secret buffers.
    #[getter]
    fn secure_memory(&self) -> &'static str {
        self.policy.as_str()
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
