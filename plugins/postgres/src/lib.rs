//! The built-in `postgres` tier: a PostgreSQL server run from the machine's
//! own binaries (Debian's `postgresql` package) under the same supervision
//! as a process tier — the shim, restarts with backoff, logs, stop — with
//! what a server needs besides:
//!
//! - **a data directory of its own**, under the orchestrator's data
//!   directory (`--data-dir`, by default `.orchestrator/` beside the
//!   topology): `<data>/<tier>/pgdata`, made by `initdb` the first time and
//!   never again — an existing one is used as it is, never wiped; one made
//!   by another major version is refused, as is one another user owns;
//! - **a generated password** for the `postgres` role, kept in
//!   `<data>/<tier>/password` (mode 0600), never logged nor shown: callers
//!   get it in their link's connection string (`ORCH_LINK_<NAME>_URL`);
//! - **loopback only**: TCP on 127.0.0.1 at a port the orchestrator picks
//!   (password, SCRAM), and a Unix socket in `<data>/<tier>/run` (mode
//!   0700) that only the orchestrator's user and the server's reach, where
//!   the orchestrator's own probe and scripts connect without a password;
//! - **readiness by the protocol**: a connection that runs `SELECT 1`;
//! - **`init` scripts run once**, in the new database, all in one
//!   transaction (an error rolls every one back, is located in its file,
//!   fails the tier, and they run again at the next start);
//! - **a fast shutdown** (SIGINT) at a stop, within `stop_grace`;
//! - **never as root**: PostgreSQL refuses it, so when the orchestrator is
//!   root the server runs as `run_as` (default `postgres`, the user
//!   Debian's package makes).
//!
//! ```yaml
//! db:
//!   plugin: postgres
//!   config:
//!     database: shop                 # default: the tier's name
//!     init: [sql/schema.sql]         # relative to the topology file
//!     settings: { max_connections: 200 }
//! ```

#![deny(unsafe_code)]

pub mod outbox;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plugin_api::prelude::*;
use plugin_api::serde_json;
use process::{Recipe, Replica, Server, Settings};

/// The package that brings the server's binaries, named in errors.
pub const PACKAGE: &str = "postgresql";

/// The tier's `config`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Config {
    /// The database made at the first start (default: the tier's name).
    pub database: Option<String>,
    /// SQL files run once in it, when the data directory is new (relative
    /// to the topology file).
    pub init: Vec<String>,
    /// Server settings (`-c name=value`), e.g. `max_connections: 200`.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// The user the server runs as when the orchestrator is root (default `postgres`).
    pub run_as: Option<String>,
    /// Where the server's binaries are (default: the `PATH`, then
    /// `/usr/lib/postgresql/<newest>/bin`).
    pub bin_dir: Option<String>,
    /// How long the server may take to become ready (default 60s).
    pub startup_timeout: Option<String>,
    /// Between the fast-shutdown signal and SIGKILL (default 30s).
    pub stop_grace: Option<String>,
}

/// A `postgres` tier's replica.
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", transparent)]
pub struct Postgres {
    config: Config,
    #[serde(skip)]
    started: OnceLock<(Arc<Replica>, Arc<Server_>)>,
    /// The tasks relaying its outboxes, one each.
    #[serde(skip)]
    relays: OnceLock<Vec<tokio::task::AbortHandle>>,
}

