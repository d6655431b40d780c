//! The pooled HTTP client (hyper-util's client over hyper + rustls) for the protocol's two
//! requests.
//!
//! The secure-completion `POST` and the server-key `GET` are plain request/response
//! exchanges with bounded bodies. hyper-util keeps the connections (keep-alive per origin,
//! expired after an idle period; one shared HTTP/2 connection when the server's ALPN chose
//! `h2`); this module adds what the protocol needs around it: a cap on concurrent requests,
//! verified TLS only (see `tls`), forward proxies (see `connect`, `proxy`), no redirects, no
//! decompression, reply size caps, and timeouts that name what timed out. Bodies carry
//! ciphertext only; plaintext never passes here.

mod connect;
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
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, PROXY_AUTHORIZATION,
};
use hyper::{Request, Uri};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use connect::{Attempt, Connector, Progress, ATTEMPT};

/// What went wrong on the wire. Messages name hosts and limits, never body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// A bad URL, header or trust store: nothing was sent.
    Config(String),
    /// The named phase (`connect`, `read`, `pool`) took longer than its timeout.
    Timeout(&'static str),
    /// No connection could be made (DNS, TCP or the TLS handshake, including an untrusted
    /// certificate).
    Connect(String),
    /// The connection broke or the server spoke malformed HTTP.
    Closed(String),
    /// The reply body is (or announces itself) larger than the caller's limit.
    TooLarge(String),
    /// The reply is compressed although `identity` was requested.
    Encoding(String),
    /// The forward proxy refused the tunnel in a way another try cannot change (e.g. 407,
    /// 403). Names the proxy without its credentials.
    Proxy(String),
}

