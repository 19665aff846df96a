//! What triggers a reload, other than SIGHUP and the admin API: the topology
//! file or a plugin library changing on disk.
//!
//! The watcher watches *directories* (editors save by writing a temporary file
//! and renaming it over the original, which a watch on the file itself would
//! miss), keeps the events about the files that matter, and debounces bursts
//! (an editor's save or a linker's writes) into one reload request. Every
//! trigger goes through the one `Supervisor::reload`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::runtime::Command;
use crate::runtime::status::Trigger;

/// Quiet time that ends a burst of file events.
const QUIET: Duration = Duration::from_millis(20);
/// A burst never delays a reload longer than this.
const MAX_DELAY: Duration = Duration::from_millis(250);
/// Quiet time that ends a burst of writes to a plugin library: a linker, or
/// a slow copy, writes one in many pieces, and a library is loaded only once
/// it stopped changing (one still changing is refused, and tried again on
/// its next change).
const PLUGIN_QUIET: Duration = Duration::from_millis(300);
/// A plugin library written for longer than this is tried anyway.
const PLUGIN_MAX_DELAY: Duration = Duration::from_secs(10);

/// The files whose changes trigger reloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub topology: PathBuf,
    pub plugins: Vec<PathBuf>,
    /// What the topology's path goes through to reach its file: every
    /// symlink on the way and the file it ends at (see [`resolve`]).
    topology_via: Vec<PathBuf>,
}

impl Watched {
    pub fn new(topology: PathBuf, plugins: Vec<PathBuf>) -> Self {
        let topology_via = resolve(&topology);
        Self { topology, plugins, topology_via }
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        std::iter::once(&self.topology)
            .chain(&self.topology_via)
            .chain(&self.plugins)
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect()
    }

    /// What a change of `path` triggers, if anything.
    fn trigger_for(&self, path: &Path) -> Option<Trigger> {
        if path == self.topology || self.topology_via.iter().any(|p| p == path) {
            Some(Trigger::File)
        } else if self.plugins.iter().any(|p| p == path) {
            Some(Trigger::Plugin)
        } else {
            None
        }
    }
}

/// An absolute path whose directory is canonical (symlinks resolved), as the
/// watcher reports paths; the file itself need not exist.
pub fn normalize(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

/// Every symlink that resolving `path` goes through, each named by its
/// real directory and its own name, then the real file it ends at.
///
/// A change to any of them changes what the path reads. This is how a
/// Kubernetes ConfigMap volume updates a file: `topology.yaml` links to
/// `..data/topology.yaml`, and `..data`, itself a link to a timestamped
/// directory, is replaced by a rename; nothing happens to `topology.yaml`
/// itself. Resolution stops after 40 links (the kernel's limit), and at a
/// component that does not exist.
pub fn resolve(path: &Path) -> Vec<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut via = Vec::new();
    let mut todo: VecDeque<PathBuf> = VecDeque::new();
    let push_front = |todo: &mut VecDeque<PathBuf>, p: &Path| {
        for c in p.components().rev() {
            todo.push_front(PathBuf::from(c.as_os_str()));
        }
    };
    let start = if path.is_absolute() { path.to_path_buf() } else { normalize(path) };
    push_front(&mut todo, &start);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => cur = PathBuf::from("/"),
            Some(Component::CurDir) | None => {}
            Some(Component::ParentDir) => {
                cur.pop();
            }
            Some(_) => {
                let next = cur.join(&part);
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() && links < 40 => {
                        links += 1;
                        let Ok(target) = std::fs::read_link(&next) else { break };
                        via.push(next);
                        push_front(&mut todo, &target);
                    }
                    Ok(_) => cur = next,
                    Err(_) => {
                        cur = next;
                        break;
                    }
                }
            }
        }
    }
    if via.is_empty() {
        return Vec::new();
    }
    via.push(cur);
    via
}