impl Plugin for Postgres {
    /// Reached through tcp links only: it speaks PostgreSQL's protocol.
    const SERVES: &'static [LinkKind] = &[LinkKind::Tcp];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if let Some(db) = &self.config.database
            && !valid_identifier(db)
        {
            issues.push(
                ConfigIssue::new("database", format!("`{db}` is not a database name this tier makes"))
                    .with_hint("use lower-case letters, digits and `_`, starting with a letter (at most 63)"),
            );
        }
        for (key, value) in &self.config.settings {
            if !valid_identifier(key) || matches!(value, serde_json::Value::Object(_) | serde_json::Value::Array(_)) {
                issues.push(ConfigIssue::new(format!("settings.{key}"), "a setting is a name and a plain value"));
            }
            if matches!(key.as_str(), "port" | "listen_addresses" | "unix_socket_directories" | "data_directory") {
                issues.push(ConfigIssue::new(
                    format!("settings.{key}"),
                    format!("`{key}` is the orchestrator's to set (the link gives callers the address)"),
                ));
            }
        }
        for (key, value) in [("startup_timeout", &self.config.startup_timeout), ("stop_grace", &self.config.stop_grace)]
        {
            if let Some(text) = value
                && humantime::parse_duration(text).is_err()
            {
                issues.push(ConfigIssue::new(key, format!("`{text}` is not a duration")).with_hint("e.g. `30s`"));
            }
        }
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }

    async fn handle(&self, _req: Request, _cx: Context) -> Response {
        Response::error(
            StatusCode::NOT_IMPLEMENTED,
            "a postgres tier speaks PostgreSQL's protocol: reach it with a `tcp` link",
        )
    }

    fn is_ready(&self) -> bool {
        self.started.get().is_some_and(|(r, _)| r.is_ready())
    }

    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        let (replica, _) = match self.started.get() {
            Some(started) => started,
            None => {
                let (settings, server) = self.settings(&cx)?;
                let replica = Replica::start(settings, cx.clone());
                let started = self.started.get_or_init(|| (replica, server));
                self.relays.get_or_init(|| {
                    started
                        .1
                        .outboxes
                        .iter()
                        .map(|o| {
                            cx.info(format_args!(
                                "Relaying outbox table `{}` to topic `{}` (link `{}`).",
                                o.table, o.topic, o.link
                            ));
                            let target = outbox::Target {
                                replica: started.0.clone(),
                                run_dir: started.1.run_dir.clone(),
                                database: started.1.database.clone(),
                            };
                            let task = tokio::spawn(outbox::relay(o.clone(), target, cx.clone()));
                            task.abort_handle()
                        })
                        .collect()
                });
                started
            }
        };
        replica.wait_ready().await
    }

    fn status(&self) -> serde_json::Value {
        let Some((replica, server)) = self.started.get() else { return serde_json::Value::Null };
        let mut report = replica.report();
        if let Some(map) = report.as_object_mut() {
            map.insert("database".into(), server.database.clone().into());
            map.insert("data_dir".into(), server.pgdata.display().to_string().into());
            map.insert("run_as".into(), server.run_as.as_ref().map(|(name, ..)| name.clone()).into());
            if !server.outboxes.is_empty() {
                let outboxes: serde_json::Map<String, serde_json::Value> =
                    server.outboxes.iter().map(|o| (o.link.clone(), o.status())).collect();
                map.insert("outbox".into(), outboxes.into());
            }
        }
        report
    }

    async fn stop(&self, _cx: Context) {
        self.stop_relays();
        if let Some((replica, _)) = self.started.get() {
            replica.stop().await;
        }
    }
}

impl Postgres {
    /// Rows being published when a relay stops stay in the table, and go
    /// out again (same ids) when a relay starts.
    fn stop_relays(&self) {
        for task in self.relays.get().into_iter().flatten() {
            task.abort();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_relays();
        if let Some((replica, _)) = self.started.get() {
            replica.abandon();
        }
    }
}

impl Server for Postgres {
    fn port(&self) -> Option<u16> {
        self.started.get().map(|(r, _)| r.port())
    }

    fn connection_url(&self, addr: &str) -> Option<String> {
        let (_, server) = self.started.get()?;
        let password = server.password.get()?;
        Some(format!("postgresql://postgres:{password}@{addr}/{}", server.database))
    }
}

plugin_api::declare_plugin!(Postgres, name = "postgres");

/// The level of a line of the server's log (all on stderr), by the
/// severity it names: `LOG:` and the like at INFO, `WARNING:` at WARN,
/// `ERROR:`, `FATAL:` and `PANIC:` at ERROR.
fn severity(line: &str) -> u32 {
    use plugin_api::abi::log_level;
    // `2026-12-07 22:49:23.472 UTC [3785] LOG:  starting PostgreSQL …`
    let word = line.split("] ").nth(1).unwrap_or(line).split(':').next().unwrap_or_default();
    match word {
        "WARNING" => log_level::WARN,
        "ERROR" | "FATAL" | "PANIC" => log_level::ERROR,
        "LOG" | "INFO" | "NOTICE" | "DETAIL" | "HINT" | "STATEMENT" | "CONTEXT" | "LOCATION" => log_level::INFO,
        w if w.starts_with("DEBUG") => log_level::DEBUG,
        _ => log_level::WARN,
    }
}

/// A name as this tier writes it unquoted: lower-case letters, digits, `_`.
fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Where the binaries are: `bin_dir`, the directory of `postgres` on the
/// `PATH`, or Debian's newest `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir(configured: Option<&str>) -> Result<PathBuf, String> {
    find_bin_dir(configured, &std::env::var_os("PATH").unwrap_or_default(), Path::new("/usr/lib/postgresql"))
}

