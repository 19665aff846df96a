//! Runs the real `orchestrator` binary for integration tests.
//!
//! Every process is started on port 0 and found through what it reports (the
//! admin address in its log, tier addresses in `/admin/status`); every wait is
//! on an event with a deadline, never a sleep. A failing test prints the
//! process's output and the topology it ran.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The cargo target directory holding the binary and the plugin libraries.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("test executable in target/<profile>/deps").to_path_buf()
}

/// The orchestrator binary. The test command builds the workspace first.
pub fn bin() -> PathBuf {
    let bin = target_dir().join("orchestrator");
    assert!(bin.is_file(), "{} is missing: run `cargo build --workspace` before the tests", bin.display());
    bin
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repository").to_path_buf()
}

/// Runs `orchestrator ARGS` to completion.
pub fn orchestrator(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("NO_COLOR", "1").output().expect("run orchestrator")
}

/// A topology file in a temporary directory.
pub struct TopologyFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub yaml: String,
}

impl TopologyFile {
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("topology.yaml");
        std::fs::write(&path, yaml).expect("write topology");
        Self { dir, path, yaml: yaml.to_owned() }
    }

    /// A repository topology with its fixed listen addresses moved to port 0.
    pub fn from_repo(relative: &str) -> Self {
        let yaml = std::fs::read_to_string(repo_root().join(relative)).expect("read topology");
        Self::new(&yaml.replace("127.0.0.1:8080", "127.0.0.1:0"))
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

/// Writes a secret (a token, a key) readable by its owner only, as the
/// orchestrator asks of every file that holds one.
pub fn write_secret(path: &Path, content: impl AsRef<[u8]>) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("create a secret file");
    file.write_all(content.as_ref()).expect("write a secret file");
}

