//! What `/admin/status` reports: a snapshot the supervisor publishes.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::topology::Diagnostic;

/// The running system, as last published by the supervisor.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub file: String,
    /// Bumped each time a change is applied (1 after start).
    pub generation: u64,
    pub state: State,
    pub started_at: String,
    pub tiers: Vec<TierStatus>,
    pub links: Vec<LinkStatus>,
    /// The last reload attempt, successful or not.
    pub last_reload: Option<ReloadRecord>,
    pub reloads: ReloadCounts,
    /// The last [`MAX_RELOAD_HISTORY`] reload attempts, the newest last.
    pub reload_history: Vec<ReloadRecord>,
}

/// Reload attempts the status remembers.
pub const MAX_RELOAD_HISTORY: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    Stopping,
}

/// A tier's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TierState {
    /// Waiting for the tiers it starts after, or for its replicas.
    Starting,
    /// Its replicas started (ready, or failing and restarted).
    Running,
    /// A job that ran to completion (exit 0).
    Completed,
    /// A job that failed; or a tier every replica of which gave up (a
    /// store whose data directory is refused, a program that cannot start).
    Failed,
    /// Not started: a tier it starts after (`after:`) failed.
    Blocked,
    Stopping,
}

#[derive(Clone, Debug, Serialize)]
pub struct TierStatus {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    /// The library file, or `built-in`.
    pub origin: String,
    pub replicas: u32,
    /// The bound address, when the tier listens.
    pub listen: Option<String>,
    pub state: TierState,
    /// Why it failed or is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `once` for a job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<&'static str>,
    /// The generation in which the tier's current instances started.
    pub generation: u64,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub replica: u32,
    /// Unique for the life of the process: a new instance gets a new id.
    pub id: u64,
    pub started_at: String,
    /// The plugin's own report on the instance (a process tier's pid, state,
    /// restarts, last exit, last probe error).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// Whether it takes requests now.
    pub ready: bool,
    /// `starting`, `ready`, `restarting` (between a program's attempts),
    /// `failed` (it gave up; the reason is in `detail.failed`) or `stopped`;
    /// a job's: `running`, then `completed` (or `failed`).
    pub state: &'static str,
    /// The instance, to read `ready` and `detail` live when the status is served.
    #[serde(skip)]
    pub handle: std::sync::Weak<crate::plugins::Instance>,
}

impl Status {
    /// This snapshot with every instance's `detail` read now.
    pub fn live(&self) -> Status {
        let mut status = self.clone();
        for instance in status.tiers.iter_mut().flat_map(|t| t.instances.iter_mut()) {
            if let Some(handle) = instance.handle.upgrade() {
                instance.detail = handle.detail();
                instance.ready = handle.is_ready();
                instance.state = instance_state(instance.ready, &instance.detail);
            }
        }
        status
    }
}

/// An instance's state, from whether it is ready and its plugin's report.
pub fn instance_state(ready: bool, detail: &serde_json::Value) -> &'static str {
    if ready {
        return "ready";
    }
    if detail.get("failed").is_some_and(|f| !f.is_null()) {
        return "failed";
    }
    match detail.get("state").and_then(|s| s.as_str()) {
        Some("restarting") => "restarting",
        // A job's replica: running to completion, or done.
        Some("running") => "running",
        Some("completed") => "completed",
        Some("stopping" | "stopped") => "stopped",
        _ => "starting",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub from: String,
    pub to: String,
    pub name: String,
    pub kind: String,
    pub timeout_ms: u64,
    pub retries: u32,
}

/// Reloads so far.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReloadCounts {
    /// Every attempt, whatever its outcome.
    pub attempts: u64,
    pub applied: u64,
    pub failed: u64,
}

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The topology file changed.
    File,
    /// A plugin library file changed.
    Plugin,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload` (or `orchestrator reload`).
    Admin,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::File => "file",
            Trigger::Plugin => "plugin",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin",
        })
    }
}

/// One reload attempt.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadRecord {
    /// The topology reloaded: its name and file.
    pub topology: String,
    pub file: String,
    pub at: String,
    pub trigger: Trigger,
    /// `applied`, `unchanged` or `failed`.
    pub outcome: &'static str,
    /// The generation running after the attempt.
    pub generation: u64,
    pub duration_ms: f64,
    /// What changed, for `applied`.
    pub summary: String,
    /// The same, by tier.
    pub changes: Changes,
    /// `invalid` (the file has errors), `unreadable`, `insecure` (another
    /// user could have written it), or `start` (a new
    /// instance or listener failed), for `failed`.
    pub error_kind: Option<&'static str>,
    /// The whole error, located (`file:line:col: path: message`).
    pub error: Option<String>,
    /// Each error of an invalid file.
    pub errors: Vec<LocatedError>,
}

impl ReloadRecord {
    pub fn new(topology: &str, file: &Path, trigger: Trigger, generation: u64, took: Duration) -> Self {
        Self {
            topology: topology.to_owned(),
            file: file.display().to_string(),
            at: timestamp(SystemTime::now()),
            trigger,
            outcome: "failed",
            generation,
            duration_ms: took.as_secs_f64() * 1000.0,
            summary: String::new(),
            changes: Changes::default(),
            error_kind: None,
            error: None,
            errors: Vec::new(),
        }
    }
}

pub use crate::topology::diff::Changes;

/// One located error of a topology file.
#[derive(Clone, Debug, Serialize)]
pub struct LocatedError {
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
    /// The line of the file the error points at, as it is there.
    pub source_line: Option<String>,
}

/// The longest source line an error record quotes.
const MAX_SOURCE_LINE: usize = 512;

impl LocatedError {
    pub fn new(file: &Path, d: &Diagnostic) -> Self {
        Self::in_source(file, d, "")
    }

    /// The error, quoting its line of `source`.
    pub fn in_source(file: &Path, d: &Diagnostic, source: &str) -> Self {
        let source_line = d.loc.and_then(|l| source.lines().nth((l.line as usize).checked_sub(1)?)).map(|line| {
            let mut end = line.len().min(MAX_SOURCE_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_owned()
        });
        Self {
            file: file.display().to_string(),
            line: d.loc.map(|l| l.line),
            column: d.loc.map(|l| l.column),
            path: d.path.clone(),
            message: d.message.clone(),
            hint: d.hint.clone(),
            source_line,
        }
    }
}

pub use crate::logging::timestamp;