fn find_bin_dir(configured: Option<&str>, path: &std::ffi::OsStr, debian: &Path) -> Result<PathBuf, String> {
    let has = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = configured {
        let dir = PathBuf::from(dir);
        return if has(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "`bin_dir` {} holds no `postgres` and `initdb`: give the directory of PostgreSQL's server binaries (Debian's `{PACKAGE}` package puts them in /usr/lib/postgresql/<version>/bin)",
                dir.display()
            ))
        };
    }
    if let Some(dir) = std::env::split_paths(path).find(|d| has(d)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        format!(
            "PostgreSQL's server is not installed: no `postgres` and `initdb` on the PATH or in {}/*/bin; install Debian's `{PACKAGE}` package (apt-get install {PACKAGE}), or give `bin_dir`",
            debian.display()
        )
    })
}

/// The server as this replica runs it.
#[derive(Debug)]
pub struct Server_ {
    bin: PathBuf,
    /// `<data>/<tier>`: the password, the run directory, the init marker.
    tier_dir: PathBuf,
    pgdata: PathBuf,
    run_dir: PathBuf,
    database: String,
    init: Vec<(String, PathBuf)>,
    /// (name, uid, gid) when the orchestrator is root.
    run_as: Option<(String, u32, u32)>,
    password: OnceLock<String>,
    /// Its queue links' outboxes: those with `create` have their table
    /// made at every start before the tier is ready (each statement only
    /// makes what is missing); each is relayed once the tier started.
    outboxes: Vec<Arc<outbox::Outbox>>,
}

impl Postgres {
    fn settings(&self, cx: &Context) -> Result<(Settings, Arc<Server_>), String> {
        let c = &self.config;
        let bin = bin_dir(c.bin_dir.as_deref())?;
        let tier = cx.tier();
        let data = cx.env("ORCH_DATA_DIR").map_or_else(|| cx.base_dir().join(".orchestrator"), PathBuf::from);
        let data = std::path::absolute(&data).unwrap_or(data);
        let tier_dir = data.join(&tier);
        let run_as = if nix::unistd::geteuid().is_root() {
            let name = c.run_as.clone().unwrap_or_else(|| "postgres".to_owned());
            let user = nix::unistd::User::from_name(&name).map_err(|e| e.to_string())?.ok_or_else(|| {
                format!("PostgreSQL refuses to run as root, and there is no user `{name}` to run it as: create it, or name another with `run_as`")
            })?;
            Some((name, user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let base = cx.base_dir();
        let base = std::path::absolute(&base).unwrap_or(base);
        let server = Arc::new(Server_ {
            pgdata: tier_dir.join("pgdata"),
            run_dir: tier_dir.join("run"),
            tier_dir,
            database: c.database.clone().unwrap_or_else(|| tier.replace('-', "_")),
            init: c.init.iter().map(|f| (f.clone(), base.join(f))).collect(),
            run_as,
            password: OnceLock::new(),
            outboxes: outbox::Outbox::of(cx),
            bin,
        });
        let mut command = vec![
            server.bin.join("postgres").display().to_string(),
            "-D".into(),
            server.pgdata.display().to_string(),
            "-p".into(),
            "${PORT}".into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("unix_socket_directories={}", server.run_dir.display()),
        ];
        for (key, value) in &c.settings {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            command.extend(["-c".to_owned(), format!("{key}={value}")]);
        }
        let mut settings = Settings::for_command(command);
        let duration = |v: &Option<String>, d: u64| {
            v.as_deref().and_then(|t| humantime::parse_duration(t).ok()).unwrap_or(Duration::from_secs(d))
        };
        settings.startup_timeout = duration(&c.startup_timeout, 60);
        settings.stop_grace = duration(&c.stop_grace, 30);
        settings.readiness.interval = Duration::from_millis(100);
        // A fast shutdown: sessions are ended, what they committed is kept.
        settings.stop_signal = nix::sys::signal::Signal::SIGINT;
        settings.run_as = server.run_as.as_ref().map(|(_, uid, gid)| (*uid, *gid));
        settings.stderr_level = Some(severity);
        settings.workdir = Some(server.tier_dir.display().to_string());
        settings.recipe = Some(server.clone());
        if let Some((name, ..)) = &server.run_as {
            cx.info(format_args!("PostgreSQL refuses to run as root: it runs as `{name}`."));
        }
        Ok((settings, server))
    }
}

impl Recipe for Server_ {
    fn prepare(
        &self,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.prepare_dirs().await })
    }

    fn probe(&self, port: u16) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let socket = self.socket(port);
            tokio::time::timeout(Duration::from_secs(2), wire::select_one(&socket, "postgres", "postgres"))
                .await
                .map_err(|_| "no answer to SELECT 1 within 2s".to_owned())?
        })
    }

    fn ready(&self, port: u16) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.initialise(port).await })
    }
}

