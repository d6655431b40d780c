//! The pooled HTTP client (hyper-util's client over hyper + rustls) for the protocol's two
//! requests.
//!
//! The secure-completion `POST` and the server-key `GET` are plain request/response
//! exchanges with bounded bodies. hyper-util keeps the connections (keep-alive per origin,
//! expired after an idle period; one shared HTTP/2 connection when the server's ALPN chose
//! `h2`); this module adds what the protocol needs around it: a cap on concurrent requests,
//! verified TLS only (see `tls`), forward proxies (see `connect`, `proxy`), no redirects, no
//! decompression, reply size caps (see `body`), and timeouts that name what timed out.
//! Bodies carry ciphertext only; plaintext never passes here.

mod body;
mod connect;
mod demand;
mod dns;
mod proxy;
mod tls;

pub use hyper::Method;
pub use proxy::Proxy;
pub use tls::client_config;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, PROXY_AUTHORIZATION};
use hyper::Uri;
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Cause, Error, Phase, Result};
use connect::{Attempt, Connector, Progress, ATTEMPT};
use demand::Demand;

/// Per-phase timeouts (`None`: wait forever), as in httpx: `connect` covers TCP and TLS,
/// `read` the wait for the reply head and every wait between body chunks (for a request
/// body over 1 MiB the head wait also gets `write`), `pool` the wait for a free slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub pool: Option<Duration>,
}

impl Timeouts {
    /// `(connect, read, write, pool)` in seconds, None for no limit (see [`seconds`]).
    pub fn from_seconds(
        (connect, read, write, pool): (Option<f64>, Option<f64>, Option<f64>, Option<f64>),
    ) -> Result<Self> {
        Ok(Timeouts {
            connect: seconds(connect, "connect timeout")?,
            read: seconds(read, "read timeout")?,
            write: seconds(write, "write timeout")?,
            pool: seconds(pool, "pool timeout")?,
        })
    }
}

/// `value` seconds as a duration (None stays None); a negative, NaN or too large value is an
/// [`Error::Value`] naming `what`.
pub fn seconds(value: Option<f64>, what: &str) -> Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| Error::Value(format!("{what} must be >= 0 seconds")))
        })
        .transpose()
}

/// The protocol's two methods by name, `GET` and `POST` (another: [`Error::Value`]).
pub fn method(name: &str) -> Result<Method> {
    match name {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        other => Err(Error::Value(format!("unsupported method {other:?}"))),
    }
}

