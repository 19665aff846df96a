//! A connection's watchdog: closes what hyper's own timers leave open.
//!
//! hyper closes an HTTP/1.1 connection whose request head is slow to come
//! (its header timeout, which also bounds the wait for the next request on
//! a kept-alive connection). It has nothing for the rest: a connection that
//! says nothing before hyper knows whether it speaks HTTP/1.1 or HTTP/2 (a
//! listener that takes both), an HTTP/2 connection with no stream open, and
//! a client that stops reading what it is sent. Each of those holds a place
//! in the connection budget for as long as the client likes.
//!
//! The watchdog, a task of its own on the connection's worker, looks at the
//! connection every [`Timeouts::period`] — a deadline in its worker's
//! table, re-armed: a few nanoseconds per look, none per request; the
//! connection reads its verdict from one flag — and counts the looks in a
//! row with no byte read or written:
//! - no request in flight and none ever: after [`Timeouts::header`], it is
//!   closed (a client that opened a connection and never spoke);
//! - no request in flight: after [`Timeouts::idle`], it is told to close
//!   gracefully (HTTP/2 `GOAWAY`), and closed a look later if it has not;
//! - a write waiting for the client to read: after [`Timeouts::send`], it
//!   is closed (a client that stopped reading; its answer is abandoned).
//!
//! What the connection does is counted by [`Tracked`] (bytes, and whether a
//! write waits) and by [`Activity::enter`] (requests in flight).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::drain::Graceful;
use super::timeouts::Deadline;

/// The connection timeouts of every listener but the admin API's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A request's head must arrive within this, and a new connection's
    /// first byte (`--header-timeout`).
    pub header: Duration,
    /// A connection with nothing in flight and no byte either way for this
    /// long is closed (`--idle-timeout`).
    pub idle: Duration,
    /// A client that reads nothing of what it is sent for this long is
    /// dropped (`--send-timeout`).
    pub send: Duration,
}

/// Defaults: as nginx's `client_header_timeout` (30s is hyper's own
/// default too), its `keepalive_timeout` (75s) rounded, its `send_timeout`.
pub const DEFAULT: Timeouts =
    Timeouts { header: Duration::from_secs(30), idle: Duration::from_secs(60), send: Duration::from_secs(30) };

impl Default for Timeouts {
    fn default() -> Self {
        DEFAULT
    }
}

