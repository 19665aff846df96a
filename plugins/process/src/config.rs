//! The `process` plugin's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use plugin_api::ConfigIssue;
use plugin_api::serde::Deserialize;

use crate::Started;

/// A probe: exactly one of `http` (a path answered 2xx), `tcp` (the port
/// accepts connections) or `exec` (a command that exits 0).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
pub struct ProbeConfig {
    pub http: Option<String>,
    pub tcp: Option<bool>,
    pub exec: Option<Vec<String>>,
    /// Between attempts (readiness default 100ms, liveness 5s).
    pub interval: Option<String>,
    /// For one attempt (default 1s).
    pub timeout: Option<String>,
    /// Liveness only: consecutive failures before the program is restarted (default 3).
    pub failure_threshold: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "plugin_api::serde", rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// A value that stands for text: numbers and booleans are the text they are written as.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "plugin_api::serde", untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// The tier's `config`.
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
pub struct Process {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment (on top of the tier's `env:`); numbers and
    /// booleans are taken as the text they are written as.
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    /// Working directory, relative to the topology file (default: its directory).
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub readiness: Option<ProbeConfig>,
    #[serde(default)]
    pub liveness: Option<ProbeConfig>,
    #[serde(default)]
    pub restart: Restart,
    /// Restarts allowed before the replica is left failed (default 5); the
    /// count starts again after a minute of readiness.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// First delay before a restart, doubled each time (default 100ms).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Longest delay before a restart (default 10s).
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// How long a program may take to become ready (default 30s).
    #[serde(default)]
    pub startup_timeout: Option<String>,
    /// Between SIGTERM and SIGKILL when stopping (default 10s).
    #[serde(default)]
    pub stop_grace: Option<String>,
    #[serde(skip)]
    pub(crate) replica: Started,
}

fn default_max_restarts() -> u32 {
    5
}

/// A probe, checked.
#[derive(Clone, Debug)]
pub enum ProbeKind {
    Http(String),
    Tcp,
    Exec(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

/// How a server a store tier runs (PostgreSQL, Redis) differs from any
/// program: what it needs before it starts, how it is known to be ready,
/// and what runs once it first is. The replica's supervision is the same:
/// the shim, restarts with backoff, logs, stop.
pub trait Recipe: Send + Sync + std::fmt::Debug + 'static {
    /// Before each start (a first run's initialisation): an error fails the
    /// replica for good, with that reason.
    fn prepare(
        &self,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;

    /// Whether the server answers, by its own protocol: its readiness probe.
    fn probe(&self, port: u16) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;

    /// Once it first answered after a start (scripts to run once): an error
    /// stops it, failed for good.
    fn ready(&self, port: u16) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// Everything a replica needs, parsed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub readiness: Probe,
    pub liveness: Option<Probe>,
    pub restart: Restart,
    pub max_restarts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
    /// A job (the tier's `run: once`): runs to completion, exit 0 is done.
    pub job: bool,
    /// The signal that asks the program to stop (SIGTERM; a store's recipe
    /// may ask for another: PostgreSQL's fast shutdown is SIGINT).
    pub stop_signal: nix::sys::signal::Signal,
    /// A store's server: its preparation, probe and first-ready step.
    pub recipe: Option<std::sync::Arc<dyn Recipe>>,
    /// Run the program as this user and group (uid, gid).
    pub run_as: Option<(u32, u32)>,
    /// The level of each line on the program's stderr, for a server whose
    /// lines say their own severity (default: WARN for every one).
    pub stderr_level: Option<fn(&str) -> u32>,
}

impl Settings {
    /// The settings of `command` with every default: a TCP readiness probe,
    /// restarts always, at most 5.
    pub fn for_command(command: Vec<String>) -> Self {
        Self {
            command,
            env: BTreeMap::new(),
            workdir: None,
            readiness: Probe {
                kind: ProbeKind::Tcp,
                interval: Duration::from_millis(100),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
            },
            liveness: None,
            restart: Restart::Always,
            max_restarts: default_max_restarts(),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            job: false,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            recipe: None,
            run_as: None,
            stderr_level: None,
        }
    }
}

fn duration(value: &Option<String>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration: {e}")),
    }
}

fn probe(config: &ProbeConfig, interval: Duration) -> Result<Probe, (String, String)> {
    let kinds = [config.http.is_some(), config.tcp.is_some(), config.exec.is_some()];
    let kind = match (&config.http, config.tcp, &config.exec) {
        _ if kinds.iter().filter(|k| **k).count() > 1 => {
            return Err((String::new(), "give one of `http`, `tcp` or `exec`, not several".into()));
        }
        (Some(path), _, _) if !path.starts_with('/') => {
            return Err(("http".into(), format!("`{path}` is not a path: write `/{path}`")));
        }
        (Some(path), _, _) => ProbeKind::Http(path.clone()),
        (_, _, Some(cmd)) if cmd.is_empty() => return Err(("exec".into(), "the command is empty".into())),
        (_, _, Some(cmd)) => ProbeKind::Exec(cmd.clone()),
        _ => ProbeKind::Tcp,
    };
    Ok(Probe {
        kind,
        interval: duration(&config.interval, interval).map_err(|e| ("interval".into(), e))?,
        timeout: duration(&config.timeout, Duration::from_secs(1)).map_err(|e| ("timeout".into(), e))?,
        failure_threshold: config.failure_threshold.unwrap_or(3).max(1),
    })
}

/// `arg` with each `${NAME}` replaced by `NAME`'s value in `env` (the
/// program's environment: `PORT`, `ORCH_LINK_*`, the tier's `env`, what the
/// orchestrator runs with); `$${` stands for a literal `${`. Anything else
/// — `$NAME`, `${NAME:-default}`, `$1` — is left as it is, for a shell.
/// The name of the first variable that is not set, if one is not.
pub fn expand(arg: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !arg.contains("${") {
        return Ok(arg.to_owned());
    }
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let name = after.strip_prefix('{').and_then(|b| b.split_once('}')).map(|(name, _)| name).filter(|n| is_name(n));
        match name {
            Some(name) => {
                out.push_str(&env(name).ok_or_else(|| name.to_owned())?);
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A variable's name as `${NAME}` takes it: a letter or `_`, then letters, digits, `_`.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Process {
    /// The settings, or every problem with them (paths relative to `config`).
    pub fn parse(&self) -> Result<Settings, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            issues.push(
                ConfigIssue::new("command", "the command is empty").with_hint("e.g. `command: [python3, app.py]`"),
            );
        }
        let mut dur = |key: &str, value: &Option<String>, default: Duration| {
            duration(value, default).unwrap_or_else(|e| {
                issues.push(ConfigIssue::new(key, e).with_hint("write a number with a unit, e.g. `500ms`, `10s`"));
                default
            })
        };
        let backoff = dur("backoff", &self.backoff, Duration::from_millis(100));
        let max_backoff = dur("max_backoff", &self.max_backoff, Duration::from_secs(10));
        let startup_timeout = dur("startup_timeout", &self.startup_timeout, Duration::from_secs(30));
        let stop_grace = dur("stop_grace", &self.stop_grace, Duration::from_secs(10));
        let mut check_probe = |key: &str, config: &ProbeConfig, interval: Duration| match probe(config, interval) {
            Ok(p) => Some(p),
            Err((sub, message)) => {
                issues.push(ConfigIssue::new(
                    if sub.is_empty() { key.to_owned() } else { format!("{key}.{sub}") },
                    message,
                ));
                None
            }
        };
        let readiness = match &self.readiness {
            Some(c) => check_probe("readiness", c, Duration::from_millis(100)),
            None => check_probe("readiness", &ProbeConfig::default(), Duration::from_millis(100)),
        };
        let liveness = self.liveness.as_ref().map(|c| check_probe("liveness", c, Duration::from_secs(5)));
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Settings {
            command: self.command.clone(),
            env: self.env.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
            workdir: self.workdir.clone(),
            readiness: readiness.expect("no issues, so the readiness probe parsed"),
            liveness: liveness.flatten(),
            restart: self.restart,
            max_restarts: self.max_restarts,
            backoff,
            max_backoff,
            startup_timeout,
            stop_grace,
            job: false,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            recipe: None,
            run_as: None,
            stderr_level: None,
        })
    }

