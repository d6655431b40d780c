//! Unit tests of the client against real sockets: a listener that answers with canned bytes.

use super::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> Client {
    let ca = crate::devcert::make_dev_certificates(1).unwrap();
    let dir = std::env::temp_dir().join(format!("nomyo-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, &ca.ca_pem).unwrap();
    Client::new(
        client_config(&[path]).unwrap(),
        4,
        2,
        Duration::from_secs(5),
    )
}

fn request<'a>(url: &'a str, headers: &'a [(String, String)]) -> Request<'a> {
    Request {
        method: Method::GET,
        url,
        headers,
        body: Bytes::new(),
        ok_limit: 1024,
        error_limit: 16,
        timeouts: Timeouts::default(),
        body_deadline: None,
        proxy: None,
    }
}

/// A one-connection server that reads what the client sends first and answers `answer`;
/// returns its URL and what it read.
async fn answering(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/path", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // One read: a small request head arrives in one piece, and a TLS client hello
        // (which holds no blank line) is answered all the same.
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let got = buf[..n].to_vec();
        s.write_all(answer).await.unwrap();
        s.shutdown().await.ok();
        String::from_utf8_lossy(&got).into_owned()
    });
    (url, server)
}

#[test]
fn target_checks_the_url_and_limits_before_anything_is_sent() {
    let headers = [];
    let ok = target(&request("https://router.test:8443/v1", &headers)).unwrap();
    assert!(ok.https);
    assert_eq!(ok.origin, "https://router.test:8443");
    for bad in [
        "ftp://x/",
        "not a url",
        "https://user:pw@router.test/",
        "/relative",
    ] {
        let err = target(&request(bad, &headers)).unwrap_err();
        assert_eq!(err.kind(), "config", "{bad}: {err}");
        assert!(!err.to_string().contains("pw"));
    }
    let mut big = request("http://x/", &headers);
    big.ok_limit = MAX_BODY_LIMIT + 1;
    assert_eq!(target(&big).unwrap_err().kind(), "config");
}

#[test]
fn build_refuses_bad_headers_and_sets_the_length_of_a_post() {
    let route = Route {
        engine: legacy::Client::builder(TokioExecutor::new()).build(Connector::new(
            client().tls.clone(),
            None,
            Arc::default(),
            Arc::default(),
        )),
        proxy: None,
        demand: Arc::default(),
    };
    let bad = [("bad name".to_owned(), "v".to_owned())];
    let err = build(
        &request("http://x/", &bad),
        Uri::from_static("http://x/"),
        &route,
    );
    assert_eq!(err.unwrap_err().kind(), "config");
    let bad_value = [("x-ok".to_owned(), "line\nbreak".to_owned())];
    let err = build(
        &request("http://x/", &bad_value),
        Uri::from_static("http://x/"),
        &route,
    );
    assert_eq!(err.unwrap_err().kind(), "config");
    let headers = [];
    let mut post = request("http://x/", &headers);
    post.method = Method::POST;
    let built = build(&post, Uri::from_static("http://x/"), &route).unwrap();
    assert_eq!(built.headers()[CONTENT_LENGTH], "0");
}

#[test]
fn the_head_wait_gets_the_write_timeout_only_for_a_large_body() {
    let headers = [];
    let mut req = request("http://x/", &headers);
    req.timeouts.read = Some(Duration::from_secs(2));
    req.timeouts.write = Some(Duration::from_secs(3));
    assert_eq!(head_timeout(&req), Some(Duration::from_secs(2)));
    req.body = Bytes::from(vec![0u8; LARGE_BODY + 1]);
    assert_eq!(head_timeout(&req), Some(Duration::from_secs(5)));
    req.timeouts.read = None;
    assert_eq!(head_timeout(&req), None, "no read timeout: wait for ever");
}

#[test]
fn send_reads_a_reply_and_keeps_an_error_status_over_its_limit() {
    let rt = runtime();
    let client = client();
    rt.block_on(async {
        let (url, server) =
            answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Thing: a\r\n\r\nhello").await;
        let headers = [("x-asked".to_owned(), "1".to_owned())];
        let reply = client.send(request(&url, &headers)).await.unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]));
        assert!(reply.headers.contains(&("x-thing".into(), "a".into())));
        let sent = server.await.unwrap();
        assert!(sent.starts_with("GET /path HTTP/1.1\r\n") && sent.contains("x-asked: 1"));

        let (url, _server) = answering(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789",
        )
        .await;
        let reply = client.send(request(&url, &[])).await.unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.body.is_empty(), "over the error limit: dropped, not raised");
    });
}

