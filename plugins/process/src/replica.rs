//! One replica: a program started, probed, restarted with backoff, stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use plugin_api::serde_json::{self, json};
use plugin_api::{Context, LinkKind, Request, Response};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::{Notify, watch};

use crate::config::{Restart, Settings};
use crate::forward::{Failure, Forwarder, HttpRequest, HttpResponse};
use crate::grpc::GrpcForwarder;
use crate::probe;

/// A replica still not ready after this long is warned of.
const SLOW_START: Duration = Duration::from_secs(5);

/// After this long ready, a replica's restart count starts again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What `/admin/status` shows for a replica.
#[derive(Clone, Debug, Default)]
struct Report {
    pid: Option<u32>,
    state: &'static str,
    restarts: u32,
    last_exit: Option<String>,
    last_probe_error: Option<String>,
    /// The last exit's code, or 128 + the signal that ended it (as a shell has it).
    last_exit_code: Option<i32>,
    /// Readiness and liveness probes that failed, over the replica's life.
    probe_failures: u64,
    /// Why the replica gave up, once it has.
    failed: Option<String>,
    /// A job that ran to completion.
    completed: bool,
}

/// The last lines a program printed, kept to say why a job failed.
const LAST_LINES: usize = 10;

#[derive(Debug)]
pub struct Replica {
    port: u16,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// The program's process group (its pid), 0 when none runs.
    pgid: AtomicI32,
    report: Mutex<Report>,
    /// Signalled on every state change.
    changed: Notify,
    /// Set once, to stop (level-triggered: no stop request can be missed).
    stop_requested: watch::Sender<bool>,
    forwarder: Forwarder,
    grpc: GrpcForwarder,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The program's last lines of output (a job's, to say why it failed).
    last_lines: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Replica {
    /// Starts supervising the program in the background.
    pub fn start(settings: Settings, cx: Context) -> Arc<Self> {
        // A program beside the orchestrator (`run --program-port`) serves on the port it was given.
        let beside = cx.env(PROGRAM_PORT_ENV).and_then(|p| p.parse::<u16>().ok());
        let port = beside.unwrap_or_else(free_port);
        let replica = Arc::new(Self {
            port,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            pgid: AtomicI32::new(0),
            report: Mutex::new(Report { state: "starting", ..Report::default() }),
            changed: Notify::new(),
            stop_requested: watch::channel(false).0,
            forwarder: Forwarder::new(port),
            grpc: GrpcForwarder::new(port),
            task: Mutex::new(None),
            last_lines: Arc::default(),
        });
        let task = match beside {
            Some(_) => tokio::spawn(attend(replica.clone(), settings, cx)),
            None => tokio::spawn(supervise(replica.clone(), settings, cx)),
        };
        *replica.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        replica
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The port the program serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn update(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
    }

    /// Completes once ready (a job: completed), or with why the replica gave up.
    pub async fn wait_ready(&self) -> Result<(), String> {
        loop {
            let changed = self.changed.notified();
            if self.is_ready() || self.report.lock().unwrap_or_else(|e| e.into_inner()).completed {
                return Ok(());
            }
            if let Some(why) = self.report.lock().unwrap_or_else(|e| e.into_inner()).failed.clone() {
                return Err(why);
            }
            changed.await;
        }
    }

    pub fn report(&self) -> serde_json::Value {
        let r = self.report.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "pid": r.pid,
            "port": self.port,
            "state": r.state,
            "ready": self.is_ready(),
            "restarts": r.restarts,
            "last_exit": r.last_exit,
            "last_exit_code": r.last_exit_code,
            "probe_failures": r.probe_failures,
            "pgid": match self.pgid.load(Ordering::Acquire) { 0 => None, g => Some(g) },
            "last_probe_error": r.last_probe_error,
            "failed": r.failed,
            "completed": r.completed,
        })
    }

    /// Why the replica takes no request now, if it does not.
    fn not_taking(&self) -> Option<String> {
        if self.is_ready() {
            return None;
        }
        Some(format!("the replica is {}", self.report.lock().map(|r| r.state).unwrap_or("down")))
    }

    pub async fn forward(&self, req: Request) -> Response {
        if let Some(why) = self.not_taking() {
            return Response::not_delivered(&why);
        }
        // Boxed: an HTTP/2 call's future is several times the size of an
        // HTTP/1 one, and every REST request's future would be as big.
        if req.rpc_method().is_some() {
            Box::pin(self.grpc.forward(req)).await
        } else {
            self.forwarder.forward(req).await
        }
    }

    /// [`Replica::forward`] for a REST request in hyper's types.
    pub async fn forward_http(&self, req: HttpRequest) -> Result<HttpResponse, Failure> {
        if let Some(why) = self.not_taking() {
            return Err(Failure::NotDelivered(why));
        }
        self.forwarder.forward_http(req).await
    }

    /// SIGTERM to the program's process group, SIGKILL after the grace period.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        self.stop_requested.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Replica {
    /// Stops at once, without grace: the instance is being destroyed without
    /// having been stopped (a reload that failed after starting it).
    pub fn abandon(&self) {
        self.stopping.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        self.stop_requested.send_replace(true);
        let _ = kill_group(self, Signal::SIGKILL);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A safety net: whatever happened, the program does not outlive us.
        let pgid = self.pgid.load(Ordering::Acquire);
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// `ORCH_LINK_<NAME>_<SUFFIX>` for link `name`.
pub fn link_var(name: &str, suffix: &str) -> String {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("ORCH_LINK_{upper}_{suffix}")
}

fn environment(settings: &Settings, cx: &Context, port: u16) -> BTreeMap<String, String> {
    let mut env = cx.env_all();
    env.extend(settings.env.clone());
    env.insert("PORT".into(), port.to_string());
    env.insert("ORCH_TIER".into(), cx.tier());
    env.insert("ORCH_REPLICA".into(), cx.replica().to_string());
    for (link, kind) in cx.link_kinds() {
        let Some(url) = cx.link_url(&link) else { continue };
        match kind {
            // A REST link: an HTTP/1.1 base URL. A queue link: POST a message to it to publish.
            LinkKind::Rest | LinkKind::Queue => {
                env.insert(link_var(&link, "URL"), url);
            }
            // An RPC link: the host:port a gRPC client channel dials.
            LinkKind::Rpc => {
                env.insert(link_var(&link, "ADDR"), url.trim_start_matches("h2c://").to_owned());
            }
            // A TCP link: its local address, and a store's connection string.
            LinkKind::Tcp => {
                for (suffix, value) in tcp_link_vars(&url) {
                    env.insert(link_var(&link, suffix), value);
                }
            }
        }
    }
    env
}

/// What a program is given for a TCP link whose URL the host gave as
/// `url`: `tcp://HOST:PORT` for any target, or a store's connection string
/// (`postgresql://user:password@HOST:PORT/db`, `redis://…`), which is also
/// `_URL`.
pub fn tcp_link_vars(url: &str) -> Vec<(&'static str, String)> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("tcp", url));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let addr = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
    let mut vars = vec![("ADDR", addr.to_owned()), ("HOST", host.to_owned()), ("PORT", port.to_owned())];
    if scheme != "tcp" {
        vars.push(("URL", url.to_owned()));
    }
    vars
}

/// Starts the program, through the shim (see [`crate::shim`]) when this
/// process is the orchestrator, so that nothing it starts outlives us.
fn spawn(settings: &Settings, workdir: &PathBuf, env: &BTreeMap<String, String>) -> std::io::Result<Child> {
    // `${PORT}`, `${ORCH_LINK_DB_URL}`… in the arguments: the program's own environment.
    let lookup = |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok());
    let mut command = Vec::with_capacity(settings.command.len());
    for (i, arg) in settings.command.iter().enumerate() {
        command.push(crate::config::expand(arg, &lookup).map_err(|name| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "command[{i}] names `${{{name}}}`, which is not set: `PORT`, `ORCH_LINK_<NAME>_…`, the tier's env or the orchestrator's are (`$${{` for a literal `${{`)"
                ),
            )
        })?);
    }
    let program = &command[0];
    // What the shim would find out only once started: that there is no such program.
    if !command_exists(program, workdir, env) {
        return Err(std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32));
    }
    let mut cmd = match shim() {
        Some(shim) => {
            let mut cmd = crate::sys::command(shim);
            cmd.arg(crate::shim::COMMAND)
                .arg(std::process::id().to_string())
                .arg(settings.stop_grace.as_millis().to_string())
                .arg("--")
                .args(&command);
            cmd
        }
        None => {
            let mut cmd = crate::sys::command(program);
            cmd.args(&command[1..]);
            cmd
        }
    };
    if let Some((uid, gid)) = settings.run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd.current_dir(workdir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that stopping it stops its children too.
        .process_group(0)
        .kill_on_drop(true);
    crate::sys::die_with_parent(&mut cmd);
    cmd.spawn()
}

