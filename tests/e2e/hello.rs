//! The main job: topologies/hello.yaml, gateway → frontend → backend ×3.

use std::collections::BTreeMap;

use integration_tests::{Running, TopologyFile};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_topology_serves_end_to_end() {
    let orch = Running::start_file(TopologyFile::from_repo("topologies/hello.yaml")).await;
    let web = orch.tier_addr("web").await;

    let (code, body) = orch.get(web, "/api").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"message":"Hello Python!","data":"Hello Go!"}"#);

    let status = orch.status().await;
    assert_eq!(status["name"], "hello");
    assert_eq!(status["generation"], 1);
    assert_eq!(status["state"], "running");
    let tiers: BTreeMap<String, Value> = status["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone()))
        .collect();
    assert_eq!(tiers["web"]["origin"], "built-in");
    assert_eq!(tiers["backend"]["replicas"], 3);
    assert_eq!(tiers["backend"]["instances"].as_array().unwrap().len(), 3);
    assert!(tiers["frontend"]["origin"].as_str().unwrap().ends_with("libfrontend.so"));
    assert_eq!(status["links"].as_array().unwrap().len(), 2);

    // Not a route: a JSON 404 from the gateway.
    let (code, body) = orch.get(web, "/elsewhere").await;
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
}

const ROUND_ROBIN: &str = r#"
version: 1
name: rr
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config:
      routes:
        - { path: /direct, link: back, strip_prefix: true }
        - { path: /via, link: front, strip_prefix: true }
  front: { plugin: testkit }
  back: { plugin: testkit, replicas: 3 }
links:
  - { from: web, to: back, kind: rest }
  - { from: web, to: front, kind: rest }
  - { from: front, to: back, kind: rest }
"#;

async fn replica_counts(orch: &Running, path: &str, n: usize) -> BTreeMap<u64, usize> {
    let web = orch.tier_addr("web").await;
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (code, body) = orch.get(web, path).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["tier"], "back");
        *seen.entry(v["replica"].as_u64().unwrap()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_covers_every_replica_evenly() {
    let orch = Running::start(ROUND_ROBIN).await;
    // From the gateway straight to the 3 replicas, and through a native link.
    for path in ["/direct/whoami", "/via/call/back/whoami"] {
        let seen = replica_counts(&orch, path, 30).await;
        assert_eq!(seen, BTreeMap::from([(0, 10), (1, 10), (2, 10)]), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_timeout_is_a_504_and_body_limit_a_413() {
    let orch = Running::start(
        r#"
version: 1
name: limits
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    max_body: 1KiB
    config: { routes: [{ path: /, link: slow }] }
  slow: { plugin: testkit, env: { GREETING: hi } }
links:
  - { from: web, to: slow, kind: rest, timeout: 100ms }
"#,
    )
    .await;
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/sleep/2000").await;
    assert_eq!(code, 504, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        json!("link `slow`: tier `slow` did not answer within 100ms")
    );
    let (code, _) = orch.get(web, "/sleep/10").await;
    assert_eq!(code, 200);

    let (code, body) = orch.post(web, "/echo", vec![b'x'; 2048]).await;
    assert_eq!(code, 413, "{body}");
    let (code, body) = orch.post(web, "/echo", vec![b'x'; 1000]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["body"].as_str().unwrap().len(), 1000);

    // The tier's `env:` reaches its handler.
    let (_, body) = orch.get(web, "/env/GREETING").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["value"], "hi");
}
