//! Process tiers: programs in any language as tiers, wired by the same links.

use integration_tests::{
    Running, Traffic, client, go_backend, group_members, program_pids, python_server, repo_topology, tier,
    wait_all_gone,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_frontend_calls_go_backend_through_the_gateway() {
    let orch = Running::start_file(repo_topology("topologies/python-go.yaml")).await;
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/api").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({ "message": "Hello Python!", "data": "Hello Go!" })
    );
    let status = orch.status().await;
    let backend = tier(&status, "backend");
    for instance in backend["instances"].as_array().unwrap() {
        let detail = &instance["detail"];
        assert_eq!(
            (detail["state"].as_str(), detail["ready"].as_bool(), detail["restarts"].as_u64()),
            (Some("ready"), Some(true), Some(0))
        );
        assert!(detail["pid"].as_u64().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_frontend_calls_the_native_backend_just_the_same() {
    let orch = Running::start_file(repo_topology("topologies/mixed.yaml")).await;
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/api").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"message":"Hello Python!","data":"Hello Go!"}"#);
}

fn go_tier(replicas: u32, retries: u32, command: &str) -> String {
    format!(
        r#"
version: 1
name: go
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: backend }}] }}
  backend:
    plugin: process
    replicas: {replicas}
    env: {{ GREETING: Hello Python! }}
    config:
      command: {command}
      readiness: {{ http: /healthz, interval: 20ms }}
      backoff: 100ms
