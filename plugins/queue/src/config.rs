//! What the user writes under a queue tier's `config:`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use plugin_api::prelude::*;

/// What a publisher gets when its topic is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(crate = "plugin_api::serde", rename_all = "lowercase")]
pub enum OnFull {
    /// Wait for room, up to the publishing link's timeout.
    #[default]
    Block,
    /// Answer `503` at once.
    Reject,
}

/// Where the tier's topics live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "plugin_api::serde", rename_all = "lowercase")]
pub enum Backend {
    /// In this orchestrator (the default).
    #[default]
    Embedded,
    /// On a NATS JetStream stream (`url`/`urls`).
    Nats,
}

/// A JetStream stream's storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "plugin_api::serde", rename_all = "lowercase")]
pub enum NatsStorage {
    #[default]
    File,
    Memory,
}

/// `stream:` of a `backend: nats` tier.
#[derive(Clone, Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's name (default `orch-<tier>`); its subjects are `<name>.<topic>`.
    pub name: Option<String>,
    pub storage: NatsStorage,
    /// Copies kept by a NATS cluster (1 to 5).
    pub replicas: usize,
    /// Messages older than this are dropped (default: kept until acknowledged).
    pub max_age: Option<String>,
    pub max_bytes: Option<i64>,
    pub max_messages: Option<i64>,
    /// How long a message id is remembered, so that a publish retried with it is stored once.
    pub duplicate_window: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: None,
            storage: NatsStorage::File,
            replicas: 1,
            max_age: None,
            max_bytes: None,
            max_messages: None,
            duplicate_window: "2m".into(),
        }
    }
}

/// What `backend: nats` connects with, checked and read.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub nkey: Option<String>,
    pub stream: Option<String>,
    pub storage: NatsStorage,
    pub replicas: usize,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<i64>,
    pub max_messages: Option<i64>,
    pub duplicate_window: Duration,
    pub ack_wait: Duration,
}

/// Largest credentials file read (token, password, nkey seed).
pub const MAX_SECRET_FILE: u64 = 4096;

/// The broker's configuration; `topics` overrides the defaults per topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Queue {
    /// Messages a topic holds (queued and in flight) before publishers get backpressure.
    pub capacity: u64,
    pub on_full: OnFull,
    /// Deliveries of one message to one subscriber before it is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the first redelivery; doubles on each attempt, up to `retry_backoff_max`.
    pub retry_backoff: String,
    pub retry_backoff_max: String,
    /// Largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Store messages on disk so that they survive a crash (see `data_dir`).
    pub durable: bool,
    /// The database file of a durable broker, relative to the topology file
    /// (default `.orchestrator/<tier>.redb`).
    pub data_dir: Option<String>,
    pub topics: BTreeMap<String, TopicConfig>,
    /// `embedded` (default) or `nats`.
    pub backend: Backend,
    /// `backend: nats`: the server (`nats://host:4222`), or `urls` for a cluster.
    pub url: Option<String>,
    pub urls: Vec<String>,
    /// Credentials, each read from a file (relative to the topology file).
    pub token_file: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
    pub creds_file: Option<String>,
    pub nkey_file: Option<String>,
    pub stream: StreamConfig,
    /// How long a delivery may go unacknowledged before JetStream hands it out again.
    pub ack_wait: String,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            on_full: OnFull::Block,
            max_attempts: 5,
            retry_backoff: "100ms".into(),
            retry_backoff_max: "10s".into(),
            max_message_size: 1024 * 1024,
            durable: false,
            data_dir: None,
            topics: BTreeMap::new(),
            backend: Backend::Embedded,
            url: None,
            urls: Vec::new(),
            token_file: None,
            user: None,
            password_file: None,
            creds_file: None,
            nkey_file: None,
            stream: StreamConfig::default(),
            ack_wait: "30s".into(),
        }
    }
}

