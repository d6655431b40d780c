//! One sealed exchange: seal the request to the server's key, send it, open the reply with the
//! client's key, with the timings of each step and the SHA-256 of both sealed bodies.
//!
//! This is the protocol's round trip without a language binding: `nomyo-python` converts one
//! Python request into a [`Request`], starts it on the process's runtime without the GIL
//! ([`start`], [`Waiting`]) and hands the [`Reply`] back (as a [`Shared`] one). Plaintext
//! lives in [`SecretBuf`]s (under the request's secure-memory [`Policy`]) and is scrubbed from
//! registers and stack after each secret step; only ciphertext reaches the HTTP engine.
//!
//! The two digests are what a receipt of the exchange can be built on: `request_sha256` of the
//! sealed request body exactly as sent, `reply_sha256` of the reply body exactly as received
//! (before it is opened).
//!
//! [`start`] runs one exchange on the process's runtime ([`crate::runtime`]) and hands its
//! outcome to a callback; [`Waiting`] is the same for a caller that waits on its own thread.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;

use crate::envelope::{self, Opened};
use crate::error::{Error, Result};
use crate::http::{self, Client, Method, Timeouts};
use crate::keys::{PrivateKey, PublicKey};
use crate::runtime;
use crate::secret::{self, Policy, SecretBuf};
use tokio::task::AbortHandle;

/// What a request carries.
pub enum Body {
    /// No body (the server-key `GET`).
    Empty,
    /// Bytes sent as they are.
    Raw(Vec<u8>),
    /// Plaintext sealed to `recipient` before it is sent (the buffer is sealed in place).
    Sealed {
        plaintext: SecretBuf,
        recipient: PublicKey,
    },
}

/// How to open a 200 reply: with `key`, refusing plaintext over `max_size` bytes.
pub struct Open {
    pub key: Arc<PrivateKey>,
    pub max_size: usize,
}

/// One request of the protocol (its `Debug` shows neither headers nor the proxy URL).
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Open a 200 reply (None: keep the body as it came).
    pub open: Option<Open>,
    /// Largest body accepted with status 200.
    pub ok_limit: usize,
    /// Largest body kept with another status.
    pub error_limit: usize,
    pub timeouts: Timeouts,
    /// The whole reply body must have arrived this long after the head.
    pub body_deadline: Option<Duration>,
    /// The forward proxy (`http://[user:password@]host:port`), or None: direct.
    pub proxy: Option<String>,
    /// The secure-memory policy of the buffers sealing and opening make.
    pub policy: Policy,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("sealed", &matches!(self.body, Body::Sealed { .. }))
            .field("opens", &self.open.is_some())
            .field("proxied", &self.proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// How long each step took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub seal: Duration,
    pub exchange: Duration,
    pub open: Duration,
}

/// A finished exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body as read; empty when the reply was opened (see `opened`).
    pub body: Vec<u8>,
    /// The opened reply (or why it could not be opened), when the request asked for it and
    /// the status was 200.
    pub opened: Option<Result<Opened>>,
    /// Bytes of the request body as sent.
    pub sent_bytes: usize,
    /// Bytes of the reply body as received.
    pub received_bytes: usize,
    pub timings: Timings,
    /// SHA-256 of the request body exactly as sent (the sealed envelope).
    pub request_sha256: [u8; 32],
    /// SHA-256 of the reply body exactly as received (before opening).
    pub reply_sha256: [u8; 32],
}

impl Reply {
    /// The headers with each name once, in the order first seen; the values of a repeated
    /// header joined with ", " (names are lower-case already).
    pub fn joined_headers(&self) -> Vec<(String, String)> {
        let mut joined: Vec<(String, String)> = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            match joined.iter_mut().find(|(seen, _)| seen == name) {
                Some((_, values)) => {
                    values.push_str(", ");
                    values.push_str(value);
                }
                None => joined.push((name.clone(), value.clone())),
            }
        }
        joined
    }
}

/// A finished exchange with several owners (a binding may have to hand one over more than
/// once), whose opened reply goes to the first that takes it.
#[derive(Debug, Clone)]
pub struct Shared(Arc<(Reply, Mutex<Option<Result<Opened>>>)>);

impl From<Reply> for Shared {
    fn from(mut reply: Reply) -> Self {
        let opened = Mutex::new(reply.opened.take());
        Shared(Arc::new((reply, opened)))
    }
}

