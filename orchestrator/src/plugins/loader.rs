//! Loading plugin libraries. All `unsafe` of the host's plugin handling lives
//! in this module and its siblings `handle` and `host`.
//!
//! A library file is never mapped as it is on disk, where it can change under
//! the process (a rebuild truncates and rewrites it: pages mapped from a
//! truncated file kill the process with SIGBUS). Loading it takes, in order:
//!
//! 1. its permissions: a file or directory others may write to is refused
//!    (as sshd's `StrictModes` does), unless allowed with
//!    `--allow-insecure-plugins`;
//! 2. a snapshot: its bytes copied into a sealed memory file (`memfd`) that
//!    nobody can change, taken only if the file did not change while it was
//!    copied, and only if it is a complete ELF library (its headers and
//!    segments lie within it) — a half-written file is refused, not loaded;
//! 3. a probe: a child process (`orchestrator probe-plugin`) loads the
//!    snapshot first and reads its declaration, so a library that crashes,
//!    exits or hangs while loading takes down only the child, and is refused
//!    naming the signal or status;
//! 4. then this process opens the same snapshot and checks the entry symbol,
//!    the ABI version, then the plugin-api version.
//!
//! Nothing is written to the file system: there is no private copy to
//! protect from other users, nor one left behind.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, IntoRawFd as _, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use libloading::Library;
use plugin_api::abi::{ABI_VERSION, ENTRY_SYMBOL, EntryFn, PluginDecl};
use plugin_api::export::NativeHandle;

use super::{Builtin, LoadError, PluginHandle};

/// Largest plugin library loaded: 512 MiB.
pub const MAX_LIBRARY_BYTES: u64 = 512 * 1024 * 1024;
/// How long the probe may take to load a library.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The hidden subcommand that probes a library.
pub const PROBE_COMMAND: &str = "probe-plugin";

/// How libraries are checked before they are loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadPolicy {
    /// The orchestrator executable that probes a library in a child process
    /// before this one loads it. `None` loads without a probe.
    pub prober: Option<PathBuf>,
    /// Load libraries that other users may write to.
    pub allow_insecure: bool,
}

