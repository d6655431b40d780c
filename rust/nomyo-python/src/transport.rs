//! `Transport`: the native HTTP/1.1 and HTTP/2 client (direct or through a forward proxy).
//! One request runs as one task on the process's Tokio runtime, without the GIL: sealing (RSA-OAEP wrap, AES-GCM), the exchange, and
//! opening the reply (RSA-OAEP unwrap, AES-GCM) into locked memory. Python only turns the
//! payload into JSON before and the opened JSON into objects after (`Exchange.reply`).
//! A finished request reaches asyncio through `Completions` (no GIL on the workers) or, where
//! a loop cannot watch a descriptor, through a callback run on a blocking-pool thread.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nomyo_core::envelope::{self, Opened};
use nomyo_core::http::{self, Client, HttpError, Method, Timeouts};
use nomyo_core::keys::{PrivateKey, PublicKey};
use nomyo_core::secret::{self, Policy, SecretBuf};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::task::AbortHandle;

#[cfg(unix)]
use crate::completions::{PyCompletions, Queue};
use crate::envelope::opened_to_py;
use crate::errors::{self, IntoPy};
use crate::json;
use crate::keys::{PyPrivateKey, PyPublicKey};
use crate::runtime;

enum Body {
    Empty,
    Raw(Vec<u8>),
    Seal(SecretBuf, PublicKey),
}

struct Job {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
    open: Option<(Arc<PrivateKey>, usize)>,
    ok_limit: usize,
    error_limit: usize,
    timeouts: Timeouts,
    body_deadline: Option<Duration>,
    /// The forward proxy (`http://[user:password@]host:port`), or None: direct.
    proxy: Option<String>,
    /// The transport's secure-memory policy, for the buffers sealing and opening make.
    policy: Policy,
}

#[derive(Clone)]
pub(crate) enum Failure {
    Http(HttpError),
    Core(nomyo_core::Error),
}

impl Failure {
    pub(crate) fn into_py(self) -> PyErr {
        match self {
            Failure::Http(e) => errors::http_to_py(e),
            Failure::Core(e) => errors::to_py(e),
        }
    }
}

/// What a finished request holds (shared, so that a Python object for it can be made again
/// if making one failed: see `Completions.drain`).
pub(crate) struct ExchangeData {
    status: u16,
    sent_bytes: usize,
    received_bytes: usize,
    seal_seconds: f64,
    exchange_seconds: f64,
    open_seconds: f64,
    /// SHA-256 of the request body as sent and of the reply body as received.
    digests: ([u8; 32], [u8; 32]),
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    opened: Mutex<Option<nomyo_core::Result<Opened>>>,
}

/// One finished request: status, headers and either the body or the opened reply.
#[pyclass(frozen, name = "Exchange", module = "nomyo._core")]
#[derive(Clone)]
pub(crate) struct PyExchange(Arc<ExchangeData>);

impl std::ops::Deref for PyExchange {
    type Target = ExchangeData;

    fn deref(&self) -> &ExchangeData {
        &self.0
    }
}

#[pymethods]
impl PyExchange {
    #[getter]
    fn status(&self) -> u16 {
        self.0.status
    }

    /// Bytes sent (the request body).
    #[getter]
    fn sent_bytes(&self) -> usize {
        self.0.sent_bytes
    }

    /// Bytes received (the reply body).
    #[getter]
    fn received_bytes(&self) -> usize {
        self.0.received_bytes
    }

    #[getter]
    fn seal_seconds(&self) -> f64 {
        self.0.seal_seconds
    }

    #[getter]
    fn exchange_seconds(&self) -> f64 {
        self.0.exchange_seconds
    }

    #[getter]
    fn open_seconds(&self) -> f64 {
        self.0.open_seconds
    }