impl Shared {
    /// The reply, without its opened reply (see [`Shared::take_opened`]).
    pub fn reply(&self) -> &Reply {
        &self.0 .0
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Option<Result<Opened>>> {
        self.0 .1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the opened reply (or why it could not be opened) is there to be taken.
    pub fn has_opened(&self) -> bool {
        self.opened().is_some()
    }

    /// The opened reply (or why it could not be opened), once.
    pub fn take_opened(&self) -> Option<Result<Opened>> {
        self.opened().take()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Seal `body` (if it asks for it) under `policy`; the bytes to send.
fn seal(body: Body, policy: Policy) -> Result<Vec<u8>> {
    match body {
        Body::Empty => Ok(Vec::new()),
        Body::Raw(bytes) => Ok(bytes),
        Body::Sealed {
            mut plaintext,
            recipient,
        } => {
            let mut out = vec![0u8; envelope::sealed_len(plaintext.len(), &recipient, None)];
            secret::secret_step(policy, || {
                envelope::seal_in_place_into(&mut plaintext, &recipient, None, &mut out)
            })
            .map(|()| out)
        }
    }
}

/// Open `body` with `open` under `policy`.
fn open(body: &[u8], open: &Open, policy: Policy) -> Result<Opened> {
    secret::secret_step(policy, || envelope::open(body, &open.key, open.max_size))
}

/// Seal, send and (for a 200 that asked for it) open one request on `client`.
///
/// A failure to seal or to send is the error; a failure to open is kept in
/// [`Reply::opened`], so that the status, headers and digests of the reply stay available.
pub async fn exchange(client: &Client, request: Request) -> Result<Reply> {
    let started = Instant::now();
    let body = seal(request.body, request.policy)?;
    let request_sha256 = sha256(&body);
    let sent_bytes = body.len();
    let sealed = Instant::now();
    let response = client
        .send(http::Request {
            method: request.method,
            url: &request.url,
            headers: &request.headers,
            body: body.into(),
            ok_limit: request.ok_limit,
            error_limit: request.error_limit,
            timeouts: request.timeouts,
            body_deadline: request.body_deadline,
            proxy: request.proxy.as_deref(),
        })
        .await?;
    let exchanged = Instant::now();
    let reply_sha256 = sha256(&response.body);
    let received_bytes = response.body.len();
    let (body, opened) = match &request.open {
        Some(how) if response.status == 200 => {
            (Vec::new(), Some(open(&response.body, how, request.policy)))
        }
        _ => (response.body, None),
    };
    Ok(Reply {
        status: response.status,
        headers: response.headers,
        body,
        opened,
        sent_bytes,
        received_bytes,
        timings: Timings {
            seal: sealed - started,
            exchange: exchanged - sealed,
            open: exchanged.elapsed(),
        },
        request_sha256,
        reply_sha256,
    })
}

/// Where [`start`] hands over the outcome of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    /// On the I/O worker that finished it: the callback must return at once.
    OnWorker,
    /// On a blocking-pool thread: the callback may wait (for example for an interpreter
    /// lock) while the connections and timers of other requests keep running.
    OnBlockingThread,
}

/// Run [`exchange`] on the process's runtime and hand its outcome to `deliver` (as `on`
/// says). Aborting the returned handle cancels it (the connection it used is closed) and
/// nothing is delivered, unless the outcome is already on its way. [`Error::Io`] when the
/// runtime cannot be started.
pub fn start<F>(
    client: Arc<Client>,
    request: Request,
    on: Deliver,
    deliver: F,
) -> Result<AbortHandle>
where
    F: FnOnce(Result<Reply>) + Send + 'static,
{
    let started = runtime::spawn(async move {
        let outcome = exchange(&client, request).await;
        match on {
            Deliver::OnWorker => deliver(outcome),
            Deliver::OnBlockingThread => {
                let _ = tokio::task::spawn_blocking(move || deliver(outcome)).await;
            }
        }
    });
    started.map_err(|e| Error::io("cannot start the I/O runtime", &e))
}

/// An exchange started for a caller that waits for it on its own thread, in slices (so that
/// it can do something else between them, such as checking for an interrupt).
pub struct Waiting {
    outcome: Mutex<mpsc::Receiver<Result<Reply>>>,
    task: AbortHandle,
}

impl Waiting {
    /// Start `request` on `client` (see [`start`]).
    pub fn start(client: Arc<Client>, request: Request) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(1);
        let task = start(client, request, Deliver::OnWorker, move |outcome| {
            let _ = tx.send(outcome);
        })?;
        Ok(Waiting {
            outcome: Mutex::new(rx),
            task,
        })
    }

    /// Wait up to `timeout` for the outcome: `None` while the exchange is still running. A
    /// task that ended without an outcome (aborted, or panicked) is [`Error::Internal`].
    pub fn wait(&self, timeout: Duration) -> Option<Result<Reply>> {
        let outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        match outcome.recv_timeout(timeout) {
            Ok(outcome) => Some(outcome),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(Error::Internal(
                "the request task ended without an outcome",
            ))),
        }
    }

    /// Cancel the exchange (the connection it used is closed).
    pub fn abort(&self) {
        self.task.abort();
    }
}
