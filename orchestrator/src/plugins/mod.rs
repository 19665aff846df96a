//! Finding and loading plugins.
//!
//! A plugin is either built in (linked into this binary: `gateway`,
//! `process`, `queue`) or a
//! library `lib<name>.so` in one of the plugin directories: those the topology
//! lists under `plugins:`, those given with `--plugin-dir`, those in
//! `ORCH_PLUGIN_PATH` (colon-separated), and the directory of the orchestrator
//! executable itself (so `cargo build` output is found without configuration).
//!
//! `loader` opens libraries and checks their ABI; `handle` wraps declarations
//! and instances; `host` is what the host offers plugins. All `unsafe` code of
//! the host is in these three files.

pub mod handle;
pub mod host;
pub mod loader;

use std::collections::HashMap;
use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use handle::{BorrowedRequest, Builtin, InFlight, Instance, InstanceCall, OwnedRequest, Panicked, PluginHandle};
pub use host::HostCtx;

/// Why a plugin could not be used. Each is one sentence naming the file.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("no plugin named `{name}` (looked for {file} in {})", dirs_list(searched))]
    NotFound { name: String, file: String, searched: Vec<PathBuf> },
    #[error("cannot load plugin library {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error(
        "{} is not an orchestrator plugin: it does not export `orchestrator_plugin_declaration` (a plugin's lib.rs ends with `export_plugin!(YourPlugin);`)",
        path.display()
    )]
    NoSymbol { path: PathBuf },
    #[error(
        "{} was built for plugin ABI version {found}, but this orchestrator speaks ABI version {}; rebuild the plugin against plugin-api {}",
        path.display(), plugin_api::abi::ABI_VERSION, plugin_api::API_VERSION
    )]
    AbiMismatch { path: PathBuf, found: u32 },
    #[error(
        "{} was built with plugin-api {found}, which is not compatible with this orchestrator's plugin-api {}; rebuild the plugin",
        path.display(), plugin_api::API_VERSION
    )]
    ApiMismatch { path: PathBuf, found: String },
    #[error("{} declares plugin `{declared}`, not `{expected}`", path.display())]
    NameMismatch { path: PathBuf, declared: String, expected: String },
    #[error("{} is refused: {reason}; make it writable only by its owner, or pass --allow-insecure-plugins", path.display())]
    Insecure { path: PathBuf, reason: String },
    #[error("{} changed while it was read (is it still being written?); it is loaded once it stops changing", path.display())]
    Unstable { path: PathBuf },
    #[error("{} is not a loadable library: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{} is refused: {reason}", path.display())]
    ProbeFailed { path: PathBuf, reason: String },
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no plugin directories".to_owned();
    }
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What identifies one version of a library file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileVersion {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(Self { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
    }
}

struct Loaded {
    version: Option<FileVersion>,
    result: Result<Arc<PluginHandle>, LoadError>,
}

/// The plugins this orchestrator can use.
///
/// A library file is loaded again when it changes on disk (a rebuild): the new
/// handle sits beside the old one, whose instances keep running. Loaded
/// libraries are never unloaded (see `retained`).
pub struct Registry {
    builtins: Vec<Arc<PluginHandle>>,
    dirs: Vec<PathBuf>,
    policy: loader::LoadPolicy,
    loaded: Mutex<HashMap<PathBuf, Loaded>>,
    /// Every library ever loaded. Code from a library may be referenced from
    /// places the host cannot see (a waker stored by a timer, a thread-local
    /// destructor), so a library stays mapped for the life of the process: a
    /// reload of a plugin costs the memory of one more copy of it.
    retained: Mutex<Vec<Arc<PluginHandle>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

/// The file name of plugin `name` on this platform.
pub fn library_file(name: &str) -> String {
    format!("{DLL_PREFIX}{name}{DLL_SUFFIX}")
}

impl Registry {
    /// A registry with the built-in plugins and `dirs`, then `ORCH_PLUGIN_PATH`,
    /// then the executable's directory. Libraries are probed by this
    /// executable (the orchestrator) before they are loaded.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let mut all = dirs;
        if let Some(path) = std::env::var_os("ORCH_PLUGIN_PATH") {
            all.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
        }
        let exe = std::env::current_exe().ok();
        if let Some(dir) = exe.as_ref().and_then(|p| p.parent().map(Path::to_path_buf)) {
            all.push(dir);
        }
        let mut registry = Self::with_dirs(all);
        registry.policy.prober = exe;
        loader::remove_stale_copies();
        registry
    }

    /// Loads libraries that other users may write to (`--allow-insecure-plugins`).
    pub fn allow_insecure(mut self, allow: bool) -> Self {
        self.policy.allow_insecure = allow;
        self
    }

    /// A registry with the built-in plugins and exactly `dirs`.
    pub fn with_dirs(dirs: Vec<PathBuf>) -> Self {
        // SAFETY: each line's three are of one plugin.
        let builtins = unsafe {
            vec![
                Arc::new(loader::builtin(
                    gateway::plugin_declaration(),
                    gateway::plugin_native_handle(),
                    Builtin::Gateway,
                )),
                Arc::new(loader::builtin(
                    process::plugin_declaration(),
                    process::plugin_native_handle(),
                    Builtin::Process,
                )),
                Arc::new(loader::builtin(queue::plugin_declaration(), queue::plugin_native_handle(), Builtin::Queue)),
                Arc::new(loader::builtin(peer::plugin_declaration(), peer::plugin_native_handle(), Builtin::Peer)),
                Arc::new(loader::builtin(
                    postgres_tier::plugin_declaration(),
                    postgres_tier::plugin_native_handle(),
                    Builtin::Postgres,
                )),
                Arc::new(loader::builtin(
                    redis_tier::plugin_declaration(),
                    redis_tier::plugin_native_handle(),
                    Builtin::Redis,
                )),
            ]
        };
        Self {
            builtins,
            dirs,
            policy: loader::LoadPolicy::default(),
            loaded: Mutex::new(HashMap::new()),
            retained: Mutex::new(Vec::new()),
        }
    }

    fn search_dirs<'a>(&'a self, extra: &'a [PathBuf]) -> impl Iterator<Item = &'a PathBuf> {
        extra.iter().chain(&self.dirs)
    }

    /// The plugin named `name`, searching `extra` directories first.
    pub fn lookup(&self, name: &str, extra: &[PathBuf]) -> Result<Arc<PluginHandle>, LoadError> {
        if let Some(p) = self.builtins.iter().find(|p| p.name() == name) {
            return Ok(p.clone());
        }
        let file = library_file(name);
        for dir in self.search_dirs(extra) {
            let path = dir.join(&file);
            if path.is_file() {
                let plugin = self.load(&path)?;
                if plugin.name() != name {
                    return Err(LoadError::NameMismatch {
                        path,
                        declared: plugin.name().to_owned(),
                        expected: name.to_owned(),
                    });
                }
                return Ok(plugin);
            }
        }
        Err(LoadError::NotFound { name: name.to_owned(), file, searched: self.search_dirs(extra).cloned().collect() })
    }

    /// Loads the library at `path`; later calls return the same handle until
    /// the file changes on disk, then a newly loaded one.
    pub fn load(&self, path: &Path) -> Result<Arc<PluginHandle>, LoadError> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let version = FileVersion::of(path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = loaded.get(&key)
            && entry.version == version
        {
            return entry.result.clone();
        }
        let result = loader::load(path, &self.policy).map(Arc::new);
        if let Ok(handle) = &result {
            self.retained.lock().unwrap_or_else(|e| e.into_inner()).push(handle.clone());
            tracing::debug!(plugin = handle.name(), path = %path.display(), "Plugin library loaded.");
        }
        loaded.insert(key, Loaded { version, result: result.clone() });
        result
    }

    /// Names of every plugin that can be looked up, without loading any.
    pub fn names(&self, extra: &[PathBuf]) -> Vec<String> {
        let mut names: Vec<String> = self.builtins.iter().map(|p| p.name().to_owned()).collect();
        for (name, _) in self.files(extra) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// [`Registry::names`] split into the plugins that would load and those
    /// refused, each checked in a child process (nothing is loaded into this
    /// one): for a hint that lists only what can be used.
    pub fn names_checked(&self, extra: &[PathBuf]) -> (Vec<String>, Vec<String>) {
        let mut usable: Vec<String> = self.builtins.iter().map(|p| p.name().to_owned()).collect();
        let mut refused = Vec::new();
        for (name, path) in self.files(extra) {
            if usable.contains(&name) {
                continue;
            }
            let ok = match loader::check(&path, &self.policy) {
                Ok(declared) => declared.is_none_or(|d| d == name),
                Err(_) => false,
            };
            if ok { usable.push(name) } else { refused.push(name) }
        }
        (usable, refused)
    }

    /// Library files in the plugin directories, first occurrence of each name.
    fn files(&self, extra: &[PathBuf]) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for dir in self.search_dirs(extra) {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut found: Vec<(String, PathBuf)> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let file = e.file_name().into_string().ok()?;
                    let name = file.strip_prefix(DLL_PREFIX)?.strip_suffix(DLL_SUFFIX)?.to_owned();
                    Some((name, e.path()))
                })
                .collect();
            found.sort();
            for (name, path) in found {
                if !out.iter().any(|(n, _)| n == &name) {
                    out.push((name, path));
                }
            }
        }
        out
    }

    /// Every plugin found, loaded, or the reason it cannot be.
    pub fn list(&self, extra: &[PathBuf]) -> Vec<(String, Result<Arc<PluginHandle>, LoadError>)> {
        let mut out: Vec<_> = self.builtins.iter().map(|p| (p.name().to_owned(), Ok(p.clone()))).collect();
        for (name, path) in self.files(extra) {
            if out.iter().any(|(n, _)| n == &name) {
                continue;
            }
            // The same check as `lookup`: a library is found by its file name.
            let plugin = self.load(&path).and_then(|p| {
                if p.name() == name {
                    Ok(p)
                } else {
                    Err(LoadError::NameMismatch {
                        path: path.clone(),
                        declared: p.name().to_owned(),
                        expected: name.clone(),
                    })
                }
            });
            out.push((name, plugin));
        }
        out
    }

    /// The directories searched, in order.
    pub fn dirs(&self, extra: &[PathBuf]) -> Vec<PathBuf> {
        self.search_dirs(extra).cloned().collect()
    }
}
