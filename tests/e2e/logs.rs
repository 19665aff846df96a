//! `--log-format json`: one JSON object per line, with the tier and replica.

use integration_tests::{Running, TopologyFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_tier_and_replica() {
    let topology = TopologyFile::new(
        r#"
version: 1
name: logged
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit, replicas: 2 }
  printer:
    plugin: process
    config: { command: [sh, -c, 'echo "to stderr" >&2; exec python3 -m http.server --bind 127.0.0.1 "$PORT"'] }
links:
  - { from: web, to: kit, kind: rest }
"#,
    );
    let orch = Running::start_with(topology, &["--log-format", "json"]).await;
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/sleep/1").await.0, 200);
    orch.wait_for_line("Sleeping for 1 ms.");
    let lines = orch.log();
    let parsed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for line in &parsed {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no `{key}` in {line}");
        }
    }
    // What a native tier's handler logged: its tier and replica.
    let slept = parsed.iter().find(|l| l["message"] == "Sleeping for 1 ms.").unwrap();
    assert_eq!(slept["tier"], "kit", "{slept}");
    assert!(slept["replica"].as_u64().is_some_and(|r| r < 2), "{slept}");
    // A program's stderr, at WARN, with its tier and replica.
    let printed = parsed.iter().find(|l| l["message"] == "to stderr").unwrap();
    assert_eq!((printed["tier"].as_str(), printed["replica"].as_u64()), (Some("printer"), Some(0)), "{printed}");
    assert_eq!((printed["level"].as_str(), printed["stream"].as_str()), (Some("WARN"), Some("stderr")), "{printed}");
}
