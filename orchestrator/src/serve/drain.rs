//! [`Drain`]: tells a listener's connections to finish what they serve and
//! close, and waits until they have.
//!
//! A connection's task learns of the shutdown by a flag it reads on every
//! poll, and is woken when the flag is set by the waker it registered once.
//! (hyper-util's `GracefulShutdown` polls a `watch` receiver instead, whose
//! every poll takes a lock that the connections on all the worker threads
//! share: on the path of every request.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A connection that can be told to finish its in-flight requests and close.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> Graceful for hyper_util::server::conn::auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::Connection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// The connections of one listener.
#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Conns>,
    /// Signalled when the last connection is gone.
    idle: Notify,
}

#[derive(Default)]
struct Conns {
    /// Each connection's waker, by slot.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    open: usize,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a connection from now on, until the result is dropped.
    pub fn enter(&self) -> Entered {
        let mut conns = self.shared.conns();
        let slot = match conns.free.pop() {
            Some(slot) => slot,
            None => {
                conns.wakers.push(None);
                conns.wakers.len() - 1
            }
        };
        conns.open += 1;
        Entered { shared: self.shared.clone(), slot }
    }

    /// Tells every connection to finish, and completes when none is left.
    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.shared.conns().wakers.iter().flatten().cloned().collect();
        wakers.into_iter().for_each(Waker::wake);
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.conns().open == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A connection counted by its [`Drain`].
pub struct Entered {
    shared: Arc<Shared>,
    slot: usize,
}

impl Entered {
    /// `conn`, told to finish when the drain shuts down.
    pub fn watch<C: Graceful>(self, conn: C) -> Watched<C> {
        Watched { conn: Box::pin(conn), entered: self, registered: None, told: false }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut conns = self.shared.conns();
        conns.wakers[self.slot] = None;
        conns.free.push(self.slot);
        conns.open -= 1;
        if conns.open == 0 {
            self.shared.idle.notify_waiters();
        }
    }
}

/// A connection, and what it needs to hear of its drain's shutdown.
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    entered: Entered,
    /// The waker last registered in the drain.
    registered: Option<Waker>,
    told: bool,
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        // A task's waker stays the same: registered once, read without a lock after.
        if !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.entered.shared.conns().wakers[this.entered.slot] = Some(cx.waker().clone());
            this.registered = Some(cx.waker().clone());
        }
        // Read after registering: a shutdown from now on wakes this task.
        if !this.told && this.entered.shared.stopping.load(Ordering::SeqCst) {
            this.told = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Pending until told to shut down; counts how often it was told.
    struct Conn {
        told: Arc<AtomicUsize>,
        closing: bool,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.closing { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    impl Graceful for Conn {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.told.fetch_add(1, Ordering::SeqCst);
            self.closing = true;
        }
    }

    #[tokio::test]
    async fn shutdown_tells_each_connection_once_and_waits_for_all() {
        let drain = Drain::new();
        let told = Arc::new(AtomicUsize::new(0));
        let served: Vec<_> = (0..3)
            .map(|_| {
                let conn = drain.enter().watch(Conn { told: told.clone(), closing: false });
                tokio::spawn(conn)
            })
            .collect();
        // Accepted but not yet served: counted all the same.
        let waiting = drain.enter();
        tokio::task::yield_now().await;

        let mut shutdown = Box::pin(drain.shutdown());
        assert!(futures_util::FutureExt::now_or_never(shutdown.as_mut()).is_none(), "connections are open");
        for conn in served {
            conn.await.unwrap();
        }
        assert_eq!(told.load(Ordering::SeqCst), 3);
        assert!(futures_util::FutureExt::now_or_never(shutdown.as_mut()).is_none(), "one is still counted");
        drop(waiting);
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown).await.expect("done once all are gone");
    }

    #[tokio::test]
    async fn a_connection_that_starts_after_the_shutdown_is_told_at_once() {
        let drain = Drain::new();
        let entered = drain.enter();
        let mut shutdown = Box::pin(drain.shutdown());
        // Its first poll stops everything, then waits for the connection.
        assert!(futures_util::FutureExt::now_or_never(shutdown.as_mut()).is_none());
        let told = Arc::new(AtomicUsize::new(0));
        entered.watch(Conn { told: told.clone(), closing: false }).await;
        assert_eq!(told.load(Ordering::SeqCst), 1);
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown).await.expect("done once it is gone");
    }
}
