//! The validated topology: what the rest of the program works with.
//!
//! Every type derives `PartialEq` so that a reload can diff the running
//! topology against a new one spec by spec.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
pub use plugin_api::LinkKind;

/// A tier's name, cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierId(Arc<str>);

impl TierId {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TierId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole application.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// Extra plugin directories, resolved against the file's directory.
    pub plugin_dirs: Vec<PathBuf>,
    pub tiers: IndexMap<TierId, TierSpec>,
    pub links: Vec<LinkSpec>,
    /// Host name → its peer listener's `address:port`; empty when every tier
    /// runs here.
    pub hosts: IndexMap<String, String>,
}

/// Which share of a topology this orchestrator runs.
#[derive(Clone, Debug)]
pub struct Placement {
    pub share: Share,
    /// The token peers present, and that this host presents to them.
    pub token: Option<String>,
    /// Mutual TLS between hosts: this host's certificate, key and the
    /// authority (absolute paths).
    pub tls: Option<peer::tls::Files>,
    /// Serve the local tiers' `listen` addresses on this address instead
    /// (their ports unchanged): `0.0.0.0` in a container.
    pub listen_ip: Option<std::net::IpAddr>,
    /// Where the local tiers keep durable state (`ORCH_DATA_DIR`), instead
    /// of beside the topology file.
    pub data_dir: Option<PathBuf>,
    /// A local process tier's program runs beside this orchestrator (in
    /// another container of its pod, which the kubelet starts and restarts)
    /// and serves on `127.0.0.1:` this port: it is probed and routed to,
    /// not started (`ORCH_PROGRAM_PORT`).
    pub program_port: Option<u16>,
    /// Link name → the loopback port of its local listener (the
    /// `ORCH_LINK_<NAME>_URL` a program beside this orchestrator was given).
    pub link_ports: std::collections::HashMap<String, u16>,
}

/// The environment variable that tells a process tier its program runs
/// beside the orchestrator, on this port.
pub const PROGRAM_PORT_ENV: &str = "ORCH_PROGRAM_PORT";

/// The environment variable that tells a tier where to keep durable state.
pub const DATA_DIR_ENV: &str = "ORCH_DATA_DIR";

/// How the tiers that run here are chosen.
#[derive(Clone, Debug)]
pub enum Share {
    /// Those placed on this host (a name under the topology's `hosts:`).
    Host(String),
    /// These tiers, one replica each (a platform such as Kubernetes runs
    /// the replicas, each as a process of its own); every other tier is
    /// reached at `peer_address` with `{tier}` replaced by its name, and the
    /// topology's own `hosts:` is not used.
    Tiers { tiers: Vec<String>, peer_address: String },
}

/// The placeholder in `--peer-address` that stands for a tier's name.
pub const TIER_PLACEHOLDER: &str = "{tier}";

impl Topology {
    /// This orchestrator's share: the tiers that run here as they are; each
    /// other tier becomes a tier of the built-in `peer` plugin, one replica
    /// per host that runs it, which reaches it through that host's peer
    /// listener. Links do not change. A topology without `hosts:` is
    /// returned as it is for a [`Share::Host`].
    pub fn share(mut self, placement: &Placement) -> Result<Topology, String> {
        match &placement.share {
            Share::Host(host) => {
                if self.hosts.is_empty() {
                    return Ok(self);
                }
                if !self.hosts.contains_key(host) {
                    let known: Vec<&str> = self.hosts.keys().map(String::as_str).collect();
                    return Err(format!("this topology has no host `{host}`; its hosts are: {}", known.join(", ")));
                }
            }
            Share::Tiers { tiers, peer_address } => {
                if let Some(unknown) = tiers.iter().find(|t| !self.tiers.contains_key(&TierId::new(t))) {
                    let known: Vec<&str> = self.tiers.keys().map(TierId::as_str).collect();
                    return Err(format!("this topology has no tier `{unknown}`; its tiers are: {}", known.join(", ")));
                }
                self.hosts = self
                    .tiers
                    .keys()
                    .map(|t| (t.to_string(), peer_address.replace(TIER_PLACEHOLDER, t.as_str())))
                    .collect();
                for spec in self.tiers.values_mut() {
                    spec.hosts = vec![spec.id.to_string()];
                    if tiers.iter().any(|t| t == spec.id.as_str()) {
                        spec.replicas = 1;
                    }
                }
            }
        }
        let here = |spec: &TierSpec| match &placement.share {
            Share::Host(host) => spec.hosts.is_empty() || spec.hosts.contains(host),
            Share::Tiers { tiers, .. } => tiers.iter().any(|t| t == spec.id.as_str()),
        };
        for spec in self.tiers.values_mut() {
            if here(spec) {
                // A tier (and its program) can tell which host it runs on.
                let host = match &placement.share {
                    Share::Host(host) => host.clone(),
                    Share::Tiers { .. } => this_machine(),
                };
                spec.env.entry("ORCH_HOST".to_owned()).or_insert(host);
                if let Some(ip) = placement.listen_ip {
                    spec.listen = spec.listen.map(|a| std::net::SocketAddr::new(ip, a.port()));
                }
                if let Some(dir) = &placement.data_dir {
                    spec.env.insert(DATA_DIR_ENV.to_owned(), dir.display().to_string());
                }
                if let Some(port) = placement.program_port
                    && spec.plugin == "process"
                {
                    spec.env.insert(PROGRAM_PORT_ENV.to_owned(), port.to_string());
                }
                continue;
            }
            let peers: Vec<&str> = spec.hosts.iter().filter_map(|h| self.hosts.get(h).map(String::as_str)).collect();
            spec.config = serde_json::json!({ "tier": spec.id.as_str(), "peers": peers });
            spec.plugin = PEER_PLUGIN.to_owned();
            spec.replicas = u32::try_from(peers.len()).unwrap_or(1).max(1);
            spec.listen = None;
            spec.env = placement.token.iter().map(|t| ("ORCH_PEER_TOKEN".to_owned(), t.clone())).collect();
            if let Some(tls) = &placement.tls {
                for (name, path) in
                    [(peer::tls::CERT_ENV, &tls.cert), (peer::tls::KEY_ENV, &tls.key), (peer::tls::CA_ENV, &tls.ca)]
                {
                    spec.env.insert(name.to_owned(), path.display().to_string());
                }
            }
        }
        Ok(self)
    }