impl Timeouts {
    /// How often the watchdog looks: a quarter of the shortest timeout,
    /// between 50 ms and 5 s; a timeout is acted on at most a period late.
    pub fn period(&self) -> Duration {
        (self.header.min(self.idle).min(self.send) / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Looks in a row that make `timeout` (at least one).
    fn looks(&self, timeout: Duration) -> u32 {
        let period = self.period().as_millis().max(1);
        u32::try_from(timeout.as_millis().div_ceil(period)).unwrap_or(u32::MAX).max(1)
    }
}

/// What a connection did, as its watchdog reads it; and what the watchdog
/// decided, as the connection reads it.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes read and written (wrapping): a change is a sign of life.
    bytes: AtomicU64,
    /// Requests being answered.
    in_flight: AtomicUsize,
    /// A request came at least once.
    served: AtomicBool,
    /// A write waits for the client to make room.
    write_blocked: AtomicBool,
    /// The watchdog's verdict: [`FINE`], [`TOLD`], or an [`Expired`] (+ 2).
    verdict: AtomicU8,
    /// The connection ended: the watchdog ends too.
    closed: AtomicBool,
    /// The connection task, to wake with a verdict.
    waker: Mutex<Option<Waker>>,
}

const FINE: u8 = 0;
/// Told to close gracefully (idle).
const TOLD: u8 = 1;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A request is being answered until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    fn decide(&self, verdict: u8) {
        self.verdict.store(verdict, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket (or TLS stream) whose reads and writes count in an [`Activity`].
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.bytes.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => {
                self.activity.bytes.fetch_add(*n as u64, Ordering::Relaxed);
                if self.activity.write_blocked.load(Ordering::Relaxed) {
                    self.activity.write_blocked.store(false, Ordering::Relaxed);
                }
            }
            Poll::Pending => self.activity.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Expired {
    #[error("the client sent nothing within the header timeout")]
    Silent = 2,
    #[error("the connection was idle past the idle timeout")]
    Idle = 3,
    #[error("the client read nothing of its answer within the send timeout")]
    Send = 4,
}

impl Expired {
    fn from_verdict(v: u8) -> Option<Self> {
        match v {
            2 => Some(Expired::Silent),
            3 => Some(Expired::Idle),
            4 => Some(Expired::Send),
            _ => None,
        }
    }
}

/// A connection under watch (see the module's documentation). The looks
/// are a task of their own, on the connection's worker: the connection's
/// own polls read one flag, and arm no timer.
pub struct Watchdog<C> {
    conn: Pin<Box<C>>,
    activity: Arc<Activity>,
    /// The waker last registered with the activity.
    registered: Option<Waker>,
    told: bool,
}

impl<C: Graceful> Watchdog<C> {
    pub fn new(conn: C, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        tokio::spawn(watch(activity.clone(), timeouts));
        Self { conn: Box::pin(conn), activity, registered: None, told: false }
    }
}

impl<C> Drop for Watchdog<C> {
    fn drop(&mut self) {
        self.activity.closed.store(true, Ordering::Relaxed);
    }
}

impl<C: Graceful> Future for Watchdog<C> {
    type Output = Result<C::Output, Expired>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A task's waker stays the same: registered once, read without a lock after.
        if !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.activity.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            this.registered = Some(cx.waker().clone());
        }
        // Read after registering: a verdict from now on wakes this task.
        match this.activity.verdict.load(Ordering::Acquire) {
            FINE => {}
            TOLD => {
                if !this.told {
                    this.told = true;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
            v => {
                if let Some(expired) = Expired::from_verdict(v) {
                    return Poll::Ready(Err(expired));
                }
            }
        }
        this.conn.as_mut().poll(cx).map(Ok)
    }
}

impl<C: Graceful> Graceful for Watchdog<C> {
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        self.conn.as_mut().graceful_shutdown();
    }
}

/// The looks (see the module's documentation), until the connection ends
/// or a verdict ends it.
async fn watch(activity: Arc<Activity>, timeouts: Timeouts) {
    let (mut seen, mut quiet, mut blocked) = (0u64, 0u32, 0u32);
    let told_at = timeouts.looks(timeouts.idle);
    loop {
        Deadline::at(Instant::now() + timeouts.period()).await;
        if activity.closed.load(Ordering::Relaxed) {
            return;
        }
        let bytes = activity.bytes.load(Ordering::Relaxed);
        if bytes != seen {
            seen = bytes;
            (quiet, blocked) = (0, 0);
            continue;
        }
        if activity.write_blocked.load(Ordering::Relaxed) {
            blocked += 1;
            if blocked >= timeouts.looks(timeouts.send) {
                return activity.decide(Expired::Send as u8);
            }
            continue;
        }
        if activity.in_flight.load(Ordering::Relaxed) > 0 {
            quiet = 0;
            continue;
        }
        quiet += 1;
        if !activity.served.load(Ordering::Relaxed) {
            if quiet >= timeouts.looks(timeouts.header) {
                return activity.decide(Expired::Silent as u8);
            }
        } else if quiet == told_at {
            activity.decide(TOLD);
        } else if quiet > told_at {
            return activity.decide(Expired::Idle as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never done; counts how often it was told to close.
    struct Conn(Arc<AtomicUsize>);

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    impl Graceful for Conn {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    const T: Timeouts =
        Timeouts { header: Duration::from_secs(2), idle: Duration::from_secs(4), send: Duration::from_secs(3) };

    async fn ends(activity: &Arc<Activity>) -> (Duration, Result<(), Expired>, usize) {
        let told = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let out = Watchdog::new(Conn(told.clone()), activity.clone(), T).await;
        (start.elapsed(), out, told.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_header_timeout() {
        assert_eq!(T.period(), Duration::from_millis(500));
        let (took, out, told) = ends(&Activity::new()).await;
        assert_eq!(out, Err(Expired::Silent));
        assert_eq!(told, 0);
        assert!(took >= T.header && took <= T.header + T.period(), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_told_to_close_then_closed() {
        let activity = Activity::new();
        drop(activity.enter());
        let (took, out, told) = ends(&activity).await;
        assert_eq!((out, told), (Err(Expired::Idle), 1));
        assert!(took >= T.idle && took <= T.idle + 2 * T.period(), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_or_a_request_in_flight_keep_it_open() {
        let activity = Activity::new();
        let in_flight = activity.enter();
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move { ends(&activity).await }
        });
        // A request in flight for longer than every timeout: open.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!watch.is_finished());
        drop(in_flight);
        // Bytes now and then, less than the idle timeout apart: open.
        for _ in 0..5 {
            activity.bytes.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert!(!watch.is_finished());
        let (_, out, _) = watch.await.unwrap();
        assert_eq!(out, Err(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
        let activity = Activity::new();
        let _in_flight = activity.enter();
        activity.write_blocked.store(true, Ordering::Relaxed);
        let (took, out, _) = ends(&activity).await;
        assert_eq!(out, Err(Expired::Send));
        assert!(took >= T.send && took <= T.send + T.period(), "{took:?}");
    }
}
