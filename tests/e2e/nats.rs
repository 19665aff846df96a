//! Queue tiers on NATS JetStream, against real nats-servers this test
//! starts (loopback ports, storage in temporary directories, stopped by
//! their PIDs): what an acknowledged publish survives — the orchestrator
//! killed, the server killed, a cluster node killed — and what a wrong
//! server or setting is told. The semantic suite (fan-out, competing
//! consumers, redelivery, dead letters, backpressure, size limits, process
//! and native subscribers) runs on both backends in `queue.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{NatsServer, Running, TopologyFile, python_server};

/// A subscriber program that appends each delivery's id to `$RECORD`, one
/// per line, before acknowledging it: what it was given survives the
/// orchestrator's death.
const RECORDER: &str = r#"    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(os.environ["RECORD"], "a") as record:
            record.write(self.headers.get("orch-message-id", "") + "\n")
            record.flush()
            os.fsync(record.fileno())
        self.reply(204, {}, b"")

    def do_GET(self):
        self.reply(200, {}, b"ok")
"#;

/// `web` → testkit `pub` → queue tier `q` on `urls` → the recording program `rec`.
fn recorded_topology(urls: &[String], dir: &Path, stream: &str) -> String {
    let program = dir.join("recorder.py");
    std::fs::write(&program, python_server("", RECORDER)).unwrap();
    let urls: Vec<String> = urls.iter().map(|u| format!("'{u}'")).collect();
    format!(
        r#"version: 1
name: nats-durability
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: pub }}] }}
  pub: {{ plugin: testkit }}
  q:
    plugin: queue
    config: {{ backend: nats, urls: [{}], stream: {{ name: {stream}, replicas: {} }}, capacity: 1000000 }}
  rec:
    plugin: process
    env: {{ RECORD: '{}' }}
    config: {{ command: [python3, '{}'], readiness: {{ http: / }} }}
links:
  - {{ from: web, to: pub, kind: rest }}
  - {{ from: pub, to: q, kind: queue, topic: orders }}
  - {{ from: q, to: rec, kind: queue, topic: orders, mode: point-to-point, concurrency: 4 }}
"#,
        urls.join(", "),
        urls.len().min(3),
        dir.join("record").display(),
        program.display()
    )
}

