//! Which orchestrators run on this machine, and for which topology: each
//! `run` leaves a small state file while it runs, so that `orchestrator
//! reload FILE` finds the one running FILE instead of guessing an address.
//!
//! The files live in `$XDG_RUNTIME_DIR/orchestrator/`, or else
//! `$TMPDIR/orchestrator-run-<uid>/`: a directory of this user's, mode 0700,
//! used only if it is a real directory (not a link) that belongs to this user
//! and that no one else may enter — another user cannot plant or read one.
//! A file is named by a hash of the topology's canonical path; it holds the
//! pid, the admin address, the file and the topology's name. A file whose
//! process is gone is stale and ignored (and removed when seen).

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What a running orchestrator says of itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub pid: u32,
    pub admin: SocketAddr,
    pub file: PathBuf,
    pub name: String,
}

/// The state directory, created if missing; `Err` says why it cannot be used.
pub fn dir() -> Result<PathBuf, String> {
    let me = nix::unistd::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("orchestrator"),
        // Not `orchestrator-<number>`: that is the name of the private copies
        // directories older versions left, which are removed once stale.
        None => std::env::temp_dir().join(format!("orchestrator-run-{me}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private directory of this user's (a link, another user's, or open to others)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The state file of the topology at `file`.
fn path_for(dir: &Path, file: &Path) -> PathBuf {
    let canonical = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    // FNV-1a: a stable name for the path, not a secret.
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    dir.join(format!("{hash:016x}.json"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A state file written while this process runs its topology, removed on drop.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Writes this process's entry for `file` (atomically: a new file renamed
    /// into place). An entry of another live process for the same file is
    /// kept, and this one not written: `None`, with a warning logged.
    pub fn write(file: &Path, name: &str, admin: SocketAddr) -> Option<Self> {
        let dir = match dir() {
            Ok(dir) => dir,
            Err(why) => {
                tracing::warn!(error = %why, "No state file: `orchestrator reload FILE` will not find this one.");
                return None;
            }
        };
        let path = path_for(&dir, file);
        if let Some(other) = read(&path)
            && other.pid != std::process::id()
        {
            tracing::warn!(pid = other.pid, admin = %other.admin, "Another orchestrator runs this topology file.");
            return None;
        }
        let entry = Entry {
            pid: std::process::id(),
            admin,
            file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
            name: name.to_owned(),
        };
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => Some(Self { path }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(error = %e, "Cannot write the state file.");
                None
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if read(&self.path).is_some_and(|e| e.pid == std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The live entry at `path`: one of a process that is gone is removed.
fn read(path: &Path) -> Option<Entry> {
    let text = crate::topology::read(path, 64 * 1024).ok()?;
    let entry: Entry = serde_json::from_str(&text).ok()?;
    if alive(entry.pid) {
        Some(entry)
    } else {
        let _ = std::fs::remove_file(path);
        None
    }
}

/// The orchestrator running the topology at `file`, if one does.
pub fn find(file: &Path) -> Option<Entry> {
    read(&path_for(&dir().ok()?, file))
}

/// Every orchestrator running on this machine for this user.
pub fn all() -> Vec<Entry> {
    let Ok(dir) = dir() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<Entry> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
        .filter_map(|e| read(&e.path()))
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_topology_path_whatever_its_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(&file, "x").unwrap();
        let spelt = dir.path().join(".").join("t.yaml");
        assert_eq!(path_for(dir.path(), &file), path_for(dir.path(), &spelt));
        assert_ne!(path_for(dir.path(), &file), path_for(dir.path(), &dir.path().join("u.yaml")));
    }
}