    pub(crate) fn check(&self) -> Result<(), Vec<ConfigIssue>> {
        self.parse().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::{self, json};

    use super::*;

    fn parse(config: serde_json::Value) -> Result<Settings, Vec<ConfigIssue>> {
        serde_json::from_value::<Process>(config).expect("deserializes").parse()
    }

    #[test]
    fn env_numbers_and_booleans_are_text() {
        let s = parse(json!({ "command": ["./server"], "env": { "WORKERS": 4, "DEBUG": false, "X": "y" } })).unwrap();
        let env: Vec<(&str, &str)> = s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("DEBUG", "false"), ("WORKERS", "4"), ("X", "y")]);
    }

    #[test]
    fn command_arguments_expand_braced_variables_only() {
        let env = |name: &str| match name {
            "PORT" => Some("8080".to_owned()),
            "ORCH_LINK_DB_URL" => Some("postgres://db".to_owned()),
            _ => None,
        };
        assert_eq!(expand("--port=${PORT}", &env).unwrap(), "--port=8080");
        assert_eq!(expand("${ORCH_LINK_DB_URL}/shop", &env).unwrap(), "postgres://db/shop");
        assert_eq!(expand("no variables", &env).unwrap(), "no variables");
        // For a shell: left as they are.
        assert_eq!(expand("exec server $PORT ${X:-1} $1 $$", &env).unwrap(), "exec server $PORT ${X:-1} $1 $$");
        assert_eq!(expand("literal $${PORT}", &env).unwrap(), "literal ${PORT}");
        assert_eq!(expand("${PORT", &env).unwrap(), "${PORT");
        assert_eq!(expand("a ${NOT_SET} b", &env).unwrap_err(), "NOT_SET");
    }

