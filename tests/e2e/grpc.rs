//! RPC links with real gRPC clients and servers (Python grpcio) on both sides
//! of the orchestrator.

use integration_tests::{Running, TopologyFile, repo_root, venv_python};
use serde_json::Value;

fn topology() -> TopologyFile {
    let python = venv_python();
    let grpc = repo_root().join("examples/python/grpc");
    TopologyFile::new(&format!(
        r#"
version: 1
name: grpc
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: caller }}] }}
  caller:
    plugin: process
    config: {{ command: [{python}, {grpc}/caller.py], readiness: {{ http: /healthz }} }}
  pricing: {{ plugin: pricing, replicas: 3 }}
  pyprice:
    plugin: process
    replicas: 2
    config: {{ command: [{python}, {grpc}/server.py] }}
  slow: {{ plugin: testkit }}
  down:
    plugin: process
    config: {{ command: [no-such-program-here], max_restarts: 0 }}
links:
  - {{ from: web, to: caller, kind: rest }}
  - {{ from: caller, to: pricing, kind: rpc }}
  - {{ from: caller, to: pyprice, kind: rpc }}
  - {{ from: caller, to: slow, kind: rpc, timeout: 300ms }}
  - {{ from: caller, to: down, kind: rpc }}
"#,
        python = python.display(),
        grpc = grpc.display(),
    ))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get(orch: &Running, path: &str) -> Value {
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, path).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| orch.fail(&format!("{e}: {body}")))
}

