//! `graph` and `schema`, and `run`'s own usage errors.

use integration_tests::{orchestrator, repo_root};
use serde_json::Value;

#[test]
fn graph_draws_tiers_and_links_as_mermaid_and_dot() {
    let hello = repo_root().join("topologies/hello.yaml");
    let out = orchestrator(&["graph", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let mermaid = String::from_utf8_lossy(&out.stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains(r#"t_backend["backend<br/>backend ×3"]"#), "{mermaid}");
    assert!(mermaid.contains(r#"t_frontend -- "rest" --> t_backend"#), "{mermaid}");

    let out = orchestrator(&["graph", hello.to_str().unwrap(), "--format", "dot"]);
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.starts_with("digraph \"hello\" {"), "{dot}");
    assert!(dot.contains(r#""web" -> "frontend" [label="rest", style=solid];"#), "{dot}");
}

#[test]
fn schema_describes_the_topology_file() {
    let out = orchestrator(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "orchestrator topology");
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["version", "name"]);
    for key in ["version", "name", "plugins", "tiers", "links"] {
        assert!(schema["properties"][key].is_object(), "no `{key}` in the schema");
    }
    let tier = &schema["$defs"]["Tier"];
    assert_eq!(tier["additionalProperties"], false);
    assert!(tier["properties"]["replicas"].is_object());
    // The committed copy for editors is current.
    let committed = std::fs::read_to_string(repo_root().join("docs/topology.schema.json")).unwrap();
    assert_eq!(
        committed.trim_end(),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "regenerate docs/topology.schema.json with `orchestrator schema`"
    );
}

#[test]
fn pinning_the_shared_runtime_is_a_usage_error() {
    let hello = repo_root().join("topologies/hello.yaml");
    let out = orchestrator(&["run", hello.to_str().unwrap(), "--workers", "shared", "--pin-workers"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`--pin-workers` binds worker threads to CPUs, and `--workers shared` has none"),
        "{stderr}"
    );
}

/// `orchestrator status` after a bad save: the last reload failed, and
/// where and why, beside what still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_rejected_save_located() {
    let yaml = std::fs::read_to_string(integration_tests::repo_root().join("topologies/hello.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let orch = integration_tests::Running::start(&yaml).await;
    orch.save(&yaml.replacen("to: backend", "to: bakend", 1));
    orch.wait_attempts(1).await;
    let out = integration_tests::orchestrator(&["status", "--admin", &orch.admin.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("generation 1, running"), "{stdout}");
    assert!(
        stdout.contains("last reload: failed (file, ") && stdout.contains("the running topology is unchanged"),
        "{stdout}"
    );
    assert!(stdout.contains("topology.yaml:") && stdout.contains("unknown tier `bakend`"), "{stdout}");
    assert!(stdout.contains("help: did you mean `backend`?"), "{stdout}");
}

/// The suite's last check (`scripts/leftover-tiers`) looks at this run's
/// tier programs only: one of another orchestrator on the machine (a demo
/// in another terminal) does not fail it; one of this run does.
#[test]
fn the_leftover_check_counts_this_runs_tier_programs_only() {
    let script = repo_root().join("scripts/leftover-tiers");
    let sleeper = |run: &str| {
        std::process::Command::new("sleep")
            .arg("600")
            .env("ORCH_TIER", "demo")
            .env("ORCH_TEST_RUN", run)
            .spawn()
            .unwrap()
    };
    let check = |run: &str| std::process::Command::new(&script).arg(run).output().unwrap();
    let mut others = sleeper("another-run");
    let out = check("this-run-of-the-check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut mine = sleeper("this-run-of-the-check");
    let out = check("this-run-of-the-check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&mine.id().to_string()) && !stderr.contains(&others.id().to_string()), "{stderr}");
    for child in [&mut others, &mut mine] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