/// Whether a plugin built against plugin-api `theirs` works with ours: the
/// same major version, and for 0.x the same minor (Cargo's caret rule).
pub fn api_compatible(ours: &str, theirs: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(ours), parse(theirs)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// Loads the plugin library at `path` as the module's doc says. Errors name `path`.
pub fn load(path: &Path, policy: &LoadPolicy) -> Result<PluginHandle, LoadError> {
    if !policy.allow_insecure {
        check_permissions(path)?;
    }
    let snapshot = Snapshot::take(path)?;
    if let Some(prober) = &policy.prober {
        probe(prober, &snapshot, path)?;
    }
    let opened = open(&snapshot.self_path(), Some(path));
    // The dynamic loader knows the library by the name it was opened as,
    // `/proc/self/fd/N`, and would hand out this library again for that name
    // if the descriptor were closed and its number reused (a library refused
    // after opening may stay mapped too). Libraries are never unloaded, and
    // each version of a file is opened once: neither is this descriptor closed.
    let _ = snapshot.fd.into_raw_fd();
    opened
}

/// Checks the library at `path` as [`load`] would, without loading it into
/// this process: its permissions, its snapshot, and what the probe found.
/// Gives the plugin name it declares; `None` when the policy has no probe
/// (nothing to check with).
pub fn check(path: &Path, policy: &LoadPolicy) -> Result<Option<String>, LoadError> {
    if !policy.allow_insecure {
        check_permissions(path)?;
    }
    let snapshot = Snapshot::take(path)?;
    let Some(prober) = &policy.prober else { return Ok(None) };
    let report = probe(prober, &snapshot, path)?;
    let path = path.to_owned();
    match report {
        ProbeReport { symbol: false, .. } => Err(LoadError::NoSymbol { path }),
        ProbeReport { abi: Some(found), .. } if found != ABI_VERSION => Err(LoadError::AbiMismatch { path, found }),
        ProbeReport { api: Some(found), .. } if !api_compatible(plugin_api::API_VERSION, &found) => {
            Err(LoadError::ApiMismatch { path, found })
        }
        ProbeReport { name: Some(name), .. } => Ok(Some(name)),
        ProbeReport { .. } => Err(LoadError::Open { path, reason: "it has no readable declaration".into() }),
    }
}

/// Opens the library at `file` (reported as `shown`) and checks its
/// declaration: the entry symbol, the ABI version, the plugin-api version.
fn open(file: &Path, shown: Option<&Path>) -> Result<PluginHandle, LoadError> {
    let path = shown.unwrap_or(file);
    let open_error = |reason: String| LoadError::Open { path: path.to_owned(), reason };
    // SAFETY: loading a library runs its initialisers. Plugin libraries are
    // code the user chose to run by naming them in a topology, and a new one
    // has run in a probe first. libloading opens with RTLD_LOCAL, so the
    // identical symbol names of different plugins do not clash.
    let lib = unsafe { Library::new(file) }
        .map_err(|e| open_error(e.to_string().replace(&file.display().to_string(), &path.display().to_string())))?;
    // SAFETY: the symbol, when present, has the `EntryFn` signature: that is the
    // contract of `ENTRY_SYMBOL`, which only plugin libraries export.
    let entry =
        unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL) }.map_err(|_| LoadError::NoSymbol { path: path.to_owned() })?;
    // SAFETY: as above; the entry function takes nothing and returns a pointer to static data.
    let decl = unsafe { entry() };
    if decl.is_null() {
        return Err(LoadError::NoSymbol { path: path.to_owned() });
    }
    // SAFETY: every ABI version's declaration starts with a `u32` version, so
    // reading it is valid whatever the rest of the layout is.
    let abi = unsafe { decl.cast::<u32>().read() };
    if abi != ABI_VERSION {
        return Err(LoadError::AbiMismatch { path: path.to_owned(), found: abi });
    }
    // SAFETY: same ABI version, so the layout is `PluginDecl`; it is static data
    // of `lib`, which the handle keeps loaded.
    let handle = unsafe { PluginHandle::from_decl(decl, Some(Arc::new(lib)), shown.map(Path::to_owned)) };
    if !api_compatible(plugin_api::API_VERSION, handle.api_version()) {
        return Err(LoadError::ApiMismatch { path: path.to_owned(), found: handle.api_version().to_owned() });
    }
    Ok(handle)
}

/// Refuses a library that a user other than this one (or root) could have
/// written: a file or directory writable by anyone, or owned by someone else.
fn check_permissions(path: &Path) -> Result<(), LoadError> {
    let me = nix::unistd::geteuid().as_raw();
    let insecure = |reason: String| LoadError::Insecure { path: path.to_owned(), reason };
    let file =
        std::fs::canonicalize(path).map_err(|e| LoadError::Open { path: path.to_owned(), reason: e.to_string() })?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    for (what, at) in [("the file", file.as_path()), ("its directory", dir)] {
        let meta =
            std::fs::metadata(at).map_err(|e| LoadError::Open { path: path.to_owned(), reason: e.to_string() })?;
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(insecure(format!("{what} ({}) is writable by every user", at.display())));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(insecure(format!("{what} ({}) belongs to another user (uid {})", at.display(), meta.uid())));
        }
    }
    Ok(())
}

/// The bytes of a library file as they were at one moment, in a sealed
/// memory file.
struct Snapshot {
    fd: OwnedFd,
}