/// The orchestrator executable, which runs the shim (`None` when the process
/// plugin is hosted by another program, such as a test).
fn shim() -> Option<&'static std::path::Path> {
    static SHIM: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| std::env::current_exe().ok().filter(|exe| exe.file_name().is_some_and(|n| n == "orchestrator")))
        .as_deref()
}

/// Whether `program` names an executable: a path (relative to `workdir`), or
/// a file found on the `PATH` of `env` (or of this process).
pub fn command_exists(program: &str, workdir: &std::path::Path, env: &BTreeMap<String, String>) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(&workdir.join(program));
    }
    let path = env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    std::env::split_paths(&path).any(|dir| executable(&workdir.join(dir).join(program)))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map(|s| s.as_str().to_owned()).unwrap_or_else(|_| signal.to_string());
            format!("killed by {name}")
        }
        _ => status.to_string(),
    }
}

/// The longest line of a program's output logged whole: the rest of a longer
/// one is dropped, and the log line says how much was.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Which of a program's outputs a line came from.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    /// With the level of each line, where the program says it.
    Stderr(Option<fn(&str) -> u32>),
}

impl Stream {
    /// Logs `line`: stdout at INFO, stderr (where tracebacks and warnings go)
    /// at WARN or the level the line gives, marked as stderr.
    fn log(self, cx: &Context, line: String) {
        match self {
            Stream::Stdout => cx.info(line),
            Stream::Stderr(None) => cx.program_stderr(line),
            Stream::Stderr(Some(level)) => cx.program_stderr_at(level(&line), line),
        }
    }
}

