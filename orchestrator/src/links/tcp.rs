//! TCP links: a database's, a cache's, any TCP protocol, forwarded as it is.
//!
//! A tier's TCP link is a listener on loopback that the orchestrator owns
//! (its address never changes while the caller runs, whatever happens to
//! the target). Each connection accepted is connected to a ready replica of
//! the target (waiting for one, within the connect timeout, while none is:
//! a server restarting) — round robin, within the link's connect timeout (its
//! `timeout`, at most [`limits::TCP_CONNECT_TIMEOUT`]), a refused or failed
//! connect tried on the next replica, never one that is not ready — and the
//! bytes are then copied both ways until either side closes, or nothing
//! moves for the link's `idle_timeout`.
//!
//! The copy is zero-copy on Linux: `splice` moves bytes from one socket into
//! a pipe and from the pipe into the other, in the kernel, with no copy
//! through this process's memory (as HAProxy does); where a socket refuses
//! `splice`, a copy through a buffer of [`BUFFER`] bytes each way.
//!
//! Bounded: at most the link's `max_connections` at once (past it a new
//! connection is closed at once), each in the process's connection budget,
//! each holding two pipes of the kernel's default size (64 KiB) or two
//! buffers.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{LinkTable, Route};
use crate::metrics::TcpOutcome;
use crate::serve::admission::RateLimited;
use crate::serve::timeouts::Deadline;
use crate::serve::workers::Workers;
use crate::topology::model::limits;

/// Bytes moved at once each way (a pipe's default capacity).
pub const CHUNK: usize = 64 * 1024;
/// The buffer each way where `splice` is refused.
pub const BUFFER: usize = 64 * 1024;
/// How often a connection that waits for a ready replica looks again.
const READY_POLL: Duration = Duration::from_millis(20);

/// A TCP link's listener, serving until dropped.
#[derive(Debug)]
pub struct TcpListenerTask {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Drop for TcpListenerTask {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Serves TCP link `name` of `table` on `listener`: each connection goes to
/// a ready replica of the link's target as it is at that moment.
pub fn serve(listener: TcpListener, table: Weak<LinkTable>, name: Arc<str>, workers: &Workers) -> TcpListenerTask {
    let (stop, stop_rx) = watch::channel(false);
    let span = tracing::info_span!("tcp-link", link = %name);
    let task = tokio::spawn(accept(listener, table, name, workers.clone(), stop_rx).instrument(span));
    TcpListenerTask { task, stop }
}

async fn accept(
    listener: TcpListener,
    table: Weak<LinkTable>,
    name: Arc<str>,
    workers: Workers,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mine = Arc::new(AtomicUsize::new(0));
    let warnings = RateLimited::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = warnings.ready() {
                        tracing::warn!(error = %e, failed_since_last_warning = suppressed + 1, "Accepting a connection failed.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(route) = table.upgrade().and_then(|t| t.get(&name)) else {
            // The link is gone (a reload removed it): nothing to connect to.
            continue;
        };
        let limit = route.spec.max_connections as usize;
        if open.load(Ordering::Relaxed) >= limit {
            route.tcp.outcome(TcpOutcome::Limit);
            if let Some(suppressed) = warnings.ready() {
                tracing::warn!(link = %name, max_connections = limit, refused_since_last_warning = suppressed + 1, "TCP link at its max_connections: new connections are closed.");
            }
            continue;
        }
        let Some(admitted) = workers.admission().admit(&mine) else {
            route.tcp.outcome(TcpOutcome::Limit);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else { continue };
        open.fetch_add(1, Ordering::Relaxed);
        let guard = Open(open.clone());
        workers.spawn_connection(move || async move {
            let _held = (admitted, guard);
            let Ok(client) = TcpStream::from_std(stream) else { return };
            forward(client, route).await;
        });
    }
}

/// A connection counted against its link's `max_connections`.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects `client` to a ready replica of `route`'s target, then copies.
async fn forward(client: TcpStream, route: Arc<Route>) {
    let connect_timeout = route.spec.timeout.min(limits::TCP_CONNECT_TIMEOUT);
    let started = crate::metrics::cells::clock().raw();
    let mut tried: Option<Arc<crate::plugins::Instance>> = None;
    let mut last = TcpOutcome::Unavailable;
    // None ready (a store's server restarting): the connection waits for
    // one, within the connect timeout, as a connect to a busy server would.
    let deadline = tokio::time::Instant::now() + connect_timeout;
    while route.target.ready_count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(READY_POLL).await;
    }
    // Each ready replica once at most.
    for _ in 0..route.target.ready_count().max(1) {
        let Some(instance) = route.target.pick_other(tried.as_ref()) else { break };
        if tried.as_ref().is_some_and(|t| Arc::ptr_eq(t, &instance)) {
            break;
        }
        let Some(addr) = instance.tcp_addr() else {
            last = TcpOutcome::Unavailable;
            tried = Some(instance);
            continue;
        };
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(server)) => {
                let _ = server.set_nodelay(true);
                let clock = crate::metrics::cells::clock();
                route.tcp.connected(clock.delta_as_nanos(started, clock.raw()));
                // The instance is counted in flight while the connection lasts: a
                // replica being replaced drains it.
                let in_flight = instance.enter();
                drop(tried);
                copy(client, server, &route, addr).await;
                drop(in_flight);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "A TCP link's connect failed; trying another replica.");
                last = TcpOutcome::Refused;
            }
            Err(_) => last = TcpOutcome::Timeout,
        }
        tried = Some(instance);
    }
    route.tcp.outcome(last);
}