/// Where the init scripts' completion is recorded.
const INIT_DONE: &str = "init.done";

impl Server_ {
    fn socket(&self, port: u16) -> PathBuf {
        self.run_dir.join(format!(".s.PGSQL.{port}"))
    }

    /// Whether the server's user can reach its data directory: every
    /// directory above it must let it pass.
    fn reachable(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt as _;
        let Some((name, uid, gid)) = &self.run_as else { return Ok(()) };
        for dir in self.tier_dir.ancestors() {
            let Ok(meta) = std::fs::metadata(dir) else { continue };
            let mode = meta.mode();
            let passes = if meta.uid() == *uid {
                mode & 0o100 != 0
            } else if meta.gid() == *gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !passes {
                return Err(format!(
                    "PostgreSQL runs as `{name}`, which cannot pass through {} (mode {:04o}) to its data directory: give `--data-dir` a directory it can reach (e.g. under /var/lib), or `chmod o+x {}`",
                    dir.display(),
                    mode & 0o7777,
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Gives `path` to the server's user.
    fn own(&self, path: &Path) -> Result<(), String> {
        if let Some((_, uid, gid)) = &self.run_as {
            nix::unistd::chown(path, Some((*uid).into()), Some((*gid).into()))
                .map_err(|e| format!("cannot give {} to the server's user: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The tier's directories, its password, and the data directory:
    /// `initdb` into it if it is new, else checked.
    async fn prepare_dirs(&self) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
        let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        // The server's user passes through (0711) to the directories it
        // owns, and reads nothing else of them (the password stays root's).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.tier_dir)
            .map_err(|e| fail("cannot make", &self.tier_dir, &e))?;
        self.reachable()?;
        let password_file = self.tier_dir.join("password");
        let password = if password_file.exists() {
            plugin_api::files::read_text(&password_file, 1024, plugin_api::files::Trust::Secret)
                .map_err(|e| e.to_string())?
                .trim()
                .to_owned()
        } else {
            let password = plugin_api::files::random_hex(24).map_err(|e| e.to_string())?;
            plugin_api::files::write_secret(&password_file, password.as_bytes())
                .map_err(|e| fail("cannot write", &password_file, &e))?;
            password
        };
        let _ = self.password.set(password);
        // The socket's directory: the server's and this user's only.
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&self.run_dir);
        self.own(&self.run_dir)?;
        let fresh = match std::fs::read_dir(&self.pgdata) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(fail("cannot read the data directory", &self.pgdata, &e)),
            Ok(mut entries) => entries.next().is_none(),
        };
        if fresh {
            return self.initdb().await;
        }
        // An existing one: this server's, and this major version's.
        let meta = std::fs::metadata(&self.pgdata).map_err(|e| fail("cannot read", &self.pgdata, &e))?;
        let expected = self.run_as.as_ref().map_or_else(|| nix::unistd::geteuid().as_raw(), |(_, uid, _)| *uid);
        if meta.uid() != expected {
            return Err(format!(
                "the data directory {} belongs to uid {}, not to the server's user (uid {expected}): it is not this tier's; move it away, or point --data-dir elsewhere",
                self.pgdata.display(),
                meta.uid()
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.pgdata, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail("cannot restrict", &self.pgdata, &e))?;
        }
        let made_by = std::fs::read_to_string(self.pgdata.join("PG_VERSION"))
            .map_err(|e| format!("{} is not a PostgreSQL data directory (no PG_VERSION: {e}); move it away, or point --data-dir elsewhere", self.pgdata.display()))?;
        let ours = self.major_version().await?;
        if made_by.trim() != ours {
            return Err(format!(
                "the data directory {} was made by PostgreSQL {}, and this server is PostgreSQL {ours}: upgrade it (pg_upgrade), or give `bin_dir` of a {} server",
                self.pgdata.display(),
                made_by.trim(),
                made_by.trim()
            ));
        }
        Ok(())
    }

    /// The server's major version, as `postgres --version` says it.
    async fn major_version(&self) -> Result<String, String> {
        let out = process::command(self.bin.join("postgres"))
            .arg("--version")
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.bin.join("postgres").display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().last().unwrap_or_default();
        Ok(version.split('.').next().unwrap_or_default().to_owned())
    }

    async fn initdb(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        std::fs::DirBuilder::new().mode(0o700).create(&self.pgdata).or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(fail("cannot make", &self.pgdata, &e))
            }
        })?;
        self.own(&self.pgdata)?;
        // The password, for initdb to read as the server's user, then gone.
        let pwfile = self.tier_dir.join(".initdb-password");
        plugin_api::files::write_secret(&pwfile, self.password.get().map(String::as_bytes).unwrap_or_default())
            .map_err(|e| fail("cannot write", &pwfile, &e))?;
        self.own(&pwfile)?;
        let mut initdb = process::command(self.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(&self.tier_dir);
        if let Some((_, uid, gid)) = &self.run_as {
            initdb.uid(*uid).gid(*gid);
        }
        let out = initdb.output().await;
        let _ = std::fs::remove_file(&pwfile);
        let out = out.map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = said.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(format!("initdb failed ({}): {}", out.status, tail.join(" ⏎ ")));
        }
        Ok(())
    }

    /// The first time the server answers: its database, and the `init`
    /// scripts in it, in one transaction. Recorded once done.
    async fn initialise(&self, port: u16) -> Result<(), String> {
        let done = self.tier_dir.join(INIT_DONE);
        if !done.exists() {
            self.init_once(port).await?;
        }
        for outbox in self.outboxes.iter().filter(|o| o.create) {
            wire::query(&self.socket(port), "postgres", &self.database, &outbox.ddl())
                .await
                .map_err(|e| format!("cannot make the outbox table: {e}"))?;
        }
        Ok(())
    }

    /// The database and the `init` scripts, the first time.
    async fn init_once(&self, port: u16) -> Result<(), String> {
        let done = self.tier_dir.join(INIT_DONE);
        let socket = self.socket(port);
        let exists = wire::query(
            &socket,
            "postgres",
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{}'", self.database),
        )
        .await?;
        if exists.is_empty() {
            // A database is made outside a transaction block: on its own.
            wire::query(&socket, "postgres", "postgres", &format!("CREATE DATABASE \"{}\"", self.database)).await?;
        }
        if !self.init.is_empty() {
            // Debian's client (`postgresql-client`) puts psql on the PATH.
            let psql_bin = Some(self.bin.join("psql")).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("psql"));
            let mut psql = process::command(psql_bin);
            psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-U", "postgres"])
                .arg("-h")
                .arg(&self.run_dir)
                .args(["-p", &port.to_string(), "-d", &self.database]);
            for (_, path) in &self.init {
                if !path.is_file() {
                    return Err(format!("init file {} does not exist", path.display()));
                }
                psql.arg("-f").arg(path);
            }
            let out = psql.output().await.map_err(|e| format!("cannot run psql: {e}"))?;
            if !out.status.success() {
                return Err(self.located(&String::from_utf8_lossy(&out.stderr)));
            }
        }
        plugin_api::files::write_secret(
            &done,
            format!("{}\n", self.init.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join("\n")).as_bytes(),
        )
        .map_err(|e| format!("cannot record the init scripts as run: {e}"))?;
        Ok(())
    }

    /// psql's error (`psql:/abs/sql/schema.sql:3: ERROR:  …`), with the file
    /// as the topology names it: `init file sql/schema.sql:3: ERROR: …`.
    fn located(&self, stderr: &str) -> String {
        let line = stderr
            .lines()
            .find(|l| l.contains("ERROR:"))
            .unwrap_or_else(|| stderr.lines().next().unwrap_or("psql failed"));
        let mut message = line.strip_prefix("psql:").unwrap_or(line).to_owned();
        for (written, path) in &self.init {
            let full = path.display().to_string();
            if message.starts_with(&full) {
                message = format!("{written}{}", &message[full.len()..]);
            }
        }
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        format!(
            "init file {message}; nothing of the init scripts was applied (one transaction), and they run again at the next start"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::abi::log_level;

    #[test]
    fn the_server_s_lines_are_logged_at_the_severity_they_name() {
        let at = |rest: &str| severity(&format!("2026-12-07 22:49:23.472 UTC [3785] {rest}"));
        assert_eq!(at("LOG:  database system is ready to accept connections"), log_level::INFO);
        assert_eq!(at("WARNING:  there is no transaction in progress"), log_level::WARN);
        assert_eq!(at("ERROR:  relation \"items\" does not exist"), log_level::ERROR);
        assert_eq!(at("FATAL:  password authentication failed for user \"postgres\""), log_level::ERROR);
        assert_eq!(at("STATEMENT:  SELECT * FROM items"), log_level::INFO);
        // What it cannot read stays where stderr goes.
        assert_eq!(severity("initdb: warning: enabling \"trust\""), log_level::WARN);
    }

    #[test]
    fn the_newest_server_installed_is_found_and_a_missing_one_names_its_package() {
        let root = tempfile::tempdir().unwrap();
        let empty = std::ffi::OsStr::new("");
        let missing = find_bin_dir(None, empty, root.path()).unwrap_err();
        assert!(missing.contains("install Debian's `postgresql` package"), "{missing}");
        for major in ["13", "15", "9"] {
            let bin = root.path().join(major).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for b in ["postgres", "initdb"] {
                std::fs::write(bin.join(b), "").unwrap();
            }
        }
        assert_eq!(find_bin_dir(None, empty, root.path()).unwrap(), root.path().join("15/bin"));
        // The PATH first, then the configured directory before both.
        let path = std::env::join_paths([root.path().join("13/bin")]).unwrap();
        assert_eq!(find_bin_dir(None, &path, root.path()).unwrap(), root.path().join("13/bin"));
        let nine = root.path().join("9/bin");
        assert_eq!(find_bin_dir(nine.to_str(), &path, root.path()).unwrap(), nine);
        let wrong = find_bin_dir(Some("/nonexistent"), &path, root.path()).unwrap_err();
        assert!(wrong.contains("/nonexistent") && wrong.contains("`postgresql` package"), "{wrong}");
    }

    #[test]
    fn identifiers_are_what_the_tier_writes_unquoted() {
        for ok in ["shop", "shop_2", "_x"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in ["", "Shop", "2shop", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn psql_s_error_is_located_in_the_file_as_the_topology_names_it() {
        let server = Server_ {
            bin: PathBuf::from("/usr/bin"),
            tier_dir: PathBuf::from("/d/db"),
            pgdata: PathBuf::from("/d/db/pgdata"),
            run_dir: PathBuf::from("/d/db/run"),
            database: "shop".into(),
            init: vec![("sql/schema.sql".into(), PathBuf::from("/t/sql/schema.sql"))],
            run_as: None,
            password: OnceLock::new(),
            outboxes: Vec::new(),
        };
        let said = server.located(
            "psql:/t/sql/schema.sql:3: ERROR:  syntax error at or near \"TABLEE\"\nLINE 1: CREATE TABLEE x ();\n",
        );
        assert!(said.starts_with("init file sql/schema.sql:3: ERROR: syntax error at or near \"TABLEE\";"), "{said}");
    }
}
