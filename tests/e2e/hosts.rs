//! One topology on several hosts: each host a network namespace this test
//! makes (`ip netns`, veth pairs on a bridge in a namespace of its own; no
//! address outside them), one orchestrator in each, and the test's own
//! requests sent from inside a namespace. Everything is removed at the end,
//! whatever the outcome.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use integration_tests::TopologyFile;
use serde_json::Value;

use crate::netns::{DEADLINE, Network, get, in_ns, send};

const TOKEN: &str = "a-peer-token-for-the-tests-only";

/// An orchestrator running one host's share, in that host's namespace;
/// stopped by its PID when dropped.
pub(crate) struct Host {
    child: Child,
    lines: Receiver<String>,
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    ns: String,
    admin: SocketAddr,
}

impl Host {
    pub(crate) fn start(network: &Network, i: usize, topology: &TopologyFile, token_file: &std::path::Path) -> Self {
        Self::start_as(network, i, &format!("h{i}"), topology, token_file)
    }

    /// Runs host `name`'s share in namespace `i`, with the token in `token_file`.
    fn start_as(
        network: &Network,
        i: usize,
        name: &str,
        topology: &TopologyFile,
        token_file: &std::path::Path,
    ) -> Self {
        let auth = [std::ffi::OsString::from("--peer-token-file"), token_file.into()];
        Self::start_with(network, i, name, topology, &auth)
    }

    /// Runs host `name`'s share in namespace `i`, its peers authenticated by `auth` (flags).
    fn start_with(
        network: &Network,
        i: usize,
        name: &str,
        topology: &TopologyFile,
        auth: &[std::ffi::OsString],
    ) -> Self {
        let ns = network.ns(&format!("h{i}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(integration_tests::bin())
            .arg("run")
            .arg(&topology.path)
            .args(["--host", name, "--admin", "127.0.0.1:0", "--drain-timeout", "5s"])
            .arg("--peer-listen")
            .arg(format!("{}:7700", network.addr(i)))
            .args(auth)
            .env("NO_COLOR", "1")
            .env("ORCH_LOG", "info")
            // Which machine (namespace) a program runs on, when several run one host's share.
            .env("ORCH_TEST_MACHINE", format!("h{i}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start an orchestrator in a namespace");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut host = Self { child, lines, log, ns, admin: "0.0.0.0:0".parse().unwrap() };
        let line = host.wait_for_line("Admin API listening.");
        host.admin = line.split("addr=").nth(1).unwrap().trim().parse().unwrap();
        host.wait_for_line("Topology running.");
        host
    }

    pub(crate) fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("{}: no `{needle}`:\n{}", self.ns, self.log.lock().unwrap().join("\n"))
                }
            }
        }
    }

    pub(crate) fn status(&self) -> Value {
        self.status_at("/admin/status")
    }

    /// The status once `reached` holds of it: each read waits for the next
    /// reload (or 15 s), so this follows the host's reloads as they happen.
    pub(crate) fn wait_status(&self, what: &str, reached: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut status = self.status();
        while !reached(&status) {
            assert!(Instant::now() < deadline, "{}: {what} not reached: {status}", self.ns);
            let next = status["reloads"]["attempts"].as_u64().unwrap_or(0) + 1;
            status = self.status_at(&format!("/admin/status?min_attempts={next}&wait=2s"));
        }
        status
    }

    fn status_at(&self, path: &str) -> Value {
        let (code, body) = get(&self.ns, self.admin, path, None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Host {
    /// Kills the orchestrator with SIGKILL, and waits for it to be gone.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gateway and testkit `front` on h1; testkit `back` (2 replicas) on h2 and h3.
fn topology(network: &Network, retries: u32) -> TopologyFile {
    TopologyFile::new(&topology_yaml(network, retries, "[h2, h3]"))
}

/// The same, with `back` on `back_hosts`.
fn topology_yaml(network: &Network, retries: u32, back_hosts: &str) -> String {
    format!(
        r#"
version: 1
name: spread
{hosts}tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: front }}] }}
  front: {{ plugin: testkit, host: h1 }}
  back: {{ plugin: testkit, host: {back_hosts}, replicas: 2 }}
  pricing: {{ plugin: pricing, host: [h2, h3] }}
links:
  - {{ from: web, to: front, kind: rest }}
  - {{ from: front, to: back, kind: rest, retries: {retries}, timeout: 5s }}
  - {{ from: front, to: pricing, kind: rpc, timeout: 5s }}
"#,
        hosts = network.hosts_yaml(),
    )
}

pub(crate) fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("peer-token");
    integration_tests::write_secret(&path, TOKEN);
    path
}

/// The host that answered each of `n` requests through h1's gateway.
fn served_by(network: &Network, n: usize) -> Vec<String> {
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    in_ns(&network.ns("h1"), async move || {
        let client = integration_tests::client();
        let mut hosts = Vec::new();
        for _ in 0..n {
            let (code, body) =
                integration_tests::request(&client, "GET", web, "/call/back/env/ORCH_HOST", Default::default())
                    .await
                    .unwrap();
            assert_eq!(code, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).unwrap();
            hosts.push(answer["value"].as_str().unwrap_or_default().to_owned());
        }
        hosts
    })
}

