//! The sealed exchange (`nomyo_core::sealed`) against a real HTTP server: a local hyper server
//! that opens the request with the server key and answers with an envelope sealed to the
//! client, as the router does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nomyo_core::envelope::{self, DEFAULT_MAX_ENVELOPE};
use nomyo_core::http::{client_config, Client, Method, Timeouts};
use nomyo_core::keys::PrivateKey;
use nomyo_core::sealed::{
    self, sha256, Body, Deliver, Open, Reply, Request, Shared, Timings, Waiting,
};
use nomyo_core::secret::{Policy, SecretBuf};
use nomyo_core::{Cause, Error};
use tokio::net::TcpListener;

fn server_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::generate(2048).unwrap())
}

fn client_key() -> Arc<PrivateKey> {
    static KEY: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(PrivateKey::generate(2048).unwrap()))
        .clone()
}

/// What the server saw and sent, for the digests.
#[derive(Default, Clone)]
struct Seen {
    request: Vec<u8>,
    reply: Vec<u8>,
    plaintext: Vec<u8>,
}

/// How the server answers a request.
#[derive(Clone, Copy)]
enum Answer {
    /// Open the request and answer with its plaintext sealed to the client.
    Echo,
    /// 503 with a plain JSON body.
    Busy,
    /// 200 with a body that is not an envelope.
    Garbage,
}