fn call(link: &str, method: &str, message: &str, extra: &str) -> String {
    format!("/call?link={link}&method={}&message={}{extra}", enc(method), enc(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_and_servers_talk_through_rpc_links() {
    let orch = Running::start_file(topology()).await;
    let widget = r#"{"item":"widget","quantity":2}"#;

    // A Python gRPC client calls the native pricing tier.
    let answer = get(&orch, &call("pricing", "pricing.Pricing/Quote", widget, "")).await;
    assert_eq!(answer["code"], "OK", "{answer}");
    let reply: Value = serde_json::from_str(answer["reply"].as_str().unwrap()).unwrap();
    assert_eq!(reply["total"], 5.0);

    // ... and a Python gRPC server: gRPC on both sides.
    let answer = get(&orch, &call("pyprice", "pricing.Pricing/Quote", widget, "")).await;
    let reply: Value = serde_json::from_str(answer["reply"].as_str().unwrap()).unwrap();
    assert_eq!((reply["served_by"].as_str(), reply["total"].as_f64()), (Some("python"), Some(5.0)), "{answer}");

    // Metadata and trace context pass through the link to the server.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let extra = format!("&md-x-request-id=r-42&md-traceparent={traceparent}");
    let answer = get(&orch, &call("pyprice", "pricing.Pricing/Quote", widget, &extra)).await;
    let reply: Value = serde_json::from_str(answer["reply"].as_str().unwrap()).unwrap();
    assert_eq!(
        reply["metadata"],
        serde_json::json!({ "x-request-id": "r-42", "traceparent": traceparent }),
        "{answer}"
    );

    // Statuses chosen by either server reach the client.
    let missing = r#"{"item":"unobtainium"}"#;
    assert_eq!(get(&orch, &call("pricing", "pricing.Pricing/Quote", missing, "")).await["code"], "NOT_FOUND");
    let answer = get(&orch, &call("pyprice", "pricing.Pricing/Quote", missing, "")).await;
    assert_eq!(answer["code"], "NOT_FOUND", "{answer}");
    assert_eq!(answer["details"], "no price for `unobtainium`");
    assert_eq!(get(&orch, &call("pricing", "pricing.Pricing/Nope", "{}", "")).await["code"], "UNIMPLEMENTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_channel_are_balanced_per_call() {
    let orch = Running::start_file(topology()).await;
    let message = enc(r#"{"item":"gizmo"}"#);
    for (link, replicas) in [("pricing", 3), ("pyprice", 2)] {
        let path = format!("/spread?link={link}&method={}&message={message}&n=300", enc("pricing.Pricing/Quote"));
        let spread = get(&orch, &path).await;
        assert_eq!(spread["errors"], 0, "{spread}");
        let counts = spread["replicas"].as_object().unwrap();
        assert_eq!(counts.len(), replicas, "{spread}");
        for (replica, n) in counts {
            assert_eq!(n.as_u64(), Some(300 / replicas as u64), "{link} replica {replica}: {spread}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_unavailable_targets_give_grpc_statuses() {
    let orch = Running::start_file(topology()).await;
    // The client's 100 ms deadline, on a handler that takes a second.
    let late = get(&orch, &call("slow", "kit.Kit/Sleep", "1000", "&timeout=0.1")).await;
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    // No client deadline: the link's 300 ms timeout ends it, on the orchestrator's side.
    let capped = get(&orch, &call("slow", "kit.Kit/Sleep", "1000", "")).await;
    assert_eq!(capped["code"], "DEADLINE_EXCEEDED", "{capped}");
    assert!(capped["details"].as_str().unwrap().contains("within 300ms"), "{capped}");
    // In time, it answers.
    let on_time = get(&orch, &call("slow", "kit.Kit/Sleep", "10", "&timeout=5")).await;
    assert_eq!((on_time["code"].as_str(), on_time["reply"].as_str()), (Some("OK"), Some("slept 10")), "{on_time}");
    // A target with no ready replica: UNAVAILABLE.
    let down = get(&orch, &call("down", "x.X/Y", "", "&timeout=5")).await;
    assert_eq!(down["code"], "UNAVAILABLE", "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retargeting_an_rpc_link_keeps_the_clients_channel() {
    let file = topology();
    let yaml = file.yaml.clone();
    let orch = Running::start_file(file).await;
    let widget = r#"{"item":"widget"}"#;
    let before = orch.status().await;
    let answer = get(&orch, &call("pricing", "pricing.Pricing/Quote", widget, "")).await;
    assert!(serde_json::from_str::<Value>(answer["reply"].as_str().unwrap()).unwrap()["served_by"].is_null());

    // The link named `pricing` now leads to the Python servers.
    orch.save(&yaml.replace(
        "{ from: caller, to: pricing, kind: rpc }",
        "{ from: caller, to: pyprice, kind: rpc, name: pricing }",
    ));
    let after = orch.wait_generation(2).await;
    let answer = get(&orch, &call("pricing", "pricing.Pricing/Quote", widget, "")).await;
    let reply: Value = serde_json::from_str(answer["reply"].as_str().unwrap()).unwrap();
    assert_eq!(reply["served_by"], "python", "{answer}");
    // The caller was not restarted: its channel (and the link's address) stayed.
    assert_eq!(integration_tests::instance_ids(&before, "caller"), integration_tests::instance_ids(&after, "caller"));
    assert_eq!(after["last_reload"]["summary"], "links changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_example_topology_runs_as_its_comment_says() {
    let orch = Running::start_file(integration_tests::repo_topology("topologies/rpc.yaml")).await;
    let quote = r#"{"item":"widget","quantity":3}"#;
    for link in ["pricing", "pyprice"] {
        let answer = get(&orch, &call(link, "pricing.Pricing/Quote", quote, "")).await;
        assert_eq!(answer["code"], "OK", "{answer}");
        let reply: Value = serde_json::from_str(answer["reply"].as_str().unwrap()).unwrap();
        assert_eq!(reply["total"], 7.5, "{link}: {reply}");
    }
    let web = orch.tier_addr("web").await;
    // The native shop tier calls pricing over its rpc link; statuses become HTTP statuses.
    let (code, body) = orch.get(web, "/quote?item=widget&quantity=3").await;
    assert_eq!(code, 200, "{body}");
    let quote: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((quote["total"].as_f64(), quote["unit_price"].as_f64()), (Some(7.5), Some(2.5)), "{quote}");
    let (code, body) = orch.get(web, "/quote?item=sprocket").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("NOT_FOUND: "), "{body}");
    let (_, body) = orch
        .get(
            web,
            &format!(
                "/spread?link=pricing&method={}&message={}&n=300",
                enc("pricing.Pricing/Quote"),
                enc(r#"{"item":"gizmo"}"#)
            ),
        )
        .await;
    let spread: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (spread["replicas"].as_object().map(|r| r.len()), spread["errors"].as_u64()),
        (Some(3), Some(0)),
        "{spread}"
    );
}
