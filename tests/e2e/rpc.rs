//! RPC links between native tiers: gRPC statuses, per-call balancing, deadlines.

use std::collections::BTreeMap;

use integration_tests::{Running, TopologyFile, orchestrator};
use serde_json::Value;

const RPC: &str = r#"
version: 1
name: rpc
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit }
  pricing: { plugin: pricing, replicas: 3 }
  slow: { plugin: testkit }
links:
  - { from: web, to: kit, kind: rest }
  - { from: kit, to: pricing, kind: rpc, timeout: 2s }
  - { from: kit, to: slow, kind: rpc, timeout: 300ms }
"#;

async fn call(orch: &Running, path: &str, message: &str) -> Value {
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.post(web, path, message.to_owned()).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_rpc_calls_are_balanced_per_call_and_carry_statuses() {
    let orch = Running::start(RPC).await;
    let quote = "/rpc/pricing/pricing.Pricing/Quote";
    let answer = call(&orch, quote, r#"{"item":"widget","quantity":2}"#).await;
    assert_eq!(answer["code"], "OK", "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["total"], 5.0);

    // Each call is balanced on its own: round robin over the 3 replicas.
    let mut per_replica = BTreeMap::new();
    for _ in 0..30 {
        let answer = call(&orch, quote, r#"{"item":"gizmo"}"#).await;
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        *per_replica.entry(body["replica"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per_replica, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));

    // The code the plugin chose reaches the caller.
    assert_eq!(call(&orch, quote, r#"{"item":"unobtainium"}"#).await["code"], "NOT_FOUND");
    assert_eq!(call(&orch, "/rpc/pricing/pricing.Pricing/Nope", "{}").await["code"], "UNIMPLEMENTED");
    // A panic is INTERNAL.
    let panicked = call(&orch, "/rpc/slow/kit.Kit/Panic", "").await;
    assert_eq!(panicked["code"], "INTERNAL", "{panicked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_applies_capped_by_the_link_timeout() {
    let orch = Running::start(RPC).await;
    // The caller's 100 ms deadline, well under the link's 300 ms.
    let late = call(&orch, "/rpc/slow/kit.Kit/Sleep?deadline_ms=100", "1000").await;
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    assert!(late["message"].as_str().unwrap().contains("within 100ms"), "{late}");
    // A generous deadline is capped by the link's timeout.
    let capped = call(&orch, "/rpc/slow/kit.Kit/Sleep?deadline_ms=60000", "1000").await;
    assert!(capped["message"].as_str().unwrap().contains("within 300ms"), "{capped}");
    // In time, it answers.
    let on_time = call(&orch, "/rpc/slow/kit.Kit/Sleep?deadline_ms=1000", "10").await;
    assert_eq!((on_time["code"].as_str(), on_time["body"].as_str()), (Some("OK"), Some("slept 10")));
}

#[test]
fn an_rpc_tier_cannot_be_the_target_of_a_rest_link() {
    let file = TopologyFile::new(
        &RPC.replace("{ from: kit, to: pricing, kind: rpc, timeout: 2s }", "{ from: kit, to: pricing, kind: rest }"),
    );
    let out = orchestrator(&["validate", file.path_str()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tier `pricing` (plugin `pricing`) cannot serve `rest` links"), "{stderr}");
    assert!(stderr.contains("it serves: rpc"), "{stderr}");
}