    /// SHA-256 of the (sealed) request body as sent.
    #[getter]
    fn request_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.digests.0)
    }

    /// SHA-256 of the (sealed) reply body as received.
    #[getter]
    fn reply_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.digests.1)
    }

    /// The reply headers: lower-case names, repeated headers joined with ", ".
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in &self.headers {
            let joined = match dict.get_item(name)? {
                Some(old) => format!("{}, {value}", old.extract::<String>()?),
                None => value.clone(),
            };
            dict.set_item(name, joined)?;
        }
        Ok(dict)
    }

    /// The reply body as read (empty when the reply was opened: see `reply`).
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.body)
    }

    /// True when the request asked for the reply to be opened and the status was 200.
    #[getter]
    fn opened(&self) -> bool {
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The opened reply parsed from JSON: `(value, processed_at, algorithm)`, once.
    ///
    /// Raises SecurityError or EnvelopeError when the reply could not be opened.
    fn reply<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str)> {
        let taken = self.opened.lock().unwrap_or_else(|e| e.into_inner()).take();
        let opened = taken
            .ok_or_else(|| PyRuntimeError::new_err("no opened reply (or it was taken)"))?
            .py_err()?;
        opened_to_py(py, opened)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Exchange status={} sent={} received={}>",
            self.status, self.sent_bytes, self.received_bytes
        )
    }
}

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

async fn run(client: Arc<Client>, job: Job) -> Result<PyExchange, Failure> {
    let started = Instant::now();
    let body = match job.body {
        Body::Empty => Vec::new(),
        Body::Raw(bytes) => bytes,
        Body::Seal(mut plaintext, key) => {
            let mut out = vec![0u8; envelope::sealed_len(plaintext.len(), &key, None)];
            let sealed = secret::with_policy(job.policy, || {
                envelope::seal_in_place_into(&mut plaintext, &key, None, &mut out)
            });
            secret::scrub();
            sealed.map_err(Failure::Core)?;
            out
        }
    };
    let sent_bytes = body.len();
    let request_sha256 = nomyo_core::tpm::sha256(&body);
    let sealed = Instant::now();
    let response = client
        .send(http::Exchange {
            method: job.method,
            url: &job.url,
            headers: &job.headers,
            body: body.into(),
            ok_limit: job.ok_limit,
            error_limit: job.error_limit,
            timeouts: job.timeouts,
            body_deadline: job.body_deadline,
            proxy: job.proxy.as_deref(),
        })
        .await
        .map_err(Failure::Http)?;
    let exchanged = Instant::now();
    let received_bytes = response.body.len();
    let digests = (request_sha256, nomyo_core::tpm::sha256(&response.body));
    let (body, opened) = match job.open {
        Some((key, max_size)) if response.status == 200 => (
            Vec::new(),
            Some({
                let opened = secret::with_policy(job.policy, || {
                    envelope::open(&response.body, &key, max_size)
                });
                secret::scrub();
                opened
            }),
        ),
        _ => (response.body, None),
    };
    Ok(PyExchange(Arc::new(ExchangeData {
        status: response.status,
        sent_bytes,
        received_bytes,
        seal_seconds: (sealed - started).as_secs_f64(),
        exchange_seconds: (exchanged - sealed).as_secs_f64(),
        open_seconds: exchanged.elapsed().as_secs_f64(),
        digests,
        headers: response.headers,
        body,
        opened: Mutex::new(opened),
    })))
}

fn seconds(value: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| PyValueError::new_err(format!("{what} must be >= 0 seconds")))
        })
        .transpose()
}