#[test]
fn three_hosts_serve_one_topology_and_calls_spread_over_the_hosts_that_run_a_tier() {
    let network = Network::new(3);
    let topology = topology(&network, 1);
    let token = token_file(topology.dir.path());
    let hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();
    let served = served_by(&network, 40);
    let on = |h: &str| served.iter().filter(|s| *s == h).count();
    assert_eq!(on("h2") + on("h3"), 40, "{served:?}");
    assert!(on("h2") >= 10 && on("h3") >= 10, "both hosts take calls: {served:?}");
    // h1 runs `back` as a remote tier: one replica per host that runs it.
    let status = hosts[0].status();
    let back = integration_tests::tier(&status, "back");
    assert_eq!(back["plugin"], "peer", "{back}");
    let peers: Vec<&str> =
        back["instances"].as_array().unwrap().iter().map(|i| i["detail"]["host"].as_str().unwrap()).collect();
    assert_eq!(peers, [format!("{}:7700", network.addr(2)), format!("{}:7700", network.addr(3))]);

    // RPC calls cross hosts too, with their statuses.
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let quote = |item: &str| {
        let body = format!(r#"{{"item":"{item}","quantity":2}}"#);
        post(&network.ns("h1"), web, "/rpc/pricing/pricing.Pricing/Quote", &body, None)
    };
    let (code, body) = quote("widget");
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["code"], "OK", "{answer}");
    let reply: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(reply["total"], 5.0, "{reply}");
    let (_, body) = quote("sprocket");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "NOT_FOUND", "{body}");

    // The peer listener: the token, and only the tiers that run there.
    let h2_peer: SocketAddr = format!("{}:7700", network.addr(2)).parse().unwrap();
    let (code, body) = get(&network.ns("h1"), h2_peer, "/whoami", None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&network.ns("h1"), h2_peer, "/whoami", Some("the-wrong-token-entirely"));
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&network.ns("h1"), h2_peer, "/whoami", Some(TOKEN));
    assert_eq!(code, 404, "`web` runs on h1 only: {body}");
    assert!(body.contains("tier `web` does not run on this host"), "{body}");
    // It speaks cleartext HTTP/2 too (RPC calls cross hosts that way), under the same rules.
    let h2c = |token: Option<&'static str>| {
        in_ns(&network.ns("h1"), async move || {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
            let mut req = hyper::Request::builder().uri(format!("http://{h2_peer}/_orch/peer/ready"));
            req = req.header("orch-peer-tier", "pricing");
            if let Some(token) = token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let req = req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
            let resp = tokio::time::timeout(DEADLINE, client.request(req)).await.expect("in time").expect("sent");
            (resp.version(), resp.status().as_u16())
        })
    };
    assert_eq!(h2c(None), (hyper::Version::HTTP_2, 401));
    assert_eq!(h2c(Some(TOKEN)), (hyper::Version::HTTP_2, 200));
}

#[test]
fn a_host_cut_off_or_killed_is_ejected_under_load_without_failed_requests_and_comes_back() {
    let network = Network::new(3);
    let topology = topology(&network, 1);
    let token = token_file(topology.dir.path());
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();

    let load = Load::start(&network);
    let start = Instant::now();
    load.wait_served(start, "h3", 20);

    network.link(3, false);
    let cut = Instant::now();
    // Ejected: soon after the cut, h1 sends nothing more to it (each
    // status read is a request to h1's admin API: no pause between them).
    loop {
        let status = hosts[0].status();
        let back = integration_tests::tier(&status, "back");
        if back["instances"][1]["detail"]["peers"][0]["state"] == "ejected" {
            break;
        }
        assert!(cut.elapsed() < DEADLINE, "h3 was not ejected: {back}");
    }
    let ejected_after = cut.elapsed();
    let after_cut = Instant::now();
    load.wait_served(after_cut, "h2", 50);
    assert_eq!(load.served_since(after_cut, "h3"), 0);

    network.link(3, true);
    let back_up = Instant::now();
    load.wait_served(back_up, "h3", 10);
    let recovered_after = back_up.elapsed();
    assert!(load.failed().is_empty(), "failed across the cut: {:?}", load.failed());

    // The same with h3's orchestrator killed (SIGKILL: nothing closes
    // cleanly), then started again.
    hosts.pop().expect("h3").kill();
    let killed = Instant::now();
    load.wait_served(killed, "h2", 50);
    let quiet = Instant::now();
    load.wait_served(quiet, "h2", 20);
    assert_eq!(load.served_since(quiet, "h3"), 0, "nothing reaches a dead host");
    hosts.push(Host::start(&network, 3, &topology, &token));
    let restarted = Instant::now();
    load.wait_served(restarted, "h3", 10);
    let back_after_restart = restarted.elapsed();
    let failed = load.stop();

    // GETs with `retries: 1`: what was in flight on h3 was sent again to h2.
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(ejected_after < Duration::from_secs(2), "ejected after {ejected_after:?}");
    assert!(recovered_after < Duration::from_secs(5), "back after {recovered_after:?}");
    assert!(back_after_restart < Duration::from_secs(5), "back after its restart in {back_after_restart:?}");
}

#[test]
fn a_peer_listener_beyond_loopback_without_a_token_is_refused_and_tls_files_are_checked() {
    let topology = TopologyFile::new("version: 1\nname: x\ntiers:\n  a: { plugin: testkit }\n");
    let out = integration_tests::orchestrator(&["run", topology.path_str(), "--peer-listen", "0.0.0.0:7700"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("give it a token with --peer-token-file"), "{stderr}");

    // Mutual TLS takes its three files, each readable and what it says it is.
    let dir = topology.dir.path();
    let files = Authority::new().issue(dir, "h1", &["h1".to_owned()]);
    let (cert, key, ca) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap(), files.ca.to_str().unwrap());
    let run = |tls: &[&str]| {
        let mut args = vec!["run", topology.path_str(), "--peer-listen", "127.0.0.1:0"];
        args.extend_from_slice(tls);
        integration_tests::orchestrator(&args)
    };
    let out = run(&["--peer-tls-cert", cert]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--peer-tls-key") && stderr.contains("--peer-tls-ca"), "{stderr}");
    let out = run(&["--peer-tls-cert", key, "--peer-tls-key", key, "--peer-tls-ca", ca]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("the certificate {key} holds no certificate")), "{stderr}");
    let missing = dir.join("no-such.crt");
    let out = run(&["--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read the certificate authority") && stderr.contains("no-such.crt"), "{stderr}");
    // A key that is not the certificate's.
    let other = Authority::new().issue(dir, "other", &["other".to_owned()]);
    let out = run(&["--peer-tls-cert", cert, "--peer-tls-key", other.key.to_str().unwrap(), "--peer-tls-ca", ca]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("the certificate {cert} and key")), "{stderr}");
    // A file over the limit is not read whole.
    let big = dir.join("big.crt");
    std::fs::write(&big, vec![b'-'; peer::tls::MAX_PEM_FILE as usize + 1]).unwrap();
    let out = run(&["--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is larger than 1048576 bytes"), "{stderr}");
    // A key other users can read, a certificate other users can write: refused.
    let readable = dir.join("readable.key");
    std::fs::copy(key, &readable).unwrap();
    std::fs::set_permissions(&readable, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run(&["--peer-tls-cert", cert, "--peer-tls-key", readable.to_str().unwrap(), "--peer-tls-ca", ca]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other users can read") && stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(cert, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = run(&["--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("every user can write it"), "{stderr}");
}

