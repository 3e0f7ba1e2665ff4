//! Connection limits on both listeners: a connection that sends no complete request head within
//! `listen.read_timeout` is closed (before HTTP/1 or HTTP/2 is even detected), an idle keep-alive
//! connection is closed after its listener's idle limit, and `listen.max_connections` bounds
//! the open connections of each listener.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use usher::config::Dur;

use crate::helpers::{eventually, TestApp};

/// Longest a test waits for usher to close a connection: far above the configured limits, so
/// a pass never depends on timing, and a connection left open fails the test.
const PATIENCE: Duration = Duration::from_secs(15);

/// Whether usher closed `stream` (EOF or reset) after sending at most an answer. Panics if the
/// connection is still open after [`PATIENCE`].
fn closed_by_usher(mut stream: TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the connection is still open after {PATIENCE:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Opens a connection and sends `bytes`, then waits for usher to close it.
async fn sent_then_closed(addr: SocketAddr, bytes: &'static [u8]) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        closed_by_usher(stream)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn silent_and_partial_connections_are_closed_after_read_timeout_on_both_listeners() {
    let app = TestApp::spawn_with(|c| {
        c.listen.read_timeout = Dur::millis(300);
        // Long, so that only the first-head limit can close these connections.
        c.listen.idle_timeout = Dur::secs(600);
    })
    .await;
    for (listener, addr) in [("api", app.api), ("internal", app.internal)] {
        for (what, bytes) in [
            ("nothing", &b""[..]),
            ("a partial HTTP/2 preface", &b"PRI * HTTP/2.0\r\n"[..]),
            (
                "a partial HTTP/1 head",
                &b"GET /healthz HTTP/1.1\r\nhost: x\r\n"[..],
            ),
        ] {
            let got = sent_then_closed(addr, bytes).await;
            assert!(
                got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
                "{listener}, {what}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_their_idle_limit() {
    let app = TestApp::spawn_with(|c| {
        c.listen.read_timeout = Dur::millis(300);
        c.listen.idle_timeout = Dur::millis(400);
    })
    .await;
    // The internal listener after a check-sized exchange (idle_timeout), the API after a
    // request (read_timeout): the answer arrives, then the connection is closed.
    for (addr, request) in [
        (
            app.internal,
            &b"GET /healthz HTTP/1.1\r\nhost: usher\r\n\r\n"[..],
        ),
        (
            app.api,
            &b"GET /openapi.json HTTP/1.1\r\nhost: usher\r\n\r\n"[..],
        ),
    ] {
        let got = sent_then_closed(addr, request).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{addr}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test]
async fn max_connections_is_enforced_per_listener() {
    let app = TestApp::spawn_with(|c| {
        c.listen.max_connections = std::num::NonZeroUsize::new(2).unwrap();
        c.listen.read_timeout = Dur::secs(60);
    })
    .await;
    for addr in [app.api, app.internal] {
        let answered = |addr: SocketAddr| {
            tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: u\r\nconnection: close\r\n\r\n");
                closed_by_usher(stream)
            })
        };
        // Two connections hold both slots (accepted in order, before the third).
        let first = TcpStream::connect(addr).unwrap();
        let second = TcpStream::connect(addr).unwrap();
        let got = answered(addr).await.unwrap();
        assert!(
            got.is_empty(),
            "{addr}: a third connection was served: {:?}",
            String::from_utf8_lossy(&got)
        );
        // A slot frees up when one of them closes.
        drop(first);
        let served = eventually(Duration::from_secs(10), || async {
            !answered(addr).await.unwrap().is_empty()
        })
        .await;
        assert!(served, "{addr}: no connection served after one closed");
        drop(second);
    }
}

#[tokio::test]
async fn idle_http2_connections_are_closed_on_the_internal_listener() {
    let app = TestApp::spawn_with(|c| {
        c.listen.read_timeout = Dur::millis(300);
        c.listen.idle_timeout = Dur::millis(400);
    })
    .await;
    let stream = tokio::net::TcpStream::connect(app.internal).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/healthz", app.internal))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // usher ends the connection by itself (GOAWAY, then close), though the client keeps it.
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection is still open after {PATIENCE:?}"
    );
    drop(sender);
}