impl Snapshot {
    fn take(path: &Path) -> Result<Self, LoadError> {
        let open_error = |e: std::io::Error| LoadError::Open { path: path.to_owned(), reason: e.to_string() };
        let malformed = |reason: String| LoadError::Malformed { path: path.to_owned(), reason };
        let mut file = File::open(path).map_err(open_error)?;
        let before = file.metadata().map_err(open_error)?;
        if !before.is_file() {
            return Err(malformed("it is not a regular file".into()));
        }
        if before.len() > MAX_LIBRARY_BYTES {
            return Err(malformed(format!("it is larger than the limit of {MAX_LIBRARY_BYTES} bytes")));
        }
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let name = format!("orchestrator-plugin:{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let fd = memfd_create(name.as_str(), MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|e| open_error(e.into()))?;
        let mut copy = File::from(fd);
        let copied = std::io::copy(&mut (&mut file).take(MAX_LIBRARY_BYTES + 1), &mut copy).map_err(open_error)?;
        let after = std::fs::metadata(path).map_err(open_error)?;
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
            (a.dev(), a.ino(), a.len(), a.mtime(), a.mtime_nsec())
                == (b.dev(), b.ino(), b.len(), b.mtime(), b.mtime_nsec())
        };
        if copied != before.len() || !same(&before, &after) || !same(&before, &file.metadata().map_err(open_error)?) {
            return Err(LoadError::Unstable { path: path.to_owned() });
        }
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
        fcntl(&copy, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| open_error(e.into()))?;
        elf_complete(&copy, copied).map_err(malformed)?;
        Ok(Self { fd: copy.into() })
    }

    /// The snapshot's path for this process.
    fn self_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The snapshot's path for a child of this process.
    fn child_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }
}

/// Whether `file` (`len` bytes) is a whole ELF shared library of this
/// machine: its program headers, every segment it loads and its section
/// headers all lie within the file. A truncated or half-copied library fails
/// this: the section headers are at its very end.
fn elf_complete(file: &File, len: u64) -> Result<(), String> {
    let mut header = [0u8; 64];
    let got = file.read_at(&mut header, 0).map_err(|e| e.to_string())?;
    if got < 4 || &header[..4] != b"\x7fELF" {
        return Err("it is not an ELF file".into());
    }
    if got < header.len() {
        return Err(format!("it is too short to be a library ({len} bytes)"));
    }
    let native_class = if cfg!(target_pointer_width = "64") { 2 } else { 1 };
    let native_data = if cfg!(target_endian = "little") { 1 } else { 2 };
    if header[4] != native_class || header[5] != native_data || native_class != 2 {
        return Err("it is an ELF file for another kind of machine".into());
    }
    let u16_at = |b: &[u8], at: usize| u64::from(u16::from_ne_bytes([b[at], b[at + 1]]));
    let u64_at = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or_default());
    if u16_at(&header, 16) != 3 {
        return Err("it is an ELF file, but not a shared library".into());
    }
    let within = |what: &str, offset: u64, size: u64| match offset.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(format!("it is truncated: its {what} end past its {len} bytes (still being written?)")),
    };
    let (phoff, phentsize, phnum) = (u64_at(&header, 32), u16_at(&header, 54), u16_at(&header, 56));
    let (shoff, shentsize, shnum) = (u64_at(&header, 40), u16_at(&header, 58), u16_at(&header, 60));
    within("program headers", phoff, phentsize * phnum)?;
    if shoff != 0 {
        within("section headers", shoff, shentsize * shnum)?;
    }
    if phentsize < 56 {
        return Err("its program headers are malformed".into());
    }
    let mut ph = vec![0u8; usize::try_from(phentsize).unwrap_or(56)];
    for i in 0..phnum {
        file.read_exact_at(&mut ph, phoff + i * phentsize).map_err(|e| e.to_string())?;
        const PT_LOAD: u32 = 1;
        if u32::from_ne_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_LOAD {
            within("loaded segments", u64_at(&ph, 8), u64_at(&ph, 32))?;
        }
    }
    Ok(())
}

/// What the probe reports of a library it loaded.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProbeReport {
    /// Whether it exports the entry symbol (and it returned a declaration).
    symbol: bool,
    abi: Option<u32>,
    /// The declared plugin name and plugin-api version, for our ABI.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    api: Option<String>,
}