#[test]
fn a_placed_topology_names_its_hosts_and_places_every_tier() {
    let topology = TopologyFile::new(
        r#"version: 1
name: placed
hosts:
  h1: { peer: "10.0.0.1:7700" }
  h2: { peer: "10.0.0.2" }
  idle: { peer: "10.0.0.9:7700" }
tiers:
  web: { plugin: gateway, host: h1, config: { routes: [{ path: /, link: api }] } }
  api: { plugin: testkit, host: [h1, h2x, h1] }
  q: { plugin: queue, host: [h1, h2] }
  lost: { plugin: testkit }
links:
  - { from: web, to: api, kind: rest }
"#,
    );
    let out = integration_tests::orchestrator(&["validate", topology.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for message in [
        "hosts.h2.peer: `10.0.0.2` is not an `address:port`",
        "tiers.api.host[1]: unknown host `h2x`",
        "tiers.api.host[2]: tier `api` is placed on host `h1` twice",
        "tiers.q.host: queue tier `q` is placed on 2 hosts",
        "tiers.lost: tier `lost` has no `host:`, and the topology places its tiers",
        "hosts.idle: host `idle` runs no tier",
    ] {
        assert!(stderr.contains(message), "no `{message}` in:\n{stderr}");
    }
    assert!(stderr.contains("did you mean `h2`?"), "{stderr}");
    // Run without saying which host: refused, naming them.
    let ok = TopologyFile::new(
        "version: 1\nname: placed\nhosts:\n  h1: { peer: \"127.0.0.1:7700\" }\ntiers:\n  a: { plugin: testkit, host: h1 }\n",
    );
    let out = integration_tests::orchestrator(&["run", ok.path_str()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("places its tiers on hosts h1: run each host's share with --host NAME")
    );
    let out = integration_tests::orchestrator(&["run", ok.path_str(), "--host", "h9"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no such host; its hosts are: h1"));
}

/// A queue tier on h2, its publisher on h1, point-to-point workers on h1 and h3.
fn queue_topology(network: &Network) -> TopologyFile {
    TopologyFile::new(&format!(
        r#"
version: 1
name: queued
{hosts}tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: pub }}] }}
  pub: {{ plugin: testkit, host: h1 }}
  q: {{ plugin: queue, host: h2, config: {{ retry_backoff: 50ms, max_attempts: 20 }} }}
  worker: {{ plugin: testkit, host: [h1, h3], config: {{ delay_ms: 2 }} }}
links:
  - {{ from: web, to: pub, kind: rest }}
  - {{ from: pub, to: q, kind: queue, topic: jobs }}
  - {{ from: q, to: worker, kind: queue, topic: jobs, mode: point-to-point, concurrency: 2 }}
"#,
        hosts = network.hosts_yaml(),
    ))
}

/// POST `path` to `addr` from inside `ns` (with the peer token, asking for `peer_tier`, if given).
fn post(ns: &str, addr: SocketAddr, path: &str, body: &str, peer_tier: Option<&str>) -> (u16, String) {
    send(ns, "POST", addr, path, body, peer_tier.map(|tier| (TOKEN, tier)))
}

#[test]
fn a_subscriber_host_killed_mid_stream_loses_no_accepted_message() {
    let network = Network::new(3);
    let topology = queue_topology(&network);
    let token = token_file(topology.dir.path());
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let h1 = network.ns("h1");

    let (code, body) = post(&h1, web, "/publish/q?n=100", "first", None);
    assert_eq!(code, 200, "{body}");
    // h3 takes some of them (asked through its peer listener, as a peer would)…
    let h3_peer: SocketAddr = format!("{}:7700", network.addr(3)).parse().unwrap();
    let (code, body) = post(&h1, h3_peer, "/received/worker?min=1&wait_ms=15000", "", Some("worker"));
    assert_eq!(code, 200, "{body}");
    assert!(!serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().is_empty(), "{body}");
    // …and dies mid-stream, without a word.
    let h3 = hosts.pop().unwrap();
    assert!(Command::new("kill").args(["-9", &h3.child.id().to_string()]).status().unwrap().success());
    drop(h3);
    let (code, body) = post(&h1, web, "/publish/q?n=100", "second", None);
    assert_eq!(code, 200, "{body}");

    // Every accepted message is settled: acknowledged by h1 or (before it
    // died) h3, redelivered to h1 when h3 left it unanswered; none dead.
    let deadline = Instant::now() + DEADLINE;
    let topic = loop {
        let status = hosts[1].status();
        let q = integration_tests::tier(&status, "q");
        let topic = q["instances"][0]["detail"]["topics"]["jobs"].clone();
        if topic["depth"] == 0 && topic["in_flight"] == 0 {
            break topic;
        }
        assert!(Instant::now() < deadline, "not settled: {topic}");
    };
    assert_eq!(topic["published"], 200, "{topic}");
    assert_eq!(topic["dead_lettered"], 0, "{topic}");
    assert!(topic["delivered"].as_u64().unwrap() >= 200, "at least once: {topic}");
    // What h1 got covers the second half whole: h3 was gone by then.
    let (code, body) = get(&h1, web, "/received/worker?unique=200&wait_ms=1", None);
    assert_eq!(code, 200, "{body}");
    let received: Vec<Value> = serde_json::from_str(&body).unwrap();
    let second: std::collections::HashSet<&str> =
        received.iter().filter_map(|m| m["body"].as_str()).filter(|b| b.starts_with("second-")).collect();
    assert_eq!(second.len(), 100, "every message published after h3 died reached h1");
}

