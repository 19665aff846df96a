//! The one piece of the process plugin that needs `unsafe`.

#![allow(unsafe_code)]

/// Asks the kernel to SIGKILL the program if the orchestrator dies without
/// stopping it (even by SIGKILL), so that no replica outlives it.
///
/// The signal is tied to the thread that spawns the child; replicas are
/// spawned from runtime worker threads, which live as long as the runtime.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed: `prctl` is a plain system call
    // and nothing here allocates or takes a lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// [`die_with_parent`] for a `std` command (the shim's program).
pub fn die_with_parent_std(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: as in `die_with_parent`: only a system call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Restores a signal's default disposition (the shim, before it dies of it).
pub fn signal_default(signal: nix::sys::signal::Signal) {
    // SAFETY: `SIG_DFL` installs no handler: no code of ours runs on the signal.
    unsafe {
        let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
    }
}
