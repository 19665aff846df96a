//! `orchestrator validate`: every error class, located, with exit code 78.

use integration_tests::{TopologyFile, orchestrator};

fn validate(yaml: &str) -> (i32, String, TopologyFile) {
    let file = TopologyFile::new(yaml);
    let out = orchestrator(&["validate", file.path_str()]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), file)
}

/// Asserts `stderr` reports `message` at `line:col` of the file.
#[track_caller]
fn assert_located(stderr: &str, file: &TopologyFile, line: u32, col: u32, message: &str) {
    let head = format!("{}:{line}:{col}: {message}", file.path.display());
    assert!(stderr.contains(&head), "expected `{head}` in:\n{stderr}");
}

const BROKEN: &str = r#"version: 1
name: broken
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:8080
    config:
      routes:
        - { path: /api, link: frontnd }
  frontend:
    plugin: frontend
    replicas: 0
    colour: blue
  backend:
    plugin: backnd
    listen: 127.0.0.1:8080
  kit:
    plugin: testkit
    config: { reject: true }
links:
  - { from: web, to: frontend, kind: rest }
  - { from: frontend, to: bakend, kind: rest }
  - { from: web, to: kit, kind: rest, name: frontend }
  - { from: kit, to: web, kind: rpc, name: q }
  - { from: web, to: kit, kind: queue, name: q2 }
"#;

#[test]
fn every_error_class_is_reported_at_its_location() {
    let (code, stderr, file) = validate(BROKEN);
    assert_eq!(code, 78, "{stderr}");
    // Unknown key, with a suggestion list.
    assert_located(&stderr, &file, 13, 5, "tiers.frontend.colour: unknown key `colour`");
    // Replicas out of range.
    assert_located(&stderr, &file, 12, 15, "tiers.frontend.replicas: replicas must be between 1 and 256, not 0");
    // Unknown plugin, with a suggestion.
    assert_located(&stderr, &file, 15, 13, "tiers.backend.plugin: no plugin named `backnd`");
    assert!(stderr.contains("did you mean `backend`?"), "{stderr}");
    // Two tiers on one listen address.
    assert_located(&stderr, &file, 16, 13, "tiers.backend.listen: tier `web` already listens on 127.0.0.1:8080");
    // Unknown tier in a link, with a suggestion.
    assert_located(&stderr, &file, 22, 27, "links[1].to: unknown tier `bakend`");
    // Duplicate link names per caller.
    assert_located(
        &stderr,
        &file,
        23,
        45,
        "links[2].name: tier `web` already has an outbound link named `frontend` (links[0])",
    );
    // A link kind the target plugin cannot serve.
    assert_located(&stderr, &file, 24, 33, "links[3].kind: tier `web` (plugin `gateway`) cannot serve `rpc` links");
    // A queue link that does not go through a queue tier.
    assert_located(
        &stderr,
        &file,
        25,
        33,
        "links[4].kind: a queue link goes into a queue tier (to publish) or out of one",
    );
    // A plugin rejecting its own config: the gateway's route, and testkit's flag.
    assert_located(
        &stderr,
        &file,
        9,
        31,
        "tiers.web.config.routes[0].link: this tier has no outbound link named `frontnd` (plugin `gateway`)",
    );
    assert_located(&stderr, &file, 19, 23, "tiers.kit.config.reject: rejected on request (plugin `testkit`)");
    // Rendered like a compiler diagnostic: the source line and a marker under the value.
    assert!(stderr.contains("12 │     replicas: 0"), "{stderr}");
    // One error per mistake: the misspelt `bakend` is not also the frontend's missing `backend` link.
    assert!(!stderr.contains("no outbound link named `backend`"), "{stderr}");
    assert!(stderr.contains("help: this tier's links are: frontend, q2\n"), "each name once: {stderr}");
    assert!(stderr.contains("10 errors in"), "{stderr}");
}

#[test]
fn syntax_errors_are_located() {
    let (code, stderr, file) = validate("version: 1\nname: x\ntiers:\n  web:\n    plugin: [gateway\n");
    assert_eq!(code, 78, "{stderr}");
    assert_located(&stderr, &file, 5, 13, "invalid YAML");
}

#[test]
fn valid_files_pass_and_each_file_is_checked() {
    let good = TopologyFile::new("version: 1\nname: ok\ntiers:\n  a: { plugin: gateway }\n");
    let repo = integration_tests::repo_root().join("topologies/hello.yaml");
    let out = orchestrator(&["validate", good.path_str(), repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok (1 tier, 0 links)"), "{stdout}");
    assert!(stdout.contains("hello.yaml: ok (3 tiers, 2 links)"), "{stdout}");

    let bad = TopologyFile::new("version: 1\nname: bad\ntiers: {}\n");
    let out = orchestrator(&["validate", good.path_str(), bad.path_str()]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn bad_usage_exits_64() {
    for args in [
        &["validate"][..],
        &["frobnicate"],
        &["run"],
        &["validate", "/nonexistent/topology.yaml"],
        &["graph", "x.yaml", "--format", "png"],
    ] {
        let out = orchestrator(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = orchestrator(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn run_refuses_an_invalid_topology_with_78() {
    let file = TopologyFile::new("version: 1\nname: x\ntiers:\n  a: { plugin: nope }\n");
    let out = orchestrator(&["run", file.path_str(), "--admin", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin named `nope`"));
}

#[test]
fn validate_warns_of_a_command_that_is_not_there() {
    let topo = integration_tests::TopologyFile::new(
        "version: 1\nname: x\ntiers:\n  a:\n    plugin: process\n    config: { command: [no-such-program-here] }\n  b:\n    plugin: process\n    config: { command: [./missing.sh] }\n  c:\n    plugin: process\n    config: { command: [sh, -c, 'exit 0'] }\n",
    );
    let out = integration_tests::orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Still valid (exit 0): a warning, located; before, nothing until it ran.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let file = topo.path_str();
    assert!(
        stderr.contains(&format!(
            "warning: {file}:6:25: tiers.a.config.command[0]: `no-such-program-here` is not found: its replicas would fail at once (help: it is not on the PATH"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("tiers.b.config.command[0]: `./missing.sh` is not found"), "{stderr}");
    assert!(!stderr.contains("tiers.c."), "{stderr}");
}

#[test]
fn validate_warns_of_an_outbox_into_a_broker_that_keeps_messages_in_memory() {
    let yaml = |durable: &str| {
        format!(
            "version: 1\nname: x\ntiers:\n  db: {{ plugin: postgres }}\n  orders: {{ plugin: queue, config: {{ {durable} }} }}\nlinks:\n  - {{ from: db, to: orders, kind: queue, outbox: {{ table: outbox }} }}\n"
        )
    };
    let topo = integration_tests::TopologyFile::new(&yaml(""));
    let out = integration_tests::orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}:7:42: links[0].outbox: tier `orders` keeps messages in memory",
            topo.path_str()
        )) && stderr.contains("give tier `orders` `durable: true`"),
        "{stderr}"
    );
    let topo = integration_tests::TopologyFile::new(&yaml("durable: true"));
    let out = integration_tests::orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("links[0].outbox"), "{stderr}");
}
