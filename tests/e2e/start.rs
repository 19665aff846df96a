//! The first start: each tier starts once the tiers it calls settled,
//! independently of the others.

use integration_tests::{Running, TopologyFile, tier};

/// A gateway is served as soon as what it calls is ready, while a tier it
/// does not call keeps failing to start (issue: it was held up for as long
/// as that tier failed, past its first restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_not_held_up_by_a_tier_it_does_not_call() {
    let yaml = r#"
version: 1
name: independent
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /hello, link: hello }] }
  hello: { plugin: hello, config: { greeting: "Hi." } }
  sleeper:
    plugin: process
    config: { command: [sleep, "1000"], startup_timeout: 10m }
links:
  - { from: web, to: hello, kind: rest }
"#;
    let orch = Running::start_unready(TopologyFile::new(yaml)).await;
    orch.wait_for_line("Tier listening. tier=web");
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/hello").await;
    assert_eq!((code, body.starts_with("Hi.")), (200, true), "{body}");
    let status = orch.status().await;
    assert_eq!(status["state"], "starting", "the sleeper has not settled: {status}");
    assert_eq!(tier(&status, "web")["state"], "running", "{status}");
    assert_eq!(tier(&status, "hello")["state"], "running", "{status}");
    assert_eq!(tier(&status, "sleeper")["state"], "starting", "{status}");
    assert_eq!(tier(&status, "sleeper")["instances"][0]["state"], "starting", "{status}");
    let (code, _) = orch.get(orch.admin, "/admin/ready").await;
    assert_eq!(code, 503, "not ready while a tier is still starting");
}

/// A caller waits for its callee to settle, and starts once it failed: it
/// serves what it can (here, an error naming the tier) rather than nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_starts_once_its_callee_failed_to_start() {
    let yaml = r#"
version: 1
name: failed-callee
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: broken }] }
  broken:
    plugin: process
    config: { command: [sh, -c, "exit 3"], max_restarts: 0 }
links:
  - { from: web, to: broken, kind: rest }
"#;
    let orch = Running::start(yaml).await;
    let log = orch.log();
    let position = |needle: &str| {
        log.iter().position(|l| l.contains(needle)).unwrap_or_else(|| orch.fail(&format!("no `{needle}`")))
    };
    assert!(position("A replica failed to start") < position("Instance started. tier=web"));
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/").await;
    assert_eq!(code, 503, "{body}");
}