#[test]
fn workers_on_two_hosts_share_a_jetstream_queue_and_a_killed_hosts_messages_go_to_the_other() {
    let network = Network::new(3);
    // The server runs in h1's namespace, on its address: every host reaches it.
    let store = tempfile::tempdir().unwrap();
    let nats = integration_tests::NatsServer::start_in(store.path(), &network.ns("h1"), &network.addr(1));
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: queued-on-nats
{hosts}tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: pub }}] }}
  pub: {{ plugin: testkit, host: h1 }}
  q: {{ plugin: queue, host: [h2, h3], config: {{ backend: nats, url: '{url}', ack_wait: 2s, max_attempts: 20, retry_backoff: 50ms }} }}
  worker: {{ plugin: testkit, host: [h2, h3], config: {{ delay_ms: 5 }} }}
links:
  - {{ from: web, to: pub, kind: rest }}
  - {{ from: pub, to: q, kind: queue, topic: jobs, retries: 2 }}   # a publish not sent goes to the other host
  - {{ from: q, to: worker, kind: queue, topic: jobs, mode: point-to-point, concurrency: 2 }}
"#,
        hosts = network.hosts_yaml(),
        url = nats.url(),
    ));
    let token = token_file(topology.dir.path());
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let h1 = network.ns("h1");
    let received = |h: usize, query: &str| -> Vec<Value> {
        let peer: SocketAddr = format!("{}:7700", network.addr(h)).parse().unwrap();
        let (code, body) = post(&h1, peer, &format!("/received/worker?{query}&wait_ms=15000"), "", Some("worker"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };

    // Enough that h3 is still busy with its share when it dies.
    let (code, body) = post(&h1, web, "/publish/q?n=2000", "first", None);
    assert_eq!(code, 200, "{body}");
    // Both hosts' workers compete for the stream's messages…
    assert!(!received(2, "min=1").is_empty());
    assert!(!received(3, "min=1").is_empty());
    // …and h3 dies mid-stream, with messages pulled and not acknowledged.
    let h3 = hosts.pop().unwrap();
    assert!(Command::new("kill").args(["-9", &h3.child.id().to_string()]).status().unwrap().success());
    drop(h3);
    let (code, body) = post(&h1, web, "/publish/q?n=100", "second", None);
    assert_eq!(code, 200, "{body}");

    // Every acknowledged publish is settled: nothing pending on the shared
    // consumer, nothing unacknowledged (h3's went back to the stream after
    // `ack_wait`, and to h2).
    let deadline = Instant::now() + Duration::from_secs(30);
    let group = loop {
        let status = hosts[1].status();
        let group =
            integration_tests::tier(&status, "q")["instances"][0]["detail"]["topics"]["jobs"]["subscribers"]["worker"]
                .clone();
        // Every message handed out at least once (the count is the shared consumer's), none left.
        if group["deliveries"].as_u64() >= Some(2100) && group["lag"] == 0 && group["in_flight"] == 0 {
            break group;
        }
        assert!(Instant::now() < deadline, "not settled: {group}");
        // The status is JetStream's, read each second.
        std::thread::sleep(Duration::from_millis(100));
    };
    // More deliveries than messages: h3's unacknowledged ones were handed
    // out again, to h2 (on a loaded machine h3 may have had none left).
    let redelivered = group["deliveries"].as_u64().unwrap() > 2100;
    let at_h2 = received(2, "min=0");
    let second: std::collections::HashSet<&str> =
        at_h2.iter().filter_map(|m| m["body"].as_str()).filter(|b| b.starts_with("second-")).collect();
    assert_eq!(second.len(), 100, "every message published after h3 died reached h2");
    if redelivered {
        assert!(at_h2.iter().any(|m| m["attempt"].as_u64() > Some(1)), "h3's reached h2, again: {group}");
    }
    drop(nats);
}

/// Which host answered, when; and who waits for more.
type Answers = Arc<(Mutex<Vec<(Instant, String)>>, Condvar)>;

/// Steady load from h1's gateway onto `back`, recording which host answered.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Answers,
    failed: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(network: &Network) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (ns, s, sn, f) = (network.ns("h1"), stop.clone(), seen.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            in_ns(&ns, async move || {
                let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
                let client = integration_tests::client();
                while !s.load(Ordering::Relaxed) {
                    let path = "/call/back/env/ORCH_HOST";
                    match integration_tests::request(&client, "GET", web, path, Default::default()).await {
                        Ok((200, body)) => {
                            let answer: Value = serde_json::from_str(&body).unwrap();
                            let (list, changed) = &*sn;
                            list.lock()
                                .unwrap()
                                .push((Instant::now(), answer["value"].as_str().unwrap_or_default().into()));
                            changed.notify_all();
                        }
                        other => f.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        });
        Self { stop, seen, failed, thread: Some(thread) }
    }

    fn served_since(&self, since: Instant, host: &str) -> usize {
        self.seen.0.lock().unwrap().iter().filter(|(at, h)| *at > since && h == host).count()
    }

    /// Waits until `host` has answered `n` requests since `since`.
    fn wait_served(&self, since: Instant, host: &str, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        let (list, changed) = &*self.seen;
        let mut guard = list.lock().unwrap();
        while guard.iter().filter(|(at, h)| *at > since && h == host).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{host} did not answer {n} requests within {DEADLINE:?}");
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// What failed so far.
    fn failed(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }

    /// Stops, and gives what failed.
    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.failed.lock().unwrap().clone()
    }
}

#[test]
fn a_tier_moved_from_one_host_to_another_as_documented_fails_no_request() {
    let network = Network::new(3);
    let topology = TopologyFile::new(&topology_yaml(&network, 1, "h2"));
    let token = token_file(topology.dir.path());
    let hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();
    let save = |yaml: String| {
        let tmp = topology.dir.path().join(".topology.yaml.swp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &topology.path).unwrap();
    };
    let load = Load::start(&network);
    let start = Instant::now();
    load.wait_served(start, "h2", 20);

    // Where `back` runs, as host `h` sees it: its own plugin, or the hosts it reaches.
    let placed = |status: &Value| {
        let back = integration_tests::tier(status, "back");
        let reached: Vec<String> = back["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["detail"]["host"].as_str().map(str::to_owned))
            .collect();
        (back["plugin"].as_str().unwrap_or_default().to_owned(), reached)
    };
    let peer = |h: usize| format!("{}:7700", network.addr(h));

    // 1. On both hosts: h3 starts it, callers balance over both.
    save(topology_yaml(&network, 1, "[h2, h3]"));
    hosts[0].wait_status("back on h2 and h3", |s| placed(s) == ("peer".into(), vec![peer(2), peer(3)]));
    hosts[2].wait_status("back on h3", |s| placed(s).0 == "testkit");
    let both = Instant::now();
    load.wait_served(both, "h3", 20);
    // 2. On the new host only: h2 stops it, callers go to h3.
    save(topology_yaml(&network, 1, "h3"));
    hosts[0].wait_status("back on h3 only", |s| placed(s) == ("peer".into(), vec![peer(3)]));
    hosts[1].wait_status("back gone from h2", |s| placed(s).0 == "peer");
    let moved = Instant::now();
    load.wait_served(moved, "h3", 50);
    assert_eq!(load.served_since(moved, "h2"), 0, "h2 no longer runs it");
    let failed = load.stop();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let status = hosts[1].status();
    assert!(
        status["tiers"].as_array().unwrap().iter().all(|t| t["name"] != "back" || t["plugin"] == "peer"),
        "{status}"
    );
}

/// Answers `{"host": $ORCH_HOST}`.
const WHERE: &str = r#"    def do_GET(self):
        self.reply(200, {"content-type": "application/json"}, json.dumps({"host": os.environ["ORCH_HOST"]}).encode())
"#;

/// Calls its `back` link (`ORCH_LINK_BACK_URL`) and answers what it said.
const CALLER: &str = r#"    def do_GET(self):
        with urllib.request.urlopen(os.environ["ORCH_LINK_BACK_URL"] + "/env/ORCH_HOST") as answer:
            self.reply(200, {"content-type": "application/json"}, answer.read())
"#;

#[test]
fn programs_call_and_are_called_across_hosts_as_they_would_locally() {
    let network = Network::new(3);
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: programs
{hosts}tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config:
      routes:
        - {{ path: /front, link: front, strip_prefix: true }}
        - {{ path: /caller, link: caller, strip_prefix: true }}
        - {{ path: /grpc, link: grpc, strip_prefix: true }}
  front: {{ plugin: testkit, host: h1 }}
  where: {{ plugin: process, host: h2, config: {{ command: [python3, where.py] }} }}
  caller: {{ plugin: process, host: h1, config: {{ command: [python3, caller.py] }} }}
  back: {{ plugin: testkit, host: h3 }}
  grpc:
    plugin: process
    host: h1
    config: {{ command: [{python}, {grpc}/caller.py], readiness: {{ http: /healthz }} }}
  pricing: {{ plugin: pricing, host: [h2, h3] }}
links:
  - {{ from: web, to: front, kind: rest }}
  - {{ from: web, to: caller, kind: rest }}
  - {{ from: web, to: grpc, kind: rest }}
  - {{ from: front, to: where, kind: rest }}
  - {{ from: caller, to: back, kind: rest }}
  - {{ from: grpc, to: pricing, kind: rpc }}
"#,
        hosts = network.hosts_yaml(),
        python = integration_tests::venv_python().display(),
        grpc = integration_tests::repo_root().join("examples/python/grpc").display(),
    ));
    let dir = topology.dir.path();
    std::fs::write(dir.join("where.py"), integration_tests::python_server("import json", WHERE)).unwrap();
    std::fs::write(dir.join("caller.py"), integration_tests::python_server("import urllib.request", CALLER)).unwrap();
    let token = token_file(dir);
    let hosts: Vec<Host> = (1..=3).map(|i| Host::start(&network, i, &topology, &token)).collect();
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    // Started one after the other: h1 finds h2 and h3 once they serve.
    let ready = |tier: &'static str| {
        move |status: &Value| {
            let t = integration_tests::tier(status, tier);
            t["instances"][0]["ready"] == true
        }
    };
    hosts[0].wait_status("where reachable", ready("where"));
    hosts[0].wait_status("back reachable", ready("back"));
    // h1's native tier calls the program on h2.
    let (code, body) = get(&network.ns("h1"), web, "/front/call/where/", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["host"], "h2", "{body}");
    // h1's program calls h3's tier through its link's local URL.
    let (code, body) = get(&network.ns("h1"), web, "/caller/", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["value"], "h3", "{body}");
    // A grpcio client on h1, on one channel: its calls spread over h2 and h3,
    // call by call (they cross hosts as streams of one HTTP/2 connection each).
    hosts[0].wait_status("pricing reachable on both", |s| {
        let t = integration_tests::tier(s, "pricing");
        t["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["ready"] == true))
    });
    let spread = "/grpc/spread?link=pricing&method=pricing.Pricing/Quote&message=%7B%22item%22%3A%22gizmo%22%7D&n=200";
    let (code, body) = get(&network.ns("h1"), web, spread, None);
    assert_eq!(code, 200, "{body}");
    let spread: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spread["errors"], 0, "{spread}");
    assert_eq!(spread["replicas"], serde_json::json!({ "h2/0": 100, "h3/0": 100 }), "{spread}");
}

#[test]
fn a_host_named_in_dns_is_every_address_the_name_has() {
    let network = Network::new(3);
    // `backs` is both h2 and h3: two machines running one host's share, as
    // the pods behind a headless Service are.
    network.hosts_file(1, &format!("{} backs\n{} backs\n", network.addr(2), network.addr(3)));
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: named
hosts:
  h1: {{ peer: "{a1}:7700" }}
  hb: {{ peer: "backs:7700" }}
tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: front }}] }}
  front: {{ plugin: testkit, host: h1 }}
  back: {{ plugin: testkit, host: hb }}
