//! Graceful shutdown: in-flight requests complete, then exit 0.

use integration_tests::{Running, client, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let mut orch = Running::start(
        r#"
version: 1
name: drain
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit, replicas: 2 }
links:
  - { from: web, to: kit, kind: rest }
"#,
    )
    .await;
    let web = orch.tier_addr("web").await;
    const IN_FLIGHT: usize = 20;
    let http = client();
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { request(&http, "GET", web, "/sleep/400", Default::default()).await })
        })
        .collect();
    // Every request has reached a handler.
    for _ in 0..IN_FLIGHT {
        orch.wait_for_line("Sleeping for 400 ms.");
    }
    orch.terminate();
    for r in requests {
        let (code, body) = r.await.unwrap().unwrap_or_else(|e| orch.fail(&format!("an in-flight request failed: {e}")));
        assert_eq!(code, 200, "{body}");
    }
    let status = orch.wait_exit();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(orch.log().iter().any(|l| l.contains("Shutting down.") && l.contains("SIGTERM")));
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(web).await.is_err());
}
