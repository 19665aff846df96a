//! Connection limits of the tier, link and peer listeners: the header, idle
//! and send timeouts at their edges, and a listener's share of the
//! connection budget.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration_tests::{DEADLINE, Running, TopologyFile};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TESTKIT: &str = r#"
version: 1
name: limits
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    max_body: 16MiB
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit }
links:
  - { from: web, to: kit, kind: rest }
"#;

fn peer_listener(orch: &Running) -> SocketAddr {
    let log = orch.log();
    let line = log.iter().find(|l| l.contains("Peer listener listening.")).expect("the peer listener's line");
    line.split("addr=").nth(1).unwrap().trim().parse().unwrap()
}

/// Reads until the server closes; how long that took from `since`.
async fn closed_after(conn: &mut tokio::net::TcpStream, since: Instant) -> Duration {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(DEADLINE, conn.read(&mut buf)).await.expect("closed within the deadline") {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

/// A connection to the peer listener (which takes HTTP/1.1 and HTTP/2, so
/// hyper's own header timer is not armed before the first bytes) that says
/// nothing is closed at the header timeout, not before: it held a place in
/// the budget for as long as the client liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_timeout() {
    let args = ["--peer-listen", "127.0.0.1:0", "--header-timeout", "1s"];
    let orch = Running::start_with(TopologyFile::new(TESTKIT), &args).await;
    for addr in [peer_listener(&orch), orch.tier_addr("web").await] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut silent, Instant::now()).await;
        // The watchdog looks every quarter of the shortest timeout.
        assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1600), "{addr}: closed after {took:?}");
    }
}

/// An HTTP/2 connection with no stream open is told `GOAWAY` at the idle
/// timeout and closed, not before; one request resets the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout() {
    let args = ["--peer-listen", "127.0.0.1:0", "--idle-timeout", "1s"];
    let orch = Running::start_with(TopologyFile::new(TESTKIT), &args).await;
    let tcp = tokio::net::TcpStream::connect(peer_listener(&orch)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req =
        hyper::Request::get("http://peer/_orch/peer/ready").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let answered = send.send_request(req).await.unwrap();
    drop(http_body_util::BodyExt::collect(answered.into_body()).await);
    let idle_since = Instant::now();
    tokio::time::timeout(DEADLINE, conn).await.expect("closed within the deadline").unwrap().unwrap();
    let took = idle_since.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1800), "closed after {took:?}");
}

/// A client that stops reading a large answer is dropped at the send
/// timeout, and its place in the budget freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
    let orch = Running::start_with_args_env(
        TopologyFile::new(TESTKIT),
        &["--send-timeout", "1s"],
        &[("ORCH_LOG", "info,orchestrator::serve=debug")],
    )
    .await;
    let web = orch.tier_addr("web").await;
    let mut conn = tokio::net::TcpStream::connect(web).await.unwrap();
    // Echoed back whole: far more than the socket buffers hold.
    let body = vec![b'x'; 12 << 20];
    conn.write_all(format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body).await.unwrap();
    let stalled = Instant::now();
    let line = orch.wait_for_line("read nothing of its answer within the send timeout");
    let took = stalled.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "dropped after {took:?}: {line}");
    // What was sent before is there to read, then the end: not the whole answer.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut got)).await.expect("closed");
    assert!(got.len() < body.len(), "the whole answer came: {} bytes", got.len());
}

/// A flood of connections to one listener (silent ones to the peer
/// listener, which never present a token) takes at most three quarters of
/// the budget: the gateway still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_cannot_take_the_whole_connection_budget() {
    let args = ["--peer-listen", "127.0.0.1:0", "--max-connections", "8"];
    let orch = Running::start_with(TopologyFile::new(TESTKIT), &args).await;
    let peer = peer_listener(&orch);
    let mut flood = Vec::new();
    for _ in 0..6 {
        flood.push(tokio::net::TcpStream::connect(peer).await.unwrap());
    }
    // The seventh is past the peer listener's share (6 of 8): closed at once.
    let mut seventh = tokio::net::TcpStream::connect(peer).await.unwrap();
    let took = closed_after(&mut seventh, Instant::now()).await;
    assert!(took < Duration::from_secs(1), "the seventh was held {took:?}");
    // The flood still holds its six: each is open (a read would wait).
    for conn in &mut flood {
        let mut byte = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(50), conn.read(&mut byte)).await.is_err());
    }
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/whoami").await;
    assert_eq!(code, 200, "{body}");
}

