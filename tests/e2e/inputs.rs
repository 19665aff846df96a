//! Files the orchestrator reads: a topology that is not a regular file, is
//! too large, or sits behind symlinks (as Kubernetes mounts ConfigMaps).

use integration_tests::{Running, TopologyFile, orchestrator, repo_root};

fn hello() -> String {
    std::fs::read_to_string(repo_root().join("topologies/hello.yaml")).unwrap().replace("127.0.0.1:8080", "127.0.0.1:0")
}

#[test]
fn validate_refuses_a_device_and_a_file_over_the_limit_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    // Before the limit, `validate` read /dev/zero until memory ran out.
    let out = orchestrator(&["validate", zero.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("it is a device, not a regular file"), "{stderr}");

    let big = dir.path().join("big.yaml");
    std::fs::write(
        &big,
        format!("version: 1\nname: big\n# {}\ntiers: {{ a: {{ plugin: hello }} }}\n", "x".repeat(100)),
    )
    .unwrap();
    let limit = std::fs::metadata(&big).unwrap().len();
    let run = |limit: u64| {
        std::process::Command::new(integration_tests::bin())
            .args(["validate", big.to_str().unwrap()])
            .env("ORCH_MAX_TOPOLOGY_BYTES", limit.to_string())
            .output()
            .unwrap()
    };
    // At the limit it is read; one byte under it, refused with how to raise it.
    assert_eq!(run(limit).status.code(), Some(0), "{}", String::from_utf8_lossy(&run(limit).stderr));
    let out = run(limit - 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("larger than the limit of {} bytes", limit - 1)), "{stderr}");
    assert!(stderr.contains("ORCH_MAX_TOPOLOGY_BYTES"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_the_topology_fails_the_reload_and_a_good_file_then_applies() {
    let orch = Running::start(&hello()).await;
    let path = orch.topology.path.clone();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    // Before, opening the FIFO blocked the reload (and every later one) forever.
    let (code, body) = orch.post(orch.admin, "/admin/reload", "").await;
    assert_eq!(code, 422, "{body}");
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["error_kind"], "unreadable", "{record}");
    let error = record["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(error.contains("it is a FIFO, not a regular file"), "{record}");
    assert_eq!(record["errors"][0]["file"], path.display().to_string(), "{record}");

    orch.save(&hello().replace("greeting: Hello Python!", "greeting: Bonjour!"));
    let status = orch.wait_generation(2).await;
    assert_eq!(status["last_reload"]["outcome"], "applied", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_behind_configmap_style_symlinks_is_seen() {
    // topology.yaml → ..data/topology.yaml, ..data → ..v1: a ConfigMap volume.
    let topology = TopologyFile::new(&hello());
    let dir = topology.dir.path().to_path_buf();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/topology.yaml"), hello()).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::fs::remove_file(&topology.path).unwrap();
    std::os::unix::fs::symlink("..data/topology.yaml", &topology.path).unwrap();
    let orch = Running::start_file(topology).await;
    let web = orch.tier_addr("web").await;

    // The kubelet's update: a new directory, a new link renamed over `..data`;
    // neither `topology.yaml` nor `..v1/topology.yaml` is touched.
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/topology.yaml"), hello().replace("greeting: Hello Python!", "greeting: Hallo!"))
        .unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    orch.wait_generation(2).await;
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Hallo!","data":"Hello Go!"}"#);

    // And the next update, from the directory the link now points to.
    std::fs::create_dir(dir.join("..v3")).unwrap();
    std::fs::write(dir.join("..v3/topology.yaml"), hello().replace("greeting: Hello Python!", "greeting: Hej!"))
        .unwrap();
    std::os::unix::fs::symlink("..v3", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v2")).unwrap();
    orch.wait_generation(3).await;
    assert_eq!(orch.get(web, "/api").await.1, r#"{"message":"Hej!","data":"Hello Go!"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_printing_a_line_without_end_never_grows_the_orchestrator() {
    let yaml =
        "version: 1\nname: loud\ntiers:\n  loud:\n    plugin: process\n    config: { command: [python3, loud.py] }\n";
    let topology = TopologyFile::new(yaml);
    // 300 MB with no newline, then one short line, then it serves.
    let handler = "    def do_GET(self):\n        self.reply(200, {}, b'ok')\n";
    let program = integration_tests::python_server(
        "import sys\nfor _ in range(300):\n    sys.stdout.write('x' * 1000000)\nsys.stdout.write('\\nafter\\n')\nsys.stdout.flush()",
        handler,
    );
    std::fs::write(topology.dir.path().join("loud.py"), program).unwrap();
    let orch = Running::start_file(topology).await;
    // The program became ready after it printed all of it: it is in the log already.
    let log = orch.log();
    let cut = log.iter().find(|l| l.contains("more bytes of this line dropped")).expect("the long line, cut");
    assert!(cut.contains(&format!("[{} more bytes of this line dropped]", 300_000_000 - 16 * 1024)), "{cut}");
    assert!(log.iter().any(|l| l.ends_with(": after")), "the next line is whole");
    let status = std::fs::read_to_string(format!("/proc/{}/status", orch.pid())).unwrap();
    let peak: u64 =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    // Before, the whole line was kept: 300 MB and more.
    assert!(peak < 100 * 1024, "peak resident memory {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programs_stderr_is_logged_as_warnings_without_its_colours() {
    let yaml = "version: 1\nname: colours\ntiers:\n  painter:\n    plugin: process\n    config: { command: [python3, painter.py] }\n";
    let topology = TopologyFile::new(yaml);
    let handler = "    def do_GET(self):\n        self.reply(200, {}, b'ok')\n";
    let program = integration_tests::python_server(
        "import sys\nprint('\\x1b[32mstarting\\x1b[0m', flush=True)\nprint('\\x1b[31m\\x1b[1mWARNING\\x1b[0m: it hurts', file=sys.stderr, flush=True)",
        handler,
    );
    std::fs::write(topology.dir.path().join("painter.py"), program).unwrap();
    let orch = Running::start_file(topology).await;
    let log = orch.log();
    let out = log.iter().find(|l| l.ends_with(": starting")).unwrap_or_else(|| panic!("{log:?}"));
    assert!(out.contains(" INFO "), "{out}");
    // At WARN, and marked as the program's stderr.
    let err =
        log.iter().find(|l| l.ends_with(": WARNING: it hurts stream=\"stderr\"")).unwrap_or_else(|| panic!("{log:?}"));
    assert!(err.contains(" WARN "), "{err}");
    assert!(log.iter().all(|l| !l.contains('\x1b')), "{log:?}");
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A topology runs commands as this user: one that another user could have
/// written (the file, or its directory) is refused at start, as sshd's
/// `StrictModes` refuses such a file.
#[test]
fn a_topology_other_users_can_write_is_refused_at_start() {
    let topology = TopologyFile::new(&hello());
    chmod(&topology.path, 0o666);
    let out = orchestrator(&["run", topology.path_str(), "--admin", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("is refused: every user can write it (mode 0666)"), "{stderr}");
    chmod(&topology.path, 0o644);
    chmod(topology.dir.path(), 0o777);
    let out = orchestrator(&["run", topology.path_str(), "--admin", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("is writable by every user, who could replace it"), "{stderr}");
    chmod(topology.dir.path(), 0o700);
}

/// The same file made writable by every user and then given a new process
/// tier (as another local user would): the reload is refused, located at
/// the file, and the tier never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_a_topology_other_users_can_write_is_refused() {
    let orch = Running::start_file(TopologyFile::new(&hello())).await;
    chmod(&orch.topology.path, 0o666);
    let marker = orch.topology.dir.path().join("ran");
    let intruder = format!(
        "{}  intruder:\n    plugin: process\n    config: {{ command: [touch, {}] }}\n",
        hello().split("links:").next().unwrap(),
        marker.display()
    ) + "links:"
        + hello().split("links:").nth(1).unwrap();
    orch.overwrite(&intruder);
    let status = orch.wait_attempts(1).await;
    let last = &status["last_reload"];
    assert_eq!((last["outcome"].as_str(), last["error_kind"].as_str()), (Some("failed"), Some("insecure")), "{status}");
    assert!(last["error"].as_str().unwrap().contains("every user can write it"), "{status}");
    assert_eq!(last["errors"][0]["file"], orch.topology.path_str(), "located at the file: {status}");
    assert_eq!(status["generation"], 1, "nothing applied: {status}");
    assert!(!status["tiers"].as_array().unwrap().iter().any(|t| t["name"] == "intruder"), "{status}");
    assert!(!marker.exists(), "the intruder's command ran");
}

/// A topology that is a symlink to a file of /proc (the orchestrator's own
/// environment) is refused unread: nothing of it reaches the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_leading_into_proc_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("t.yaml");
    std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
    let out = orchestrator(&["validate", link.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("it is a file of /proc, not a regular file"), "{stderr}");

    let orch = Running::start_with_env(TopologyFile::new(&hello()), &[("ORCH_SECRET_PROBE", "leaked-value")]).await;
    let tmp = orch.topology.dir.path().join("swap");
    std::os::unix::fs::symlink("/proc/self/environ", &tmp).unwrap();
    std::fs::rename(&tmp, &orch.topology.path).unwrap();
    let status = orch.wait_attempts(1).await;
    assert_eq!(status["last_reload"]["outcome"], "failed", "{status}");
    assert!(!status.to_string().contains("leaked-value"), "the environment reached the status: {status}");
}

/// A token file other users can read is refused, naming the fix.
#[test]
fn an_admin_token_other_users_can_read_is_refused() {
    let topology = TopologyFile::new(&hello());
    let token = topology.dir.path().join("admin.token");
    std::fs::write(&token, "a-token-of-enough-characters\n").unwrap();
    chmod(&token, 0o644);
    let out = orchestrator(&[
        "run",
        topology.path_str(),
        "--admin",
        "127.0.0.1:0",
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("other users can read") && stderr.contains("chmod 600"), "{stderr}");
}

/// Sends `request` (raw HTTP/1.1) to `addr`; the status line's code.
async fn raw_status(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(integration_tests::DEADLINE, tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer)
}

/// Every HTTP listener — a tier's, a program's link listener, the peer
/// listener — normalizes dot segments, refuses an encoded `/` and a second
/// `Host`, whatever it forwards to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_normalizes_paths_and_refuses_a_second_host() {
    let python = integration_tests::venv_python();
    let yaml = format!(
        r#"
version: 1
name: normalized
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: back }}] }}
  caller:
    plugin: process
    config:
      command: [{}, -c, "import os, time; print('LINK', os.environ['ORCH_LINK_BACK_URL'], flush=True); time.sleep(3600)"]
      readiness: {{ exec: ["true"] }}
  back: {{ plugin: testkit }}
links:
  - {{ from: web, to: back, kind: rest }}
  - {{ from: caller, to: back, kind: rest }}
"#,
        python.display()
    );
    let orch = Running::start_with(TopologyFile::new(&yaml), &["--peer-listen", "127.0.0.1:0"]).await;
    // Printed as the program starts: before or after the topology runs.
    let link_line = match orch.log().into_iter().find(|l| l.contains("LINK http://")) {
        Some(line) => line,
        None => orch.wait_for_line("LINK http://"),
    };
    let link: std::net::SocketAddr =
        link_line.split("LINK http://").nth(1).unwrap().trim().trim_end_matches('/').parse().unwrap();
    let peer_line = orch.log().into_iter().find(|l| l.contains("Peer listener listening.")).unwrap();
    let peer: std::net::SocketAddr = peer_line.split("addr=").nth(1).unwrap().trim().parse().unwrap();
    let web = orch.tier_addr("web").await;
    let tier = "orch-peer-tier: back\r\n";
    for (name, addr, extra) in [("tier", web, ""), ("link", link, ""), ("peer", peer, tier)] {
        let get = |path: &str, hosts: &str| format!("GET {path} HTTP/1.1\r\n{hosts}{extra}connection: close\r\n\r\n");
        let (code, answer) = raw_status(addr, get("/x/%2e%2e/whoami", "host: a\r\n")).await;
        assert_eq!(code, 200, "{name}: {answer}");
        assert!(answer.contains(r#""tier":"back""#), "{name}: dot segments resolved before forwarding: {answer}");
        let (code, answer) = raw_status(addr, get("/x/..%2fwhoami", "host: a\r\n")).await;
        assert_eq!(code, 400, "{name}: an encoded slash: {answer}");
        let (code, answer) = raw_status(addr, get("/whoami", "host: a\r\nhost: b\r\n")).await;
        assert_eq!(code, 400, "{name}: two Host headers: {answer}");
        assert!(answer.contains("more than one `Host`"), "{name}: {answer}");
    }
}

/// What a program prints with control characters in it: `\r` to rewrite a
/// line, a bell, cursor moves, the 8-bit CSI, colours.
const NOISY: &str = r#"import sys, time
sys.stdout.write("progress 10%\rprogress 99%\x07 \x1b[31mred\x1b[0m \x1b[2K\x1b[1A\u009b2J done\n")
sys.stdout.flush()
time.sleep(3600)
"#;

fn noisy_topology(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("noisy.py"), NOISY).unwrap();
    format!(
        "version: 1\nname: noisy\ntiers:\n  noisy:\n    plugin: process\n    config: {{ command: [{}, {}/noisy.py], readiness: {{ exec: [\"true\"] }} }}\n",
        integration_tests::venv_python().display(),
        dir.display()
    )
}

/// Logged anywhere but a terminal, a program's control characters are
/// shown escaped, its colours and cursor moves removed: nothing it prints
/// can rewrite a line already logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programs_control_characters_are_escaped_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Running::start(&noisy_topology(dir.path())).await;
    let line = match orch.log().into_iter().find(|l| l.contains("progress 10%")) {
        Some(line) => line,
        None => orch.wait_for_line("progress 10%"),
    };
    assert!(line.ends_with(r"progress 10%\rprogress 99%\x07 red  done"), "{line:?}");
    assert!(!line.chars().any(char::is_control), "{line:?}");
    // The dashboard and `orchestrator logs` read the same.
    let (_, body) = orch.get(orch.admin, "/admin/logs?tiers=noisy&grep=progress").await;
    let logged: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(logged["message"], r"progress 10%\rprogress 99%\x07 red  done");
}

/// Logged to a terminal, a program's colours are kept (docs/process-tiers.md
/// says so), and nothing else that controls the terminal reaches it.
#[test]
fn a_programs_colours_reach_a_terminal_and_nothing_else_does() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let topology = TopologyFile::new(&noisy_topology(dir.path()));
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = std::process::Command::new(integration_tests::bin())
        .args(["run", topology.path_str(), "--admin", "127.0.0.1:0", "--no-watch"])
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut master = std::fs::File::from(pty.master);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(" done") {
                let _ = tx.send(seen.clone());
                break;
            }
        }
    });
    let seen = rx.recv_timeout(integration_tests::DEADLINE);
    let _ = child.kill();
    let _ = child.wait();
    let seen = String::from_utf8_lossy(&seen.expect("the program's line on the terminal")).into_owned();
    let line = seen.lines().find(|l| l.contains("progress 10%")).unwrap().to_owned();
    assert!(line.contains("\x1b[31mred\x1b[0m"), "colours kept: {line:?}");
    assert!(line.contains(r"progress 10%\rprogress 99%\x07 "), "{line:?}");
    for raw in ["\x1b[2K", "\x1b[1A", "\u{9b}", "\x07", "\r"] {
        // (A terminal ends its lines with `\r\n`: `lines` took that `\r`.)
        assert!(!line.trim_end_matches('\r').contains(raw), "{raw:?} reached the terminal: {line:?}");
    }
}
