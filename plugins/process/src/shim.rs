//! The supervising shim between the orchestrator and a replica's program
//! (`orchestrator tier-shim`), so that no process of a replica outlives the
//! orchestrator, however it ends.
//!
//! The kernel kills only a dying process's direct children when asked to
//! (`PR_SET_PDEATHSIG`): a program's own children — the server `go run`
//! starts, a shell's commands, a worker pool — would live on, orphaned, with
//! their ports open. The shim is the replica's direct child and the leader of
//! its process group; it starts the program in that group, adopts every
//! orphan of it (`PR_SET_CHILD_SUBREAPER`), and:
//! - when the orchestrator dies (even by SIGKILL), it sends SIGTERM to every
//!   other process of the group, and SIGKILL to what is left after the
//!   replica's `stop_grace`;
//! - when the program exits, it kills what the program left in the group and
//!   exits as the program did (its exit code, or the same signal);
//! - when the orchestrator stops the replica (SIGTERM to the group), the
//!   program gets the signal itself; the shim waits for it as above.
//!
//! A process that leaves the group on purpose (`setsid`, `setpgid`) is
//! detached: it is not followed.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, getppid};

/// The subcommand of the orchestrator that runs this.
pub const COMMAND: &str = "tier-shim";

/// Runs `command` as described above; `parent` is the orchestrator's pid.
pub fn main(parent: u32, grace: Duration, command: &[OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("tier-shim: no command");
        return ExitCode::from(2);
    };
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    // Signals are taken one at a time below, never by a handler.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGCHLD] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    // The orchestrator may have died before the parent-death signal was set.
    if getppid().as_raw() != parent as i32 {
        return ExitCode::from(1);
    }
    let mut cmd = crate::sys::command_std(program);
    cmd.args(args);
    crate::sys::die_with_parent_std(&mut cmd);
    let child = match cmd.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("cannot start `{}`: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let mut orphaned = false;
    loop {
        let Ok(signal) = signals.wait() else { continue };
        match signal {
            Signal::SIGCHLD => {
                // Reap everything that ended: the program, or orphans adopted.
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            kill_group(Signal::SIGKILL);
                            return ExitCode::from(u8::try_from(code).unwrap_or(1));
                        }
                        Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                            kill_group(Signal::SIGKILL);
                            die_of(signal);
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            _ if !orphaned && getppid().as_raw() != parent as i32 => {
                orphaned = true;
                kill_group(Signal::SIGTERM);
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    kill_group(Signal::SIGKILL);
                    std::process::exit(1);
                });
            }
            // The orchestrator's SIGTERM to the group: the program has it too.
            _ => {}
        }
    }
}

/// Sends `signal` to every process of this group but this one.
fn kill_group(signal: Signal) {
    let (me, group) = (getpid().as_raw(), getpgrp().as_raw());
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`; `comm` may hold spaces and parentheses.
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok());
        if pgrp == Some(group) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Ends this process by `signal`, as the program ended.
fn die_of(signal: Signal) -> ! {
    crate::sys::signal_default(signal);
    let mut set = SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = kill(getpid(), signal);
    std::process::exit(128 + signal as i32)
}
