//! The topology file's shape, as serde reads it. These types are checked
//! piece by piece by `validate` (so that every error is reported, not only the
//! first) and never travel further. They also generate the JSON Schema.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

/// A multi-tier application: tiers from plugins, and the links between them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "orchestrator topology")]
pub struct RawTopology {
    /// Format version; must be 1.
    pub version: u32,
    /// Name of the application.
    pub name: String,
    /// Extra directories to search for plugin libraries, relative to this file.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// The tiers, by name.
    #[serde(default)]
    pub tiers: IndexMap<String, RawTier>,
    /// The links between tiers.
    #[serde(default)]
    pub links: Vec<RawLink>,
    /// Where tiers run, when they run on several machines: host name → the
    /// address of that host's orchestrator's peer listener. Without it,
    /// every tier runs here.
    #[serde(default)]
    pub hosts: IndexMap<String, RawHost>,
}

/// One host of a topology placed on several machines.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Host")]
pub struct RawHost {
    /// `address:port` of its orchestrator's peer listener (`--peer-listen`);
    /// a DNS name stands for every address it resolves to.
    pub peer: String,
}

/// The host, or hosts, a tier runs on.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Placement")]
pub enum RawPlacement {
    One(String),
    Many(Vec<String>),
}

/// One tier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tier")]
pub struct RawTier {
    /// The plugin that handles this tier: a built-in (`gateway`) or a library `lib<name>.so`.
    pub plugin: String,
    /// How many instances to run (1 to 256; default 1). Links balance across them.
    #[serde(default)]
    #[schemars(range(min = 1, max = 256))]
    pub replicas: Option<i64>,
    /// `IP:port` to accept HTTP traffic on (port 0 picks a free port).
    #[serde(default)]
    pub listen: Option<String>,
    /// Largest request body accepted on `listen`: bytes, or a size such as `512KiB`, `1MiB` (default 1MiB).
    #[serde(default)]
    pub max_body: Option<RawSize>,
    /// The plugin's own configuration.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Environment variables for the tier. Numbers and booleans are taken
    /// as the text they are written as (`WORKERS: 4` is `"4"`), as Compose does;
    /// `{ file: PATH }` is the content of a file (relative to this file, at
    /// most 64 KiB, one final newline dropped): a secret, kept out of the
    /// topology (and on Kubernetes, in a Secret).
    #[serde(default)]
    pub env: IndexMap<String, RawEnvValue>,
    /// The host (a name under `hosts:`), or hosts, that run this tier.
    #[serde(default)]
    pub host: Option<RawPlacement>,
    /// Process tiers: the container image their program runs in on
    /// Kubernetes (`orchestrator export kubernetes`), beside the
    /// orchestrator in each pod; store tiers: the server's image there
    /// (`postgres:15`, `redis:7`). `run` does not use it.
    #[serde(default)]
    pub image: Option<String>,
    /// `always` (the default: a service, restarted when it exits) or `once`
    /// (a job, process tiers only: runs to completion, exit 0 is done).
    #[serde(default)]
    pub run: Option<RawRun>,
    /// Tiers this one starts after, where no link says so: each must be
    /// ready (a job: completed) first.
    #[serde(default)]
    pub after: Option<RawNames>,
}

/// How a tier runs.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Run")]
pub enum RawRun {
    /// A service: kept running, restarted when it exits.
    Always,
    /// A job: runs to completion; exit 0 is done, and those `after` it start.
    Once,
}

/// One name, or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Names")]
pub enum RawNames {
    One(String),
    Many(Vec<String>),
}

impl RawNames {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            RawNames::One(n) => vec![n],
            RawNames::Many(ns) => ns,
        }
    }
}

/// An environment variable's value: text, or a file's content.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "EnvValue")]
pub enum RawEnvValue {
    Scalar(RawScalar),
    File(RawFileRef),
}

/// The content of a file, as a value.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FileRef")]
pub struct RawFileRef {
    /// The file, relative to the topology file (under its directory, to be exported).
    pub file: String,
}

