//! The one piece of the process plugin that needs `unsafe`.

#![allow(unsafe_code)]

/// A command for `program` that starts it with the signal state a shell
/// gives the programs it starts ([`as_from_a_shell`]). Every program the
/// orchestrator runs for a tier (its command, the shim, probes) is made
/// here: `clippy.toml` refuses `Command::new` anywhere else.
#[allow(clippy::disallowed_methods)]
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed: `as_from_a_shell` makes only
    // `sigaction` and `sigprocmask` calls, and nothing allocates or locks.
    unsafe { cmd.pre_exec(as_from_a_shell) };
    cmd
}

/// [`command`] for a `std` command (the shim's program).
#[allow(clippy::disallowed_methods)]
pub fn command_std(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(program);
    // SAFETY: as in `command`.
    unsafe { cmd.pre_exec(as_from_a_shell) };
    cmd
}

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

/// Gives the calling process (a child between fork and exec) the signal
/// state a shell gives the programs it starts: no signal blocked, every
/// signal's disposition the default. A blocked signal and an ignored one
/// both survive `exec`: without this, a program inherits the shim's blocked
/// SIGTERM, SIGINT, SIGHUP and SIGQUIT (which it takes one at a time) and
/// the runtime's ignored SIGPIPE, and never stops gracefully.
///
/// Async-signal-safe: only `sigprocmask` and `sigaction`. (The C library
/// keeps two real-time signals for itself and refuses to change them: they
/// are left as they are.)
fn as_from_a_shell() -> std::io::Result<()> {
    use nix::libc;
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: `SIG_DFL` installs no handler: no code of ours runs on the signal.
        unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }.map_err(std::io::Error::from)?;
    }
    for realtime in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: as above; an error (a signal the C library keeps) changes nothing.
        unsafe { libc::signal(realtime, libc::SIG_DFL) };
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(std::io::Error::from)
}

/// Restores a signal's default disposition (the shim, before it dies of it).
pub fn signal_default(signal: nix::sys::signal::Signal) {
    // SAFETY: `SIG_DFL` installs no handler: no code of ours runs on the signal.
    unsafe {
        let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
    }
}