/// A running `orchestrator run`.
pub struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
    pub admin: SocketAddr,
    pub topology: TopologyFile,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Running {
    /// Starts `orchestrator run` on `yaml` and waits until it is ready.
    pub async fn start(yaml: &str) -> Self {
        Self::start_file(TopologyFile::new(yaml)).await
    }

    pub async fn start_file(topology: TopologyFile) -> Self {
        Self::start_with(topology, &[]).await
    }

    /// Starts `orchestrator run` with extra arguments.
    pub async fn start_with(topology: TopologyFile, extra: &[&str]) -> Self {
        let path = topology.path.clone();
        Self::spawn(topology, &path, None, extra).await
    }

    /// Starts `orchestrator run` and returns once its admin API listens,
    /// before its tiers are ready.
    pub async fn start_unready(topology: TopologyFile) -> Self {
        let path = topology.path.clone();
        Self::spawn_with(topology, &path, None, &[], &[], false).await
    }

    /// Starts `orchestrator run` with extra environment variables.
    pub async fn start_with_env(topology: TopologyFile, env: &[(&str, &str)]) -> Self {
        let path = topology.path.clone();
        Self::spawn_with(topology, &path, None, &[], env, true).await
    }

    /// Starts `orchestrator run` with extra arguments and environment variables.
    pub async fn start_with_args_env(topology: TopologyFile, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let path = topology.path.clone();
        Self::spawn_with(topology, &path, None, extra, env, true).await
    }

    /// Starts `orchestrator run topology.yaml` from the topology's directory,
    /// as a user in that directory would.
    pub async fn start_in_its_directory(topology: TopologyFile) -> Self {
        let dir = topology.dir.path().to_path_buf();
        Self::spawn(topology, Path::new("topology.yaml"), Some(&dir), &[]).await
    }

    async fn spawn(topology: TopologyFile, path: &Path, cwd: Option<&Path>, extra: &[&str]) -> Self {
        Self::spawn_with(topology, path, cwd, extra, &[], true).await
    }

    async fn spawn_with(
        topology: TopologyFile,
        path: &Path,
        cwd: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
        ready: bool,
    ) -> Self {
        let mut command = Command::new(bin());
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .arg("run")
            .arg(path)
            // Port 0 unless the test names its own admin address.
            .args(if extra.contains(&"--admin") { &[][..] } else { &["--admin", "127.0.0.1:0"][..] })
            .args(["--drain-timeout", "10s"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("ORCH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orchestrator");
        let (log, lines) = collect_lines([child.stderr.take().expect("piped stderr")]);
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut running = Self { child, log, lines, admin: "0.0.0.0:0".parse().expect("addr"), topology, client };
        let line = running.wait_for_line("Admin API listening.");
        // A text line (`… addr=127.0.0.1:N`) or a JSON one (`"addr":"127.0.0.1:N"`).
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let addr = match &json {
            Some(json) => json["addr"].as_str(),
            None => line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()),
        };
        let addr = addr.unwrap_or_else(|| running.fail(&format!("no address in the ready line: {line}")));
        running.admin = addr.parse().unwrap_or_else(|_| running.fail(&format!("bad admin address {addr}")));
        if ready {
            running.wait_ready().await;
        }
        running
    }

    /// Panics with the process's output and the topology.
    pub fn fail(&self, why: &str) -> ! {
        let log = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
        panic!(
            "{why}\n--- topology ({}) ---\n{}\n--- orchestrator stderr ---\n{log}\n---",
            self.topology.path.display(),
            self.topology.yaml
        );
    }

    /// Waits for a log line containing `needle` (one not consumed by an earlier wait).
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no log line with `{needle}` within {DEADLINE:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("the process exited before logging `{needle}`"))
                }
            }
        }
    }

    /// Waits until each of `needles` appeared in some log line (in any order;
    /// lines consumed by an earlier wait do not count).
    pub fn wait_for_lines(&self, needles: &[String]) {
        let mut left: Vec<&String> = needles.iter().collect();
        let deadline = Instant::now() + DEADLINE;
        while !left.is_empty() {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => left.retain(|needle| !line.contains(needle.as_str())),
                Err(_) => self.fail(&format!("no log lines with {left:?} within {DEADLINE:?}")),
            }
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        self.wait_for_line("Topology running.");
        match self.try_get(self.admin, "/admin/ready").await {
            Ok((200, _)) => {}
            other => self.fail(&format!("running, but /admin/ready answered {other:?}")),
        }
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.get(self.admin, "/admin/status").await;
        assert_eq!(code, 200, "status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| self.fail(&format!("status is not JSON ({e}): {body}")))
    }

    /// `/admin/status` once `generation` is at least `generation` (the admin
    /// API waits for it); fails the test if it is not reached in time.
    pub async fn wait_generation(&self, generation: u64) -> serde_json::Value {
        self.wait_status("min_generation", generation, |s| s["generation"].as_u64() >= Some(generation)).await
    }

    /// `/admin/status` once `attempts` reloads (of any outcome) were made.
    pub async fn wait_attempts(&self, attempts: u64) -> serde_json::Value {
        self.wait_status("min_attempts", attempts, |s| s["reloads"]["attempts"].as_u64() >= Some(attempts)).await
    }

    async fn wait_status(
        &self,
        param: &str,
        n: u64,
        reached: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = format!("/admin/status?{param}={n}&wait={}s", DEADLINE.as_secs());
        let (code, body) = self.get(self.admin, &path).await;
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| self.fail(&format!("status is not JSON ({e}): {body}")));
        if !reached(&status) {
            self.fail(&format!("{param} {n} not reached within {DEADLINE:?}: {status}"));
        }
        status
    }

    /// The overview `/admin/events` pushes, once one satisfies `reached`
    /// (the figures change each second, states as they change); fails the
    /// test if none does in time.
    pub async fn wait_overview(&self, reached: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let req = hyper::Request::get(format!("http://{}/admin/events", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let watch = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let mut body = resp.into_body();
            let mut pending = String::new();
            let mut last = serde_json::Value::Null;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                let Ok(data) = frame.into_data() else { continue };
                pending.push_str(&String::from_utf8_lossy(&data));
                // Events end with a blank line; the overview is its `data:` line.
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                    last = serde_json::from_str(data).map_err(|e| format!("not JSON ({e}): {data}"))?;
                    if reached(&last) {
                        return Ok(last);
                    }
                }
            }
            Err(format!("the event stream ended; the last overview: {last}"))
        };
        match tokio::time::timeout(DEADLINE, watch).await {
            Ok(Ok(overview)) => overview,
            Ok(Err(e)) => self.fail(&format!("waiting for an overview: {e}")),
            Err(_) => self.fail(&format!("no overview as expected within {DEADLINE:?}")),
        }
    }

    /// Saves a new topology the way editors do: write a temporary file, then
    /// rename it over the original.
    pub fn save(&self, yaml: &str) {
        let tmp = self.topology.dir.path().join(".topology.yaml.swp");
        std::fs::write(&tmp, yaml).expect("write temp topology");
        std::fs::rename(&tmp, &self.topology.path).expect("rename over topology");
    }

    /// Overwrites the topology file in place.
    pub fn overwrite(&self, yaml: &str) {
        std::fs::write(&self.topology.path, yaml).expect("write topology");
    }

    /// The address tier `tier` listens on, from `/admin/status`.
    pub async fn tier_addr(&self, tier: &str) -> SocketAddr {
        let status = self.status().await;
        let tiers = status["tiers"].as_array().cloned().unwrap_or_default();
        let listen = tiers.iter().find(|t| t["name"] == tier).and_then(|t| t["listen"].as_str()).map(str::to_owned);
        match listen.and_then(|l| l.parse().ok()) {
            Some(addr) => addr,
            None => self.fail(&format!("tier `{tier}` has no listen address in {status}")),
        }
    }

    pub async fn try_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        self.try_request("GET", addr, path, Bytes::new()).await
    }

    /// Sends one request; the status code and the body.
    pub async fn try_request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, String), String> {
        request(&self.client, method, addr, path, body).await
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        self.try_get(addr, path).await.unwrap_or_else(|e| self.fail(&format!("GET {path}: {e}")))
    }

    pub async fn post(&self, addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> (u16, String) {
        self.try_request("POST", addr, path, body.into())
            .await
            .unwrap_or_else(|e| self.fail(&format!("POST {path}: {e}")))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to the process this test started.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`HUP`, `TERM`…) to the process this test started.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit: its stderr closes, then it is reaped.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => self.fail("the process did not exit in time"),
            }
        }
        self.child.wait().unwrap_or_else(|e| self.fail(&format!("wait: {e}")))
    }
}