/// A value that stands for text: a string, or a number or boolean taken as
/// the text it is written as.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Scalar")]
pub enum RawScalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl RawScalar {
    pub fn into_text(self) -> String {
        match self {
            RawScalar::Text(s) => s,
            RawScalar::Int(i) => i.to_string(),
            RawScalar::Float(f) => f.to_string(),
            RawScalar::Bool(b) => b.to_string(),
        }
    }
}

/// A duration: text such as `2s` or `500ms`. A bare number is read so that
/// it can be refused with a hint (`5` → did you mean `5s`?).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Duration")]
pub enum RawDuration {
    Text(String),
    #[schemars(skip)]
    Number(f64),
}

/// A size in bytes, as a number or a string with a unit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Size")]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

/// The kind of a link.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "LinkKind")]
pub enum RawLinkKind {
    /// HTTP requests.
    Rest,
    /// gRPC-compatible unary calls.
    Rpc,
    /// Messages through a queue tier.
    Queue,
    /// TCP connections (a database's, a cache's protocol), forwarded as they are.
    Tcp,
}

/// Delivery mode of a queue link.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(rename = "QueueMode")]
pub enum RawQueueMode {
    /// Every subscribing tier gets each message.
    #[serde(rename = "pubsub")]
    PubSub,
    /// Exactly one subscriber gets each message.
    #[serde(rename = "point-to-point")]
    PointToPoint,
}

/// A link from one tier to another.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Link")]
pub struct RawLink {
    /// The calling tier.
    pub from: String,
    /// The tier called.
    pub to: String,
    pub kind: RawLinkKind,
    /// The name the caller uses for this link (default: the target tier's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for one call, such as `2s` or `500ms` (default 30s).
    #[serde(default)]
    pub timeout: Option<RawDuration>,
    /// Extra attempts for idempotent requests that get no answer (0 to 10; default 0).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Queue links only: the topic. Publishing (into a queue tier): default the
    /// link's name; delivering (out of a queue tier): default the queue tier's name.
    #[serde(default)]
    pub topic: Option<String>,
    /// Queue links out of a queue tier: `pubsub` (default) or `point-to-point`.
    #[serde(default)]
    pub mode: Option<RawQueueMode>,
    /// Queue links out of a queue tier: deliveries in flight at once to the
    /// subscribing tier (default 1: one at a time, in publish order).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Queue links out of a queue tier: the path deliveries are POSTed to
    /// (default `/messages/<topic>`).
    #[serde(default)]
    pub path: Option<String>,
    /// TCP links: a connection with no byte either way for this long is
    /// closed, such as `1h` (default 1h).
    #[serde(default)]
    pub idle_timeout: Option<RawDuration>,
    /// TCP links: connections open at once through the link (1 to 65,536;
    /// default 1,024); past it a new one is closed at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Queue links out of a `postgres` tier: the transactional outbox whose
    /// committed rows the tier publishes on the link's topic.
    #[serde(default)]
    pub outbox: Option<RawOutbox>,
}

/// A transactional outbox: a table a program writes its messages into, in
/// the transaction that writes its data; the tier publishes each committed
/// row, then deletes it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Outbox")]
pub struct RawOutbox {
    /// The table (in the tier's database).
    pub table: String,
    /// Make the table and its notifying trigger if they are missing (default true).
    #[serde(default)]
    pub create: Option<bool>,
    /// Look at the table this often even without a notification (default 1s).
    #[serde(default)]
    pub poll: Option<RawDuration>,
    /// Rows published in one call to the broker, at most (1 to 1,000; default 64).
    #[serde(default)]
    pub batch: Option<u32>,
}

/// The topology file's JSON Schema, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawTopology);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The top-level keys, for "did you mean" hints.
pub const TOP_LEVEL_KEYS: [&str; 6] = ["version", "name", "plugins", "tiers", "links", "hosts"];