/// Whether program output keeps its colours: only when the log goes to a terminal.
fn keep_colours() -> bool {
    use std::io::IsTerminal as _;
    static KEEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KEEP.get_or_init(|| std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
}

/// `line` without its ANSI escape sequences (colours, cursor moves).
pub fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('\x1b') {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters… final byte in @..~; otherwise ESC and one more character.
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out.into()
}

/// Re-emits each line the program prints as a log line of its tier and
/// replica (stderr at WARN; colours only to a terminal). The output is read
/// as fast as the program writes it, whatever its lines' length, so it never
/// blocks the program; what is kept of a line is at most [`MAX_LOG_LINE`]
/// bytes, so it never grows the orchestrator.
fn relay(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    cx: Context,
    which: Stream,
    last: Arc<Mutex<std::collections::VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    let keep = move |line: &str| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(line.chars().take(512).collect());
    };
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(8 * 1024, stream);
        let mut line = LogLine::default();
        loop {
            let buf = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(buf) => buf,
            };
            let (chunk, ends) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            line.push(chunk);
            let used = ends.unwrap_or(buf.len());
            reader.consume(used);
            if ends.is_some() {
                let text = output_line(line.take());
                keep(&text);
                which.log(&cx, text);
            }
        }
        if !line.is_empty() {
            let text = output_line(line.take());
            keep(&text);
            which.log(&cx, text);
        }
    })
}

/// A line as logged: colours stripped unless they go to a terminal.
fn output_line(line: String) -> String {
    if keep_colours() { line } else { strip_ansi(&line).into_owned() }
}

/// A line of output being read: its first [`MAX_LOG_LINE`] bytes, and how many were dropped.
#[derive(Default)]
struct LogLine {
    kept: Vec<u8>,
    dropped: usize,
}