#[test]
fn send_types_what_went_wrong() {
    let rt = runtime();
    let client = client();
    rt.block_on(async {
        let (url, _s) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n").await;
        let err = client.send(request(&url, &[])).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");

        let (url, _s) =
            answering(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx")
                .await;
        let err = client.send(request(&url, &[])).await.unwrap_err();
        assert!(matches!(err, Error::Encoding(_)), "{err:?}");

        let (url, _s) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
        let err = client.send(request(&url, &[])).await.unwrap_err();
        assert!(matches!(err, Error::Closed(_)), "{err:?}");

        // Nothing listens on a port just released: refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let err = client.send(request(&url, &[])).await.unwrap_err();
        assert!(matches!(err, Error::Connect(Cause::Refused, _)), "{err:?}");

        // TLS to a server whose certificate no trusted CA signed.
        let err = tls_to_a_stranger(&client).await;
        assert!(
            matches!(err, Error::Connect(Cause::Certificate, _)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("TLS handshake with localhost"),
            "{err}"
        );

        // TLS to a server that speaks plain HTTP.
        let (url, _s) = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let url = url.replace("http://127.0.0.1", "https://localhost");
        let err = client.send(request(&url, &[])).await.unwrap_err();
        assert!(matches!(err, Error::Connect(Cause::Tls, _)), "{err:?}");
    });
}

/// A TLS server with a certificate from a CA the client does not trust.
async fn tls_to_a_stranger(client: &Client) -> Error {
    let stranger = crate::devcert::make_dev_certificates(1).unwrap();
    let cert = CertificateDer::from_pem_slice(stranger.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(stranger.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let url = format!("https://localhost:{port}/");
    client.send(request(&url, &[])).await.unwrap_err()
}

#[test]
fn a_slow_head_is_a_read_timeout_and_a_full_client_a_pool_timeout() {
    let rt = runtime();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s); // accepted, never answered
            }
        });
        let client = Client::new(client().tls.config().clone(), 1, 1, Duration::from_secs(5));
        let mut slow = request(&url, &[]);
        slow.timeouts.read = Some(Duration::from_millis(100));
        let err = client.send(slow).await.unwrap_err();
        assert_eq!(err, Error::Timeout(Phase::Read));
        assert_eq!(err.to_string(), "read timeout");

        let _slot = client.slot(None).await.unwrap();
        let mut queued = request(&url, &[]);
        queued.timeouts.pool = Some(Duration::from_millis(50));
        assert_eq!(
            client.send(queued).await.unwrap_err(),
            Error::Timeout(Phase::Pool)
        );
    });
}

#[test]
fn seconds_become_durations_and_bad_values_name_what_they_were_for() {
    assert_eq!(seconds(None, "read timeout"), Ok(None));
    assert_eq!(
        seconds(Some(1.5), "read timeout"),
        Ok(Some(Duration::from_millis(1500)))
    );
    assert_eq!(seconds(Some(0.0), "keepalive"), Ok(Some(Duration::ZERO)));
    for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
        assert_eq!(
            seconds(Some(bad), "body deadline"),
            Err(Error::Value("body deadline must be >= 0 seconds".into())),
            "{bad}"
        );
    }
    let timeouts = Timeouts::from_seconds((Some(1.0), None, Some(2.0), Some(0.5))).unwrap();
    assert_eq!(timeouts.connect, Some(Duration::from_secs(1)));
    assert_eq!(timeouts.read, None);
    assert_eq!(timeouts.write, Some(Duration::from_secs(2)));
    assert_eq!(timeouts.pool, Some(Duration::from_millis(500)));
    let err = Timeouts::from_seconds((None, None, None, Some(-0.1))).unwrap_err();
    assert_eq!(err.to_string(), "pool timeout must be >= 0 seconds");
    assert_eq!(err.kind(), "value");
}

#[test]
fn only_get_and_post_are_methods_of_the_protocol() {
    assert_eq!(method("GET"), Ok(Method::GET));
    assert_eq!(method("POST"), Ok(Method::POST));
    for other in ["PUT", "get", "", "POST "] {
        assert_eq!(
            method(other),
            Err(Error::Value(format!("unsupported method {other:?}")))
        );
    }
}
