//! The topology language: read a file, check it, and describe it.
//!
//! `node` parses YAML into a located tree; `validate` turns it into the typed
//! `model` (collecting every error as a located `Diagnostic`); `raw` is the
//! serde shape (and the JSON Schema); `graph` draws it.

pub mod diagnostic;
pub mod diff;
pub mod graph;
pub mod model;
pub mod node;
pub mod raw;
pub mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use model::{
    LinkKind, LinkSpec, PEER_PLUGIN, Placement, QueueMode, QueueRole, Run, Share, TierId, TierSpec, Topology,
};

use crate::plugins::Registry;

/// Largest topology file read, unless `ORCH_MAX_TOPOLOGY_BYTES` says
/// otherwise: 8 MiB, some 50,000 tiers with their links.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: it is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "cannot read {}: it is larger than the limit of {limit} bytes (set ORCH_MAX_TOPOLOGY_BYTES to raise it)",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    /// Another user could have written it (or read a secret).
    #[error("{} is refused: {reason}", path.display())]
    Insecure { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(Box<Diagnostics>),
}

/// Reads, parses and validates the topology at `path`.
pub fn load(path: &Path, registry: &Registry) -> Result<Topology, Error> {
    let source = read(path, max_file_bytes())?;
    validate::parse(path, &source, registry).map_err(|d| Error::Invalid(Box::new(d)))
}

/// What a valid topology may still get wrong at run time, located: a
/// process tier whose command is neither on the `PATH` nor (with a `/`)
/// relative to its working directory, a store tier whose server is not
/// installed (its replicas would fail at once); an outbox into a broker
/// that keeps its messages in memory.
pub fn warnings(topology: &Topology) -> Vec<Diagnostic> {
    let Ok(source) = read(&topology.file, max_file_bytes()) else { return Vec::new() };
    let Ok(root) = node::Node::parse(&source) else { return Vec::new() };
    let mut out = Vec::new();
    // An outbox into a broker that keeps its messages in memory: a row is
    // deleted once the broker took it, so a crash would lose what it had
    // not delivered yet.
    for (i, link) in topology.links.iter().enumerate() {
        let Some(broker) = link.outbox.as_ref().and_then(|_| topology.tiers.get(&link.to)) else { continue };
        let durable = broker.config.get("durable").and_then(|d| d.as_bool()) == Some(true)
            || broker.config.get("backend").and_then(|b| b.as_str()) == Some("nats");
        if durable {
            continue;
        }
        let path = node::KeyPath::root().key("links").index(i).key("outbox");
        let mut d = Diagnostic::new(
            &path,
            format!(
                "tier `{}` keeps messages in memory: an outbox row is deleted once it took it, so a crash would lose what it had not delivered",
                link.to
            ),
        )
        .at(root.locate_key(&path));
        d.hint = Some(format!("give tier `{}` `durable: true` (or `backend: nats`)", link.to));
        out.push(d);
    }
    for (id, spec) in &topology.tiers {
        // A store tier whose server is not installed.
        let store = match spec.plugin.as_str() {
            "postgres" => Some((
                "bin_dir",
                postgres_tier::bin_dir(spec.config.get("bin_dir").and_then(|b| b.as_str())).map(|_| ()),
            )),
            "redis" => Some(("bin", redis_tier::binary(spec.config.get("bin").and_then(|b| b.as_str())).map(|_| ()))),
            _ => None,
        };
        if let Some((key, Err(missing))) = store {
            let at = node::KeyPath::root().key("tiers").key(id.as_str());
            let path = if spec.config.get(key).is_some() { at.key("config").key(key) } else { at.key("plugin") };
            out.push(Diagnostic::new(&path, format!("{missing}: the tier would fail at once")).at(root.locate(&path)));
            continue;
        }
        if spec.plugin != "process" {
            continue;
        }
        let Some(program) = spec.config.get("command").and_then(|c| c.get(0)).and_then(|p| p.as_str()) else {
            continue;
        };
        let workdir = match spec.config.get("workdir").and_then(|w| w.as_str()) {
            Some(w) => model::join_tidy(&topology.base_dir(), w),
            None => topology.base_dir(),
        };
        if process::command_exists(program, &workdir, &spec.env) {
            continue;
        }
        let path = node::KeyPath::root().key("tiers").key(id.as_str()).key("config").key("command").index(0);
        let mut d = Diagnostic::new(&path, format!("`{program}` is not found: its replicas would fail at once"))
            .at(root.locate(&path));
        d.hint = Some(if program.contains('/') {
            format!("there is no such program in {}", workdir.display())
        } else {
            "it is not on the PATH; give its path, e.g. `./{program}`, relative to `workdir`"
                .replace("{program}", program)
        });
        out.push(d);
    }
    out
}