    #[test]
    fn defaults_are_sane() {
        let s = parse(json!({ "command": ["./server"] })).unwrap();
        assert!(matches!(s.readiness.kind, ProbeKind::Tcp));
        assert_eq!((s.restart, s.max_restarts), (Restart::Always, 5));
        assert_eq!((s.backoff, s.max_backoff), (Duration::from_millis(100), Duration::from_secs(10)));
        assert_eq!(s.stop_grace, Duration::from_secs(10));
        assert!(s.liveness.is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let issues = parse(json!({
            "command": [],
            "stop_grace": "soon",
            "readiness": { "http": "healthz" },
            "liveness": { "http": "/h", "tcp": true },
        }))
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["command", "stop_grace", "readiness.http", "liveness"]);
    }

    #[test]
    fn probes_and_policies_parse() {
        let s = parse(json!({
            "command": ["x"],
            "readiness": { "exec": ["true"], "interval": "50ms" },
            "liveness": { "http": "/live", "failure_threshold": 5 },
            "restart": "on-failure",
        }))
        .unwrap();
        assert!(matches!(s.readiness.kind, ProbeKind::Exec(_)));
        assert_eq!(s.readiness.interval, Duration::from_millis(50));
        let live = s.liveness.unwrap();
        assert!(matches!(live.kind, ProbeKind::Http(ref p) if p == "/live"));
        assert_eq!((live.interval, live.failure_threshold), (Duration::from_secs(5), 5));
        assert_eq!(s.restart, Restart::OnFailure);
    }
}