/// Loads `snapshot` in a child process (`prober probe-plugin PATH`), which
/// dies instead of this one if the library kills whatever loads it.
fn probe(prober: &Path, snapshot: &Snapshot, shown: &Path) -> Result<ProbeReport, LoadError> {
    let failed = |reason: String| LoadError::ProbeFailed { path: shown.to_owned(), reason };
    // Not a tier's program: the orchestrator itself, which loads a library
    // and prints a report; it needs no signal of its own.
    #[allow(clippy::disallowed_methods)]
    let mut child = Command::new(prober)
        .arg(PROBE_COMMAND)
        .arg(snapshot.child_path())
        .env("ORCH_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(format!("the probe ({}) could not start: {e}", prober.display())))?;
    let mut stdout = child.stdout.take().ok_or_else(|| failed("the probe has no output".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        // A report is one short line; more is not read.
        let _ = (&mut stdout).take(64 * 1024).read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("loading it did not finish within {}s", PROBE_TIMEOUT.as_secs())));
        }
    };
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.to_string());
        return Err(failed(format!("loading it killed the probe with {name}")));
    }
    let report: Option<ProbeReport> = serde_json::from_slice(&out).ok();
    match (status.code(), report) {
        (Some(0), Some(report)) => Ok(report),
        (code, _) => Err(failed(format!(
            "loading it made the probe exit with status {}",
            code.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
        ))),
    }
}

/// The probe's side (`orchestrator probe-plugin PATH`): loads the library,
/// reads its declaration as the orchestrator would, asks it to check an
/// empty configuration, and prints what it found as one JSON line.
pub fn probe_main(path: &Path) -> ExitCode {
    let report = match open(path, None) {
        Ok(handle) => {
            let _ = handle.serves();
            let _ = handle.validate(&serde_json::json!({}), &[]);
            ProbeReport {
                symbol: true,
                abi: Some(handle.abi_version()),
                name: Some(handle.name().to_owned()),
                api: Some(handle.api_version().to_owned()),
            }
        }
        Err(LoadError::ApiMismatch { found, .. }) => {
            ProbeReport { symbol: true, abi: Some(ABI_VERSION), name: None, api: Some(found) }
        }
        Err(LoadError::NoSymbol { .. }) => ProbeReport { symbol: false, abi: None, name: None, api: None },
        Err(LoadError::AbiMismatch { found, .. }) => {
            ProbeReport { symbol: true, abi: Some(found), name: None, api: None }
        }
        Err(_) => ProbeReport { symbol: true, abi: None, name: None, api: None },
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    ExitCode::SUCCESS
}

/// A handle for a plugin linked into this binary: its declaration, and its
/// `handle` called as Rust (`plugin_native_handle()`, of the same plugin).
///
/// # Safety
/// `decl`, `native` and `builtin` must all be of the same plugin.
pub unsafe fn builtin(decl: &'static PluginDecl, native: NativeHandle, builtin: Builtin) -> PluginHandle {
    // SAFETY: a declaration compiled into this binary is static and of our ABI.
    let handle = unsafe { PluginHandle::from_decl(decl, None, None) };
    // SAFETY: the plugin is linked into this binary, and the caller passes the
    // native handle of the plugin `decl` declares, and names it.
    unsafe { handle.with_native(native, builtin) }
}

/// Removes the private copies directories that orchestrators before this
/// one left in the temporary directory (`orchestrator-<pid>`, one per run),
/// once their process is gone. Only this user's directories are touched, and
/// links are never followed.
pub fn remove_stale_copies() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("orchestrator-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        if meta.is_dir() && meta.uid() == me && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_compatibility() {
        assert!(api_compatible("0.1.0", "0.1.7"));
        assert!(!api_compatible("0.1.0", "0.2.0"));
        assert!(api_compatible("1.2.0", "1.0.3"));
        assert!(!api_compatible("1.2.0", "2.0.0"));
        assert!(!api_compatible("0.1.0", "garbage"));
    }

    #[test]
    fn a_library_cut_anywhere_is_refused_as_truncated() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole");
        std::fs::write(&whole, &exe).unwrap();
        let file = File::open(&whole).unwrap();
        // The test binary is an ELF executable (PIE: a shared object by type).
        if let Err(e) = elf_complete(&file, exe.len() as u64) {
            assert!(e.contains("not a shared library"), "{e}");
        }
        for cut in [4, 10, 63, 64, 4096, exe.len() / 2, exe.len() - 1] {
            let part = dir.path().join(format!("part{cut}"));
            std::fs::write(&part, &exe[..cut]).unwrap();
            let e = elf_complete(&File::open(&part).unwrap(), cut as u64).unwrap_err();
            assert!(e.contains("truncated") || e.contains("too short"), "{cut}: {e}");
        }
    }
}