async fn serve(answer: Answer) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let (status, reply, plaintext) = match answer {
                        Answer::Echo => {
                            let opened =
                                envelope::open(&body, server_key(), DEFAULT_MAX_ENVELOPE).unwrap();
                            let plain = opened.plaintext.as_slice().to_vec();
                            let sealed =
                                envelope::seal(&plain, client_key().public_key(), None).unwrap();
                            (200, sealed, plain)
                        }
                        Answer::Busy => (503, br#"{"detail": "busy"}"#.to_vec(), Vec::new()),
                        Answer::Garbage => (200, b"not an envelope".to_vec(), Vec::new()),
                    };
                    *log.lock().unwrap() = Seen {
                        request: body.to_vec(),
                        reply: reply.clone(),
                        plaintext,
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header("x-served", "yes")
                        .body(Full::new(Bytes::from(reply)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn http_client() -> Client {
    let ca = nomyo_core::devcert::make_dev_certificates(1).unwrap();
    // One file per call: the tests run in parallel threads of one process, and a file shared
    // by name was read by one test while another rewrote it.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("nomyo-sealed-ca-{}-{call}.pem", std::process::id()));
    std::fs::write(&path, &ca.ca_pem).unwrap();
    Client::new(
        client_config(&[path]).unwrap(),
        8,
        2,
        Duration::from_secs(5),
    )
}

fn request(url: String, plaintext: &[u8]) -> Request {
    Request {
        method: Method::POST,
        url,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: Body::Sealed {
            plaintext: SecretBuf::from_slice(plaintext).unwrap(),
            recipient: server_key().public_key().clone(),
        },
        open: Some(Open {
            key: client_key(),
            max_size: 1 << 20,
        }),
        ok_limit: 1 << 20,
        error_limit: 1 << 16,
        timeouts: Timeouts {
            connect: Some(Duration::from_secs(10)),
            read: Some(Duration::from_secs(10)),
            write: Some(Duration::from_secs(10)),
            pool: Some(Duration::from_secs(10)),
        },
        body_deadline: Some(Duration::from_secs(10)),
        proxy: None,
        policy: Policy::BestEffort,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_sealed_request_is_opened_by_the_server_and_its_reply_by_the_client() {
    let rt = runtime();
    rt.block_on(async {
        let (addr, seen) = serve(Answer::Echo).await;
        let client = http_client();
        let asked = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
        let reply = sealed::exchange(&client, request(format!("http://{addr}/v1"), asked))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.plaintext, asked, "the server opened what was sealed");
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains(&("x-served".into(), "yes".into())));
        assert!(reply.body.is_empty(), "an opened reply keeps no body");
        let opened = reply.opened.expect("asked to open").unwrap();
        assert_eq!(opened.plaintext.as_slice(), asked);
        assert_eq!(reply.sent_bytes, seen.request.len());
        assert_eq!(reply.received_bytes, seen.reply.len());
        assert_eq!(reply.request_sha256, sha256(&seen.request));
        assert_eq!(reply.reply_sha256, sha256(&seen.reply));
        assert_ne!(reply.request_sha256, reply.reply_sha256);
    });
}

#[test]
fn an_error_status_keeps_its_body_and_is_not_opened() {
    let rt = runtime();
    rt.block_on(async {
        let (addr, seen) = serve(Answer::Busy).await;
        let reply = sealed::exchange(&http_client(), request(format!("http://{addr}/"), b"{}"))
            .await
            .unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.opened.is_none());
        assert_eq!(reply.body, br#"{"detail": "busy"}"#);
        assert_eq!(reply.reply_sha256, sha256(&reply.body));
        assert_eq!(reply.request_sha256, sha256(&seen.lock().unwrap().request));
    });
}

#[test]
fn a_reply_that_cannot_be_opened_keeps_its_status_and_digests() {
    let rt = runtime();
    rt.block_on(async {
        let (addr, _seen) = serve(Answer::Garbage).await;
        let reply = sealed::exchange(&http_client(), request(format!("http://{addr}/"), b"{}"))
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.reply_sha256, sha256(b"not an envelope"));
        let failed = reply.opened.expect("asked to open").unwrap_err();
        assert_eq!(failed.kind(), "envelope", "{failed}");
    });
}

#[test]
fn a_raw_get_is_sent_as_it_is_and_a_refused_connection_is_typed() {
    let rt = runtime();
    rt.block_on(async {
        let (addr, seen) = serve(Answer::Busy).await;
        let client = http_client();
        let mut get = request(format!("http://{addr}/pki"), b"");
        get.method = Method::GET;
        get.body = Body::Empty;
        get.open = None;
        let reply = sealed::exchange(&client, get).await.unwrap();
        assert_eq!(reply.sent_bytes, 0);
        assert_eq!(reply.request_sha256, sha256(b""));
        assert!(seen.lock().unwrap().request.is_empty());

        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = sealed::exchange(&client, request(format!("http://127.0.0.1:{port}/"), b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(Cause::Refused, _)), "{err:?}");
    });
}

/// Whether `task` is marked finished soon (just after its future is dropped).
fn ends(task: &tokio::task::AbortHandle) -> bool {
    (0..30_000).any(|_| {
        std::thread::sleep(Duration::from_millis(1));
        task.is_finished()
    })
}

/// A port that accepts connections (the kernel's backlog) but never answers.
fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    (listener, url)
}

#[test]
fn a_started_exchange_delivers_its_outcome_on_a_worker_or_a_blocking_thread() {
    let rt = runtime();
    let (addr, _seen) = rt.block_on(serve(Answer::Echo));
    let client = Arc::new(http_client());
    for on in [Deliver::OnWorker, Deliver::OnBlockingThread] {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = sealed::start(
            client.clone(),
            request(format!("http://{addr}/"), b"{\"n\": 1}"),
            on,
            move |outcome| {
                let thread = std::thread::current().name().map(str::to_owned);
                tx.send((outcome, thread)).unwrap();
            },
        )
        .unwrap();
        let (outcome, thread) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let reply = outcome.unwrap();
        assert_eq!(reply.status, 200);
        let opened = reply.opened.expect("asked to open").unwrap();
        assert_eq!(opened.plaintext.as_slice(), b"{\"n\": 1}");
        // Both kinds of thread belong to the process's runtime.
        assert_eq!(thread.as_deref(), Some("nomyo-io"), "{on:?}");
        assert!(ends(&task), "{on:?}");
    }
}

#[test]
fn a_waited_exchange_returns_its_reply_or_its_typed_failure() {
    let rt = runtime();
    let (addr, _seen) = rt.block_on(serve(Answer::Busy));
    let client = Arc::new(http_client());
    let waiting =
        Waiting::start(client.clone(), request(format!("http://{addr}/"), b"{}")).unwrap();
    let reply = loop {
        if let Some(outcome) = waiting.wait(Duration::from_millis(100)) {
            break outcome.unwrap();
        }
    };
    assert_eq!(reply.status, 503);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let waiting =
        Waiting::start(client, request(format!("http://127.0.0.1:{port}/"), b"{}")).unwrap();
    let err = loop {
        if let Some(outcome) = waiting.wait(Duration::from_millis(100)) {
            break outcome.unwrap_err();
        }
    };
    assert!(matches!(err, Error::Connect(Cause::Refused, _)), "{err:?}");
}

#[test]
fn an_aborted_exchange_is_lost_to_its_waiter_and_delivers_nothing() {
    let (_listener, url) = silent_server();
    let client = Arc::new(http_client());
    let mut silent = request(url.clone(), b"{}");
    silent.timeouts = Timeouts::default(); // wait for the reply forever
    silent.body_deadline = None;
    let waiting = Waiting::start(client.clone(), silent).unwrap();
    assert!(
        waiting.wait(Duration::from_millis(50)).is_none(),
        "still running"
    );
    waiting.abort();
    assert!(matches!(
        waiting.wait(Duration::from_secs(30)),
        Some(Err(Error::Internal(_)))
    ));

    let mut silent = request(url, b"{}");
    silent.timeouts = Timeouts::default();
    silent.body_deadline = None;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let task = sealed::start(client, silent, Deliver::OnWorker, move |_| {
        tx.send(()).unwrap();
    })
    .unwrap();
    task.abort();
    // The callback (and the sender it holds) is dropped without being called.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    assert!(ends(&task), "an aborted task ends");
}

#[test]
fn repeated_headers_are_joined_in_the_order_first_seen() {
    let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    let reply = Reply {
        status: 200,
        headers: vec![
            header("set-cookie", "a=1"),
            header("content-type", "application/json"),
            header("set-cookie", "b=2"),
            header("x-empty", ""),
            header("set-cookie", "c=3"),
        ],
        body: Vec::new(),
        opened: None,
        sent_bytes: 0,
        received_bytes: 0,
        timings: Timings::default(),
        request_sha256: sha256(b""),
        reply_sha256: sha256(b""),
    };
    assert_eq!(
        reply.joined_headers(),
        vec![
            header("set-cookie", "a=1, b=2, c=3"),
            header("content-type", "application/json"),
            header("x-empty", ""),
        ]
    );
}

#[test]
fn a_shared_reply_gives_its_opened_reply_to_the_first_taker_only() {
    let rt = runtime();
    rt.block_on(async {
        let (addr, _seen) = serve(Answer::Echo).await;
        let reply = sealed::exchange(&http_client(), request(format!("http://{addr}/"), b"[1]"))
            .await
            .unwrap();
        let shared = Shared::from(reply);
        let other = shared.clone();
        assert!(shared.reply().opened.is_none(), "moved out of the reply");
        assert_eq!(other.reply().status, 200);
        assert!(shared.has_opened() && other.has_opened());
        let opened = other.take_opened().expect("the first taker").unwrap();
        assert_eq!(opened.plaintext.as_slice(), b"[1]");
        assert!(!shared.has_opened(), "taken for every owner");
        assert!(shared.take_opened().is_none());
        assert_eq!(shared.reply().reply_sha256, other.reply().reply_sha256);
    });
}
