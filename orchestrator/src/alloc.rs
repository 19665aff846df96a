//! The memory allocator: mimalloc, and its settings.
//!
//! Messages are often allocated on one thread (a publisher's) and freed on
//! another (a delivery's): glibc's arenas serialize such frees on a lock,
//! mimalloc frees them without one.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's `mi_option_set`, in the library the `mimalloc` crate links.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Options in mimalloc's `mi_option_t` (the same values in its v2 and v3 headers).
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Has the allocator commit memory as it is used rather than an arena at a
/// time, so that an idle orchestrator stays small (11 MiB resident for the
/// hello topology, instead of 18), and give freed memory back after a second
/// rather than 10 ms, so that a steady stream of messages does not keep
/// committing and purging the same pages (half the throughput otherwise).
/// It must run before the first allocation, which happens before `main`: the
/// loader runs it from `.init_array`.
extern "C" fn configure() {
    // SAFETY: sets plain integer options; no memory is touched.
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
    }
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE: extern "C" fn() = configure;