    /// The directory of the file, against which relative paths in it are
    /// resolved: `.` for a file named without a directory.
    pub fn base_dir(&self) -> PathBuf {
        base_dir(&self.file)
    }

    /// The outbound links of `tier`.
    pub fn links_from<'a>(&'a self, tier: &'a TierId) -> impl Iterator<Item = &'a LinkSpec> + 'a {
        self.links.iter().filter(move |l| &l.from == tier)
    }

    /// What `tier` starts after: the tiers it links to, and those it names
    /// in `after:` (the second value says which: `true` for `after:`).
    pub fn predecessors<'a>(&'a self, tier: &'a TierId) -> impl Iterator<Item = (&'a TierId, bool)> + 'a {
        let after = self.tiers.get(tier).into_iter().flat_map(|t| t.after.iter()).map(|t| (t, true));
        self.links_from(tier).map(|l| (&l.to, false)).chain(after)
    }
}

/// The directory of topology file `file`: `.` when it is named without one.
pub fn base_dir(file: &std::path::Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// This machine's host name (a Kubernetes pod's name), or `localhost`.
fn this_machine() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

/// `dir` joined to `path`, written tidily: `.` components left out, and a
/// `..` after a plain name resolved (`t1/../target/release` is
/// `target/release`). Lexical only: a `..` after a symlink means the same in
/// messages as on disk for the paths a topology names (its own directory and
/// what is under or beside it), which is what messages show.
pub fn join_tidy(dir: &std::path::Path, path: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in dir.join(path).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// The built-in plugin standing for a tier that runs on other hosts.
pub const PEER_PLUGIN: &str = "peer";

/// One tier: a plugin, its replicas and its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TierSpec {
    pub id: TierId,
    pub plugin: String,
    pub replicas: u32,
    /// Where the tier accepts HTTP traffic from outside, if anywhere.
    pub listen: Option<SocketAddr>,
    /// Largest request body accepted on `listen`, in bytes.
    pub max_body: u64,
    /// The plugin's own configuration, as JSON.
    pub config: serde_json::Value,
    /// Environment the tier's handler can read.
    pub env: BTreeMap<String, String>,
    /// The hosts that run it (names under `hosts:`); empty without placement.
    pub hosts: Vec<String>,
    /// A process tier's program's container image, for `export kubernetes`.
    pub image: Option<String>,
    /// The `env` values read from files: name → the path as written
    /// (relative to the topology file). Their content is in `env`.
    pub env_files: BTreeMap<String, String>,
    /// A service, or a job.
    pub run: Run,
    /// Tiers this one starts after (besides those it links to).
    pub after: Vec<TierId>,
}

/// How a tier runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Run {
    /// A service: kept running.
    #[default]
    Always,
    /// A job: runs to completion, once.
    Once,
}

/// The environment variable that tells a process tier's replica it is a job.
pub const RUN_ENV: &str = "ORCH_RUN";

/// How a queue link delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMode {
    /// Every subscribing tier gets each message.
    PubSub,
    /// Subscribers compete: exactly one gets each message.
    PointToPoint,
}

/// A link from one tier to another.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    pub from: TierId,
    pub to: TierId,
    /// The name the caller uses; defaults to the target tier's name.
    pub name: String,
    pub kind: LinkKind,
    pub timeout: Duration,
    /// Extra attempts for idempotent requests that fail without an answer.
    pub retries: u32,
    /// Queue links: the topic published on or subscribed to.
    pub topic: Option<String>,
    pub mode: QueueMode,
    /// Queue links out of a broker: deliveries in flight at once to the subscriber.
    pub concurrency: u32,
    /// Queue links out of a broker: the path deliveries are POSTed to.
    pub path: Option<String>,
    /// Queue links: which way the link goes through the broker.
    pub queue_role: Option<QueueRole>,
    /// TCP links: a connection quiet for this long is closed.
    pub idle_timeout: Duration,
    /// TCP links: connections open at once through the link.
    pub max_connections: u32,
    /// Queue links out of a `postgres` tier: the outbox relayed on the topic.
    pub outbox: Option<OutboxSpec>,
}

