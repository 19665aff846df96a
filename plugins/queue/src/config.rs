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
        if issues.is_empty() { Ok(Self { config, backoff, backoff_max }) } else { Err(issues) }
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
