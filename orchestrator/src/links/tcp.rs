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
//! The copy: what arrives is read into a buffer of [`BUFFER`] bytes and
//! written on — small messages (a query, a reply) cost less that way than
//! through a pipe — and when a read fills the buffer (a large result, a
//! bulk load), what is queued behind it is moved with `splice(2)`, kernel
//! to kernel, with no copy through this process's memory, until the socket
//! has nothing more queued (HAProxy's `splice-auto`).
//!
//! Bounded: at most the link's `max_connections` at once (past it a new
//! connection is closed at once), each in the process's connection budget,
//! each holding two buffers of [`BUFFER`] bytes (32 KiB) and, once a
//! burst came, a pipe each way (the kernel's default, up to 64 KiB each).

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

/// Bytes spliced at once (a pipe's default capacity).
pub const CHUNK: usize = 64 * 1024;
/// The buffer each way: what one read takes before a burst is spliced.
pub const BUFFER: usize = 16 * 1024;
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
        // A replica on another host: through its peer listener.
        if let Some(peer) = instance.as_peer() {
            match tokio::time::timeout(connect_timeout, peer.tunnel()).await {
                Ok(Ok(tunnel)) => {
                    let clock = crate::metrics::cells::clock();
                    route.tcp.connected(clock.delta_as_nanos(started, clock.raw()));
                    let in_flight = instance.enter();
                    drop(tried);
                    route.tcp.opened();
                    relay(client, tunnel, route.spec.idle_timeout, &route.tcp.sent, &route.tcp.received).await;
                    route.tcp.closed();
                    drop(in_flight);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = ?e, "A TCP link's tunnel to another host failed; trying another replica.");
                    last = TcpOutcome::Refused;
                }
                Err(_) => last = TcpOutcome::Timeout,
            }
            tried = Some(instance);
            continue;
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
    let both = async {
        let (mut up, mut down) = (Mover::new(), Mover::new());
        tokio::join!(
            up.run(&client, &server, &route.tcp.sent, &moved),
            down.run(&server, &client, &route.tcp.received, &moved)
        );
    };
    tokio::select! {
        () = both => {}
        () = quiet_for(idle, &moved) => {
            tracing::debug!(%addr, idle = %humantime::format_duration(idle), "A TCP link's connection was idle: closed.");
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

/// One direction of a connection. What arrives is read into a buffer of
/// [`BUFFER`] bytes and written on: a query, a reply, a command — small
/// messages, for which two copies cost less than a pipe's bookkeeping.
/// When a read fills the buffer, more is queued behind it (a large result,
/// a bulk load): that is moved with `splice(2)` through a pipe, kernel to
/// kernel, until the socket has nothing more queued; then buffers again.
/// (HAProxy's `splice-auto` does the same.) The pipe is made at the first
/// such burst: a connection that never has one holds no pipe.
struct Mover {
    buf: Box<[u8]>,
    /// The pipe, once made; `None` inside when `splice` was refused.
    pipe: Option<Option<(OwnedFd, OwnedFd)>>,
}

/// Whether the other side went away (or failed): the direction ends.
struct Gone;

impl Mover {
    fn new() -> Self {
        Self { buf: vec![0; BUFFER].into_boxed_slice(), pipe: None }
    }

    /// Moves what `from` sends to `to` until `from` closes (then `to`'s
    /// sending side is shut) or either fails.
    async fn run(&mut self, from: &TcpStream, to: &TcpStream, counted: &AtomicU64, moved: &AtomicU64) {
        loop {
            let n = loop {
                match from.try_read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if from.readable().await.is_err() {
                            return shut_write(to);
                        }
                    }
                    Err(_) => return shut_write(to),
                }
            };
            if n == 0 {
                // `from` closed its side: so does `to`'s, once what it sent went through.
                return shut_write(to);
            }
            if write_all(to, &self.buf[..n]).await.is_err() {
                return;
            }
            counted.fetch_add(n as u64, Ordering::Relaxed);
            moved.fetch_add(n as u64, Ordering::Relaxed);
            if n == self.buf.len() {
                match self.splice_burst(from, to, counted, moved).await {
                    Ok(true) => {}
                    Ok(false) => return shut_write(to),
                    Err(Gone) => return,
                }
            }
        }
    }

    /// Splices what `from` has queued into `to`, until it has nothing more
    /// for now (`Ok(true)`) or closed (`Ok(false)`).
    async fn splice_burst(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        counted: &AtomicU64,
        moved: &AtomicU64,
    ) -> Result<bool, Gone> {
        use nix::errno::Errno;
        use nix::fcntl::{OFlag, SpliceFFlags, splice};
        let pipe = self.pipe.get_or_insert_with(|| nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok());
        let Some((read, write)) = pipe.as_ref() else { return Ok(true) };
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            let spliced = from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, write.as_fd(), None, CHUNK, flags).map_err(std::io::Error::from)
            });
            let n = match spliced {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                // Nothing more queued: back to reading into the buffer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                    // These sockets take no `splice`: buffers only, from now on.
                    self.pipe = Some(None);
                    return Ok(true);
                }
                Err(_) => return Ok(false),
            };
            let mut left = n;
            while left > 0 {
                let spliced = to.try_io(Interest::WRITABLE, || {
                    splice(read.as_fd(), None, to.as_fd(), None, left, flags).map_err(std::io::Error::from)
                });
                match spliced {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if to.writable().await.is_err() {
                            return Err(Gone);
                        }
                    }
                    Err(_) => return Err(Gone),
                }
            }
            counted.fetch_add(n as u64, Ordering::Relaxed);
            moved.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Relays bytes between `a` and `b` (a tunnel through a peer listener and a
/// socket) until both closed, one failed, or nothing moved for `idle`:
/// through buffers of [`BUFFER`] bytes, counted as they go (`a` to `b` in
/// `sent`, back in `received`).
pub async fn relay<A, B>(a: A, b: B, idle: Duration, sent: &AtomicU64, received: &AtomicU64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let moved = AtomicU64::new(0);
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let both = async {
        tokio::join!(pump(a_read, b_write, sent, &moved), pump(b_read, a_write, received, &moved));
    };
    tokio::select! {
        () = both => {}
        () = quiet_for(idle, &moved) => {}
    }
}

/// One direction of [`relay`]: until `from` ends (then `to` is shut) or either fails.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    counted: &AtomicU64,
    moved: &AtomicU64,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
        counted.fetch_add(n as u64, Ordering::Relaxed);
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// Writes all of `bytes` to `to`, waiting while its send buffer is full.
async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> Result<(), Gone> {
    while !bytes.is_empty() {
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if to.writable().await.is_err() {
                    return Err(Gone);
                }
            }
            Err(_) => return Err(Gone),
        }
    }
    Ok(())
}

/// Closes `stream`'s sending side (its peer reads the end of what it sent).
fn shut_write(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}