/// Sends one HTTP/1.1 request with `client`.
pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> Result<(u16, String), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// A repository topology with its fixed port moved to 0 and its working
/// directories made absolute (the copy lives in a temporary directory). Its
/// Python tiers find the virtualenv `scripts/setup-examples` made.
pub fn repo_topology(name: &str) -> TopologyFile {
    let root = repo_root();
    let yaml = std::fs::read_to_string(root.join(name)).expect("read topology");
    venv_python();
    TopologyFile::new(
        &yaml
            .replace("127.0.0.1:8080", "127.0.0.1:0")
            .replace("workdir: ../examples/go/backend", &format!("workdir: {}/examples/go/backend", root.display()))
            .replace("workdir: ..", &format!("workdir: {}", root.display())),
    )
}

/// A status's tier `name`.
pub fn tier<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tiers"]
        .as_array()
        .and_then(|tiers| tiers.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no tier `{name}` in {status}"))
}

/// The instance ids of tier `name`.
pub fn instance_ids(status: &serde_json::Value, name: &str) -> Vec<u64> {
    tier(status, name)["instances"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The Go example backend, built once per test run into the target directory.
pub fn go_backend() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = target_dir().join("examples").join("go-backend");
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(repo_root().join("examples/go/backend"))
                .status()
                .expect("run `go` (install it with scripts/setup-examples)");
            assert!(status.success(), "go build failed");
            out
        })
        .clone()
}

/// The Python of the examples' virtualenv (made by scripts/setup-examples).
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup-examples", python.display());
    python
}

/// Whether process `pid` is gone (a zombie counts as gone: it runs nothing).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
    }
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Waits until none of `pids` runs any more, each on its own exit event (a
/// pidfd becomes readable when its process ends), within DEADLINE.
pub fn wait_all_gone(pids: &[u32]) -> Result<(), Vec<u32>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let deadline = Instant::now() + DEADLINE;
    let mut alive = Vec::new();
    for &pid in pids {
        let Some(fd) =
            i32::try_from(pid).ok().and_then(Pid::from_raw).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
        else {
            continue; // No such process: already gone.
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => alive.push(pid),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => alive.push(pid),
            }
            break;
        }
    }
    if alive.is_empty() { Ok(()) } else { Err(alive) }
}

/// The pids of tier `name`'s programs, from `/admin/status`.
pub fn program_pids(status: &serde_json::Value, name: &str) -> Vec<u32> {
    tier(status, name)["instances"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["detail"]["pid"].as_u64()).map(|p| p as u32).collect())
        .unwrap_or_default()
}

/// A Python HTTP server program for a process tier, on `PORT`. `handler`
/// is the body of its request handler class: `do_GET`, `do_POST`, …, which
/// answer with `self.reply(status, headers, body)`.
pub fn python_server(imports: &str, handler: &str) -> String {
    format!(
        r#"import os
{imports}
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

{handler}
    def reply(self, status, headers, body):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#
    )
}