/// Settings of one topic; unset ones come from the broker's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct TopicConfig {
    pub capacity: Option<u64>,
    pub on_full: Option<OnFull>,
    pub max_attempts: Option<u32>,
    /// Where messages go after `max_attempts` failed deliveries (default `<topic>.dlq`).
    pub dead_letter: Option<String>,
}

/// The effective settings of one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSettings {
    pub capacity: u64,
    pub on_full: OnFull,
    pub max_attempts: u32,
    pub dead_letter: String,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

/// Everything the broker needs, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: Queue,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Settings {
    pub fn new(config: Queue) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut duration = |key: &str, text: &str| match humantime::parse_duration(text) {
            Ok(d) if d > Duration::ZERO => d,
            Ok(_) => {
                issues.push(ConfigIssue::new(key, "must be greater than zero"));
                Duration::ZERO
            }
            Err(e) => {
                issues.push(
                    ConfigIssue::new(key, format!("`{text}` is not a duration: {e}")).with_hint("e.g. `100ms` or `5s`"),
                );
                Duration::ZERO
            }
        };
        let backoff = duration("retry_backoff", &config.retry_backoff);
        let backoff_max = duration("retry_backoff_max", &config.retry_backoff_max);
        if config.capacity == 0 {
            issues.push(ConfigIssue::new("capacity", "capacity must be at least 1"));
        }
        if config.max_attempts == 0 {
            issues.push(ConfigIssue::new("max_attempts", "max_attempts must be at least 1"));
        }
        if config.max_message_size == 0 {
            issues.push(ConfigIssue::new("max_message_size", "max_message_size must be at least 1"));
        }
        for (name, topic) in &config.topics {
            if topic.capacity == Some(0) {
                issues.push(ConfigIssue::new(format!("topics.{name}.capacity"), "capacity must be at least 1"));
            }
            if topic.max_attempts == Some(0) {
                issues.push(ConfigIssue::new(format!("topics.{name}.max_attempts"), "max_attempts must be at least 1"));
            }
            if topic.dead_letter.as_deref() == Some(name.as_str()) {
                issues.push(
                    ConfigIssue::new(
                        format!("topics.{name}.dead_letter"),
                        "a topic cannot be its own dead-letter topic",
                    )
                    .with_hint(format!("e.g. `{name}.dlq`")),
                );
            }
        }
        let nats_keys = [
            ("url", config.url.is_some()),
            ("urls", !config.urls.is_empty()),
            ("token_file", config.token_file.is_some()),
            ("user", config.user.is_some()),
            ("password_file", config.password_file.is_some()),
            ("creds_file", config.creds_file.is_some()),
            ("nkey_file", config.nkey_file.is_some()),
        ];
        match config.backend {
            Backend::Embedded => {
                for (key, _) in nats_keys.iter().filter(|(_, set)| *set) {
                    issues.push(
                        ConfigIssue::new(*key, format!("`{key}` is for `backend: nats`"))
                            .with_hint("add `backend: nats`, or remove it"),
                    );
                }
            }
            Backend::Nats => {
                if config.url.is_none() && config.urls.is_empty() {
                    issues.push(
                        ConfigIssue::new("url", "`backend: nats` needs the server's `url` (or `urls`)")
                            .with_hint("e.g. `url: nats://127.0.0.1:4222`"),
                    );
                }
                if config.url.is_some() && !config.urls.is_empty() {
                    issues.push(ConfigIssue::new("urls", "give `url` or `urls`, not both"));
                }
                for (i, url) in config.url.iter().chain(&config.urls).enumerate() {
                    let key = if config.url.is_some() { "url".to_owned() } else { format!("urls[{i}]") };
                    let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")).unwrap_or(url);
                    if rest.is_empty() || rest.contains(char::is_whitespace) || !rest.contains(':') {
                        issues.push(
                            ConfigIssue::new(key, format!("`{url}` is not a NATS server address"))
                                .with_hint("e.g. `nats://127.0.0.1:4222`"),
                        );
                    }
                }
                if config.durable || config.data_dir.is_some() {
                    let key = if config.durable { "durable" } else { "data_dir" };
                    issues.push(
                        ConfigIssue::new(key, "the embedded broker's; JetStream keeps messages itself")
                            .with_hint("choose `stream: { storage: file }` (the default) or `memory`"),
                    );
                }
                for (name, topic) in &config.topics {
                    if topic.capacity.is_some() {
                        issues.push(
                            ConfigIssue::new(
                                format!("topics.{name}.capacity"),
                                "one capacity for every topic on JetStream (the stream's messages per subject)",
                            )
                            .with_hint("set `capacity` for the tier"),
                        );
                    }
                }
                if config.user.is_some() != config.password_file.is_some() {
                    issues.push(ConfigIssue::new("password_file", "`user` and `password_file` go together"));
                }
                if !(1..=5).contains(&config.stream.replicas) {
                    issues.push(ConfigIssue::new("stream.replicas", "a stream has 1 to 5 replicas"));
                }
                if let Some(name) = &config.stream.name
                    && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                {
                    issues.push(ConfigIssue::new(
                        "stream.name",
                        format!("`{name}` is not a stream name: letters, digits, `-` and `_`"),
                    ));
                }
                let durations = [
                    ("stream.max_age", config.stream.max_age.as_deref()),
                    ("stream.duplicate_window", Some(config.stream.duplicate_window.as_str())),
                    ("ack_wait", Some(config.ack_wait.as_str())),
                ];
                for (key, text) in durations {
                    let Some(text) = text else { continue };
                    match humantime::parse_duration(text) {
                        Ok(d) if d > Duration::ZERO => {}
                        _ => issues.push(
                            ConfigIssue::new(key, format!("`{text}` is not a duration greater than zero"))
                                .with_hint("e.g. `30s` or `24h`"),
                        ),
                    }
                }
            }
        }
        if issues.is_empty() { Ok(Self { config, backoff, backoff_max }) } else { Err(issues) }
    }

    /// `backend: nats`'s settings, its credentials read from their files
    /// (relative to `base`, the topology's directory); `None` for the
    /// embedded broker.
    pub fn nats(&self, base: &std::path::Path) -> Result<Option<NatsSettings>, String> {
        let c = &self.config;
        if c.backend != Backend::Nats {
            return Ok(None);
        }
        let read = |key: &str, file: &Option<String>| -> Result<Option<String>, String> {
            let Some(file) = file else { return Ok(None) };
            let path = base.join(file);
            let text = plugin_api::files::read_text(&path, MAX_SECRET_FILE, plugin_api::files::Trust::Secret).map_err(
                |e| match e {
                    plugin_api::files::FileError::TooLarge { .. } | plugin_api::files::FileError::NotRegular { .. } => {
                        format!("{key}: {} is not a regular file of at most {MAX_SECRET_FILE} bytes", path.display())
                    }
                    e => format!("{key}: {e}"),
                },
            )?;
            Ok(Some(text.lines().next().unwrap_or_default().trim().to_owned()))
        };
        let parse = |t: &str| humantime::parse_duration(t).unwrap_or(Duration::from_secs(30));
        Ok(Some(NatsSettings {
            servers: c.url.iter().chain(&c.urls).cloned().collect(),
            token: read("token_file", &c.token_file)?,
            user: c.user.clone(),
            password: read("password_file", &c.password_file)?,
            creds_file: match &c.creds_file {
                Some(f) => {
                    let path = base.join(f);
                    plugin_api::files::check(&path, plugin_api::files::Trust::Secret)
                        .map_err(|e| format!("creds_file: {e}"))?;
                    Some(path)
                }
                None => None,
            },
            nkey: read("nkey_file", &c.nkey_file)?,
            stream: c.stream.name.clone(),
            storage: c.stream.storage,
            replicas: c.stream.replicas,
            max_age: c.stream.max_age.as_deref().map(parse),
            max_bytes: c.stream.max_bytes,
            max_messages: c.stream.max_messages,
            duplicate_window: parse(&c.stream.duplicate_window),
            ack_wait: parse(&c.ack_wait),
        }))
    }

    /// The settings of topic `name`.
    pub fn topic(&self, name: &str) -> TopicSettings {
        let own = self.config.topics.get(name).cloned().unwrap_or_default();
        TopicSettings {
            capacity: own.capacity.unwrap_or(self.config.capacity),
            on_full: own.on_full.unwrap_or(self.config.on_full),
            max_attempts: own.max_attempts.unwrap_or(self.config.max_attempts),
            dead_letter: own.dead_letter.unwrap_or_else(|| format!("{name}.dlq")),
            backoff: self.backoff,
            backoff_max: self.backoff_max,
        }
    }

    /// The database file of a durable broker for tier `tier`.
    pub fn data_file(&self, base_dir: &std::path::Path, tier: &str) -> PathBuf {
        match &self.config.data_dir {
            Some(dir) => base_dir.join(dir).join(format!("{tier}.redb")),
            None => base_dir.join(".orchestrator").join(format!("{tier}.redb")),
        }
    }
}

