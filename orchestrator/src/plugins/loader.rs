//! Loading plugin libraries. All `unsafe` of the host's plugin handling lives
//! in this module and its siblings `handle` and `host`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libloading::Library;
use plugin_api::abi::{ABI_VERSION, ENTRY_SYMBOL, EntryFn, PluginDecl};
use plugin_api::export::NativeHandle;

use super::{Builtin, LoadError, PluginHandle};

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

/// Loads the plugin library at `path` and checks, in order: the entry symbol,
/// the ABI version, then the plugin-api version.
///
/// The library is opened from a private copy, so that rewriting the file on
/// disk (a rebuild) never changes code that is mapped and running, and so that
/// a rebuilt file loads as a new library (the dynamic loader caches by path).
/// The copy is deleted once open. Errors name `path`.
pub fn load(path: &Path) -> Result<PluginHandle, LoadError> {
    let open_error = |reason: String| LoadError::Open { path: path.to_owned(), reason };
    let copy = private_copy(path).map_err(|e| open_error(format!("cannot copy it: {e}")))?;
    // SAFETY: loading a library runs its initialisers. Plugin libraries are
    // code the user chose to run by naming them in a topology. libloading opens
    // with RTLD_LOCAL, so the identical symbol names of different plugins do not clash.
    let lib = unsafe { Library::new(&copy) };
    // Once open, the mapping does not need the file.
    let _ = std::fs::remove_file(&copy);
    let lib =
        lib.map_err(|e| open_error(e.to_string().replace(&copy.display().to_string(), &path.display().to_string())))?;
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
    let handle = unsafe { PluginHandle::from_decl(decl, Some(Arc::new(lib)), Some(path.to_owned())) };
    if !api_compatible(plugin_api::API_VERSION, handle.api_version()) {
        return Err(LoadError::ApiMismatch { path: path.to_owned(), found: handle.api_version().to_owned() });
    }
    Ok(handle)
}

/// Copies `path` to a file of its own in this process's temporary directory.
fn private_copy(path: &Path) -> std::io::Result<std::path::PathBuf> {
    static COPIES: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("orchestrator-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let copy = dir.join(format!("{stem}-{n}{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(path, &copy)?;
    Ok(copy)
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
}
