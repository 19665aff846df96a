//! The dashboard in a real browser: `tests/browser/dashboard.test.mjs` runs
//! in Node.js (its own test runner) and drives Debian's Chromium with
//! playwright-core against `topologies/orders.yaml`, run here. The test
//! command installs both (`scripts/setup-tools`); a missing one fails the
//! test with what to run. Screenshots: `target/browser-tests/dashboard/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{Running, orchestrator, repo_root, repo_topology, target_dir};

/// What the whole browser run may take.
const BROWSER_DEADLINE: Duration = Duration::from_secs(180);

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    assert!(path.is_file(), "{} is missing: run scripts/setup-tools (it installs Debian's chromium)", path.display());
    path
}

/// The tiers and links of a topology, as `orchestrator graph` draws them.
fn graph(file: &str) -> (Vec<String>, Vec<String>) {
    let out = orchestrator(&["graph", file, "--format", "mermaid"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut tiers = Vec::new();
    let mut edges = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some((from, rest)) = line.split_once(" -- ") {
            let to = rest.rsplit("--> ").next().unwrap();
            edges.push(format!("{}>{}", &from[2..], &to[2..]));
        } else if let Some(node) = line.strip_prefix("t_") {
            tiers.push(node.split('[').next().unwrap().to_owned());
        }
    }
    (tiers, edges)
}

/// A Node.js test file running: its output line by line, and how it ended.
struct NodeRun {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl NodeRun {
    fn start(file: &str, env: &[(&str, String)]) -> Self {
        let browser_dir = repo_root().join("tests/browser");
        assert!(
            browser_dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: run scripts/setup-tools (npm ci in tests/browser)"
        );
        let mut child = Command::new("node")
            .args(["--test", "--test-concurrency=1", "--test-reporter=tap", file])
            .current_dir(&browser_dir)
            .env("CHROMIUM", chromium())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node: install Node.js");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let mut readers = Vec::new();
        for stream in streams {
            let (tx, output) = (tx.clone(), output.clone());
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            }));
        }
        Self { child, lines, output, readers }
    }

    /// Waits for a line of its output that contains `needle`.
    fn wait_for(&self, needle: &str, orch: &Running) {
        let deadline = std::time::Instant::now() + BROWSER_DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => orch.fail(&format!("the browser test never said `{needle}`:\n{}", self.output())),
            }
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits for it to end, at most [`BROWSER_DEADLINE`]; fails `orch`'s
    /// test unless every test in it passed. Returns its output.
    async fn finish(self, orch: &Running, tests: usize) -> String {
        let pid = self.child.id();
        let mut child = self.child;
        let waited = tokio::time::timeout(BROWSER_DEADLINE, tokio::task::spawn_blocking(move || child.wait())).await;
        let status = match waited {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                // Stop what this test started, by its PID (Chromium, its child, goes with it).
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                orch.fail(&format!("the browser tests did not end within {BROWSER_DEADLINE:?}"));
            }
        };
        // Its output, read to the end (the pipes close as it exited).
        for reader in self.readers {
            let _ = reader.join();
        }
        let out = self.output.lock().unwrap().clone();
        if !status.success() {
            orch.fail(&format!("the browser tests failed ({status}):\n{out}"));
        }
        // Node's runner reports each test; none may be skipped or left to do.
        for summary in [format!("# pass {tests}"), "# fail 0".into(), "# skipped 0".into(), "# todo 0".into()] {
            assert!(out.contains(&summary), "no `{summary}` in:\n{out}");
        }
        out
    }
}

