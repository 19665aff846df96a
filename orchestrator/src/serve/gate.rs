//! [`WakeGated`]: a future polled again only after it asked to be.
//!
//! hyper's HTTP/1 server polls a request's service future whenever it polls
//! the connection, not only when the future was woken: after reading a
//! request it loops once more, polling the service a second time. Our
//! service future is a chain of plugin calls through the C ABI (gateway →
//! host → target tier), and polling it for nothing walked the whole chain
//! once per proxied request. The gate answers such polls itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `inner`, polled only on its first poll and after it woke its waker.
pub struct WakeGated<F> {
    inner: F,
    signal: Arc<Signal>,
    waker: Waker,
}

struct Signal {
    woken: AtomicBool,
    /// The waker of whoever polls the gate.
    outer: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

impl<F: Future> WakeGated<F> {
    pub fn new(inner: F) -> Self {
        // The first poll goes through.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), outer: AtomicWaker::new() });
        let waker = Waker::from(signal.clone());
        Self { inner, signal, waker }
    }
}

impl<F: Future + Unpin> Future for WakeGated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the check: a wake from now on reaches this poller.
        self.signal.outer.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Pending until `ready` is set; counts its polls.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polls_without_a_wake_do_not_reach_the_inner_future_and_a_wake_does() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None));
        let probe = Probe { polls: polls.clone(), ready: ready.clone(), waker: inner_waker.clone() };
        let mut gated = WakeGated::new(probe);

        let outer_woken = Arc::new(Counter::default());
        let outer = Waker::from(outer_woken.clone());
        let mut cx = Context::from_waker(&outer);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "only the first poll goes through");

        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(outer_woken.0.load(Ordering::SeqCst), 1, "the inner wake reaches the poller");
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