/// A `postgres` tier's transactional outbox, relayed on a queue link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxSpec {
    pub table: String,
    /// Make the table and its trigger when missing.
    pub create: bool,
    /// Look at the table this often without a notification.
    pub poll: Duration,
    /// Rows per publish, at most.
    pub batch: u32,
}

impl LinkSpec {
    /// How the link is described to the instances at its ends.
    pub fn info(&self) -> plugin_api::LinkInfo {
        let mut params = std::collections::BTreeMap::new();
        params.insert("timeout_ms".to_owned(), self.timeout.as_millis().to_string());
        if let Some(topic) = &self.topic {
            params.insert("topic".to_owned(), topic.clone());
        }
        if let Some(QueueRole::Deliver) = self.queue_role {
            let mode = match self.mode {
                QueueMode::PubSub => "pubsub",
                QueueMode::PointToPoint => "point-to-point",
            };
            params.insert("mode".to_owned(), mode.to_owned());
            params.insert("concurrency".to_owned(), self.concurrency.to_string());
            if let Some(path) = &self.path {
                params.insert("path".to_owned(), path.clone());
            }
        }
        if self.kind == LinkKind::Tcp {
            params.insert("max_connections".to_owned(), self.max_connections.to_string());
        }
        if let Some(outbox) = &self.outbox {
            params.insert("outbox_table".to_owned(), outbox.table.clone());
            params.insert("outbox_create".to_owned(), outbox.create.to_string());
            params.insert("outbox_poll_ms".to_owned(), outbox.poll.as_millis().to_string());
            params.insert("outbox_batch".to_owned(), outbox.batch.to_string());
        }
        plugin_api::LinkInfo { name: self.name.clone(), kind: self.kind, params }
    }
}

/// The two kinds of queue link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// Into a queue tier: the caller publishes on the link's topic.
    Publish,
    /// Out of a queue tier: the broker delivers the topic's messages to the target.
    Deliver,
}

/// Defaults and limits of the topology language.
pub mod limits {
    use std::time::Duration;

    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_REPLICAS: i64 = 256;
    pub const MAX_RETRIES: u32 = 10;
    pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
    pub const MAX_CONCURRENCY: u32 = 1024;
    /// A TCP link's connection with no byte either way for this long is closed.
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Connections open at once through a TCP link, by default.
    pub const TCP_MAX_CONNECTIONS: u32 = 1024;
    /// The most a TCP link's `max_connections` may be.
    pub const TCP_MAX_CONNECTIONS_LIMIT: u32 = 65_536;
    /// A TCP link's connect timeout, unless its `timeout` is shorter.
    pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The plugins that run a store's server: one replica, always.
    pub const STORE_PLUGINS: [&str; 2] = ["postgres", "redis"];
    /// The plugin whose tiers relay an outbox.
    pub const OUTBOX_PLUGIN: &str = "postgres";
    /// An outbox's poll when none is given, and the bounds of one given.
    pub const OUTBOX_POLL: Duration = Duration::from_secs(1);
    pub const OUTBOX_POLL_MIN: Duration = Duration::from_millis(10);
    pub const OUTBOX_POLL_MAX: Duration = Duration::from_secs(3600);
    /// Rows an outbox publishes at once: default and most.
    pub const OUTBOX_BATCH: u32 = 64;
    pub const OUTBOX_BATCH_MAX: u32 = 1000;
    /// The longest outbox table name: its notification channel,
    /// `orch_outbox_<table>`, is an identifier of at most 63 bytes.
    pub const OUTBOX_TABLE_MAX: usize = 51;
    /// Largest file an `env` value is read from.
    pub const MAX_ENV_FILE: u64 = 64 * 1024;
    /// The plugin that makes a tier a message broker.
    pub const BROKER_PLUGIN: &str = "queue";
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn joined_paths_are_tidy() {
        let t = |dir: &str, path: &str| super::join_tidy(Path::new(dir), path).display().to_string();
        assert_eq!(t("t1", "../target/release"), "target/release");
        assert_eq!(t(".", "./plugins"), "plugins");
        assert_eq!(t("/srv/app", "../lib"), "/srv/lib");
        assert_eq!(t("..", "../x"), "../../x");
        assert_eq!(t("a", ".."), ".");
        assert_eq!(t("a", "/abs/dir"), "/abs/dir");
    }

    #[test]
    fn a_file_named_without_a_directory_is_in_the_current_one() {
        assert_eq!(super::base_dir(Path::new("topology.yaml")), Path::new("."));
        assert_eq!(super::base_dir(Path::new("topologies/hello.yaml")), Path::new("topologies"));
        assert_eq!(super::base_dir(Path::new("/srv/app.yaml")), Path::new("/srv"));
    }
}
