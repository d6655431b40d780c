//! The connector under hyper-util's pooled client: TCP (directly or to a forward proxy), a
//! `CONNECT` tunnel through the proxy for `https` targets, and verified TLS (rustls) with
//! ALPN `h2`/`http/1.1`. Plain `http` targets behind a proxy are forwarded (absolute-form
//! requests, marked proxied for the pool).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::demand::{Demand, Held};
use super::dns;
use super::proxy::Proxy;
use crate::error::{Cause, Error, Phase, Result};

/// The largest proxy answer head to a `CONNECT`.
const MAX_PROXY_HEAD: usize = 8 * 1024;

/// Where a request's connection attempt stands (shared with the request's timer, see
/// `Client::send`): `connect` covers TCP, the proxy tunnel and TLS; `read` starts after.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) connecting: bool,
    pub(crate) connected: Option<Instant>,
}

#[derive(Clone)]
pub(crate) struct Attempt {
    pub(crate) timeout: Option<Duration>,
    pub(crate) progress: Arc<Mutex<Progress>>,
}

tokio::task_local! {
    /// The connect timeout and progress of the request whose task runs the connector.
    pub(crate) static ATTEMPT: Attempt;
}

enum Inner {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One connection; counted in `open` and in its route's demand while it lives.
pub struct Stream {
    inner: Inner,
    proxied: bool,
    h2: bool,
    /// Through a proxy: acknowledge every read at once (see `quick_ack`).
    via_proxy: bool,
    open: Arc<AtomicUsize>,
    _counted: Held,
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Tcp(s) => s,
            Inner::Tls(s) => s.get_ref().0,
        }
    }

    /// A forward proxy that relays a reply in several writes without `TCP_NODELAY` (tinyproxy
    /// does) holds each one back until the previous is acknowledged, and a delayed ACK costs
    /// up to 40 ms each time. Linux turns delayed ACKs back on by itself, so this is set again
    /// after every read poll on a proxied connection (direct ones never pay the system call).
    fn quick_ack(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket descriptor owned by `self`, and a pointer to a c_int of
            // the size given; a failure only leaves delayed ACKs on.
            unsafe {
                libc::setsockopt(
                    self.tcp().as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        let connected = Connected::new().proxy(self.proxied);
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        // Also when no plaintext came out: TLS may have taken part of a record off the socket.
        if self.via_proxy {
            self.quick_ack();
        }
        polled
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Makes connections for one route: direct, or through one proxy.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    proxy: Option<Arc<Proxy>>,
    open: Arc<AtomicUsize>,
    demand: Arc<Demand>,
}

/// `scheme://authority` of a connection's destination (as `Client::send` names origins).
pub(crate) fn origin_of(dst: &Uri) -> String {
    let authority = dst.authority().map_or("", |a| a.as_str());
    format!("{}://{authority}", dst.scheme_str().unwrap_or_default())
}

impl Connector {
    pub(crate) fn new(
        tls: tokio_rustls::TlsConnector,
        proxy: Option<Arc<Proxy>>,
        open: Arc<AtomicUsize>,
        demand: Arc<Demand>,
    ) -> Self {
        Connector {
            tls,
            proxy,
            open,
            demand,
        }
    }

    async fn tcp(host: &str, port: u16, what: impl FnOnce() -> String) -> Result<TcpStream> {
        let addrs = dns::resolve(host, port).await?;
        let tcp = TcpStream::connect(&addrs[..]).await.map_err(|e| {
            Error::Connect(
                Cause::of_io(e.kind()),
                format!("cannot connect to {}: {e}", what()),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn connect(self, dst: Uri) -> Result<Stream> {
        let https = match dst.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::config("the URL must be http(s)")),
        };
        let raw_host = dst
            .host()
            .ok_or_else(|| Error::config("the URL has no host"))?;
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host);
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let (tcp, proxied) = match &self.proxy {
            None => (
                Self::tcp(host, port, || format!("{host}:{port}")).await?,
                false,
            ),
            Some(proxy) => {
                let mut tcp =
                    Self::tcp(&proxy.host, proxy.port, || format!("the proxy {proxy}")).await?;
                if https {
                    tunnel(&mut tcp, proxy, raw_host, port).await?;
                    (tcp, false)
                } else {
                    (tcp, true)
                }
            }
        };
        let (inner, h2) = if https {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| Error::config(format!("invalid host name {host:?}")))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| {
                Error::Connect(
                    handshake_cause(&e),
                    format!("TLS handshake with {host} failed: {e}"),
                )
            })?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            (Inner::Tls(Box::new(tls)), h2)
        } else {
            (Inner::Tcp(tcp), false)
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Stream {
            inner,
            proxied,
            h2,
            via_proxy: self.proxy.is_some(),
            open: self.open.clone(),
            _counted: self.demand.opened(&origin_of(&dst)),
        })
    }
}

/// Why a TLS handshake failed: rustls refused the certificate, or the handshake itself (an
/// alert, no common protocol, not TLS), or the connection broke under it.
fn handshake_cause(err: &io::Error) -> Cause {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => Cause::Certificate,
        Some(_) => Cause::Tls,
        None => match Cause::of_io(err.kind()) {
            Cause::Unreachable if err.kind() != io::ErrorKind::TimedOut => Cause::Tls,
            cause => cause,
        },
    }
}

