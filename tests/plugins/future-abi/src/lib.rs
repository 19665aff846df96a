//! Exports the entry symbol with ABI version 999 and a layout the host must
//! never read past the version.

/// Only the leading version is meaningful to a host that checks it first.
#[repr(C)]
pub struct FutureDecl {
    pub abi_version: u32,
    pub something_new: [u64; 4],
}

static DECL: FutureDecl = FutureDecl { abi_version: 999, something_new: [0; 4] };

#[unsafe(no_mangle)]
pub extern "C" fn orchestrator_plugin_declaration() -> *const FutureDecl {
    &DECL
}