type TimeoutTuple = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

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

    async fn deliver(self, result: Result<PyExchange, Failure>) {
        match self {
            #[cfg(unix)]
            Sink::Queue(queue, token) => queue.push(token, result),
            Sink::Call(done) => {
                // Waiting for the GIL happens on a blocking-pool thread, never on an I/O
                // worker: the connections and timers of other requests keep running.
                let _ = tokio::task::spawn_blocking(move || {
                    // Not attachable means the interpreter is shutting down: nobody waits.
                    Python::try_attach(|py| {
                        let (ok, value) = match result.map(|ex| Py::new(py, ex)) {
                            Ok(Ok(exchange)) => (true, exchange.into_any()),
                            Ok(Err(err)) => (false, err.into_value(py).into_any()),
                            Err(failure) => (false, failure.into_py().into_value(py).into_any()),
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

/// The native HTTP/1.1 + HTTP/2 transport: verified TLS (rustls) with the given trust anchors, a
/// keep-alive pool, and requests that seal and open envelopes without the GIL.
#[pyclass(frozen, name = "Transport", module = "nomyo._core")]
pub struct PyTransport {
    client: Arc<Client>,
    policy: Policy,
}

impl PyTransport {
    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        method: &str,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<&[u8]>,
        seal: Option<&(Bound<'_, PyAny>, Bound<'_, PyPublicKey>)>,
        open: Option<&(Bound<'_, PyPrivateKey>, usize)>,
        ok_limit: usize,
        error_limit: usize,
        timeouts: TimeoutTuple,
        body_deadline: Option<f64>,
        proxy: Option<String>,
    ) -> PyResult<Job> {
        let method = match method {
            "GET" => Method::GET,
            "POST" => Method::POST,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported method {other:?}"
                )))
            }
        };
        let body = match (body, seal) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("pass either body or seal, not both"))
            }
            (Some(raw), None) => Body::Raw(raw.to_vec()),
            (None, Some((payload, key))) => {
                // Serialized here (before anything is sent) under the transport's policy.
                let plaintext = secret::with_policy(self.policy, || json::dumps(payload));
                secret::scrub();
                Body::Seal(plaintext?, key.get().inner.clone())
            }
            (None, None) => Body::Empty,
        };
        Ok(Job {
            method,
            url,
            headers,
            body,
            open: open.map(|(key, max)| (key.get().inner.clone(), *max)),
            ok_limit,
            error_limit,
            timeouts: Timeouts {
                connect: seconds(timeouts.0, "connect timeout")?,
                read: seconds(timeouts.1, "read timeout")?,
                write: seconds(timeouts.2, "write timeout")?,
                pool: seconds(timeouts.3, "pool timeout")?,
            },
            body_deadline: seconds(body_deadline, "body deadline")?,
            proxy,
            policy: self.policy,
        })
    }
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
            .map_err(errors::http_to_py)?;
        Ok(PyTransport {
            client: Arc::new(Client::new(config, max_connections, max_idle, keepalive)),
            policy,
        })
    }

    /// Start a request. When it ends, its outcome (an `Exchange`, or the exception to raise)
    /// goes to `done`: a `Completions` queue under `token`, or a callable `done(ok, value)`
    /// called from a worker thread. Returns a `Pending` to cancel it.
    #[pyo3(signature = (
        done, method, url, headers, *, token = 0, body = None, seal = None, open = None,
        ok_limit, error_limit, timeouts, body_deadline = None, proxy = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        done: Bound<'_, PyAny>,
        method: &str,
        url: String,
        headers: Vec<(String, String)>,
        token: u64,
        body: Option<&[u8]>,
        seal: Option<(Bound<'_, PyAny>, Bound<'_, PyPublicKey>)>,
        open: Option<(Bound<'_, PyPrivateKey>, usize)>,
        ok_limit: usize,
        error_limit: usize,
        timeouts: TimeoutTuple,
        body_deadline: Option<f64>,
        proxy: Option<String>,
    ) -> PyResult<PyPending> {
        let job = self.job(
            method,
            url,
            headers,
            body,
            seal.as_ref(),
            open.as_ref(),
            ok_limit,
            error_limit,
            timeouts,
            body_deadline,
            proxy,
        )?;
        let client = self.client.clone();
        let sink = Sink::new(done, token);
        let task = runtime::handle()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the I/O runtime: {e}")))?
            .spawn(async move { sink.deliver(run(client, job).await).await });
        Ok(PyPending {
            abort: task.abort_handle(),
        })
    }

    /// The blocking twin of `start`: waits without the GIL (Ctrl-C still interrupts).
    #[pyo3(signature = (
        method, url, headers, *, body = None, seal = None, open = None,
        ok_limit, error_limit, timeouts, body_deadline = None, proxy = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        method: &str,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<&[u8]>,
        seal: Option<(Bound<'_, PyAny>, Bound<'_, PyPublicKey>)>,
        open: Option<(Bound<'_, PyPrivateKey>, usize)>,
        ok_limit: usize,
        error_limit: usize,
        timeouts: TimeoutTuple,
        body_deadline: Option<f64>,
        proxy: Option<String>,
    ) -> PyResult<PyExchange> {
        let job = self.job(
            method,
            url,
            headers,
            body,
            seal.as_ref(),
            open.as_ref(),
            ok_limit,
            error_limit,
            timeouts,
            body_deadline,
            proxy,
        )?;
        let client = self.client.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let task = runtime::handle()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the I/O runtime: {e}")))?
            .spawn(async move {
                let _ = tx.send(run(client, job).await);
            });
        let mut rx = rx;
        loop {
            let (back, outcome) = py.detach(move || {
                let outcome = rx.recv_timeout(Duration::from_millis(100));
                (rx, outcome)
            });
            rx = back;
            match outcome {
                Ok(result) => return result.map_err(Failure::into_py),
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
