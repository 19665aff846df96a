//! TCP links: a stable local address per link, each connection forwarded to
//! a ready replica of the target, bounded, counted.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::{DEADLINE, Running};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// A TCP server on `$PORT` that answers each line with it upper-cased,
/// prefixed by its replica's index.
const ECHO: &str = r#"import os, socket, threading
def serve(conn):
    with conn:
        f = conn.makefile("rb")
        for line in f:
            conn.sendall(os.environ["ORCH_REPLICA"].encode() + b":" + line.upper())
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A program that prints its TCP link's variables, then waits.
const CALLER: &str = r#"import os, time
for k in sorted(os.environ):
    if k.startswith("ORCH_LINK_"):
        print(k + "=" + os.environ[k], flush=True)
time.sleep(3600)
"#;

pub fn echo_topology(dir: &std::path::Path, replicas: u32, link_extra: &str) -> String {
    std::fs::write(dir.join("echo.py"), ECHO).unwrap();
    std::fs::write(dir.join("caller.py"), CALLER).unwrap();
    let python = integration_tests::venv_python();
    format!(
        r#"
version: 1
name: tcp
tiers:
  echo:
    plugin: process
    replicas: {replicas}
    config: {{ command: [{py}, {dir}/echo.py], readiness: {{ tcp: true, interval: 20ms }} }}
  caller:
    plugin: process
    config: {{ command: [{py}, {dir}/caller.py], readiness: {{ exec: ["true"] }} }}
links:
  - {{ from: caller, to: echo, kind: tcp{link_extra} }}
"#,
        py = python.display(),
        dir = dir.display()
    )
}

/// The value of `var` the caller printed.
pub fn printed(orch: &Running, var: &str) -> String {
    let needle = format!("{var}=");
    let line = match orch.log().into_iter().find(|l| l.contains(&needle)) {
        Some(line) => line,
        None => orch.wait_for_line(&needle),
    };
    line.split(&needle).nth(1).unwrap().trim().to_owned()
}

async fn ask(addr: SocketAddr, line: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, BufReader::new(read).read_line(&mut answer)).await.unwrap().unwrap();
    answer.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_link_forwards_each_connection_to_a_ready_replica_at_a_stable_address() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Running::start(&echo_topology(dir.path(), 2, "")).await;
    let addr: SocketAddr = printed(&orch, "ORCH_LINK_ECHO_ADDR").parse().unwrap();
    assert_eq!(printed(&orch, "ORCH_LINK_ECHO_HOST"), "127.0.0.1");
    assert_eq!(printed(&orch, "ORCH_LINK_ECHO_PORT"), addr.port().to_string());
    assert!(
        orch.log().iter().all(|l| !l.contains("ORCH_LINK_ECHO_URL")),
        "no connection string for a plain TCP target"
    );
    // Balanced per connection over the ready replicas.
    let mut replicas = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let answer = ask(addr, "hello").await;
        assert!(answer.ends_with(":HELLO"), "{answer}");
        replicas.insert(answer[..1].to_owned());
    }
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    // A long connection, both ways, many round trips: what is sent comes back.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    for i in 0..200 {
        write.write_all(format!("line {i} {}\n", "x".repeat(1000)).as_bytes()).await.unwrap();
        let mut answer = String::new();
        read.read_line(&mut answer).await.unwrap();
        assert!(answer.contains(&format!("LINE {i} ")), "{answer}");
    }
    // A bulk transfer (4 MiB each way): past a full buffer, what is queued
    // is spliced; every byte arrives, in order.
    let big = format!("bulk {}\n", "y".repeat(4 << 20));
    let sending = tokio::spawn(async move {
        write.write_all(big.as_bytes()).await.unwrap();
        write
    });
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, read.read_line(&mut answer)).await.unwrap().unwrap();
    let write = sending.await.unwrap();
    assert_eq!(answer.len(), 2 + 5 + (4 << 20) + 1, "the bulk answer's length");
    assert!(answer.ends_with(&format!("BULK {}\n", "Y".repeat(4 << 20))));
    drop((read, write));
    // The target restarted: the same address serves.
    let out = integration_tests::orchestrator(&["restart", "echo", "--admin", &orch.admin.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(ask(addr, "again").await.ends_with(":AGAIN"));
    let text = crate::metrics::scrape(&orch).await;
    let connected = crate::metrics::value(
        &text,
        "orchestrator_link_tcp_connections_total",
        &[("from", "caller"), ("to", "echo"), ("outcome", "connected")],
    );
    assert!(connected.is_some_and(|n| n >= 6.0), "{text}");
    let sent =
        crate::metrics::value(&text, "orchestrator_link_tcp_bytes_total", &[("link", "echo"), ("direction", "sent")]);
    assert!(sent.is_some_and(|n| n > 200_000.0), "{text}");
}

/// `max_connections` at its edge: that many are served; the next is closed
/// at once, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_link_holds_at_most_its_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Running::start(&echo_topology(dir.path(), 1, ", max_connections: 2")).await;
    let addr: SocketAddr = printed(&orch, "ORCH_LINK_ECHO_ADDR").parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = tcp.into_split();
        write.write_all(b"held\n").await.unwrap();
        let mut read = BufReader::new(read);
        let mut answer = String::new();
        read.read_line(&mut answer).await.unwrap();
        assert_eq!(answer, "0:HELD\n");
        held.push((read, write));
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(DEADLINE, third.read_to_end(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the third was served");
    let text = crate::metrics::scrape(&orch).await;
    let limited = crate::metrics::value(
        &text,
        "orchestrator_link_tcp_connections_total",
        &[("link", "echo"), ("outcome", "limit")],
    );
    assert_eq!(limited, Some(1.0), "{text}");
    assert_eq!(
        crate::metrics::value(&text, "orchestrator_link_tcp_active_connections", &[("link", "echo")]),
        Some(2.0),
        "{text}"
    );
    drop(held);
}

/// A connection with nothing moving for the link's `idle_timeout` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tcp_connection_is_closed_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Running::start(&echo_topology(dir.path(), 1, ", idle_timeout: 1s")).await;
    let addr: SocketAddr = printed(&orch, "ORCH_LINK_ECHO_ADDR").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    write.write_all(b"once\n").await.unwrap();
    let mut read = BufReader::new(read);
    let mut answer = String::new();
    read.read_line(&mut answer).await.unwrap();
    let quiet_since = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, read.read_to_end(&mut rest)).await.unwrap().unwrap();
    let took = quiet_since.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1600), "closed after {took:?}");
}