impl HttpError {
    /// A short machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Config(_) => "config",
            HttpError::Timeout(_) => "timeout",
            HttpError::Connect(_) => "connect",
            HttpError::Closed(_) => "closed",
            HttpError::TooLarge(_) => "too_large",
            HttpError::Encoding(_) => "encoding",
            HttpError::Proxy(_) => "proxy",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout(phase) => write!(f, "{phase} timeout"),
            HttpError::Config(m)
            | HttpError::Connect(m)
            | HttpError::Closed(m)
            | HttpError::TooLarge(m)
            | HttpError::Encoding(m)
            | HttpError::Proxy(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {}

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

/// One request (its `Debug` shows neither headers nor the proxy URL: both may hold secrets).
pub struct Exchange<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Bytes,
    /// Largest body accepted with status 200 (larger: [`HttpError::TooLarge`]).
    pub ok_limit: usize,
    /// Largest body kept with another status (larger: an empty body, nothing is raised).
    pub error_limit: usize,
    pub timeouts: Timeouts,
    /// The whole body must have arrived this long after the head (a slow-drip bound).
    pub body_deadline: Option<Duration>,
    /// The forward proxy to use (`http://[user:password@]host:port`), chosen by the caller.
    pub proxy: Option<&'a str>,
}

impl fmt::Debug for Exchange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
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

/// The first reservation for a reply body, whatever length the server declares: the buffer
/// grows (fallibly) as bytes arrive, so a declared length costs nothing until it is sent.
const FIRST_RESERVATION: usize = 64 * 1024;

/// How often a request waiting for its reply head looks again while a connection is still
/// being made (the connect timeout bounds that phase).
const RECHECK: Duration = Duration::from_millis(50);

type Engine = legacy::Client<Connector, Full<Bytes>>;

/// One way out: direct, or through one proxy; its own pool.
struct Route {
    engine: Engine,
    proxy: Option<Arc<Proxy>>,
}

/// Until the first request to an `https` origin has its reply head, further requests to it
/// wait, so that a burst shares the one HTTP/2 connection ALPN may give (HTTP/1.1 origins
/// then open connections as needed).
#[derive(Default)]
struct Gate {
    settled: AtomicBool,
    lock: Arc<tokio::sync::Mutex<()>>,
}

struct State {
    pid: u32,
    routes: HashMap<Option<String>, Arc<Route>>,
    gates: HashMap<(Option<String>, String), Arc<Gate>>,
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
fn classify(err: &legacy::Error) -> HttpError {
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(ours) = current.downcast_ref::<HttpError>() {
            return ours.clone();
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
        source = current.source();
    }
    if err.is_connect() {
        HttpError::Connect(format!("cannot connect: {text}"))
    } else {
        HttpError::Closed(format!("the connection broke: {text}"))
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

    fn route(&self, proxy: Option<&str>) -> Result<Arc<Route>, HttpError> {
        let key = proxy.map(str::to_owned);
        if let Some(route) = self.lock().routes.get(&key) {
            return Ok(route.clone());
        }
        let proxy = proxy.map(Proxy::parse).transpose()?.map(Arc::new);
        let connector = Connector::new(self.tls.clone(), proxy.clone(), self.open.clone());
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
        let route = Arc::new(Route { engine, proxy });
        Ok(self.lock().routes.entry(key).or_insert(route).clone())
    }

    fn gate(&self, proxy: Option<&str>, origin: &str) -> Arc<Gate> {
        self.lock()
            .gates
            .entry((proxy.map(str::to_owned), origin.to_owned()))
            .or_default()
            .clone()
    }

    fn request(
        &self,
        ex: &Exchange<'_>,
        uri: Uri,
        route: &Route,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let forwarded = uri.scheme_str() == Some("http");
        let mut builder = Request::builder().method(ex.method.clone()).uri(uri);
        for (name, value) in ex.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::Config(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpError::Config(format!("invalid value for header {name}")))?;
            builder = builder.header(name, value);
        }
        if !ex.body.is_empty() || ex.method == Method::POST {
            builder = builder.header(CONTENT_LENGTH, ex.body.len());
        }
        if forwarded {
            if let Some(auth) = route.proxy.as_ref().and_then(|p| p.authorization()) {
                builder = builder.header(PROXY_AUTHORIZATION, auth.clone());
            }
        }
        builder
            .body(Full::new(ex.body.clone()))
            .map_err(|e| HttpError::Config(format!("invalid request: {e}")))
    }

    /// Send one request and read its reply completely.
    ///
    /// A request that fails on a reused keep-alive connection before any byte of it was
    /// written (the server closed the idle connection) is sent again on a new connection.
    pub async fn send(&self, ex: Exchange<'_>) -> Result<Response, HttpError> {
        if ex.ok_limit > MAX_BODY_LIMIT || ex.error_limit > MAX_BODY_LIMIT {
            return Err(HttpError::Config(format!(
                "a reply body limit may be at most {MAX_BODY_LIMIT} bytes"
            )));
        }
        let uri: Uri = ex
            .url
            .parse()
            .map_err(|_| HttpError::Config("invalid URL".into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Config("the URL must be http(s)".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::Config("the URL has no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(HttpError::Config(
                "the URL must not carry credentials".into(),
            ));
        }
        let origin = format!("{}://{}", uri.scheme_str().unwrap_or_default(), authority);
        let route = self.route(ex.proxy)?;
        let request = self.request(&ex, uri, &route)?;
        let _slot = match ex.timeouts.pool {
            None => Ok(self.slots.clone().acquire_owned().await),
            Some(limit) => tokio::time::timeout(limit, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| HttpError::Timeout("pool")),
        }?
        .map_err(|_| HttpError::Closed("the client is closed".into()))?;
        let mut held = None;
        if https {
            let gate = self.gate(ex.proxy, &origin);
            if !gate.settled.load(Ordering::Acquire) {
                let guard = gate.lock.clone().lock_owned().await;
                if !gate.settled.load(Ordering::Acquire) {
                    held = Some((gate, guard));
                }
            }
        }
        // The request is written before the reply head is awaited; only a large body can take
        // long to write, so only then does the write timeout extend the wait.
        let head_timeout = if ex.body.len() > LARGE_BODY {
            sum(ex.timeouts.read, ex.timeouts.write)
        } else {
            ex.timeouts.read
        };
        let attempt = Attempt {
            timeout: ex.timeouts.connect,
            progress: Arc::new(Mutex::new(Progress::default())),
        };
        let started = Instant::now();
        let pending = ATTEMPT.scope(attempt.clone(), route.engine.request(request));
        tokio::pin!(pending);
        let response = loop {
            // `read` counts from the moment the connection was made (or from the start,
            // when a kept-alive one was used); while connecting, `connect` is the bound.
            let deadline = {
                let progress = attempt.progress.lock().unwrap_or_else(|e| e.into_inner());
                if progress.connecting {
                    Some((Instant::now() + RECHECK, true))
                } else {
                    head_timeout.map(|t| (progress.connected.unwrap_or(started) + t, false))
                }
            };
            match deadline {
                None => break pending.as_mut().await,
                Some((at, recheck)) => match tokio::time::timeout_at(at, pending.as_mut()).await {
                    Ok(outcome) => break outcome,
                    Err(_) if recheck => continue,
                    Err(_) => {
                        let progress = attempt.progress.lock().unwrap_or_else(|e| e.into_inner());
                        let moved = progress.connecting
                            || head_timeout.is_some_and(|t| {
                                progress.connected.unwrap_or(started) + t > Instant::now()
                            });
                        if !moved {
                            return Err(HttpError::Timeout("read"));
                        }
                    }
                },
            }
        };
        let response = response.map_err(|e| classify(&e))?;
        if let Some((gate, guard)) = held {
            gate.settled.store(true, Ordering::Release);
            drop(guard);
        }
        self.read(response, &ex).await
    }

    async fn read(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
        ex: &Exchange<'_>,
    ) -> Result<Response, HttpError> {
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let encoding = response.headers().get(CONTENT_ENCODING);
        let compressed = encoding.is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if compressed && status == 200 {
            return Err(HttpError::Encoding(
                "the reply is compressed (Content-Encoding) although identity was requested".into(),
            ));
        }
        if compressed {
            // An error status from a proxy or CDN that compressed anyway: keep the status
            // (it may be retryable), drop the unreadable body and the connection.
            return Ok(Response {
                status,
                headers,
                body: Vec::new(),
            });
        }
        let limit = if status == 200 {
            ex.ok_limit
        } else {
            ex.error_limit
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = |what: String| -> Result<Response, HttpError> {
            if status == 200 {
                Err(HttpError::TooLarge(format!(
                    "reply {what} exceeds the limit of {limit} bytes"
                )))
            } else {
                Ok(Response {
                    status,
                    headers: headers.clone(),
                    body: Vec::new(),
                })
            }
        };
        if let Some(declared) = declared.filter(|&d| d > limit as u64) {
            return too_large(format!("of {declared} bytes"));
        }
        let deadline = ex.body_deadline.map(|d| Instant::now() + d);
        let mut body = response.into_body();
        let mut data = Vec::new();
        let first = declared.map_or(0, |d| d as usize).min(limit);
        if data.try_reserve(first.min(FIRST_RESERVATION)).is_err() {
            return Err(HttpError::TooLarge(
                "cannot allocate the reply buffer".into(),
            ));
        }
        loop {
            let next = match (ex.timeouts.read, deadline) {
                (None, None) => Ok(body.frame().await),
                (read, deadline) => {
                    let read_end = read.map(|r| Instant::now() + r);
                    let end = match (read_end, deadline) {
                        (Some(a), Some(b)) => a.min(b),
                        (a, b) => a.or(b).unwrap_or_else(Instant::now),
                    };
                    tokio::time::timeout_at(end, body.frame()).await
                }
            };
            let frame = match next {
                Err(_) => return Err(HttpError::Timeout("read")),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(HttpError::Closed(format!("the reply body broke off: {e}")))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(chunk) = frame.into_data() {
                if data.len() + chunk.len() > limit {
                    return too_large("body".into());
                }
                // Amortised (doubling) growth, capped at the limit; a failed allocation is
                // an error, not an abort.
                if data.capacity() - data.len() < chunk.len() {
                    let want = (data.len() + chunk.len())
                        .max(data.capacity() * 2)
                        .min(limit);
                    if data.try_reserve_exact(want - data.len()).is_err() {
                        return Err(HttpError::TooLarge(format!(
                            "cannot allocate {want} bytes for the reply"
                        )));
                    }
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok(Response {
            status,
            headers,
            body: data,
        })
    }
}