/// Ask `proxy` (on `tcp`) for a tunnel to `host:port`. A refusal names the proxy (without
/// credentials) and carries its status ([`Error::Proxy`]); a broken connection is a
/// [`Error::Connect`] with its cause.
async fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, host: &str, port: u16) -> Result<()> {
    let target = format!("{host}:{port}");
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = proxy.authorization() {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let broke = |e: io::Error| {
        Error::Connect(
            Cause::of_io(e.kind()),
            format!("the proxy {proxy} broke off the tunnel to {target}: {e}"),
        )
    };
    tcp.write_all(&head).await.map_err(broke)?;
    let unusable = |what: String| Error::Proxy(None, format!("the proxy {proxy} {what}"));
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 512];
        let n = tcp.read(&mut chunk).await.map_err(broke)?;
        if n == 0 {
            return Err(Error::Connect(
                Cause::Reset,
                format!(
                    "the proxy {proxy} closed the connection before answering the CONNECT to \
                     {target}"
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_PROXY_HEAD {
            return Err(unusable(format!(
                "answered the CONNECT to {target} with an oversized head"
            )));
        }
    };
    let (version, status, reason) = status_line(&buf);
    match status {
        Some(200..=299) if version.starts_with("HTTP/1.") => {
            if end != buf.len() {
                return Err(unusable(format!(
                    "sent bytes after accepting the CONNECT to {target}"
                )));
            }
            Ok(())
        }
        Some(code) => Err(Error::Proxy(
            Some(code),
            format!("the proxy {proxy} refused the CONNECT to {target}: {code} {reason}"),
        )),
        None => Err(unusable(format!(
            "gave a malformed answer to the CONNECT to {target}"
        ))),
    }
}

/// The version, status and reason (printable, at most 80 characters) of an answer's first
/// line.
fn status_line(head: &[u8]) -> (String, Option<u16>, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim_end().to_owned();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    let status = parts.next().and_then(|s| s.parse().ok());
    let reason = parts
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    (version, status, reason)
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let attempt = ATTEMPT.try_with(Attempt::clone).ok();
        let this = self.clone();
        Box::pin(async move {
            let Some(attempt) = attempt else {
                return this.connect(dst).await.map(TokioIo::new);
            };
            // Outside the request's task (hyper-util finishes a connect its request no longer
            // waits for in the background), the request has taken the returned connection.
            let in_request = || ATTEMPT.try_with(|_| ()).is_ok();
            if !this
                .demand
                .wait_for_returning(&origin_of(&dst), in_request)
                .await
            {
                return Err(Error::Closed(
                    "not needed: an idle connection came back to the pool".into(),
                ));
            }
            attempt
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .connecting = true;
            let outcome = match attempt.timeout {
                None => this.connect(dst).await,
                Some(limit) => tokio::time::timeout(limit, this.connect(dst))
                    .await
                    .unwrap_or(Err(Error::Timeout(Phase::Connect))),
            };
            let mut progress = attempt.progress.lock().unwrap_or_else(|e| e.into_inner());
            progress.connecting = false;
            progress.connected = Some(Instant::now());
            drop(progress);
            outcome.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `tunnel` against a one-shot fake proxy answering `answer`; returns the error and
    /// what the proxy received.
    fn tunnel_with(answer: &'static [u8]) -> (Result<()>, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                s.write_all(answer).await.unwrap();
                String::from_utf8_lossy(&buf[..n]).into_owned()
            });
            let proxy = Proxy::parse(&format!("http://u:secret@{addr}")).unwrap();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let outcome = tunnel(&mut tcp, &proxy, "router.test", 443).await;
            (outcome, server.await.unwrap())
        })
    }

    #[test]
    fn tunnel_sends_credentials_and_types_refusals() {
        let (ok, sent) = tunnel_with(b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert!(ok.is_ok());
        assert!(sent.starts_with("CONNECT router.test:443 HTTP/1.1\r\nHost: router.test:443\r\n"));
        assert!(sent.contains("Proxy-Authorization: Basic dTpzZWNyZXQ=\r\n"));

        let (refused, _) = tunnel_with(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        let err = refused.unwrap_err();
        assert!(matches!(err, Error::Proxy(Some(407), _)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("407") && text.contains("refused the CONNECT to router.test:443"));
        assert!(!text.contains("secret") && !text.contains("u:"), "{text}");

        let (gateway, _) = tunnel_with(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        assert!(matches!(gateway, Err(Error::Proxy(Some(502), _))));
        let (garbage, _) = tunnel_with(b"SSH-2.0-nope\r\n\r\n");
        assert!(matches!(garbage, Err(Error::Proxy(None, _))));
        let (early, _) = tunnel_with(b"HTTP/1.1 200 OK\r\n\r\nsurprise");
        assert!(matches!(early, Err(Error::Proxy(None, _))));
        let (silent, _) = tunnel_with(b"");
        assert!(matches!(silent, Err(Error::Connect(Cause::Reset, _))));
    }
}
