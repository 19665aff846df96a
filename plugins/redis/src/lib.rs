//! The built-in `redis` tier: a Redis server run from the machine's own
//! binary (Debian's `redis-server` package) under the same supervision as a
//! process tier, with a generated password (`requirepass`, kept in
//! `<data>/<tier>/password`, mode 0600, and given to callers in their
//! link's connection string), on 127.0.0.1 only, persistent on request
//! (`appendonly`) in `<data>/<tier>/data`, ready once `PING` answers `PONG`.
//!
//! ```yaml
//! cache:
//!   plugin: redis
//!   config: { maxmemory: 64mb, maxmemory_policy: allkeys-lru, appendonly: false }
//! ```

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plugin_api::prelude::*;
use plugin_api::serde_json;
use process::{Recipe, Replica, Server, Settings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The package that brings the server, named in errors.
pub const PACKAGE: &str = "redis-server";

/// The eviction policies Redis knows.
const POLICIES: [&str; 8] = [
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

/// The tier's `config`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Memory for data, such as `64mb` (default: no limit).
    pub maxmemory: Option<String>,
    /// What goes when `maxmemory` is reached (default `noeviction`).
    pub maxmemory_policy: Option<String>,
    /// Keep every write in an append-only file in the data directory (default false: memory only).
    pub appendonly: bool,
    /// The server binary (default: `redis-server` on the `PATH`, or /usr/bin).
    pub bin: Option<String>,
    /// Between SIGTERM (Redis saves, then exits) and SIGKILL (default 30s).
    pub stop_grace: Option<String>,
}

/// A `redis` tier's replica.
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", transparent)]
pub struct Redis {
    config: Config,
    #[serde(skip)]
    started: OnceLock<(Arc<Replica>, Arc<Server_>)>,
}

impl Plugin for Redis {
    /// Reached through tcp links only: it speaks Redis's protocol.
    const SERVES: &'static [LinkKind] = &[LinkKind::Tcp];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if let Some(m) = &self.config.maxmemory
            && !valid_memory(m)
        {
            issues.push(
                ConfigIssue::new("maxmemory", format!("`{m}` is not a size Redis reads"))
                    .with_hint("a number of bytes, or with a unit: `64mb`, `1gb`"),
            );
        }
        if let Some(p) = &self.config.maxmemory_policy
            && !POLICIES.contains(&p.as_str())
        {
            issues.push(
                ConfigIssue::new("maxmemory_policy", format!("`{p}` is not an eviction policy"))
                    .with_hint(format!("one of: {}", POLICIES.join(", "))),
            );
        }
        if let Some(g) = &self.config.stop_grace
            && humantime::parse_duration(g).is_err()
        {
            issues.push(ConfigIssue::new("stop_grace", format!("`{g}` is not a duration")).with_hint("e.g. `30s`"));
        }
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }

    async fn handle(&self, _req: Request, _cx: Context) -> Response {
        Response::error(StatusCode::NOT_IMPLEMENTED, "a redis tier speaks Redis's protocol: reach it with a `tcp` link")
    }

    fn is_ready(&self) -> bool {
        self.started.get().is_some_and(|(r, _)| r.is_ready())
    }

    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        let (replica, _) = match self.started.get() {
            Some(started) => started,
            None => {
                let (settings, server) = self.settings(&cx)?;
                let replica = Replica::start(settings, cx);
                self.started.get_or_init(|| (replica, server))
            }
        };
        replica.wait_ready().await
    }

    fn status(&self) -> serde_json::Value {
        let Some((replica, server)) = self.started.get() else { return serde_json::Value::Null };
        let mut report = replica.report();
        if let Some(map) = report.as_object_mut() {
            map.insert("data_dir".into(), server.data.display().to_string().into());
            map.insert("appendonly".into(), self.config.appendonly.into());
        }
        report
    }

    async fn stop(&self, _cx: Context) {
        if let Some((replica, _)) = self.started.get() {
            replica.stop().await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some((replica, _)) = self.started.get() {
            replica.abandon();
        }
    }
}

impl Server for Redis {
    fn port(&self) -> Option<u16> {
        self.started.get().map(|(r, _)| r.port())
    }

    fn connection_url(&self, addr: &str) -> Option<String> {
        let (_, server) = self.started.get()?;
        Some(format!("redis://default:{}@{addr}/0", server.password.get()?))
    }
}

plugin_api::declare_plugin!(Redis, name = "redis");

/// `64mb`, `1gb`, `1048576`: what Redis's `maxmemory` reads.
fn valid_memory(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "k", "kb", "m", "mb", "g", "gb"].contains(&unit)
}

/// The server binary: `bin`, `redis-server` on the `PATH`, or /usr/bin's.
pub fn binary(configured: Option<&str>) -> Result<PathBuf, String> {
    find_binary(configured, &std::env::var_os("PATH").unwrap_or_default(), std::path::Path::new("/usr/bin"))
}