links:
  - {{ from: web, to: backend, kind: rest, retries: {retries} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_restarted_and_no_request_fails() {
    let bin = go_backend();
    let orch = Running::start(&go_tier(2, 2, &format!("[{}]", bin.display()))).await;
    let web = orch.tier_addr("web").await;
    let before = orch.status().await;
    let victim = program_pids(&before, "backend")[0];

    let traffic = Traffic::start(web, "/backend?message=hi", 8, Traffic::ok);
    assert!(std::process::Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    orch.wait_for_line("Replica exited (killed by SIGKILL); restart 1 in 100ms.");
    orch.wait_for_line("Replica ready on port");
    let (ok, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "{} failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok > 0);

    let after = orch.status().await;
    let detail = &tier(&after, "backend")["instances"][0]["detail"];
    assert_eq!((detail["restarts"].as_u64(), detail["state"].as_str()), (Some(1), Some("ready")));
    assert_eq!(detail["last_exit"], "killed by SIGKILL");
    assert_ne!(detail["pid"].as_u64(), Some(u64::from(victim)));
    let (_, metrics) = orch.get(orch.admin, "/admin/metrics").await;
    assert!(metrics.contains(r#"orchestrator_replica_restarts_total{tier="backend",replica="0"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_no_traffic_before_its_probe_passes() {
    // The program opens its port 400 ms after it starts; the link does not retry,
    // so a request routed to a replica that is not ready would fail.
    let bin = go_backend();
    let command = format!("[sh, -c, 'sleep 0.4; exec {}']", bin.display());
    let orch = Running::start(&go_tier(2, 0, &command)).await;
    let web = orch.tier_addr("web").await;
    let victim = program_pids(&orch.status().await, "backend")[0];
    assert!(std::process::Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    orch.wait_for_line("Replica exited");
    // Replica 0 restarts in 100 ms and then needs 400 ms to open its port.
    for _ in 0..20 {
        let (code, body) = orch.get(web, "/whoami").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["replica"],
            "1",
            "a replica that is not ready got traffic"
        );
    }
    orch.wait_for_line("Replica ready on port");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (_, body) = orch.get(web, "/whoami").await;
        seen.insert(serde_json::from_str::<Value>(&body).unwrap()["replica"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "the restarted replica is back in the round robin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_command_backs_off_stops_at_the_limit_and_others_serve() {
    let orch = Running::start(
        r#"
version: 1
name: crash
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /ok, link: fine }, { path: /crash, link: crash }, { path: /missing, link: missing }] }
  fine: { plugin: testkit }
  crash:
    plugin: process
    config: { command: [sh, -c, "echo going down; exit 3"], max_restarts: 3, backoff: 20ms }
  missing:
    plugin: process
    config: { command: [no-such-program-here], max_restarts: 5 }
  deaf:
    plugin: process
    config: { command: [sleep, '600'], startup_timeout: 300ms, max_restarts: 0 }
links:
  - { from: web, to: fine, kind: rest }
  - { from: web, to: crash, kind: rest }
  - { from: web, to: missing, kind: rest }
"#,
    )
    .await;
    // The backoff doubles: 20ms, 40ms, 80ms, then it gives up.
    let log = orch.log().join("\n");
    for line in ["restart 1 in 20ms", "restart 2 in 40ms", "restart 3 in 80ms", "going down"] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    let status = orch.status().await;
    for failed in ["crash", "missing", "deaf"] {
        assert_eq!(tier(&status, failed)["instances"][0]["state"], "failed", "{status}");
    }
    assert_eq!(tier(&status, "fine")["instances"][0]["state"], "ready", "{status}");
    let crash = &tier(&status, "crash")["instances"][0]["detail"];
    assert_eq!(
        (crash["state"].as_str(), crash["restarts"].as_u64(), crash["ready"].as_bool()),
        (Some("failed"), Some(3), Some(false))
    );
    assert_eq!(crash["last_exit"], "exit code 3");
    assert!(crash["failed"].as_str().unwrap().contains("max_restarts"), "{crash}");
    let missing = &tier(&status, "missing")["instances"][0]["detail"];
    let failed = missing["failed"].as_str().unwrap();
    // Not retried (before: 6 attempts), and the PATH it was looked for on is said.
    assert_eq!(missing["restarts"], 0, "{missing}");
    assert!(failed.contains("cannot start `no-such-program-here`: it is not on the PATH ("), "{missing}");
    assert!(failed.ends_with("; there is nothing to retry"), "{missing}");
    // A program that never opens its port: the error says which port it should have.
    let deaf = &tier(&status, "deaf")["instances"][0]["detail"];
    let port = deaf["port"].as_u64().unwrap();
    let failed = deaf["failed"].as_str().unwrap();
    assert!(failed.starts_with("not ready within 300ms (last probe: "), "{deaf}");
    assert!(failed.contains(&format!("the program must listen on 127.0.0.1 at the port in $PORT ({port})")), "{deaf}");
    assert!(
        log.contains("tier `missing` replica 0 did not become ready: cannot start `no-such-program-here`"),
        "{log}"
    );

    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/ok/whoami").await.0, 200, "the other tiers serve");
    let (code, body) = orch.get(web, "/crash").await;
    assert_eq!(code, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_change_rolls_the_programs_without_failing_a_request() {
    let bin = go_backend();
    let yaml = go_tier(2, 1, &format!("[{}]", bin.display()));
    let orch = Running::start(&yaml).await;
    let web = orch.tier_addr("web").await;
    let old_pids = program_pids(&orch.status().await, "backend");
    let traffic = Traffic::start(web, "/backend?message=hi", 8, Traffic::ok);
    orch.save(&yaml.replace("GREETING: Hello Python!", "GREETING: Hallo!"));
    let status = orch.wait_generation(2).await;
    let (ok, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "{} failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok > 0);
    let (_, body) = orch.get(web, "/backend?message=hi").await;
    assert_eq!(body.trim(), r#"{"message":"Hallo!","data":"hi"}"#);
    assert_eq!(status["last_reload"]["summary"], "replaced backend");
    // Rolling: each new replica was ready before the next one started.
    let log = orch.log();
    let reload = log.iter().rposition(|l| l.contains("Instance started. tier=backend replica=0")).unwrap();
    let position =
        |needle: &str| log[reload..].iter().position(|l| l.contains(needle)).unwrap_or_else(|| orch.fail(needle));
    assert!(
        position("tier{tier=backend replica=0}: orchestrator::plugins::host: Replica ready")
            < position("Instance started. tier=backend replica=1")
    );
    // The old programs are stopped once drained.
    wait_all_gone(&old_pids).unwrap_or_else(|alive| orch.fail(&format!("old programs still run: {alive:?}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_program_outlives_the_orchestrator() {
    let bin = go_backend();
    // `sh -c` without exec: the server is a grandchild, in the replica's
    // process group, as the server `go run .` starts is. Before the shim, a
    // SIGKILL of the orchestrator left such grandchildren running.
    for (signal, command) in [
        ("TERM", format!("[sh, -c, '{}']", bin.display())),
        ("KILL", format!("[{}]", bin.display())),
        ("KILL", format!("[sh, -c, '{}']", bin.display())),
    ] {
        let mut orch = Running::start(&go_tier(2, 0, &command)).await;
        let pids = program_pids(&orch.status().await, "backend");
        let group: Vec<u32> = pids.iter().flat_map(|p| group_members(*p)).collect();
        // The shim, the program, and with `sh -c` the server under it.
        let per_replica = if command.starts_with("[sh") { 3 } else { 2 };
        assert_eq!(group.len(), per_replica * pids.len(), "{group:?}");
        orch.signal(signal);
        let exit = orch.wait_exit();
        if signal == "TERM" {
            assert_eq!(exit.code(), Some(0));
        }
        wait_all_gone(&group)
            .unwrap_or_else(|alive| orch.fail(&format!("after SIG{signal}, still running: {alive:?}")));
    }
}

/// Live processes whose environment has `ORCH_TIER=<tier>` (the programs of
/// that tier, whatever the status reports).
fn programs_of_tier(tier: &str) -> Vec<u32> {
    let needle = format!("ORCH_TIER={tier}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !integration_tests::process_gone(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_no_program_running() {
    let bin = go_backend();
    let orch = Running::start(&go_tier(1, 0, &format!("[{}]", bin.display()))).await;
    // A new tier whose replica 0 starts fine and replica 1 cannot: the reload fails.
    let tier = format!("flaky{}", orch.pid());
    let flaky = format!(
        "  {tier}:\n    plugin: process\n    replicas: 2\n    config:\n      command: [sh, -c, 'if [ \"$ORCH_REPLICA\" = 1 ]; then exit 3; fi; exec {}']\n      max_restarts: 0\n      readiness: {{ http: /healthz, interval: 20ms }}\nlinks:\n",
        bin.display()
    );
    orch.save(&go_tier(1, 0, &format!("[{}]", bin.display())).replace("links:\n", &flaky));
    let status = orch.wait_attempts(1).await;
    assert_eq!(status["last_reload"]["outcome"], "failed", "{status}");
    assert!(status["last_reload"]["error"].as_str().unwrap().contains("replica 1 did not become ready"), "{status}");
    // Replica 0's program had started (and become ready) while preparing...
    let started = format!("tier{{tier={tier} replica=0}}: orchestrator::plugins::host: Replica ready on port");
    assert!(orch.log().iter().any(|l| l.contains(&started)), "replica 0 never started");
    // ...and is stopped with the rest.
    let pids = programs_of_tier(&tier);
    integration_tests::wait_all_gone(&pids).unwrap_or_else(|alive| orch.fail(&format!("still running: {alive:?}")));
    assert_eq!(orch.get(orch.tier_addr("web").await, "/whoami").await.0, 200, "the old topology serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_reload_stops_promptly_and_cleanly() {
    let bin = go_backend();
    let mut orch = Running::start(&go_tier(1, 0, &format!("[{}]", bin.display()))).await;
    // A new tier that never becomes ready (it never opens its port): the reload waits for it.
    let tier = format!("never{}", orch.pid());
    let never = format!(
        "  {tier}:\n    plugin: process\n    config: {{ command: [sleep, '600'], startup_timeout: 10m }}\nlinks:\n"
    );
    orch.save(&go_tier(1, 0, &format!("[{}]", bin.display())).replace("links:\n", &never));
    orch.wait_for_line(&format!("Instance started. tier={tier}"));
    orch.terminate();
    orch.wait_for_line("Stopping during a reload: the reload is abandoned.");
    let exit = orch.wait_exit();
    assert_eq!(exit.code(), Some(0));
    let pids = programs_of_tier(&tier);
    integration_tests::wait_all_gone(&pids).unwrap_or_else(|alive| panic!("still running: {alive:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_topology_starts_stops_what_started_and_exits() {
    // A tier that never becomes ready: before, SIGTERM waited for its
    // startup timeout (here 10 minutes) and the orchestrator went on to run.
    let tier = format!("slow{}", std::process::id());
    let yaml = format!(
        "version: 1\nname: slow\ntiers:\n  {tier}:\n    plugin: process\n    config: {{ command: [sleep, '600'], startup_timeout: 10m }}\n"
    );
    let mut orch = Running::start_unready(integration_tests::TopologyFile::new(&yaml)).await;
    orch.wait_for_line(&format!("Instance started. tier={tier}"));
    // Shown from the first moment (before: `tiers: []` until every tier ran).
    let status = orch.status().await;
    let shown = integration_tests::tier(&status, &tier);
    assert_eq!((shown["state"].as_str(), status["state"].as_str()), (Some("starting"), Some("starting")), "{status}");
    // What the user sees within seconds, not at the timeout.
    let slow = orch.wait_for_line("Replica not ready after 5s (last probe: ");
    assert!(slow.contains(" WARN ") && slow.contains("Is it listening on 127.0.0.1 at the port in $PORT ("), "{slow}");
    // Its replica is shown while it starts, with its program's pid.
    let status = orch.status().await;
    let replica = &integration_tests::tier(&status, &tier)["instances"][0];
    assert_eq!((replica["state"].as_str(), replica["ready"].as_bool()), (Some("starting"), Some(false)), "{status}");
    assert!(replica["detail"]["pid"].as_u64().is_some(), "{status}");
    orch.terminate();
    orch.wait_for_line("Stopping while the topology starts: stopping what started.");
    // Within the harness's deadline (20 s), far less than the startup timeout.
    let exit = orch.wait_exit();
    assert_eq!(exit.code(), Some(0));
    assert!(orch.log().iter().all(|l| !l.contains("Topology running")), "{:?}", orch.log());
    let pids = programs_of_tier(&tier);
    integration_tests::wait_all_gone(&pids).unwrap_or_else(|alive| panic!("still running: {alive:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_named_without_a_directory_runs_its_programs_there() {
    let yaml = r#"version: 1
name: here
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: files }] }
  files:
    plugin: process
    config:
      command: [sh, -c, 'exec python3 -m http.server --bind 127.0.0.1 "$PORT"']
links:
  - { from: web, to: files, kind: rest }
"#;
    let topology = integration_tests::TopologyFile::new(yaml);
    std::fs::write(topology.dir.path().join("note.txt"), "served from the topology's directory\n").unwrap();
    let orch = Running::start_in_its_directory(topology).await;
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.get(web, "/note.txt").await;
    assert_eq!((code, body.as_str()), (200, "served from the topology's directory\n"));
}

/// Answers every request with what it received, as JSON, in a `201` with a
/// header of its own.
const ECHO: &str = r#"    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        seen = {"method": self.command, "path": self.path, "body": body.decode(),
                "headers": [[k.lower(), v] for k, v in self.headers.items()]}
        self.reply(201, {"content-type": "application/json", "x-echo": "yes"}, json.dumps(seen).encode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_gets_the_request_as_from_a_proxy_and_its_answer_comes_back_whole() {
    let yaml = r#"version: 1
name: echo
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /api/, link: echo, strip_prefix: true }] }
  echo:
    plugin: process
    config: { command: [python3, echo.py] }
links:
  - { from: web, to: echo, kind: rest }
"#;
    let topology = integration_tests::TopologyFile::new(yaml);
    std::fs::write(topology.dir.path().join("echo.py"), python_server("import json", ECHO)).unwrap();
    let orch = Running::start_file(topology).await;
    let web = orch.tier_addr("web").await;
    let port = tier(&orch.status().await, "echo")["instances"][0]["detail"]["port"].as_u64().unwrap();

    let req = hyper::Request::post(format!("http://{web}/api/items?size=2"))
        .header("x-request-id", "r-1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("orch-delivery-id", "forged")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"two items")))
        .unwrap();
    let resp = client().request(req).await.expect("an answer through the gateway");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-echo"], "yes", "the program's own headers come back");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();

    assert_eq!(
        (&seen["method"], &seen["path"], &seen["body"]),
        (&"POST".into(), &"/items?size=2".into(), &"two items".into())
    );
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("x-request-id"), ["r-1"]);
    assert_eq!(get("host"), [format!("127.0.0.1:{port}")], "addressed to the program");
    assert_eq!(get("content-length"), ["9"]);
    for dropped in ["orch-delivery-id", "keep-alive", "te"] {
        assert!(get(dropped).is_empty(), "`{dropped}` reached the program: {headers:?}");
    }
    // As from nginx or Traefik: the client appended, the scheme and host said.
    assert_eq!(get("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), [web.to_string()]);

    // Dot segments are resolved before routing and before the prefix is cut:
    // before, `/static/../api/items` went nowhere and `/api/../x` reached the
    // program as `/../x`.
    for (sent, seen_as) in [("/static/../api/items", "/items"), ("/api/a/%2e%2e/items?x=1", "/items?x=1")] {
        let (code, body) = orch.post(web, sent, "x").await;
        assert_eq!(code, 201, "{sent}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["path"], seen_as, "{sent}");
    }
    let (code, body) = orch.post(web, "/api/..%2fadmin", "x").await;
    assert_eq!(code, 400, "{body}");
}

/// A program starts with the signal state a shell gives it (nothing blocked,
/// nothing ignored), so SIGTERM stops it gracefully, well within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_starts_as_from_a_shell_and_gets_sigterm() {
    let python = integration_tests::venv_python();
    // The program's own masks, as it starts (not through `sh`: dash clears
    // the mask it inherits).
    let server = python_server(
        "import signal, sys\n\
         print(*[l.strip() for l in open('/proc/self/status') if l.startswith(('SigBlk', 'SigIgn'))], flush=True)\n\
         signal.signal(signal.SIGTERM, lambda *a: (print('graceful stop', flush=True), sys.exit(0)))",
        "    def do_GET(self):\n        self.reply(200, {}, b'ok')\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.py"), server).unwrap();
    let yaml = format!(
        r#"
version: 1
name: signals
tiers:
  app:
    plugin: process
    config:
      command: [{}, {}/server.py]
      readiness: {{ http: /, interval: 20ms }}
      stop_grace: 60s
"#,
        python.display(),
        dir.path().display()
    );
    let mut orch = Running::start(&yaml).await;
    // Printed before the program listens, so before the topology runs.
    let Some(line) = orch.log().into_iter().find(|l| l.contains("SigBlk:")) else {
        orch.fail("the program did not print its signal masks")
    };
    let mask = |name: &str| {
        let hex = line.split(&format!("{name}:")).nth(1).and_then(|rest| rest.split_whitespace().next());
        hex.and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or_else(|| orch.fail(&format!("no {name} in {line}")))
    };
    assert_eq!(mask("SigBlk"), 0, "signals blocked in the program: {line}");
    // Python itself ignores SIGPIPE (13) and SIGXFSZ (25); nothing else may be.
    let python_own = (1 << (13 - 1)) | (1 << (25 - 1));
    assert_eq!(mask("SigIgn") & !python_own & 0x7fff_ffff, 0, "signals ignored in the program: {line}");
    let started = std::time::Instant::now();
    orch.terminate();
    orch.wait_for_line("graceful stop");
    // Within DEADLINE (20 s), far below the 60 s grace a blocked SIGTERM would wait out.
    assert_eq!(orch.wait_exit().code(), Some(0));
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// `${PORT}` (and any variable of the program's environment) in a command's
/// arguments is its value; one that is not set fails the replica, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_arguments_expand_port_and_the_programs_variables() {
    let python = integration_tests::venv_python();
    let yaml = format!(
        r#"
version: 1
name: expanded
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: files }}] }}
  files:
    plugin: process
    env: {{ BIND: 127.0.0.1 }}
    config:
      command: [{}, -m, http.server, --bind, "${{BIND}}", "${{PORT}}"]
      readiness: {{ http: /, interval: 20ms }}
  typo:
    plugin: process
    config: {{ command: [sleep, "${{PROT}}"], max_restarts: 0 }}
links:
  - {{ from: web, to: files, kind: rest }}
"#,
        python.display()
    );
    let orch = Running::start(&yaml).await;
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/").await.0, 200, "the server listens on the port it was given");
    let status = orch.status().await;
    let failed = tier(&status, "typo")["instances"][0]["detail"].to_string();
    assert!(failed.contains("`${PROT}`, which is not set"), "{failed}");
}