/// Log followers whose clients never read hold the dashboard's stream
/// places only until their buffers filled and the send timeout passed: then
/// the dashboard opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_nobody_reads_are_dropped_at_the_send_timeout() {
    let chatty = TESTKIT.replace(
        "  kit: { plugin: testkit }",
        "  kit: { plugin: testkit }\n  chatty:\n    plugin: process\n    config: { command: [sh, -c, 'while :; do echo chatter chatter chatter chatter chatter chatter; sleep 0.001; done'], readiness: { exec: [\"true\"] } }",
    );
    let orch = Running::start_with_args_env(
        TopologyFile::new(&chatty),
        &["--send-timeout", "1s"],
        &[("ORCH_LOG", "info,orchestrator::admin=debug")],
    )
    .await;
    let open = |addr: SocketAddr, path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
        tcp
    };
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let mut follower = open(orch.admin, "/admin/logs?follow=true&tiers=chatty").await;
        // Its answer began (it holds a place), and is then never read.
        let mut head = [0u8; 12];
        tokio::time::timeout(DEADLINE, follower.read_exact(&mut head)).await.unwrap().unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        stalled.push(follower);
    }
    // Every place is taken: the next stream is refused.
    let (code, _) = orch.get(orch.admin, "/admin/events").await;
    assert_eq!(code, 503);
    for _ in 0..32 {
        orch.wait_for_line("within the send timeout");
    }
    // Places free again: a dashboard connects.
    let mut fresh = open(orch.admin, "/admin/events").await;
    let mut head = [0u8; 12];
    tokio::time::timeout(DEADLINE, fresh.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    drop(stalled);
}

/// The process holds at most `--max-body-memory` of request bodies across
/// its listeners: a body that would cross it is refused (503, Retry-After)
/// as soon as it would; one that fits exactly is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_held_within_the_process_budget_at_its_edge() {
    const MIB: usize = 1024 * 1024;
    let orch = Running::start_with(TopologyFile::new(TESTKIT), &["--max-body-memory", "3MiB"]).await;
    let web = orch.tier_addr("web").await;
    // A: 1.5 MiB of a 2 MiB body, then nothing: held.
    let mut held = tokio::net::TcpStream::connect(web).await.unwrap();
    held.write_all(format!("POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 2 * MIB).as_bytes())
        .await
        .unwrap();
    held.write_all(&vec![b'a'; 3 * MIB / 2]).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = crate::metrics::scrape(&orch).await;
        if crate::metrics::value(&text, "orchestrator_request_body_held_bytes", &[]) == Some((3 * MIB / 2) as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "A's body never arrived whole: {text}");
    }
    let post = |n: usize| {
        let http = integration_tests::client();
        async move { integration_tests::request(&http, "POST", web, "/b", bytes::Bytes::from(vec![b'b'; n])).await.unwrap() }
    };
    // One byte past what is left: refused.
    let (code, body) = post(3 * MIB / 2 + 1).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("--max-body-memory"), "{body}");
    // Exactly what is left: served.
    let (code, body) = post(3 * MIB / 2).await;
    assert_eq!((code, body.len() > 3 * MIB / 2), (200, true), "{}", &body[..body.len().min(200)]);
    // A finishes: its share comes back, and a body as large is served again.
    held.write_all(&vec![b'a'; MIB / 2]).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(DEADLINE, held.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(held);
    let text = crate::metrics::scrape(&orch).await;
    let rejected = crate::metrics::value(
        &text,
        "orchestrator_listener_rejected_total",
        &[("tier", "web"), ("reason", "body_memory")],
    );
    assert_eq!(rejected, Some(1.0), "{text}");
    assert_eq!(post(2 * MIB).await.0, 200);
}
