//! A small pooled HTTP/1.1 client (hyper + rustls) for the protocol's two requests.
//!
//! The secure-completion `POST` and the server-key `GET` are plain request/response
//! exchanges with bounded bodies, so the client is deliberately small: keep-alive
//! connections per origin (most recently used first, expired after an idle period), a cap on
//! concurrent requests, verified TLS only, no redirects, no decompression, and timeouts
//! that name what timed out. Bodies carry ciphertext only; plaintext never passes here.

mod tls;

pub use hyper::Method;
pub use tls::client_config;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

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
            | HttpError::Encoding(m) => f.write_str(m),
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

/// One request.
#[derive(Debug)]
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
}

/// A reply with its body read completely.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

struct Target {
    origin: Origin,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let uri: Uri = url
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
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Target {
            origin: Origin {
                https,
                host: host.to_owned(),
                port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            },
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

/// The read buffer, and so the largest reply head accepted (h11, under httpx, allows 16 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Request bodies above this size may take a while to write (see `Client::send`).
const LARGE_BODY: usize = 1 << 20;

/// The largest body limit a request may set (`ok_limit`, `error_limit`): 1 GiB.
pub const MAX_BODY_LIMIT: usize = 1 << 30;

/// The first reservation for a reply body, whatever length the server declares: the buffer
/// grows (fallibly) as bytes arrive, so a declared length costs nothing until it is sent.
const FIRST_RESERVATION: usize = 64 * 1024;

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Pool {
    pid: u32,
    idle: HashMap<Origin, Vec<Idle>>,
}

/// A pooled HTTP/1.1 client. Cheap to share (`Arc`); must be used inside a Tokio runtime.
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    pool: Mutex<Pool>,
    slots: Arc<Semaphore>,
    max_idle: usize,
    keepalive: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("max_idle", &self.max_idle)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

async fn within<F: Future>(
    limit: Option<Duration>,
    phase: &'static str,
    work: F,
) -> Result<F::Output, HttpError> {
    match limit {
        None => Ok(work.await),
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| HttpError::Timeout(phase)),
    }
}

fn sum(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(a? + b.unwrap_or_default())
}

async fn handshake<T>(io: T) -> Result<Sender, HttpError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Closed(format!("HTTP handshake failed: {e}")))?;
    tokio::spawn(async move {
        // Errors end the connection; the request that was using it sees them itself.
        let _ = connection.await;
    });
    Ok(sender)
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
            pool: Mutex::new(Pool {
                pid: std::process::id(),
                idle: HashMap::new(),
            }),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            max_idle,
            keepalive,
        }
    }

    /// Drop every idle connection (requests in flight finish normally).
    pub fn close_idle(&self) {
        self.lock().idle.clear();
    }

    /// Idle connections currently kept, over all origins.
    pub fn idle_connections(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if pool.pid != pid {
            // A forked child: the connections' tasks live in the parent's runtime threads.
            std::mem::forget(std::mem::take(&mut pool.idle));
            pool.pid = pid;
        }
        pool
    }

    fn take_idle(&self, origin: &Origin) -> Option<Sender> {
        let mut pool = self.lock();
        let list = pool.idle.get_mut(origin)?;
        while let Some(idle) = list.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.keepalive {
                return Some(idle.sender);
            }
        }
        None
    }

    fn put_idle(&self, origin: Origin, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut pool = self.lock();
        let keepalive = self.keepalive;
        let list = pool.idle.entry(origin).or_default();
        list.retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < keepalive);
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self, origin: &Origin, timeouts: &Timeouts) -> Result<Sender, HttpError> {
        let work = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
                .await
                .map_err(|e| {
                    HttpError::Connect(format!(
                        "cannot connect to {}:{}: {e}",
                        origin.host, origin.port
                    ))
                })?;
            let _ = tcp.set_nodelay(true);
            if !origin.https {
                return handshake(tcp).await;
            }
            let name = ServerName::try_from(origin.host.clone())
                .map_err(|_| HttpError::Config(format!("invalid host name {:?}", origin.host)))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| {
                HttpError::Connect(format!("TLS handshake with {} failed: {e}", origin.host))
            })?;
            handshake(tls).await
        };
        within(timeouts.connect, "connect", work).await?
    }

    fn request(
        &self,
        ex: &Exchange<'_>,
        target: &Target,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(ex.method.clone())
            .uri(target.path.as_str())
            .header(HOST, target.authority.as_str());
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
        let target = Target::parse(ex.url)?;
        let _slot = within(ex.timeouts.pool, "pool", self.slots.clone().acquire_owned())
            .await?
            .map_err(|_| HttpError::Closed("the client is closed".into()))?;
        let mut request = self.request(&ex, &target)?;
        // The request is written before the reply head is awaited; only a large body can take
        // long to write, so only then does the write timeout extend the wait.
        let head_timeout = if ex.body.len() > LARGE_BODY {
            sum(ex.timeouts.read, ex.timeouts.write)
        } else {
            ex.timeouts.read
        };
        loop {
            let (mut sender, reused) = match self.take_idle(&target.origin) {
                Some(sender) => (sender, true),
                None => (self.connect(&target.origin, &ex.timeouts).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(HttpError::Closed("the connection closed".into()));
            }
            match within(head_timeout, "read", sender.try_send_request(request)).await? {
                Ok(response) => return self.read(response, sender, target.origin, &ex).await,
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        return Err(HttpError::Closed(format!(
                            "the connection broke: {}",
                            err.error()
                        )))
                    }
                },
            }
        }
    }

    async fn read(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
        sender: Sender,
        origin: Origin,
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
        self.put_idle(origin, sender);
        Ok(Response {
            status,
            headers,
            body: data,
        })
    }
}
