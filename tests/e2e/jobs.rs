//! Jobs (`run: once`) and explicit order (`after:`): a job runs to
//! completion before the tiers after it start; a failed one stops them.

use integration_tests::{Running, TopologyFile, tier};

fn topology(job: &str) -> String {
    let python = integration_tests::venv_python();
    format!(
        r#"
version: 1
name: jobs
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: api }}] }}
  migrate:
    plugin: process
    run: once
    config: {{ command: [sh, -c, '{job}'] }}
  api:
    plugin: process
    after: [migrate]
    config:
      command: [{py}, -m, http.server, --bind, 127.0.0.1, "${{PORT}}"]
      readiness: {{ http: /, interval: 20ms }}
links:
  - {{ from: web, to: api, kind: rest }}
"#,
        py = python.display()
    )
}

fn position(orch: &Running, needle: &str) -> usize {
    orch.log().iter().position(|l| l.contains(needle)).unwrap_or_else(|| orch.fail(&format!("no `{needle}`")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_completes_before_the_tiers_after_it_start() {
    let orch = Running::start(&topology("echo migrating; sleep 0.2; echo migrated")).await;
    assert!(position(&orch, "Job completed. tier=migrate") < position(&orch, "Instance started. tier=api"));
    let status = orch.status().await;
    let migrate = tier(&status, "migrate");
    assert_eq!((migrate["state"].as_str(), migrate["run"].as_str()), (Some("completed"), Some("once")), "{status}");
    assert_eq!(migrate["instances"][0]["state"], "completed", "{status}");
    assert_eq!(migrate["instances"][0]["detail"]["last_exit_code"], 0, "{status}");
    assert_eq!(tier(&status, "api")["state"], "running");
    assert_eq!(status["state"], "running");
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/").await.0, 200);
    // `orchestrator status` says completed, not failing.
    let out = integration_tests::orchestrator(&["status", "--admin", &orch.admin.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("migrate")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("completed"), "{table}");

    // A reload that leaves the job's spec as it was runs it no more; one
    // that changes it runs it again.
    let runs = |orch: &Running| orch.log().iter().filter(|l| l.contains("migrating")).count();
    orch.save(
        &topology("echo migrating; sleep 0.2; echo migrated")
            .replace("readiness: { http: /, interval: 20ms }", "readiness: { http: /, interval: 25ms }"),
    );
    orch.wait_generation(2).await;
    assert_eq!(runs(&orch), 1);
    orch.save(&topology("echo migrating again; echo migrated"));
    orch.wait_generation(3).await;
    assert_eq!(runs(&orch), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_shown_with_its_exit_and_last_lines_and_holds_its_dependents() {
    let orch =
        Running::start_file(TopologyFile::new(&topology("echo applying 0042; echo relation users exists >&2; exit 3")))
            .await;
    let status = orch.status().await;
    let migrate = tier(&status, "migrate");
    assert_eq!(migrate["state"], "failed", "{status}");
    let reason = migrate["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exit code 3") && reason.contains("relation users exists"), "{status}");
    let api = tier(&status, "api");
    assert_eq!(api["state"], "blocked", "{status}");
    assert!(api["reason"].as_str().unwrap_or_default().contains("starts after migrate"), "{status}");
    assert!(api["instances"].as_array().unwrap().is_empty(), "nothing of api started: {status}");
    // The gateway, which does not wait for the job, serves — a 503 for api.
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/").await.0, 503);
}