/// The plugin directories the topology at `path` names (`plugins:`, resolved
/// against its directory), read even when the rest of it is invalid: they
/// are where the plugin its errors may be about is looked for.
pub fn plugin_dirs(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let source = read(path, max_file_bytes())?;
    let Ok(root) = node::Node::parse(&source) else { return Ok(Vec::new()) };
    let base = model::base_dir(path);
    let dirs = match root.get("plugins").map(|n| &n.value) {
        Some(node::Value::Seq(items)) => items
            .iter()
            .filter_map(|item| match &item.value {
                node::Value::Str(dir) => Some(model::join_tidy(&base, dir)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(dirs)
}

/// The topology file size limit: `ORCH_MAX_TOPOLOGY_BYTES`, or the default.
pub fn max_file_bytes() -> u64 {
    std::env::var("ORCH_MAX_TOPOLOGY_BYTES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_FILE_BYTES)
}

/// The text of the regular file at `path` (symlinks followed), at most
/// `limit` bytes, held to the rules of [`plugin_api::files`]: never blocks
/// (a FIFO or a device is refused without being read), a file of `/proc`
/// is refused, a file that grows while it is read stops at the limit, and
/// a file another user could have written (or whose directory they could
/// write) is refused, as sshd's `StrictModes` refuses it: a topology runs
/// commands as this user.
pub fn read(path: &Path, limit: u64) -> Result<String, Error> {
    read_as(path, limit, plugin_api::files::Trust::Shared)
}

/// [`read`] for a secret (a token): also refused when other users can read it.
pub fn read_secret(path: &Path, limit: u64) -> Result<String, Error> {
    read_as(path, limit, plugin_api::files::Trust::Secret)
}

fn read_as(path: &Path, limit: u64, trust: plugin_api::files::Trust) -> Result<String, Error> {
    use plugin_api::files::FileError;
    plugin_api::files::read_text(path, limit, trust).map_err(|e| match e {
        FileError::Io { path, source } => Error::Read { path, source },
        FileError::NotRegular { path, kind } => Error::NotRegular { path, kind },
        FileError::TooLarge { path, limit } => Error::TooLarge { path, limit },
        FileError::Insecure { path, reason } => Error::Insecure { path, reason },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_up_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read(&file, 10).unwrap(), "0123456789");
        let err = read(&file, 9).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 9, .. }), "{err}");
        assert!(err.to_string().contains("ORCH_MAX_TOPOLOGY_BYTES"), "{err}");
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(Path::new("/dev/zero"), DEFAULT_MAX_FILE_BYTES).unwrap_err();
        assert!(matches!(err, Error::NotRegular { kind: "a device", .. }), "{err}");
        let link = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read(&link, DEFAULT_MAX_FILE_BYTES), Err(Error::NotRegular { kind: "a device", .. })));
        let fifo = dir.path().join("fifo.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opening a FIFO with no writer would block a plain open forever.
        let err = read(&fifo, DEFAULT_MAX_FILE_BYTES).unwrap_err();
        assert!(matches!(err, Error::NotRegular { kind: "a FIFO", .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(matches!(read(dir.path(), DEFAULT_MAX_FILE_BYTES), Err(Error::NotRegular { kind: "a directory", .. })));
    }
}