links:
  - {{ from: web, to: front, kind: rest }}
  - {{ from: front, to: back, kind: rest, retries: 1, timeout: 5s }}
"#,
        a1 = network.addr(1)
    ));
    let token = token_file(topology.dir.path());
    let hosts = [
        Host::start(&network, 1, &topology, &token),
        Host::start_as(&network, 2, "hb", &topology, &token),
        Host::start_as(&network, 3, "hb", &topology, &token),
    ];
    let status = hosts[0].wait_status("both addresses ready", |s| {
        let peers = &integration_tests::tier(s, "back")["instances"][0]["detail"]["peers"];
        peers.as_array().is_some_and(|p| p.len() == 2 && p.iter().all(|a| a["state"] == "ready"))
    });
    let peers = &integration_tests::tier(&status, "back")["instances"][0]["detail"]["peers"];
    let mut addresses: Vec<&str> = peers.as_array().unwrap().iter().map(|p| p["address"].as_str().unwrap()).collect();
    addresses.sort();
    assert_eq!(addresses, [format!("{}:7700", network.addr(2)), format!("{}:7700", network.addr(3))]);
    assert!(served_by(&network, 20).iter().all(|h| h == "hb"));
    // One of the two cut off: the name's other address serves.
    network.link(2, false);
    assert!(served_by(&network, 20).iter().all(|h| h == "hb"));
}