impl LogLine {
    fn push(&mut self, chunk: &[u8]) {
        let room = MAX_LOG_LINE.saturating_sub(self.kept.len()).min(chunk.len());
        self.kept.extend_from_slice(&chunk[..room]);
        self.dropped += chunk.len() - room;
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// The line as logged, and a fresh start.
    fn take(&mut self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).trim_end_matches('\r').to_owned();
        if self.dropped > 0 {
            text.push_str(&format!(" … [{} more bytes of this line dropped]", self.dropped));
        }
        self.kept.clear();
        self.kept.shrink_to(MAX_LOG_LINE);
        self.dropped = 0;
        text
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn colours_are_stripped() {
        assert_eq!(strip_ansi("\x1b[31m\x1b[1mWARNING\x1b[0m: done"), "WARNING: done");
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("a\x1b]b"), "ab");
    }

    #[test]
    fn a_long_line_is_cut_at_the_limit_and_says_how_much_was_dropped() {
        let mut line = LogLine::default();
        for _ in 0..100 {
            line.push(&[b'x'; 1000]);
        }
        let text = line.take();
        assert!(text.starts_with(&"x".repeat(MAX_LOG_LINE)));
        assert!(text.ends_with(&format!(" … [{} more bytes of this line dropped]", 100_000 - MAX_LOG_LINE)));
        assert!(line.is_empty());
        line.push(b"short\r");
        assert_eq!(line.take(), "short");
    }
}

enum Ended {
    /// The program exited (or was killed by a failed probe): why, whether it
    /// exited successfully, and how long it had been ready.
    Exited { why: String, success: bool, ready_for: Duration, code: Option<i32> },
    /// What a restart would not mend (a store's initialisation failed).
    GaveUp(String),
    /// Asked to stop.
    Stopped,
}

impl Ended {
    fn failed(why: String) -> Self {
        Ended::Exited { why, success: false, ready_for: Duration::ZERO, code: None }
    }

    fn exited(status: std::io::Result<ExitStatus>, ready_since: Option<Instant>) -> Self {
        Ended::Exited {
            why: status.as_ref().map_or_else(|e| e.to_string(), |s| describe(*s)),
            success: status.as_ref().is_ok_and(|s| s.success()),
            ready_for: ready_since.map_or(Duration::ZERO, |t| t.elapsed()),
            code: status.as_ref().ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt as _;
                s.code().or_else(|| s.signal().map(|n| 128 + n))
            }),
        }
    }
}