fn find_binary(configured: Option<&str>, path: &std::ffi::OsStr, debian: &std::path::Path) -> Result<PathBuf, String> {
    if let Some(bin) = configured {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "`bin` {} does not exist: give the path of `redis-server` (Debian's `{PACKAGE}` package puts it in /usr/bin)",
                bin.display()
            ))
        };
    }
    std::env::split_paths(path)
        .chain([debian.to_path_buf()])
        .map(|d| d.join("redis-server"))
        .find(|b| b.is_file())
        .ok_or_else(|| format!("Redis is not installed: no `redis-server` on the PATH or in {}; install Debian's `{PACKAGE}` package (apt-get install {PACKAGE}), or give `bin`", debian.display()))
}

/// The server as this replica runs it.
#[derive(Debug)]
pub struct Server_ {
    tier_dir: PathBuf,
    data: PathBuf,
    conf: PathBuf,
    config: Config,
    password: OnceLock<String>,
}

impl Redis {
    fn settings(&self, cx: &Context) -> Result<(Settings, Arc<Server_>), String> {
        let bin = binary(self.config.bin.as_deref())?;
        let data_root = cx.env("ORCH_DATA_DIR").map_or_else(|| cx.base_dir().join(".orchestrator"), PathBuf::from);
        let data_root = std::path::absolute(&data_root).unwrap_or(data_root);
        let tier_dir = data_root.join(cx.tier());
        let server = Arc::new(Server_ {
            data: tier_dir.join("data"),
            conf: tier_dir.join("redis.conf"),
            tier_dir,
            config: self.config.clone(),
            password: OnceLock::new(),
        });
        // The password is in the configuration file (0600), not on the
        // command line, where every user of the machine would read it.
        let command =
            vec![bin.display().to_string(), server.conf.display().to_string(), "--port".into(), "${PORT}".into()];
        let mut settings = Settings::for_command(command);
        settings.stop_grace = self
            .config
            .stop_grace
            .as_deref()
            .and_then(|g| humantime::parse_duration(g).ok())
            .unwrap_or(Duration::from_secs(30));
        settings.readiness.interval = Duration::from_millis(50);
        settings.workdir = Some(server.tier_dir.display().to_string());
        settings.recipe = Some(server.clone());
        Ok((settings, server))
    }
}

impl Recipe for Server_ {
    fn prepare(
        &self,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.prepare_files() })
    }

    fn probe(&self, port: u16) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let password = self.password.get().cloned().unwrap_or_default();
            tokio::time::timeout(Duration::from_secs(2), ping(port, &password))
                .await
                .map_err(|_| "no answer to PING within 2s".to_owned())?
        })
    }

    fn ready(
        &self,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

impl Server_ {
    fn prepare_files(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let fail =
            |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        // The orchestrator's data directory, if this makes it, lets the
        // other stores' users pass (PostgreSQL runs as `postgres`); the
        // tier's own directories are this user's only.
        if let Some(parent) = self.tier_dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|e| fail("cannot make", parent, &e))?;
        }
        for dir in [&self.tier_dir, &self.data] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("cannot make", dir, &e))?;
        }
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
        let c = &self.config;
        let mut conf = format!(
            "# Written by the orchestrator at each start: edits are lost.\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {password}\ndir {}\nappendonly {}\n",
            self.data.display(),
            if c.appendonly { "yes" } else { "no" }
        );
        if !c.appendonly {
            conf.push_str("save \"\"\n");
        }
        if let Some(m) = &c.maxmemory {
            conf.push_str(&format!("maxmemory {m}\n"));
        }
        conf.push_str(&format!("maxmemory-policy {}\n", c.maxmemory_policy.as_deref().unwrap_or("noeviction")));
        plugin_api::files::write_secret(&self.conf, conf.as_bytes())
            .map_err(|e| fail("cannot write", &self.conf, &e))?;
        let _ = self.password.set(password);
        Ok(())
    }
}

/// `AUTH` then `PING` on 127.0.0.1:`port`: ready once it answers `+PONG`.
async fn ping(port: u16, password: &str) -> Result<(), String> {
    let mut conn =
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("port {port}: {e}"))?;
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n", password.len());
    conn.write_all(auth.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"+PONG\r\n") && !answer.windows(1).any(|w| w == b"-") {
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 || answer.len() > 4096 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.starts_with(b"-") && answer.ends_with(b"\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    if text == "+OK\r\n+PONG\r\n" { Ok(()) } else { Err(format!("PING answered {:?}", text.trim_end())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_names_its_package() {
        let root = tempfile::tempdir().unwrap();
        let missing = find_binary(None, std::ffi::OsStr::new(""), root.path()).unwrap_err();
        assert!(missing.contains("install Debian's `redis-server` package"), "{missing}");
        std::fs::write(root.path().join("redis-server"), "").unwrap();
        assert_eq!(find_binary(None, std::ffi::OsStr::new(""), root.path()).unwrap(), root.path().join("redis-server"));
        let wrong = find_binary(Some("/nonexistent/redis-server"), std::ffi::OsStr::new(""), root.path()).unwrap_err();
        assert!(wrong.contains("`redis-server` package"), "{wrong}");
    }

    #[test]
    fn memory_sizes_are_what_redis_reads() {
        for ok in ["64mb", "1GB", "1048576", "512k"] {
            assert!(valid_memory(ok), "{ok}");
        }
        for bad in ["", "lots", "64 mb", "1tb", "mb"] {
            assert!(!valid_memory(bad), "{bad}");
        }
    }
}