#[test]
fn a_call_across_hosts_is_one_trace_and_is_measured_by_its_caller() {
    let network = Network::new(2);
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: traced
{hosts}tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: front }}] }}
  front: {{ plugin: testkit, host: h1 }}
  back: {{ plugin: testkit, host: h2 }}
links:
  - {{ from: web, to: front, kind: rest }}
  - {{ from: front, to: back, kind: rest }}
"#,
        hosts = network.hosts_yaml(),
    ));
    let token = token_file(topology.dir.path());
    // A receiver in each namespace, each host exporting to its own.
    let collectors = [
        crate::traces::Collector::start_in(Some(&network.ns("h1"))),
        crate::traces::Collector::start_in(Some(&network.ns("h2"))),
    ];
    let hosts: Vec<Host> = (1..=2)
        .map(|i| {
            let mut auth = vec![std::ffi::OsString::from("--peer-token-file"), token.clone().into()];
            auth.extend(["--otlp-endpoint".into(), collectors[i - 1].url.clone().into()]);
            Host::start_with(&network, i, &format!("h{i}"), &topology, &auth)
        })
        .collect();
    hosts[0].wait_status("back reachable", |s| integration_tests::tier(s, "back")["instances"][0]["ready"] == true);
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let (code, body) = get(&network.ns("h1"), web, "/call/back/whoami", None);
    assert_eq!(code, 200, "{body}");

    // h1: the request, the call to `front`, front's handling and its call to `back`.
    let on_h1 = collectors[0]
        .wait_for(|got| ["web GET", "front → back"].iter().all(|name| got.iter().any(|s| s["name"] == *name)));
    let root = on_h1.iter().find(|s| s["name"] == "web GET").expect("the request's span");
    let trace = root["trace_id"].as_str().unwrap();
    let call = on_h1.iter().find(|s| s["name"] == "front → back").unwrap();
    assert_eq!(call["trace_id"], trace, "{on_h1:#?}");
    // h2: back's handling, in the same trace, under a span of h1's.
    let on_h2 = collectors[1].wait_for(|got| got.iter().any(|s| s["trace_id"] == trace));
    let handled = on_h2.iter().find(|s| s["trace_id"] == trace).unwrap();
    let h1_spans: Vec<&Value> = on_h1.iter().map(|s| &s["span_id"]).collect();
    assert!(h1_spans.contains(&&handled["parent_span_id"]), "h2's span is not under h1's: {handled} / {on_h1:#?}");

    // The caller measures the link, as for a local one.
    let (code, text) = get(&network.ns("h1"), hosts[0].admin, "/admin/metrics", None);
    assert_eq!(code, 200);
    let calls = crate::metrics::value(
        &text,
        "orchestrator_link_requests_total",
        &[("from", "front"), ("to", "back"), ("outcome", "2xx")],
    );
    assert_eq!(calls, Some(1.0), "{text}");
}

/// Answers `{"machine": $ORCH_TEST_MACHINE}`: the namespace it runs in.
const MACHINE: &str = r#"    def do_GET(self):
        self.reply(200, {"content-type": "application/json"}, json.dumps({"machine": os.environ["ORCH_TEST_MACHINE"]}).encode())
"#;