fn out_dir() -> PathBuf {
    target_dir().join("../browser-tests/dashboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_orders_topology_live_in_chromium() {
    let topology = repo_topology("topologies/orders.yaml");
    let (tiers, edges) = graph(topology.path_str());
    assert_eq!(tiers.len(), 5, "{tiers:?}");
    let orch = Running::start_file(topology).await;
    let web = orch.tier_addr("web").await;
    let run = NodeRun::start(
        "dashboard.test.mjs",
        &[
            ("ADMIN", orch.admin.to_string()),
            ("WEB", web.to_string()),
            ("TOPOLOGY", orch.topology.path_str().to_owned()),
            ("TIERS", tiers.join(",")),
            ("EDGES", edges.join(",")),
            ("OUT", out_dir().display().to_string()),
        ],
    );
    let out = run.finish(&orch, 6).await;
    for shot in ["graph", "replica-failing", "tier", "reload-failed", "logs"] {
        assert!(out_dir().join(format!("{shot}.png")).is_file(), "no screenshot {shot}.png in {}", out_dir().display());
    }
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reconnects_after_the_orchestrator_restarts() {
    // The same admin address for both: a free port, taken by the first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let mut first = Running::start_with(repo_topology("topologies/orders.yaml"), &["--admin", &admin]).await;
    assert_eq!(first.admin.to_string(), admin);
    let run =
        NodeRun::start("reconnect.test.mjs", &[("ADMIN", admin.clone()), ("OUT", out_dir().display().to_string())]);
    run.wait_for("# connected", &first);
    first.terminate();
    assert!(first.wait_exit().success());
    let more = repo_topology("topologies/orders.yaml");
    assert!(more.yaml.contains("replicas: 2"));
    let more = integration_tests::TopologyFile::new(&more.yaml.replacen("replicas: 2", "replicas: 3", 1));
    let second = Running::start_with(more, &["--admin", &admin]).await;
    run.finish(&second, 1).await;
    assert!(out_dir().join("reconnected.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tiers_are_laid_out_readably() {
    // A gateway, 7 services behind it, 6 stores behind each: 50 tiers, 49 links.
    let mut yaml = String::from(
        "version: 1\nname: fifty\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config:\n      routes:\n",
    );
    for s in 0..7 {
        yaml.push_str(&format!("        - {{ path: /s{s}, link: svc{s} }}\n"));
    }
    let mut links = String::from("links:\n");
    for s in 0..7 {
        yaml.push_str(&format!("  svc{s}: {{ plugin: testkit }}\n"));
        links.push_str(&format!("  - {{ from: web, to: svc{s}, kind: rest }}\n"));
        for d in 0..6 {
            yaml.push_str(&format!("  store{s}{d}: {{ plugin: testkit }}\n"));
            links.push_str(&format!("  - {{ from: svc{s}, to: store{s}{d}, kind: rpc }}\n"));
        }
    }
    yaml.push_str(&links);
    let orch = Running::start(&yaml).await;
    assert_eq!(orch.status().await["tiers"].as_array().unwrap().len(), 50);
    let run = NodeRun::start(
        "layout.test.mjs",
        &[("ADMIN", orch.admin.to_string()), ("OUT", out_dir().display().to_string()), ("TIERS", "50".into())],
    );
    run.finish(&orch, 1).await;
    assert!(out_dir().join("fifty-tiers.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_named_like_an_objects_properties_are_shown() {
    let orch = Running::start(
        r#"
version: 1
name: properties
tiers:
  constructor:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: toString }] }
  toString:
    plugin: process
    config:
      command: [sh, -c, 'exec python3 -m http.server --bind 127.0.0.1 "$PORT"']
      readiness: { http: /, interval: 50ms }
  hasOwnProperty: { plugin: queue }
  valueOf: { plugin: testkit }
links:
  - { from: constructor, to: toString, kind: rest }
  - { from: toString, to: hasOwnProperty, kind: queue, topic: constructor }
  - { from: hasOwnProperty, to: valueOf, kind: queue, topic: constructor }
"#,
    )
    .await;
    let run = NodeRun::start(
        "names.test.mjs",
        &[("ADMIN", orch.admin.to_string()), ("OUT", out_dir().display().to_string())],
    );
    run.finish(&orch, 1).await;
    assert!(out_dir().join("object-names.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_edge_is_drawn_with_its_pending_and_relayed_rows() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let python = integration_tests::venv_python();
    let subscriber = integration_tests::python_server(
        "",
        r#"    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.reply(204, {}, b"")

    def do_GET(self):
        self.reply(200, {}, b"ok")
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("subscriber.py"), subscriber).unwrap();
    let topology = integration_tests::TopologyFile::new(&format!(
        r#"
version: 1
name: outbox
tiers:
  db: {{ plugin: postgres }}
  orders: {{ plugin: queue }}
  audit:
    plugin: process
    config: {{ command: [{py}, {dir}/subscriber.py] }}
  caller:
    plugin: process
    config: {{ command: [sh, -c, 'echo "URL=$ORCH_LINK_DB_URL"; exec sleep 3600'], readiness: {{ exec: ["true"] }} }}
links:
  - {{ from: db, to: orders, kind: queue, outbox: {{ table: outbox }} }}
  - {{ from: orders, to: audit, kind: queue }}
  - {{ from: caller, to: db, kind: tcp }}
"#,
        py = python.display(),
        dir = dir.path().display()
    ));
    let data_arg = data.path().display().to_string();
    let orch = Running::start_with(topology, &["--data-dir", &data_arg]).await;
    let url = crate::tcp::printed(&orch, "URL");
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c"])
        .arg("INSERT INTO outbox (payload) VALUES ('{\"n\": 1}'), ('{\"n\": 2}'), ('{\"n\": 3}')")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = NodeRun::start(
        "outbox.test.mjs",
        &[("ADMIN", orch.admin.to_string()), ("OUT", out_dir().display().to_string())],
    );
    run.finish(&orch, 1).await;
    assert!(out_dir().join("outbox-edge.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_link_is_drawn_with_its_connections_and_bytes() {
    let python = integration_tests::venv_python();
    let caller = r#"import os, socket, time
from urllib.parse import urlparse
u = urlparse(os.environ["ORCH_LINK_CACHE_URL"])
s = socket.create_connection((u.hostname, u.port))
s.sendall(("AUTH %s\r\n" % u.password).encode()); s.recv(100)
while True:
    s.sendall(b"PING\r\n"); s.recv(100); time.sleep(0.05)
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("caller.py"), caller).unwrap();
    let orch = Running::start(&format!(
        r#"
version: 1
name: tcp
tiers:
  cache: {{ plugin: redis }}
  app:
    plugin: process
    config: {{ command: [{py}, {dir}/caller.py], readiness: {{ exec: ["true"] }} }}
links:
  - {{ from: app, to: cache, kind: tcp }}
"#,
        py = python.display(),
        dir = dir.path().display()
    ))
    .await;
    let run =
        NodeRun::start("tcp.test.mjs", &[("ADMIN", orch.admin.to_string()), ("OUT", out_dir().display().to_string())]);
    run.finish(&orch, 1).await;
    assert!(out_dir().join("tcp-link.png").is_file());
}