impl TopicSettings {
    /// The wait before redelivering after failed attempt `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_inherit_and_override() {
        let config: Queue = plugin_api::serde_json::from_value(plugin_api::serde_json::json!({
            "capacity": 5, "on_full": "reject",
            "topics": { "orders": { "capacity": 2, "dead_letter": "failed" } }
        }))
        .unwrap();
        let settings = Settings::new(config).unwrap();
        let orders = settings.topic("orders");
        assert_eq!((orders.capacity, orders.on_full, orders.dead_letter.as_str()), (2, OnFull::Reject, "failed"));
        let other = settings.topic("other");
        assert_eq!((other.capacity, other.max_attempts, other.dead_letter.as_str()), (5, 5, "other.dlq"));
    }

    #[test]
    fn nats_credentials_are_read_from_files_of_at_most_4_kib() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{}\nignored\n", "t".repeat(100))).unwrap();
        std::fs::write(dir.path().join("edge"), "e".repeat(MAX_SECRET_FILE as usize)).unwrap();
        std::fs::write(dir.path().join("big"), "b".repeat(MAX_SECRET_FILE as usize + 1)).unwrap();
        std::fs::write(dir.path().join("readable"), "r".repeat(20)).unwrap();
        for f in ["token", "edge", "big"] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let with = |file: &str| {
            let config: Queue = plugin_api::serde_json::from_value(plugin_api::serde_json::json!({
                "backend": "nats", "url": "nats://127.0.0.1:4222", "token_file": file
            }))
            .unwrap();
            Settings::new(config).unwrap().nats(dir.path())
        };
        assert_eq!(with("token").unwrap().unwrap().token.unwrap(), "t".repeat(100), "its first line");
        assert_eq!(with("edge").unwrap().unwrap().token.unwrap().len(), MAX_SECRET_FILE as usize);
        let big = with("big").unwrap_err();
        assert!(big.contains("token_file") && big.contains("big") && big.contains("4096 bytes"), "{big}");
        let missing = with("missing").unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
        // A secret other users can read (written with the default umask) is refused.
        let readable = with("readable").unwrap_err();
        assert!(readable.contains("token_file") && readable.contains("chmod 600"), "{readable}");
        // The embedded broker has no NATS settings.
        assert!(Settings::new(Queue::default()).unwrap().nats(dir.path()).unwrap().is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let settings = Settings::new(Queue::default()).unwrap().topic("t");
        let ms = |a| settings.backoff(a).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(10), ms(100)], [100, 200, 400, 10_000, 10_000]);
    }

    #[test]
    fn bad_values_are_located() {
        let config = Queue {
            capacity: 0,
            retry_backoff: "soon".into(),
            topics: [("a".to_owned(), TopicConfig { dead_letter: Some("a".into()), ..Default::default() })].into(),
            ..Queue::default()
        };
        let issues = Settings::new(config).unwrap_err();
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["retry_backoff", "capacity", "topics.a.dead_letter"]);
    }
}
