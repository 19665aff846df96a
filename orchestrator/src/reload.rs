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

/// The files whose changes trigger reloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub topology: PathBuf,
    pub plugins: Vec<PathBuf>,
}

impl Watched {
    fn dirs(&self) -> BTreeSet<PathBuf> {
        std::iter::once(&self.topology).chain(&self.plugins).filter_map(|p| p.parent().map(Path::to_path_buf)).collect()
    }

    /// What a change of `path` triggers, if anything.
    fn trigger_for(&self, path: &Path) -> Option<Trigger> {
        if path == self.topology {
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

    /// Follows a new set of files (plugins come and go with reloads).
    pub fn update(&mut self, watched: Watched) -> notify::Result<()> {
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
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        // Wait for the burst to end.
        loop {
            let quiet = (tokio::time::Instant::now() + QUIET).min(deadline);
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
        if commands.send(Command::Reload { trigger, reply: None }).await.is_err() {
            return;
        }
    }
}