/// Publishes `n` messages through `web`; the ids JetStream acknowledged
/// (none if the call failed).
async fn publish(orch: &Running, web: SocketAddr, tag: &str, n: usize) -> Vec<String> {
    let client = integration_tests::client();
    let path = format!("/publish/q?n={n}");
    match integration_tests::request(&client, "POST", web, &path, tag.to_owned().into()).await {
        Ok((200, body)) => {
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            answer["published"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
        }
        Ok(_) | Err(_) => {
            let _ = orch;
            Vec::new()
        }
    }
}

/// Ids in the recorder's file.
fn recorded(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("record")).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Waits until every id of `acked` is in the record; how many were recorded more than once.
fn wait_recorded(dir: &Path, acked: &BTreeSet<String>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = recorded(dir);
        let distinct: BTreeSet<&String> = got.iter().collect();
        let missing = acked.iter().filter(|id| !distinct.contains(id)).count();
        if missing == 0 {
            return got.len() - distinct.len();
        }
        assert!(Instant::now() < deadline, "{missing} of {} acknowledged messages never delivered", acked.len());
        // The recorder writes as deliveries come: look again shortly.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_killed_under_load_loses_no_acknowledged_message() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let yaml = recorded_topology(&[server.url()], dir.path(), "durability");
    let mut orch = Running::start_file(TopologyFile::new(&yaml)).await;
    let web = orch.tier_addr("web").await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        acked.extend(publish(&orch, web, &format!("a{i}"), 25).await);
    }
    // Killed while publishes and deliveries are in flight.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let client = integration_tests::client();
            let mut ids = Vec::new();
            for i in 0..10_000 {
                match integration_tests::request(&client, "POST", web, "/publish/q?n=10", format!("b{i}").into()).await
                {
                    Ok((200, body)) => {
                        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                        ids.extend(
                            answer["published"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()),
                        );
                        sent.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            ids
        })
    };
    // Killed once the load has published a few hundred and deliveries are under way.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 300 || recorded(dir.path()).len() < 600 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    orch.signal("KILL");
    assert!(!orch.wait_exit().success());
    acked.extend(load.await.unwrap());
    assert!(acked.len() >= 800, "{} acknowledged before the kill", acked.len());

    // Started again: what JetStream acknowledged is delivered, none lost.
    let orch = Running::start_file(TopologyFile::new(&yaml)).await;
    let duplicates = wait_recorded(dir.path(), &acked);
    println!("acknowledged {}, duplicates {duplicates}", acked.len());
    drop(orch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_loses_no_acknowledged_message() {
    let store = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let yaml = recorded_topology(&[server.url()], dir.path(), "restart");
    let orch = Running::start_file(TopologyFile::new(&yaml)).await;
    let web = orch.tier_addr("web").await;
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        acked.extend(publish(&orch, web, &format!("a{i}"), 20).await);
    }
    server.kill();
    // While it is down, publishes are refused (not acknowledged), clearly.
    let client = integration_tests::client();
    let (code, body) = integration_tests::request(&client, "POST", web, "/publish/q?n=1", "down".into()).await.unwrap();
    assert_ne!(code, 200, "{body}");
    let server = server.restart();
    // Once it is back (the client reconnects by itself), publishing and delivering go on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids = publish(&orch, web, "after", 20).await;
        if !ids.is_empty() {
            acked.extend(ids);
            break;
        }
        assert!(Instant::now() < deadline, "publishing did not resume after the server's restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duplicates = wait_recorded(dir.path(), &acked);
    println!("acknowledged {}, duplicates {duplicates}", acked.len());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_serving_when_a_node_dies() {
    let stores: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let routes: Vec<u16> = (0..3).map(|_| NatsServer::free_port()).collect();
    let mut nodes: Vec<NatsServer> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let others: Vec<u16> = routes.iter().copied().filter(|p| *p != routes[i]).collect();
            NatsServer::cluster_node(store.path(), &format!("n{}", i + 1), "orch-test", routes[i], &others)
        })
        .collect();
    // A stream of three replicas needs the cluster's metadata leader, and its three peers.
    for node in &nodes {
        node.wait_for_line("metadata leader");
    }
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let dir = tempfile::tempdir().unwrap();
    let yaml = recorded_topology(&urls, dir.path(), "clustered");
    let orch = Running::start_file(TopologyFile::new(&yaml)).await;
    let web = orch.tier_addr("web").await;
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        acked.extend(publish(&orch, web, &format!("a{i}"), 20).await);
    }
    // One node dies; the other two keep a quorum for the stream's three replicas.
    nodes[1].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 200 {
        let ids = publish(&orch, web, "after", 20).await;
        after += ids.len();
        acked.extend(ids);
        assert!(Instant::now() < deadline, "publishing stopped with one node of three down ({after} since)");
    }
    let duplicates = wait_recorded(dir.path(), &acked);
    println!("acknowledged {}, duplicates {duplicates}", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_is_named_and_bad_settings_are_located() {
    // Nobody listens on this port (bound, then released, by this test).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let yaml = format!(
        "version: 1\nname: t\ntiers:\n  q: {{ plugin: queue, config: {{ backend: nats, url: 'nats://127.0.0.1:{port}' }} }}\n"
    );
    // As for any tier that cannot start: the others run, and the error says why.
    let orch = Running::start(&yaml).await;
    let needle = format!("cannot connect to NATS at nats://127.0.0.1:{port}");
    let line = match orch.log().into_iter().find(|l| l.contains(&needle)) {
        Some(line) => line,
        None => orch.wait_for_line(&needle),
    };
    assert!(line.contains("ERROR"), "{line}");
    drop(orch);

    let bad = TopologyFile::new(
        "version: 1\nname: t\ntiers:\n  q: { plugin: queue, config: { backend: nats, durable: true, stream: { replicas: 9 }, topics: { a: { capacity: 3 } } } }\n  e: { plugin: queue, config: { url: 'nats://x:1' } }\n",
    );
    let out = integration_tests::orchestrator(&["validate", bad.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for want in [
        "tiers.q.config.url: `backend: nats` needs the server's `url`",
        "tiers.q.config.durable: the embedded broker's",
        "tiers.q.config.stream.replicas: a stream has 1 to 5 replicas",
        "tiers.q.config.topics.a.capacity: one capacity for every topic on JetStream",
        "tiers.e.config.url: `url` is for `backend: nats`",
    ] {
        assert!(stderr.contains(want), "no `{want}` in:\n{stderr}");
    }
}