#[test]
fn hosts_are_weighted_by_their_ready_replicas() {
    let network = Network::new(4);
    // Host `hb` is two machines (h2 and h3, one DNS name); host h4 is one.
    // With 2 replicas on each machine, hb has 4 ready and h4 2: weighted,
    // each machine gets a third of the calls (evenly per host, h4 would get half).
    network.hosts_file(1, &format!("{} backs\n{} backs\n", network.addr(2), network.addr(3)));
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: weighted
hosts:
  h1: {{ peer: "{a1}:7700" }}
  hb: {{ peer: "backs:7700" }}
  h4: {{ peer: "{a4}:7700" }}
tiers:
  web:
    plugin: gateway
    host: h1
    listen: 127.0.0.1:18080
    config: {{ routes: [{{ path: /, link: back }}] }}
  back: {{ plugin: process, host: [hb, h4], replicas: 2, config: {{ command: [python3, machine.py] }} }}
links:
  - {{ from: web, to: back, kind: rest, retries: 1 }}
"#,
        a1 = network.addr(1),
        a4 = network.addr(4),
    ));
    let dir = topology.dir.path();
    std::fs::write(dir.join("machine.py"), integration_tests::python_server("import json", MACHINE)).unwrap();
    let token = token_file(dir);
    let hosts = [
        Host::start(&network, 1, &topology, &token),
        Host::start_as(&network, 2, "hb", &topology, &token),
        Host::start_as(&network, 3, "hb", &topology, &token),
        Host::start_as(&network, 4, "h4", &topology, &token),
    ];
    let weights = |s: &Value| -> Vec<u64> {
        let back = integration_tests::tier(s, "back");
        back["instances"].as_array().map_or(Vec::new(), |i| {
            i.iter().map(|i| if i["ready"] == true { i["detail"]["weight"].as_u64().unwrap_or(0) } else { 0 }).collect()
        })
    };
    hosts[0].wait_status("hb weighted 4 and h4 2", |s| weights(s) == [4, 2]);
    let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let machines = in_ns(&network.ns("h1"), async move || {
        let client = integration_tests::client();
        let mut machines = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..300 {
            let (code, body) = integration_tests::request(&client, "GET", web, "/", Default::default()).await.unwrap();
            assert_eq!(code, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).unwrap();
            *machines.entry(answer["machine"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        machines
    });
    for machine in ["h2", "h3", "h4"] {
        let n = machines.get(machine).copied().unwrap_or(0);
        assert!((80..=120).contains(&n), "{machine} took {n} of 300, not about a third: {machines:?}");
    }
}

/// A certificate authority, and certificates it signs.
struct Authority {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pem: String,
}

impl Authority {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { key, params, pem }
    }

    /// A certificate for `names` (addresses or DNS names) and its key,
    /// written as `{stem}.crt` and `{stem}.key` in `dir`, with the
    /// authority as `ca.crt`: the three files of `--peer-tls-*`.
    fn issue(&self, dir: &std::path::Path, stem: &str, names: &[String]) -> peer::tls::Files {
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = rcgen::CertificateParams::new(names.to_vec()).unwrap().signed_by(&key, &issuer).unwrap();
        let files = peer::tls::Files {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        integration_tests::write_secret(&files.key, key.serialize_pem());
        std::fs::write(&files.ca, &self.pem).unwrap();
        files
    }
}

fn tls_flags(files: &peer::tls::Files) -> Vec<std::ffi::OsString> {
    let mut flags = Vec::new();
    for (flag, path) in [("--peer-tls-cert", &files.cert), ("--peer-tls-key", &files.key), ("--peer-tls-ca", &files.ca)]
    {
        flags.push(flag.into());
        flags.push(path.into());
    }
    flags
}

/// How a TLS client fares with a peer listener: the answer's status, or
/// why there was none.
fn over_tls(ns: &str, addr: SocketAddr, config: rustls::ClientConfig) -> Result<u16, String> {
    let config = Arc::new(config);
    in_ns(ns, async move || {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::from(addr.ip());
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .uri("/_orch/peer/ready")
                .header("host", addr.to_string())
                .header("orch-peer-tier", "back")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send.send_request(req).await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        };
        tokio::time::timeout(DEADLINE, attempt).await.unwrap_or_else(|_| Err("no answer in time".into()))
    })
}

#[test]
fn hosts_with_mutual_tls_serve_each_other_and_refuse_who_has_no_certificate_of_theirs() {
    let network = Network::new(3);
    let topology = topology(&network, 1);
    let dir = topology.dir.path();
    let authority = Authority::new();
    // No token: the certificates are the peers' credentials.
    let hosts: Vec<Host> = (1..=3)
        .map(|i| {
            let files = authority.issue(dir, &format!("h{i}"), &[network.addr(i).to_string()]);
            Host::start_with(&network, i, &format!("h{i}"), &topology, &tls_flags(&files))
        })
        .collect();
    let ready = |status: &Value| {
        let back = integration_tests::tier(status, "back");
        back["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["ready"] == true))
    };
    hosts[0].wait_status("h2 and h3 reachable over TLS", ready);
    let served = served_by(&network, 20);
    assert!(served.iter().any(|h| h == "h2") && served.iter().any(|h| h == "h3"), "{served:?}");
    assert_eq!(served.len(), 20);

    let h2_peer: SocketAddr = format!("{}:7700", network.addr(2)).parse().unwrap();
    let h1 = network.ns("h1");
    // A client that trusts the listener, presenting `files`' certificate if given.
    let client = |files: Option<&peer::tls::Files>| {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(authority.pem.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match files {
            None => builder.with_no_client_auth(),
            Some(files) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(&files.cert).unwrap()],
                    PrivateKeyDer::from_pem_file(&files.key).unwrap(),
                )
                .unwrap(),
        }
    };
    // A peer with a certificate of the authority's is served.
    let member = authority.issue(dir, "member", &["member".to_owned()]);
    assert_eq!(over_tls(&h1, h2_peer, client(Some(&member))), Ok(200));
    // One whose certificate another authority signed is refused in the handshake.
    let stranger = Authority::new().issue(dir, "stranger", &["stranger".to_owned()]);
    let refused = over_tls(&h1, h2_peer, client(Some(&stranger)));
    assert!(refused.is_err(), "a stranger's certificate was taken: {refused:?}");
    // So is one without a certificate.
    let refused = over_tls(&h1, h2_peer, client(None));
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");
    // And plain HTTP gets no answer.
    let answer = in_ns(&h1, async move || {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = tokio::net::TcpStream::connect(h2_peer).await.unwrap();
        tcp.write_all(b"GET /_orch/peer/ready HTTP/1.1\r\nhost: x\r\norch-peer-tier: back\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer)).await.expect("closed in time");
        answer
    });
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
}

/// The peer listener's address, as a running orchestrator logged it (before it was ready).
fn peer_listener(orch: &integration_tests::Running) -> SocketAddr {
    let log = orch.log();
    let line = log.iter().find(|l| l.contains("Peer listener listening.")).expect("the peer listener's line");
    line.split("addr=").nth(1).unwrap().trim().parse().unwrap()
}

/// The settings a server announces first on a cleartext HTTP/2 connection
/// to `addr`: (identifier, value) pairs.
async fn announced_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The client's preface, then an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head)).await.expect("in time").unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is SETTINGS: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_bounds_streams_per_connection_and_tls_handshakes() {
    let topology = TopologyFile::new("version: 1\nname: bounds\ntiers:\n  a: { plugin: testkit }\n");
    // Cleartext: HTTP/2 streams per connection, as the SETTINGS frame announces them.
    let orch = integration_tests::Running::start_with(topology, &["--peer-listen", "127.0.0.1:0"]).await;
    let addr = peer_listener(&orch);
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let settings = announced_settings(addr).await;
    assert!(settings.contains(&(MAX_CONCURRENT_STREAMS, 256)), "{settings:?}");

    // TLS: a client that connects and says nothing is let go after 10 s, not before.
    let topology = TopologyFile::new("version: 1\nname: bounds\ntiers:\n  a: { plugin: testkit }\n");
    let files = Authority::new().issue(topology.dir.path(), "here", &["127.0.0.1".to_owned()]);
    let tls: Vec<String> = tls_flags(&files).iter().map(|f| f.to_string_lossy().into_owned()).collect();
    let mut args = vec!["--peer-listen", "127.0.0.1:0"];
    args.extend(tls.iter().map(String::as_str));
    let orch = integration_tests::Running::start_with(topology, &args).await;
    let addr = peer_listener(&orch);
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut silent, &mut buf)).await;
    let closed_after = opened.elapsed();
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed, not answered: {read:?}");
    assert!(
        closed_after >= Duration::from_secs(10) && closed_after < Duration::from_secs(15),
        "closed after {closed_after:?}"
    );
}

