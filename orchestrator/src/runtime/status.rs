//! What `/admin/status` reports: a snapshot the supervisor publishes.

use std::time::SystemTime;

use serde::Serialize;

/// The running system, as last published by the supervisor.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub file: String,
    /// Bumped each time a topology is applied (1 after start).
    pub generation: u64,
    pub state: State,
    pub started_at: String,
    pub tiers: Vec<TierStatus>,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
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
    pub state: State,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub replica: u32,
    /// Unique for the life of the process: a new instance gets a new id.
    pub id: u64,
    pub started_at: String,
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

/// RFC 3339 time, to the millisecond.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