/// One request to send (its `Debug` shows neither headers nor the proxy URL: both may hold
/// secrets).
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Bytes,
    /// Largest body accepted with status 200 (larger: [`Error::TooLarge`]).
    pub ok_limit: usize,
    /// Largest body kept with another status (larger: an empty body, nothing is raised).
    pub error_limit: usize,
    pub timeouts: Timeouts,
    /// The whole body must have arrived this long after the head (a slow-drip bound).
    pub body_deadline: Option<Duration>,
    /// The forward proxy to use (`http://[user:password@]host:port`), chosen by the caller.
    pub proxy: Option<&'a str>,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("body_len", &self.body.len())
            .field("proxied", &self.proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// A reply with its body read completely.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The read buffer, and so the largest reply head accepted (h11, under httpx, allows 16 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Request bodies above this size may take a while to write (see `Client::send`).
const LARGE_BODY: usize = 1 << 20;

/// The largest body limit a request may set (`ok_limit`, `error_limit`): 1 GiB.
pub const MAX_BODY_LIMIT: usize = 1 << 30;

/// How often a request waiting for its reply head looks again while a connection is still
/// being made (the connect timeout bounds that phase).
const RECHECK: Duration = Duration::from_millis(50);

type Engine = legacy::Client<Connector, Full<Bytes>>;

/// One way out: direct, or through one proxy; its own pool.
struct Route {
    engine: Engine,
    proxy: Option<Arc<Proxy>>,
    demand: Arc<Demand>,
}

/// Until the first request to an `https` origin has its reply head, further requests to it
/// wait, so that a burst shares the one HTTP/2 connection ALPN may give (HTTP/1.1 origins
/// then open connections as needed).
#[derive(Default)]
struct Gate {
    settled: AtomicBool,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// A held gate: opened for all once the reply head came ([`Held::settle`]); dropped
/// unsettled, the next request tries.
struct Held {
    gate: Arc<Gate>,
    _guard: OwnedMutexGuard<()>,
}

impl Held {
    fn settle(self) {
        self.gate.settled.store(true, Ordering::Release);
    }
}

struct State {
    pid: u32,
    routes: HashMap<Option<String>, Arc<Route>>,
    gates: HashMap<(Option<String>, String), Arc<Gate>>,
}

/// Where a request goes: its parsed URL and origin.
#[derive(Debug)]
struct Target {
    uri: Uri,
    https: bool,
    origin: String,
}

/// A pooled HTTP/1.1 + HTTP/2 client. Cheap to share (`Arc`); must be used inside a Tokio
/// runtime.
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    max_idle: usize,
    keepalive: Duration,
    open: Arc<AtomicUsize>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("max_idle", &self.max_idle)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

fn sum(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(a? + b.unwrap_or_default())
}

/// Our own error where the connector made one, else the text of the whole chain.
fn classify(err: &legacy::Error) -> Error {
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(ours) = current.downcast_ref::<Error>() {
            return ours.clone();
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
        source = current.source();
    }
    if err.is_connect() {
        // Not the connector's: the HTTP/1 or HTTP/2 handshake on a new connection broke.
        Error::Connect(Cause::Reset, format!("cannot connect: {text}"))
    } else {
        Error::Closed(format!("the connection broke: {text}"))
    }
}

/// Check the URL and the limits of `req` before anything is sent.
fn target(req: &Request<'_>) -> Result<Target> {
    if req.ok_limit > MAX_BODY_LIMIT || req.error_limit > MAX_BODY_LIMIT {
        return Err(Error::config(format!(
            "a reply body limit may be at most {MAX_BODY_LIMIT} bytes"
        )));
    }
    let uri: Uri = req.url.parse().map_err(|_| Error::config("invalid URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(Error::config("the URL must be http(s)")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Error::config("the URL has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Error::config("the URL must not carry credentials"));
    }
    let origin = format!("{}://{}", uri.scheme_str().unwrap_or_default(), authority);
    Ok(Target { uri, https, origin })
}

/// The hyper request for `req` to `uri` over `route` (a forwarded plain-`http` request
/// carries the proxy's credentials itself).
fn build(req: &Request<'_>, uri: Uri, route: &Route) -> Result<hyper::Request<Full<Bytes>>> {
    let forwarded = uri.scheme_str() == Some("http");
    let mut builder = hyper::Request::builder()
        .method(req.method.clone())
        .uri(uri);
    for (name, value) in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::config(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| Error::config(format!("invalid value for header {name}")))?;
        builder = builder.header(name, value);
    }
    if !req.body.is_empty() || req.method == Method::POST {
        builder = builder.header(CONTENT_LENGTH, req.body.len());
    }
    if forwarded {
        if let Some(auth) = route.proxy.as_ref().and_then(|p| p.authorization()) {
            builder = builder.header(PROXY_AUTHORIZATION, auth.clone());
        }
    }
    builder
        .body(Full::new(req.body.clone()))
        .map_err(|e| Error::config(format!("invalid request: {e}")))
}

/// How long the reply head may take: `read`, plus `write` for a large body (the request is
/// written before the head is awaited, and only a large body takes long to write).
fn head_timeout(req: &Request<'_>) -> Option<Duration> {
    if req.body.len() > LARGE_BODY {
        sum(req.timeouts.read, req.timeouts.write)
    } else {
        req.timeouts.read
    }
}

/// Wait for `pending` (the reply head). While a connection is being made the connect
/// timeout (in the connector) bounds the wait; after, `head_timeout` counts from the moment
/// the connection was made (or from `started`, when a kept-alive one was used).
async fn await_head<F, T>(
    pending: F,
    attempt: &Attempt,
    head_timeout: Option<Duration>,
    started: Instant,
) -> Result<T>
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(pending);
    let progress = || attempt.progress.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let deadline = {
            let progress = progress();
            if progress.connecting {
                Some((Instant::now() + RECHECK, true))
            } else {
                head_timeout.map(|t| (progress.connected.unwrap_or(started) + t, false))
            }
        };
        let Some((at, recheck)) = deadline else {
            return Ok(pending.as_mut().await);
        };
        match tokio::time::timeout_at(at, pending.as_mut()).await {
            Ok(outcome) => return Ok(outcome),
            Err(_) if recheck => continue,
            Err(_) => {
                let progress = progress();
                let moved = progress.connecting
                    || head_timeout.is_some_and(|t| {
                        progress.connected.unwrap_or(started) + t > Instant::now()
                    });
                if !moved {
                    return Err(Error::Timeout(Phase::Read));
                }
            }
        }
    }
}