/// `redis-cli` in namespace `ns` on `url`, with a bounded wait: its output
/// (an error is output too), or `None` if it failed.
fn redis_cli(ns: &str, url: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "20", "redis-cli", "--no-auth-warning", "-u", url])
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !said.is_empty() && !said.starts_with("ERR") && !said.contains("error")).then_some(said)
}

#[test]
fn a_tcp_link_reaches_a_store_on_another_host_through_its_peer_listener() {
    let network = Network::new(2);
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: store-across
{hosts}tiers:
  cache: {{ plugin: redis, host: h2 }}
  app:
    plugin: process
    host: h1
    config:
      command: [sh, -c, 'echo "URL=$ORCH_LINK_CACHE_URL"; exec sleep 3600']
      readiness: {{ exec: ["true"] }}
links:
  - {{ from: app, to: cache, kind: tcp }}
"#,
        hosts = network.hosts_yaml(),
    ));
    let dir = topology.dir.path().to_path_buf();
    let token = token_file(&dir);
    // The store's host first: the caller's host learns its connection string
    // from it before the caller starts.
    let h2 = Host::start(&network, 2, &topology, &token);
    let h1 = Host::start(&network, 1, &topology, &token);
    let logged = h1.log.lock().unwrap().iter().find(|l| l.contains("URL=")).cloned();
    let line = logged.unwrap_or_else(|| h1.wait_for_line("URL="));
    let url = line.split("URL=").nth(1).unwrap().trim().to_owned();
    // The password the store's host generated, at the caller's own link address.
    let password = std::fs::read_to_string(dir.join(".orchestrator/cache/password")).unwrap();
    assert!(url.starts_with(&format!("redis://default:{}@127.0.0.1:", password.trim())), "{url}");
    let ns1 = network.ns("h1");
    assert_eq!(redis_cli(&ns1, &url, &["SET", "greeting", "across"]).as_deref(), Some("OK"));
    assert_eq!(redis_cli(&ns1, &url, &["GET", "greeting"]).as_deref(), Some("across"));
    // The caller's status names the store's host as its replica there.
    let status = h1.status();
    assert_eq!(integration_tests::tier(&status, "cache")["plugin"], "peer", "{status}");

    // The store's host cut off: a new connection fails (within the link's
    // connect timeout); back, the same address serves again, the data there.
    network.link(2, false);
    h1.wait_status("cache unreachable", |s| integration_tests::tier(s, "cache")["instances"][0]["ready"] == false);
    assert_eq!(redis_cli(&ns1, &url, &["GET", "greeting"]), None);
    network.link(2, true);
    h1.wait_status("cache reachable", |s| integration_tests::tier(s, "cache")["instances"][0]["ready"] == true);
    assert_eq!(redis_cli(&ns1, &url, &["GET", "greeting"]).as_deref(), Some("across"));
    drop((h1, h2));
}
