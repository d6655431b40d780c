//! One sealed exchange: seal the request to the server's key, send it, open the reply with the
//! client's key, with the timings of each step and the SHA-256 of both sealed bodies.
//!
//! This is the protocol's round trip without a language binding: `nomyo-python` converts one
//! Python request into a [`Request`], runs [`exchange`] on its I/O runtime without the GIL,
//! and hands the [`Reply`] back. Plaintext lives in [`SecretBuf`]s (under the request's
//! secure-memory [`Policy`]) and is scrubbed from registers and stack after each secret step;
//! only ciphertext reaches the HTTP engine.
//!
//! The two digests are what a receipt of the exchange can be built on: `request_sha256` of the
//! sealed request body exactly as sent, `reply_sha256` of the reply body exactly as received
//! (before it is opened).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;

use crate::envelope::{self, Opened};
use crate::error::Result;
use crate::http::{self, Client, Method, Timeouts};
use crate::keys::{PrivateKey, PublicKey};
use crate::secret::{self, Policy, SecretBuf};

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