/// A running file watcher.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    watched: tokio::sync::watch::Sender<Watched>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl Watcher {
    /// Watches `watched`, sending reload requests to `commands`.
    pub fn start(watched: Watched, commands: mpsc::Sender<Command>) -> notify::Result<Self> {
        let (events_tx, events) = mpsc::unbounded_channel::<notify::Event>();
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let _ = events_tx.send(event);
            }
            Err(e) => tracing::warn!(error = %e, "File watching failed."),
        })?;
        let (watched_tx, watched_rx) = tokio::sync::watch::channel(Watched::default());
        tokio::spawn(debounce(events, watched_rx, commands));
        let mut watcher = Self { inner, dirs: BTreeSet::new(), watched: watched_tx };
        watcher.update(watched)?;
        Ok(watcher)
    }

    /// Follows a new set of files (plugins come and go with reloads, and
    /// the topology's symlinks may point elsewhere now).
    pub fn update(&mut self, watched: Watched) -> notify::Result<()> {
        let watched = Watched::new(watched.topology, watched.plugins);
        let dirs = watched.dirs();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.inner.unwatch(gone);
        }
        for added in dirs.difference(&self.dirs) {
            self.inner.watch(added, RecursiveMode::NonRecursive)?;
            tracing::debug!(dir = %added.display(), "Watching for changes.");
        }
        self.dirs = dirs;
        self.watched.send_replace(watched);
        Ok(())
    }
}

fn relevant(event: &notify::Event, watched: &Watched) -> Option<Trigger> {
    if matches!(event.kind, EventKind::Access(_)) {
        return None;
    }
    // A plugin change takes precedence: it also rereads the topology.
    let mut trigger = None;
    for path in &event.paths {
        match watched.trigger_for(path) {
            Some(Trigger::Plugin) => return Some(Trigger::Plugin),
            Some(t) => trigger = Some(t),
            None => {}
        }
    }
    trigger
}

async fn debounce(
    mut events: mpsc::UnboundedReceiver<notify::Event>,
    watched: tokio::sync::watch::Receiver<Watched>,
    commands: mpsc::Sender<Command>,
) {
    while let Some(event) = events.recv().await {
        let Some(mut trigger) = relevant(&event, &watched.borrow()) else { continue };
        let start = tokio::time::Instant::now();
        let since = std::time::Instant::now();
        // Wait for the burst to end.
        loop {
            let (quiet, max) =
                if trigger == Trigger::Plugin { (PLUGIN_QUIET, PLUGIN_MAX_DELAY) } else { (QUIET, MAX_DELAY) };
            let quiet = (tokio::time::Instant::now() + quiet).min(start + max);
            match tokio::time::timeout_at(quiet, events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(t) = relevant(&event, &watched.borrow())
                        && t == Trigger::Plugin
                    {
                        trigger = t;
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if commands.send(Command::Reload { trigger, reply: None, since }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_style_mount_is_resolved_through_each_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("..2026_01")).unwrap();
        std::fs::write(root.join("..2026_01/topology.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/topology.yaml", root.join("topology.yaml")).unwrap();
        let via = resolve(&root.join("topology.yaml"));
        assert_eq!(via, vec![root.join("topology.yaml"), root.join("..data"), root.join("..2026_01/topology.yaml")]);
        let watched = Watched::new(root.join("topology.yaml"), vec![]);
        assert_eq!(watched.trigger_for(&root.join("..data")), Some(Trigger::File));
        assert_eq!(watched.trigger_for(&root.join("..2026_01/topology.yaml")), Some(Trigger::File));
        assert_eq!(watched.trigger_for(&root.join("other.yaml")), None);
        assert!(watched.dirs().contains(&root.join("..2026_01")));
    }

    #[test]
    fn a_plain_file_goes_through_no_link_and_a_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("t.yaml"), "x").unwrap();
        assert!(resolve(&root.join("t.yaml")).is_empty());
        std::os::unix::fs::symlink("b", root.join("a")).unwrap();
        std::os::unix::fs::symlink("a", root.join("b")).unwrap();
        assert_eq!(resolve(&root.join("a")).len(), 41);
    }
}