/// Copies both ways until both sides closed, one failed, or nothing moved
/// for the link's idle timeout.
async fn copy(client: TcpStream, server: TcpStream, route: &Route, addr: SocketAddr) {
    route.tcp.opened();
    let moved = AtomicU64::new(0);
    let idle = route.spec.idle_timeout;
    let spliced = async {
        let (Ok(up), Ok(down)) = (Splicer::new(), Splicer::new()) else { return Err(Refused) };
        let (a, b) = tokio::join!(
            up.run(&client, &server, &route.tcp.sent, &moved),
            down.run(&server, &client, &route.tcp.received, &moved)
        );
        a.and(b)
    };
    let refused = tokio::select! {
        spliced = spliced => spliced.is_err(),
        () = quiet_for(idle, &moved) => {
            tracing::debug!(%addr, idle = %humantime::format_duration(idle), "A TCP link's connection was idle: closed.");
            false
        }
    };
    if refused {
        // No `splice` for these sockets: a copy through buffers instead.
        let (mut client, mut server) = (client, server);
        let copying = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER);
        let copied = tokio::select! {
            copied = copying => copied.ok(),
            () = Deadline::at(tokio::time::Instant::now() + idle) => None,
        };
        if let Some((up, down)) = copied {
            route.tcp.sent.fetch_add(up, Ordering::Relaxed);
            route.tcp.received.fetch_add(down, Ordering::Relaxed);
        }
    }
    route.tcp.closed();
}

/// Completes once `moved` stayed the same for `idle` (looked at every
/// quarter of it: at most a quarter late).
async fn quiet_for(idle: Duration, moved: &AtomicU64) {
    let (mut seen, mut quiet) = (moved.load(Ordering::Relaxed), 0);
    loop {
        Deadline::at(tokio::time::Instant::now() + idle / 4).await;
        let now = moved.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
        if quiet >= 4 {
            return;
        }
    }
}

/// `splice` is refused for these sockets.
#[derive(Debug)]
struct Refused;

/// One direction of a spliced copy: its pipe.
struct Splicer {
    read: OwnedFd,
    write: OwnedFd,
}

impl Splicer {
    fn new() -> std::io::Result<Self> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// Moves what `from` sends to `to` until `from` closes (then `to`'s
    /// sending side is shut) or either fails. `Err` if `splice` is refused
    /// before a byte moved.
    async fn run(
        &self,
        from: &TcpStream,
        to: &TcpStream,
        counted: &AtomicU64,
        moved: &AtomicU64,
    ) -> Result<(), Refused> {
        use nix::errno::Errno;
        use nix::fcntl::{SpliceFFlags, splice};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let mut total = 0u64;
        loop {
            // Into the pipe: what `from` has.
            let n = loop {
                let spliced = from.try_io(Interest::READABLE, || {
                    splice(from.as_fd(), None, self.write.as_fd(), None, CHUNK, flags).map_err(std::io::Error::from)
                });
                match spliced {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if from.readable().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) if total == 0 && e.raw_os_error() == Some(Errno::EINVAL as i32) => return Err(Refused),
                    Err(_) => {
                        shut_write(to);
                        return Ok(());
                    }
                }
            };
            if n == 0 {
                // `from` closed its side: so does `to`'s, once what it sent went through.
                shut_write(to);
                return Ok(());
            }
            // Out of the pipe: all of it, into `to`.
            let mut left = n;
            while left > 0 {
                let spliced = to.try_io(Interest::WRITABLE, || {
                    splice(self.read.as_fd(), None, to.as_fd(), None, left, flags).map_err(std::io::Error::from)
                });
                match spliced {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if to.writable().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(_) => return Ok(()),
                }
            }
            total += n as u64;
            counted.fetch_add(n as u64, Ordering::Relaxed);
            moved.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Closes `stream`'s sending side (its peer reads the end of what it sent).
fn shut_write(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}