/// Completes when a stop is requested.
async fn stop_requested(replica: &Replica) {
    let mut rx = replica.stop_requested.subscribe();
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn supervise(replica: Arc<Replica>, settings: Settings, cx: Context) {
    let base = cx.base_dir();
    let workdir = settings.workdir.as_ref().map_or_else(|| base.clone(), |w| base.join(w));
    let mut backoff = settings.backoff;
    let mut restarts = 0u32;
    loop {
        // At each start: a link's connection string may have come since
        // (a store on another host that answered only now).
        let env = environment(&settings, &cx, replica.port);
        // A command that does not exist will not exist at the next attempt either.
        let mut hopeless = false;
        if let Some(recipe) = &settings.recipe
            && let Err(why) = recipe.prepare(replica.port).await
        {
            replica.update(|r| {
                r.state = "failed";
                r.pid = None;
                r.failed = Some(why.clone());
            });
            cx.error(format_args!("Replica stopped for good: {why}."));
            return;
        }
        let ended = match spawn(&settings, &workdir, &env) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && workdir.is_dir() => {
                hopeless = true;
                let program = &settings.command[0];
                Ended::failed(if program.contains('/') {
                    format!("cannot start `{program}`: there is no such program in {}", workdir.display())
                } else {
                    let path = env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
                    format!(
                        "cannot start `{program}`: it is not on the PATH ({path}); give its path, e.g. `./{program}` for one in {}",
                        workdir.display()
                    )
                })
            }
            Err(e) if !workdir.is_dir() => Ended::failed(format!(
                "cannot start `{}`: its working directory {} is not a directory ({e})",
                settings.command[0],
                workdir.display()
            )),
            Err(e) => Ended::failed(format!("cannot start `{}` in {}: {e}", settings.command[0], workdir.display())),
            Ok(child) => run_once(&replica, &settings, &cx, child).await,
        };
        replica.ready.store(false, Ordering::Release);
        replica.pgid.store(0, Ordering::Release);
        let (why, success) = match ended {
            Ended::GaveUp(why) => {
                replica.update(|r| {
                    r.state = "failed";
                    r.pid = None;
                    r.failed = Some(why.clone());
                });
                cx.error(format_args!("Replica stopped for good: {why}."));
                return;
            }
            Ended::Stopped => {
                replica.update(|r| {
                    r.state = "stopped";
                    r.pid = None;
                });
                return;
            }
            Ended::Exited { why, success, code, .. } if settings.job => {
                finish_job(&replica, &cx, why, success, code);
                return;
            }
            Ended::Exited { why, success, ready_for, code } => {
                replica.update(|r| r.last_exit_code = code);
                // A replica that stayed ready for a while earns its full restart budget back.
                if ready_for >= STABLE_AFTER {
                    restarts = 0;
                    backoff = settings.backoff;
                }
                (why, success)
            }
        };
        let give_up = match settings.restart {
            _ if hopeless => Some("there is nothing to retry".to_owned()),
            Restart::Never => Some("it exited and the restart policy is `never`".to_owned()),
            Restart::OnFailure if success => {
                Some("it exited successfully and the restart policy is `on-failure`".to_owned())
            }
            _ if restarts >= settings.max_restarts => Some(format!("it failed {} times (max_restarts)", restarts + 1)),
            _ => None,
        };
        if let Some(reason) = give_up {
            replica.update(|r| {
                r.state = "failed";
                r.pid = None;
                r.last_exit = Some(why.clone());
                r.failed = Some(format!("{why}; {reason}"));
            });
            cx.error(format_args!("Replica stopped for good: {why}; {reason}."));
            return;
        }
        restarts += 1;
        // The status shows it before the log says it: who reads the line finds it there.
        replica.update(|r| {
            r.state = "restarting";
            r.pid = None;
            r.restarts = restarts;
            r.last_exit = Some(why.clone());
        });
        cx.warn(format_args!("Replica exited ({why}); restart {restarts} in {}.", humantime::format_duration(backoff)));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&replica) => {
                replica.update(|r| r.state = "stopped");
                return;
            }
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Waits for every task of `handles`.
async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// A job ended: completed (exit 0), or failed with its exit and last lines.
/// Jobs are not restarted.
fn finish_job(replica: &Replica, cx: &Context, why: String, success: bool, code: Option<i32>) {
    replica.update(|r| r.last_exit_code = code);
    if success {
        replica.update(|r| {
            r.state = "completed";
            r.pid = None;
            r.last_exit = Some(why);
            r.last_exit_code = Some(0);
            r.completed = true;
        });
        cx.info(format_args!("Job completed."));
        return;
    }
    let last: Vec<String> = replica.last_lines.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
    let tail = if last.is_empty() { String::new() } else { format!("; its last lines: {}", last.join(" ⏎ ")) };
    replica.update(|r| {
        r.state = "failed";
        r.pid = None;
        r.last_exit = Some(why.clone());
        r.failed = Some(format!("the job failed: {why}{tail}"));
    });
    cx.error(format_args!("Job failed: {why}{tail}."));
}

/// The environment variable naming the port of a program that runs beside
/// the orchestrator (set by `run --program-port`).
pub const PROGRAM_PORT_ENV: &str = "ORCH_PROGRAM_PORT";

/// A program that runs beside the orchestrator (another container of its
/// pod): the kubelet starts, restarts and stops it, so this only opens its
/// links' local listeners (at the ports it was told), probes it, and keeps
/// the replica ready while the readiness probe passes. An `exec` probe
/// would run here, not beside the program: a TCP connection stands for it.
async fn attend(replica: Arc<Replica>, settings: Settings, cx: Context) {
    let _links = environment(&settings, &cx, replica.port);
    let port = replica.port;
    let readiness = match &settings.readiness.kind {
        crate::config::ProbeKind::Exec(_) => {
            crate::config::Probe { kind: crate::config::ProbeKind::Tcp, ..settings.readiness.clone() }
        }
        _ => settings.readiness.clone(),
    };
    replica.update(|r| r.state = "starting");
    cx.info(format_args!("The program runs beside this orchestrator: probing it on 127.0.0.1:{port}."));
    let started = Instant::now();
    let (mut warned, mut failures) = (false, 0u32);
    loop {
        match probe::check(&readiness, port).await {
            Ok(()) => {
                failures = 0;
                if !replica.is_ready() {
                    cx.info(format_args!("Replica ready on port {port} (beside this orchestrator)."));
                    replica.ready.store(true, Ordering::Release);
                    replica.update(|r| {
                        r.state = "ready";
                        r.last_probe_error = None;
                    });
                }
            }
            Err(e) => {
                failures += 1;
                replica.update(|r| {
                    r.last_probe_error = Some(e.clone());
                    r.probe_failures += 1;
                });
                if replica.is_ready() && failures >= readiness.failure_threshold {
                    replica.ready.store(false, Ordering::Release);
                    replica.update(|r| r.state = "starting");
                    cx.warn(format_args!("The program beside this orchestrator failed {failures} probes ({e}): not ready until it passes one."));
                }
                if !warned && !replica.is_ready() && started.elapsed() >= SLOW_START {
                    warned = true;
                    cx.warn(format_args!(
                        "The program beside this orchestrator is not ready after {}s (last probe: {e}); still waiting.",
                        SLOW_START.as_secs()
                    ));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(readiness.interval) => {}
            _ = stop_requested(&replica) => {
                replica.update(|r| r.state = "stopped");
                return;
            }
        }
    }
}

/// One run of the program: until it exits, fails its liveness probe, or is stopped.
async fn run_once(replica: &Arc<Replica>, settings: &Settings, cx: &Context, mut child: Child) -> Ended {
    let pid = child.id().unwrap_or(0);
    replica.pgid.store(i32::try_from(pid).unwrap_or(0), Ordering::Release);
    replica.update(|r| {
        r.pid = Some(pid);
        r.state = "starting";
    });
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(relay(out, cx.clone(), Stream::Stdout, replica.last_lines.clone()));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(relay(err, cx.clone(), Stream::Stderr(settings.stderr_level), replica.last_lines.clone()));
    }
    if settings.job {
        // A job serves nothing: it runs until it exits (or is stopped).
        replica.update(|r| r.state = "running");
        let ended = tokio::select! {
            status = child.wait() => Ended::exited(status, None),
            _ = stop_requested(replica) => terminate(replica, settings, &mut child).await,
        };
        // Its last lines are read before it is judged (what it left running may hold the pipes: a second at most).
        let _ = tokio::time::timeout(Duration::from_secs(1), futures_join(relays)).await;
        return ended;
    }
    // Readiness: probe until it passes, the program exits, or time runs out.
    let started = Instant::now();
    let deadline = started + settings.startup_timeout;
    let mut warned = false;
    loop {
        tokio::select! {
            status = child.wait() => return Ended::exited(status, None),
            _ = stop_requested(replica) => return terminate(replica, settings, &mut child).await,
            result = ready_probe(settings, replica.port) => match result {
                Ok(()) => break,
                Err(e) => {
                    if Instant::now() > deadline {
                        let _ = kill_group(replica, Signal::SIGKILL);
                        let _ = child.wait().await;
                        let limit = humantime::format_duration(settings.startup_timeout);
                        let port = replica.port;
                        // The usual first-run mistake: a program that listens on a port of its own.
                        let hint = match settings.readiness.kind {
                            crate::config::ProbeKind::Exec(_) => String::new(),
                            _ => format!("; the program must listen on 127.0.0.1 at the port in $PORT ({port})"),
                        };
                        return Ended::failed(format!("not ready within {limit} (last probe: {e}){hint}"));
                    }
                    // Said early, while it is still waited for: a first run's
                    // mistake shows in seconds, not at the timeout.
                    if !warned && started.elapsed() >= SLOW_START && settings.startup_timeout > SLOW_START {
                        warned = true;
                        let port = replica.port;
                        cx.warn(format_args!(
                            "Replica not ready after {}s (last probe: {e}); still waiting up to startup_timeout ({}). Is it listening on 127.0.0.1 at the port in $PORT ({port})?",
                            SLOW_START.as_secs(),
                            humantime::format_duration(settings.startup_timeout)
                        ));
                    }
                    replica.update(|r| {
                        r.last_probe_error = Some(e);
                        r.probe_failures += 1;
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(settings.readiness.interval) => {}
                        _ = stop_requested(replica) => return terminate(replica, settings, &mut child).await,
                    }
                }
            },
        }
    }
    // A store's step once it answers (scripts run once): then it is ready.
    if let Some(recipe) = &settings.recipe {
        let step = tokio::select! {
            step = recipe.ready(replica.port) => step,
            _ = stop_requested(replica) => return terminate(replica, settings, &mut child).await,
        };
        if let Err(why) = step {
            if let Ended::Stopped = terminate(replica, settings, &mut child).await {
                return Ended::Stopped;
            }
            return Ended::GaveUp(why);
        }
    }
    // Logged before it is announced, so that the log tells the order of events.
    cx.info(format_args!("Replica ready on port {} (pid {pid}).", replica.port));
    let ready_since = Instant::now();
    replica.ready.store(true, Ordering::Release);
    replica.update(|r| r.state = "ready");

    // Running: until exit, liveness failure, or stop.
    let mut failures = 0u32;
    loop {
        let interval = settings.liveness.as_ref().map_or(Duration::from_secs(3600), |p| p.interval);
        tokio::select! {
            status = child.wait() => return Ended::exited(status, Some(ready_since)),
            _ = stop_requested(replica) => return terminate(replica, settings, &mut child).await,
            _ = tokio::time::sleep(interval) => {
                let Some(liveness) = &settings.liveness else { continue };
                match probe::check(liveness, replica.port).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        replica.update(|r| {
                            r.last_probe_error = Some(e.clone());
                            r.probe_failures += 1;
                        });
                        if failures >= liveness.failure_threshold {
                            replica.ready.store(false, Ordering::Release);
                            cx.warn(format_args!("Liveness probe failed {failures} times ({e}); restarting."));
                            if let Ended::Stopped = terminate(replica, settings, &mut child).await {
                                return Ended::Stopped;
                            }
                            return Ended::failed(format!("liveness probe failed: {e}"));
                        }
                    }
                }
            }
        }
    }
}

/// The readiness probe: a store's own, else the configured one.
async fn ready_probe(settings: &Settings, port: u16) -> Result<(), String> {
    match &settings.recipe {
        Some(recipe) => recipe.probe(port).await,
        None => probe::check(&settings.readiness, port).await,
    }
}

fn kill_group(replica: &Replica, signal: Signal) -> nix::Result<()> {
    let pgid = replica.pgid.load(Ordering::Acquire);
    if pgid <= 0 {
        return Ok(());
    }
    killpg(Pid::from_raw(pgid), signal)
}

/// SIGTERM to the group, then SIGKILL after the grace period.
async fn terminate(replica: &Replica, settings: &Settings, child: &mut Child) -> Ended {
    replica.ready.store(false, Ordering::Release);
    replica.update(|r| r.state = "stopping");
    let _ = kill_group(replica, settings.stop_signal);
    if tokio::time::timeout(settings.stop_grace, child.wait()).await.is_err() {
        let _ = kill_group(replica, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever else is left in the group goes too.
    let _ = kill_group(replica, Signal::SIGKILL);
    if replica.stopping.load(Ordering::Acquire) { Ended::Stopped } else { Ended::failed("stopped".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_variables_are_upper_case_words() {
        assert_eq!(link_var("backend", "URL"), "ORCH_LINK_BACKEND_URL");
        assert_eq!(link_var("price-api", "ADDR"), "ORCH_LINK_PRICE_API_ADDR");
    }
}
