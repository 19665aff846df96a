//! Hot reload: only what changed is applied, nothing is dropped, a bad edit
//! changes nothing. Every wait is on the generation (or the attempt count).

use std::collections::BTreeSet;

use integration_tests::{Running, TopologyFile, Traffic, instance_ids, repo_root, target_dir, tier};
use serde_json::Value;

fn hello() -> String {
    std::fs::read_to_string(repo_root().join("topologies/hello.yaml")).unwrap().replace("127.0.0.1:8080", "127.0.0.1:0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greeting_change_replaces_only_the_backend() {
    let orch = Running::start(&hello()).await;
    let web = orch.tier_addr("web").await;
    let before = orch.status().await;
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Hello Python!","data":"Hello Go!"}"#);

    // Editor-style save: a temporary file renamed over the original.
    orch.save(&hello().replace("greeting: Hello Python!", "greeting: Bonjour!"));
    let after = orch.wait_generation(2).await;
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Bonjour!","data":"Hello Go!"}"#);

    // Unchanged tiers keep their instances; the backend got new ones.
    for unchanged in ["web", "frontend"] {
        assert_eq!(instance_ids(&before, unchanged), instance_ids(&after, unchanged), "{unchanged}");
        assert_eq!(tier(&after, unchanged)["generation"], 1);
    }
    let (old, new) = (instance_ids(&before, "backend"), instance_ids(&after, "backend"));
    assert_eq!(new.len(), 3);
    assert!(old.iter().all(|id| !new.contains(id)), "{old:?} {new:?}");
    assert_eq!(tier(&after, "backend")["generation"], 2);
    assert_eq!(after["last_reload"]["outcome"], "applied");
    assert_eq!(after["last_reload"]["trigger"], "file");
    assert_eq!(after["last_reload"]["summary"], "replaced backend");
    // The listener was kept: same address.
    assert_eq!(orch.tier_addr("web").await, web);

    // The same, as Prometheus metrics.
    let (code, metrics) = orch.get(orch.admin, "/admin/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "orchestrator_generation 2",
        r#"orchestrator_reloads_total{outcome="applied"} 1"#,
        r#"orchestrator_reloads_total{outcome="failed"} 0"#,
        r#"orchestrator_tier_ready_replicas{tier="backend"} 3"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
}

const SCALED: &str = r#"
version: 1
name: scale
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit, replicas: 3 }
links:
  - { from: web, to: kit, kind: rest }
"#;

async fn replicas_seen(orch: &Running, rounds: usize) -> Vec<u64> {
    let web = orch.tier_addr("web").await;
    let mut seen = Vec::new();
    for _ in 0..rounds {
        let (code, body) = orch.get(web, "/whoami").await;
        assert_eq!(code, 200, "{body}");
        seen.push(serde_json::from_str::<Value>(&body).unwrap()["replica"].as_u64().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_changes_add_or_remove_only_the_difference() {
    let orch = Running::start(SCALED).await;
    let initial = orch.status().await;
    let mut generation = 1;
    for n in [1u64, 5, 2] {
        orch.save(&SCALED.replace("replicas: 3", &format!("replicas: {n}")));
        generation += 1;
        let status = orch.wait_generation(generation).await;
        assert_eq!(instance_ids(&status, "kit").len() as u64, n);
        // Round robin covers exactly the live replicas, evenly.
        let seen = replicas_seen(&orch, (n * 4) as usize).await;
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(distinct, (0..n).collect::<BTreeSet<_>>(), "replicas {n}: {seen:?}");
        for r in 0..n {
            assert_eq!(seen.iter().filter(|&&x| x == r).count(), 4, "replicas {n}: {seen:?}");
        }
    }
    // Scaling kept the first replica throughout: 3 → 1 kept replica 0, 1 → 5 added 4.
    let last = orch.status().await;
    assert_eq!(instance_ids(&initial, "kit")[0], instance_ids(&last, "kit")[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_and_a_route_come_and_go() {
    let orch = Running::start(SCALED).await;
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/extra/whoami").await.0, 200); // the `/` route answers everything
    let with_extra = SCALED
        .replace(
            "config: { routes: [{ path: /, link: kit }] }",
            "config: { routes: [{ path: /, link: kit }, { path: /extra, link: extra, strip_prefix: true }] }",
        )
        .replace(
            "links:\n",
            "  extra: { plugin: testkit, config: { tag: added } }\nlinks:\n  - { from: web, to: extra, kind: rest }\n",
        );
    orch.save(&with_extra);
    let status = orch.wait_generation(2).await;
    assert!(status["last_reload"]["summary"].as_str().unwrap().contains("added extra"), "{status}");
    let (code, body) = orch.get(web, "/extra/whoami").await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answer["tier"].as_str(), answer["tag"].as_str()), (Some("extra"), Some("added")));

    orch.save(SCALED);
    let status = orch.wait_generation(3).await;
    assert!(status["tiers"].as_array().unwrap().iter().all(|t| t["name"] != "extra"), "{status}");
    // `/extra` falls back to the `/` route again: kit echoes the unstripped path.
    let (_, body) = orch.get(web, "/extra/whoami").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["path"], "/extra/whoami");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_until_it_is_fixed() {
    let orch = Running::start(&hello()).await;
    let web = orch.tier_addr("web").await;
    let good = orch.status().await;

    // A syntax error.
    orch.overwrite(&hello().replace("replicas: 3", "replicas: [3"));
    let status = orch.wait_attempts(1).await;
    assert_eq!(status["generation"], 1);
    let last = &status["last_reload"];
    assert_eq!((last["outcome"].as_str(), last["error_kind"].as_str()), (Some("failed"), Some("invalid")));
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("topology.yaml:") && error.contains("invalid YAML"), "{error}");
    assert_eq!(orch.get(web, "/api").await.0, 200);

    // A semantic error: an unknown link target, located.
    let broken = hello().replace("{ from: frontend, to: backend,", "{ from: frontend, to: backnd,");
    orch.save(&broken);
    let status = orch.wait_attempts(2).await;
    assert_eq!(status["generation"], 1);
    let errors = status["last_reload"]["errors"].as_array().unwrap();
    let located = errors.iter().find(|e| e["path"] == "links[1].to").unwrap_or_else(|| panic!("{errors:?}"));
    let line = broken.lines().position(|l| l.contains("to: backnd")).unwrap() + 1;
    assert_eq!(located["line"].as_u64(), Some(line as u64));
    assert_eq!(located["message"], "unknown tier `backnd`");
    assert_eq!(located["hint"], "did you mean `backend`?");
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Hello Python!","data":"Hello Go!"}"#);
    assert_eq!(instance_ids(&status, "backend"), instance_ids(&good, "backend"));
    assert_eq!(status["reloads"]["failed"], 2);

    // Fixed: the next save applies normally.
    orch.save(&hello().replace("greeting: Hello Python!", "greeting: Fixed!"));
    orch.wait_generation(2).await;
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Fixed!","data":"Hello Go!"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_plugin_library_is_served_without_a_restart() {
    let plugins = tempfile::tempdir().unwrap();
    let installed = plugins.path().join("libswap.so");
    std::fs::copy(target_dir().join("libswap_v1.so"), &installed).unwrap();
    let yaml = format!(
        "version: 1\nname: swap\nplugins: [{}]\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config: {{ routes: [{{ path: /, link: swap }}] }}\n  swap: {{ plugin: swap, replicas: 2 }}\nlinks:\n  - {{ from: web, to: swap, kind: rest }}\n",
        plugins.path().display()
    );
    let orch = Running::start(&yaml).await;
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/").await.1, "v1");

    // What a build does: the new library appears under the same name.
    let staged = plugins.path().join("libswap.so.new");
    std::fs::copy(target_dir().join("libswap_v2.so"), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    let status = orch.wait_generation(2).await;
    assert_eq!(status["last_reload"]["trigger"], "plugin");
    assert_eq!(status["last_reload"]["summary"], "replaced swap");
    for _ in 0..4 {
        assert_eq!(orch.get(web, "/").await.1, "v2");
    }
    assert_eq!(tier(&status, "web")["generation"], 1, "the gateway was not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let orch = Running::start(&hello()).await;
    let web = orch.tier_addr("web").await;
    let traffic = Traffic::start(web, "/api", 200, |status, body| {
        status == 200 && (body.starts_with(r#"{"message":"Greeting "#) || body.contains("Hello Python!"))
    });
    for i in 1..=20u64 {
        orch.save(&hello().replace("greeting: Hello Python!", &format!("greeting: Greeting {i}")));
        orch.wait_generation(1 + i).await;
    }
    let (ok, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "{} failed requests, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok > 200, "only {ok} requests completed");
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Greeting 20","data":"Hello Go!"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_reload_command_apply_without_watching() {
    let orch = Running::start_with(TopologyFile::new(&hello()), &["--no-watch"]).await;
    let web = orch.tier_addr("web").await;
    let admin = orch.admin.to_string();

    // Without the watcher, a save alone changes nothing...
    orch.overwrite(&hello().replace("greeting: Hello Python!", "greeting: By signal!"));
    // ...until SIGHUP.
    orch.signal("HUP");
    let status = orch.wait_generation(2).await;
    assert_eq!(status["last_reload"]["trigger"], "signal");
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"By signal!","data":"Hello Go!"}"#);
    assert_eq!(status["reloads"]["attempts"], 1, "the watcher is off: no other reload happened");

    orch.overwrite(&hello().replace("greeting: Hello Python!", "greeting: By command!"));
    let out = integration_tests::orchestrator(&["reload", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // It says which topology it reloaded: the orchestrator on that address may run another.
    let which = format!("topology `hello` ({}) at {admin}", orch.topology.path.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim_end(), format!("applied: {which}, generation 3 (replaced backend)"));
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"By command!","data":"Hello Go!"}"#);

    let out = integration_tests::orchestrator(&["reload", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("unchanged: {which}, generation 3"));

    orch.overwrite("version: 1\nname: x\ntiers:\n  a: { plugin: nope }\n");
    let out = integration_tests::orchestrator(&["reload", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin named `nope`"));
    assert_eq!(orch.get(web, "/api").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_listen_address_is_bound_before_the_old_one_closes() {
    let orch = Running::start(SCALED).await;
    let old = orch.tier_addr("web").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    orch.save(&SCALED.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")));
    let status = orch.wait_generation(2).await;
    assert_eq!(tier(&status, "web")["listen"], format!("127.0.0.1:{port}"));
    assert_eq!(tier(&status, "web")["generation"], 1, "a listen change does not restart the tier");
    let (code, _) = orch.get(format!("127.0.0.1:{port}").parse().unwrap(), "/whoami").await;
    assert_eq!(code, 200);
    // The old address closes once drained.
    orch.wait_for_line(&format!("Listener closed. addr={old}"));
    assert!(tokio::net::TcpStream::connect(old).await.is_err());

    // A port already in use: the reload fails and the tier keeps its address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    orch.save(&SCALED.replace("listen: 127.0.0.1:0", &format!("listen: {}", taken.local_addr().unwrap())));
    let status = orch.wait_attempts(2).await;
    assert_eq!(status["last_reload"]["error_kind"], "start");
    assert!(status["last_reload"]["error"].as_str().unwrap().contains("cannot listen on"), "{status}");
    assert_eq!(tier(&status, "web")["listen"], format!("127.0.0.1:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_command_finds_the_orchestrator_of_a_file_and_never_guesses_between_two() {
    // State files of these two only (others' tests run beside them).
    let state = tempfile::tempdir().unwrap();
    let env = [("XDG_RUNTIME_DIR", state.path().to_str().unwrap())];
    let one = Running::start_with_env(TopologyFile::new(&hello().replace("name: hello", "name: one")), &env).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(integration_tests::bin()).args(args).envs(env).env("NO_COLOR", "1").output().unwrap()
    };
    // The only one running: found without an address (before: 127.0.0.1:9900, whatever ran there).
    let out = cli(&["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.starts_with(&format!("unchanged: topology `one` ({}) at {}", one.topology.path.display(), one.admin)),
        "{stdout}"
    );

    let two = Running::start_with_env(TopologyFile::new(&hello().replace("name: hello", "name: two")), &env).await;
    let out = cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.starts_with("error: 2 orchestrators run; say which with its topology file:"), "{stderr}");
    // Named by its file: that one, and only that one, reloads.
    two.save(&hello().replace("name: hello", "name: two").replace("greeting: Hello Python!", "greeting: Two!"));
    two.wait_generation(2).await;
    let out = cli(&["reload", two.topology.path_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("unchanged: topology `two` ({}) at {}", two.topology.path.display(), two.admin)),
        "{stdout}"
    );
    assert_eq!(one.status().await["reloads"]["attempts"], 1, "the first had only its own reload");
    let out = cli(&["reload", "/no/such/topology.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no orchestrator runs /no/such/topology.yaml"));
    // One stops: its state file goes with it, and the other is the only one again.
    let mut one = one;
    one.terminate();
    assert_eq!(one.wait_exit().code(), Some(0));
    let out = cli(&["reload"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unchanged: topology `two`"), "{out:?}");
}