impl Client {
    /// A client with at most `max_connections` requests in flight, keeping up to `max_idle`
    /// idle connections per origin for `keepalive`.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        max_connections: usize,
        max_idle: usize,
        keepalive: Duration,
    ) -> Self {
        Client {
            tls: tokio_rustls::TlsConnector::from(tls),
            state: Mutex::new(State {
                pid: std::process::id(),
                routes: HashMap::new(),
                gates: HashMap::new(),
            }),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            max_idle,
            keepalive,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Drop every idle connection (requests in flight finish normally).
    pub fn close_idle(&self) {
        let mut state = self.lock();
        state.routes.clear();
        state.gates.clear();
    }

    /// Connections currently open, over all origins (with no request in flight: the idle
    /// keep-alive ones).
    pub fn idle_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if state.pid != pid {
            // A forked child: the connections' tasks live in the parent's runtime threads.
            std::mem::forget(std::mem::take(&mut state.routes));
            state.gates.clear();
            state.pid = pid;
        }
        state
    }

    fn route(&self, proxy: Option<&str>) -> Result<Arc<Route>> {
        let key = proxy.map(str::to_owned);
        if let Some(route) = self.lock().routes.get(&key) {
            return Ok(route.clone());
        }
        let proxy = proxy.map(Proxy::parse).transpose()?.map(Arc::new);
        let demand = Arc::new(Demand::default());
        let connector = Connector::new(
            self.tls.clone(),
            proxy.clone(),
            self.open.clone(),
            demand.clone(),
        );
        let engine = legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.keepalive)
            .pool_max_idle_per_host(self.max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(MAX_HEAD)
            .http2_max_header_list_size(MAX_HEAD as u32)
            .retry_canceled_requests(true)
            .set_host(true)
            .build(connector);
        let route = Arc::new(Route {
            engine,
            proxy,
            demand,
        });
        Ok(self.lock().routes.entry(key).or_insert(route).clone())
    }

    /// A slot among `max_connections`, waiting at most `timeout`.
    async fn slot(&self, timeout: Option<Duration>) -> Result<OwnedSemaphorePermit> {
        let acquire = self.slots.clone().acquire_owned();
        let acquired = match timeout {
            None => acquire.await,
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| Error::Timeout(Phase::Pool))?,
        };
        acquired.map_err(|_| Error::Closed("the client is closed".into()))
    }

    /// The gate of an `https` origin, held when no request to it has had its head yet.
    async fn enter_gate(&self, proxy: Option<&str>, target: &Target) -> Option<Held> {
        if !target.https {
            return None;
        }
        let gate = self
            .lock()
            .gates
            .entry((proxy.map(str::to_owned), target.origin.clone()))
            .or_default()
            .clone();
        if gate.settled.load(Ordering::Acquire) {
            return None;
        }
        let guard = gate.lock.clone().lock_owned().await;
        (!gate.settled.load(Ordering::Acquire)).then_some(Held {
            gate,
            _guard: guard,
        })
    }

    /// Send one request and read its reply completely.
    ///
    /// A request that fails on a reused keep-alive connection before any byte of it was
    /// written (the server closed the idle connection) is sent again on a new connection.
    pub async fn send(&self, req: Request<'_>) -> Result<Response> {
        let target = target(&req)?;
        let route = self.route(req.proxy)?;
        let request = build(&req, target.uri.clone(), &route)?;
        let _slot = self.slot(req.timeouts.pool).await?;
        let _in_flight = route.demand.enter(&target.origin);
        let held = self.enter_gate(req.proxy, &target).await;
        let attempt = Attempt {
            timeout: req.timeouts.connect,
            progress: Arc::new(Mutex::new(Progress::default())),
        };
        let started = Instant::now();
        let pending = ATTEMPT.scope(attempt.clone(), route.engine.request(request));
        let response = await_head(pending, &attempt, head_timeout(&req), started)
            .await?
            .map_err(|e| classify(&e))?;
        if let Some(held) = held {
            held.settle();
        }
        body::read(response, &req).await
    }
}

#[cfg(test)]
mod tests;