/// Requests sent from several tasks until stopped: how many got an answer
/// `accept`ed, and what every other got.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Traffic {
    /// Sends GETs to `path` on `addr` from `tasks` tasks, each answer checked
    /// by `accept(status, body)`.
    pub fn start(addr: SocketAddr, path: &'static str, tasks: usize, accept: fn(u16, &str) -> bool) -> Self {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = client();
        let tasks = (0..tasks)
            .map(|_| {
                let (http, stop) = (http.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match request(&http, "GET", addr, path, Bytes::new()).await {
                            Ok((status, body)) if accept(status, &body) => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Any 200.
    pub fn ok(status: u16, _body: &str) -> bool {
        status == 200
    }

    /// Stops; the answers accepted, and the others.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.tasks {
            let (n, f) = t.await.expect("a traffic task");
            ok += n;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// A new HTTP client (its own connection pool).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stop what this test started, by its PID.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every line of `streams` (a process's stdout, stderr…), as they come:
/// kept, and sent on the channel.
pub fn collect_lines<R: std::io::Read + Send + 'static>(
    streams: impl IntoIterator<Item = R>,
) -> (Arc<Mutex<Vec<String>>>, Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, lines) = channel();
    for stream in streams {
        let (sink, tx) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    (log, lines)
}

/// Debian's nats-server (installed by `scripts/setup-tools`).
pub fn nats_server_bin() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/nats-server");
    assert!(path.exists(), "{} is missing: run scripts/setup-tools", path.display());
    path
}

/// A nats-server of the test's own: JetStream on, its storage in a
/// directory of its own, on loopback at a free port (read back from its
/// log); stopped by its PID when dropped.
pub struct NatsServer {
    child: Child,
    /// The client port.
    pub port: u16,
    /// The route port, in a cluster.
    pub route_port: Option<u16>,
    pub store: PathBuf,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    /// The address it listens on.
    host: String,
}

impl NatsServer {
    /// One server, on a free port.
    pub fn start(store: &Path) -> Self {
        Self::spawn(store, vec!["-p".into(), "-1".into()])
    }

    /// The same server again, on the same port and storage (after a kill).
    pub fn restart(&self) -> Self {
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "-p") {
            args[i + 1] = self.port.to_string();
        }
        if let (Some(i), Some(route)) = (args.iter().position(|a| a == "-cluster"), self.route_port) {
            args[i + 1] = format!("nats://127.0.0.1:{route}");
        }
        Self::spawn(&self.store, args)
    }

    /// Node `name` of cluster `cluster`, its routes on `route_port`, routed
    /// to every port of `routes` (JetStream in a cluster needs its routes
    /// configured: the ports are chosen before the nodes start).
    pub fn cluster_node(store: &Path, name: &str, cluster: &str, route_port: u16, routes: &[u16]) -> Self {
        let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let args: Vec<String> = [
            "-p",
            "-1",
            "-n",
            name,
            "--cluster_name",
            cluster,
            "-cluster",
            &format!("nats://127.0.0.1:{route_port}"),
            "-routes",
            &routes.join(","),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Self::spawn(store, args)
    }

    /// A port free now (bound, then released): for what must be known before a server starts.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
    }

    /// One server in network namespace `ns`, on `addr` (its port read back).
    pub fn start_in(store: &Path, ns: &str, addr: &str) -> Self {
        Self::spawn_with(store, vec!["-p".into(), "-1".into()], Some((ns, addr)))
    }

    fn spawn(store: &Path, args: Vec<String>) -> Self {
        Self::spawn_with(store, args, None)
    }

    fn spawn_with(store: &Path, args: Vec<String>, inside: Option<(&str, &str)>) -> Self {
        std::fs::create_dir_all(store).expect("nats store");
        let (mut command, addr) = match inside {
            Some((ns, addr)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nats_server_bin());
                (c, addr)
            }
            None => (Command::new(nats_server_bin()), "127.0.0.1"),
        };
        let mut child = command
            .args(["-js", "-a", addr, "-sd"])
            .arg(store)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let (log, lines) = collect_lines([child.stderr.take().expect("piped stderr")]);
        let mut server = Self {
            child,
            port: 0,
            route_port: None,
            store: store.to_owned(),
            lines,
            log,
            args: args.clone(),
            host: addr.to_owned(),
        };
        let clustered = args.iter().any(|a| a == "-cluster");
        let deadline = Instant::now() + DEADLINE;
        while server.port == 0 || (clustered && server.route_port.is_none()) {
            let line = match server.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(_) => panic!("nats-server did not start:\n{}", server.log.lock().expect("log").join("\n")),
            };
            let port = |l: &str| l.rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
            if line.contains("Listening for client connections on") {
                server.port = port(&line).unwrap_or(0);
            } else if line.contains("Listening for route connections on") {
                server.route_port = port(&line);
            }
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.log.lock().expect("log").iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => {}
                Err(_) => panic!("no `{needle}` from nats-server:\n{}", self.log.lock().expect("log").join("\n")),
            }
        }
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
