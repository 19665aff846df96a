//! OpenTelemetry traces, exported over OTLP to a real receiver (the
//! OpenTelemetry project's protobuf messages, `tests/otlp/receiver.py`).

use std::collections::HashMap;
use std::io::BufRead as _;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use integration_tests::{Running, TopologyFile};
use serde_json::Value;

/// The OTLP/HTTP receiver, stopped (by its PID) when dropped.
pub struct Collector {
    child: std::process::Child,
    pub url: String,
    spans: Receiver<Value>,
}

impl Collector {
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// The receiver, on the loopback of network namespace `ns` if given.
    pub fn start_in(ns: Option<&str>) -> Self {
        let mut command = match ns {
            Some(ns) => {
                let mut ip = std::process::Command::new("ip");
                ip.args(["netns", "exec", ns]).arg(integration_tests::venv_python());
                ip
            }
            None => std::process::Command::new(integration_tests::venv_python()),
        };
        let mut child = command
            .arg(integration_tests::repo_root().join("tests/otlp/receiver.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver says where it listens").unwrap();
        let addr = first.strip_prefix("listening on ").expect("a `listening on` line").to_owned();
        let (tx, spans) = channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("the receiver prints JSON"));
            }
        });
        Self { child, url: format!("http://{addr}"), spans }
    }

    /// Spans received until `done` says the set is complete, within 20 s.
    pub fn wait_for(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while !done(&got) {
            match self.spans.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => got.push(span),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("the spans did not all arrive; got {:#?}", got)
                }
            }
        }
        got
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program that forwards every request it gets to its `orders` link (a
/// queue tier: a publish), with the trace headers it came with, as any
/// traced HTTP service does.
const RELAY: &str = r#"    def do_GET(self):
        request = urllib.request.Request(os.environ["ORCH_LINK_ORDERS_URL"] + "/", data=b"order-1", method="POST")
        for name in ("traceparent", "tracestate"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        with urllib.request.urlopen(request) as answer:
            self.reply(answer.status, {}, answer.read())
"#;

fn topology() -> TopologyFile {
    let topology = TopologyFile::new(
        r#"
version: 1
name: traced
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit }
  relay:
    plugin: process
    config: { command: [python3, relay.py] }
  orders: { plugin: queue }
  sink: { plugin: testkit }
links:
  - { from: web, to: kit, kind: rest }
  - { from: kit, to: relay, kind: rest }
  - { from: relay, to: orders, kind: queue, topic: orders }
  - { from: orders, to: sink, kind: queue }
"#,
    );
    let program = integration_tests::python_server("import urllib.request", RELAY);
    std::fs::write(topology.dir.path().join("relay.py"), program).unwrap();
    topology
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_through_a_native_tier_a_program_and_a_queue_is_one_trace() {
    let receiver = Collector::start();
    let orch = Running::start_with(topology(), &["--otlp-endpoint", &receiver.url, "--log-format", "json"]).await;
    assert!(orch.log().iter().any(|l| l.contains("Exporting traces.")), "{:?}", orch.log());
    let web = orch.tier_addr("web").await;
    // The native tier calls the program, which publishes; the subscriber gets it.
    let (code, body) = orch.get(web, "/call/relay/go").await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = orch.get(web, "/received/sink?min=1&wait_ms=10000").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("order-1"), "{body}");

    let names = [
        "web GET",
        "web → kit",
        "kit GET",
        "kit → relay",
        "relay GET",
        "relay publish orders",
        "orders receive publish orders",
        "orders deliver to sink",
        "sink process delivery",
    ];
    let spans = receiver.wait_for(|got| names.iter().all(|n| got.iter().any(|s| s["name"] == *n)));
    let by_name: HashMap<&str, &Value> =
        names.iter().map(|n| (*n, spans.iter().find(|s| s["name"] == *n).unwrap())).collect();
    let trace = by_name["web GET"]["trace_id"].as_str().unwrap();
    for name in names {
        assert_eq!(by_name[name]["trace_id"], trace, "{name} is in another trace: {spans:#?}");
    }
    // Each hop is the child of the one before it: the request's root, the
    // link calls (client, producer) and each tier's handling (server, consumer).
    assert_eq!(by_name["web GET"]["parent_span_id"], "", "the request's own span is the root");
    for pair in names.windows(2) {
        let (parent, child) = (by_name[pair[0]], by_name[pair[1]]);
        assert_eq!(child["parent_span_id"], parent["span_id"], "{} under {}: {spans:#?}", pair[1], pair[0]);
    }
    let kinds: Vec<&str> = names.iter().map(|n| by_name[n]["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["server", "client", "server", "client", "server", "producer", "server", "client", "consumer"],
        "{spans:#?}"
    );
    let relay = &by_name["relay GET"]["attributes"];
    assert_eq!((relay["orchestrator.tier"].as_str(), relay["orchestrator.replica"].as_i64()), (Some("relay"), Some(0)));
    let call = &by_name["kit → relay"]["attributes"];
    assert_eq!(
        (call["orchestrator.link"].as_str(), call["orchestrator.outcome"].as_str()),
        (Some("relay"), Some("2xx"))
    );
    assert_eq!(by_name["relay publish orders"]["attributes"]["messaging.destination.name"], "orders");
    assert!(spans.iter().all(|s| s["service"] == "orchestrator"), "{spans:#?}");

    // What a tier logs while it handles a traced call names the trace.
    assert_eq!(orch.get(web, "/sleep/1").await.0, 200);
    let line: Value = serde_json::from_str(&orch.wait_for_line("Sleeping for 1 ms.")).unwrap();
    let logged = line["trace_id"].as_str().unwrap_or_else(|| panic!("no trace_id in {line}")).to_owned();
    let spans = receiver.wait_for(|got| got.iter().any(|s| s["trace_id"] == logged.as_str() && s["name"] == "kit GET"));
    assert!(spans.iter().any(|s| s["trace_id"] == logged.as_str()));

    // A request that comes with a trace of its own continues it.
    let client = integration_tests::client();
    let req = hyper::Request::builder()
        .uri(format!("http://{web}/whoami"))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    let theirs = |s: &Value| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" && s["name"] == "web GET";
    let spans = receiver.wait_for(|got| got.iter().any(theirs));
    let root = spans.iter().find(|s| theirs(s)).unwrap();
    assert_eq!(root["parent_span_id"], "00f067aa0ba902b7", "{root}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_requests_succeed_and_dropped_spans_are_counted() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let topology = TopologyFile::new(
        "version: 1\nname: lost\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config: { routes: [{ path: /, link: kit }] }\n  kit: { plugin: testkit }\nlinks:\n  - { from: web, to: kit, kind: rest }\n",
    );
    let endpoint = format!("http://{closed}");
    let orch = Running::start_with_env(
        topology,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("ORCH_LOG", "info,orchestrator::traces=debug")],
    )
    .await;
    let started = format!("Exporting traces. endpoint={endpoint}/v1/traces");
    assert!(orch.log().iter().any(|l| l.contains(&started)), "{:?}", orch.log());
    let web = orch.tier_addr("web").await;
    for _ in 0..20 {
        assert_eq!(orch.get(web, "/whoami").await.0, 200);
    }
    orch.wait_for_line("Exporting spans failed; they are dropped.");
    let text = crate::metrics::scrape(&orch).await;
    let dropped =
        crate::metrics::value(&text, "orchestrator_trace_spans_dropped_total", &[("reason", "export_failed")]);
    // Each request made three spans (the listener's, the link call, the handling).
    assert!(dropped.is_some_and(|n| n >= 3.0), "{text}");
    assert_eq!(crate::metrics::value(&text, "orchestrator_trace_spans_exported_total", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sampling_ratio_is_refused() {
    let out = integration_tests::orchestrator(&["run", "topology.yaml", "--trace-sample", "2"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`2` is not a ratio between 0 and 1"));
}
