//! Timeouts on connection workers: a deadline is a slot in its worker's
//! table, and one task per worker wakes the deadlines that passed. It looks
//! every [`TICK`] while any is pending, and scans the table only once the
//! earliest deadline it knows of has passed (with timeouts of one length,
//! about once per timeout), so thousands of idle keep-alive connections,
//! each with a deadline, cost it next to nothing.
//!
//! Every request through a process tier arms two timeouts (hyper's for
//! reading the next request's head, and the link's), and nearly all are
//! cancelled long before they fire. A tokio timer each goes into the
//! runtime's timer wheel and out again under its lock, with an allocation
//! and a handle to the runtime: about 0.1 µs per timer in a tight loop, more
//! among a request's other work. A slot in a per-thread table costs a few
//! nanoseconds; the price is precision (a deadline fires up to one tick
//! late), which timeouts of hundreds of milliseconds and more do not mind.
//!
//! Threads that are not connection workers (the main runtime, `--workers
//! shared`) have no table: their deadlines are tokio timers.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// How often a worker checks its deadlines, while any is pending.
pub const TICK: Duration = Duration::from_millis(10);

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// One worker's deadlines.
struct Table {
    /// Tells this table from another thread's.
    id: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots whose deadline is still to be signalled.
    pending: usize,
    /// No pending deadline is earlier (some may be later: slots freed since
    /// are not looked at until then). The table is scanned only from then on.
    next_due: Option<Instant>,
    /// The sweeper, while it waits for a first pending deadline.
    sweeper: Option<Waker>,
}

struct Slot {
    at: Instant,
    /// Taken when the deadline is signalled (or the slot is free).
    waker: Option<Waker>,
}

fn with_table<R>(f: impl FnOnce(Option<&mut Table>) -> R) -> R {
    TABLE.with(|table| f(table.borrow_mut().as_mut()))
}

/// Keeps this thread's deadlines in a table of its own, swept by a task
/// spawned on `runtime`: for a connection worker, whose current-thread
/// runtime runs on this thread only.
pub fn serve_on_this_thread(runtime: &tokio::runtime::Handle) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let table = Table {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        slots: Vec::new(),
        free: Vec::new(),
        pending: 0,
        next_due: None,
        sweeper: None,
    };
    TABLE.with(|t| *t.borrow_mut() = Some(table));
    runtime.spawn(sweep());
}

async fn sweep() {
    let mut due = Vec::new();
    loop {
        // Idle (no timer armed) until a deadline is pending.
        std::future::poll_fn(|cx| {
            with_table(|table| match table {
                Some(table) if table.pending == 0 => {
                    table.sweeper = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            })
        })
        .await;
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        with_table(|table| {
            let Some(table) = table else { return };
            // Most ticks: nothing can be due yet, and nothing is scanned.
            if table.next_due.is_none_or(|next| next > now) {
                return;
            }
            let mut next_due = None;
            for slot in &mut table.slots {
                if slot.waker.is_none() {
                    continue;
                }
                if slot.at <= now {
                    due.extend(slot.waker.take());
                    table.pending -= 1;
                } else if next_due.is_none_or(|next| slot.at < next) {
                    next_due = Some(slot.at);
                }
            }
            table.next_due = next_due;
        });
        // Woken outside the table: a waker may poll its future at once.
        due.drain(..).for_each(Waker::wake);
    }
}

/// Completes at `at`, or up to one [`TICK`] after it on a connection worker.
pub struct Deadline {
    at: Instant,
    state: State,
}

enum State {
    Unarmed,
    /// Slot `.1` in the table `.0` of this thread.
    Slot(u64, usize),
    Timer(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    /// Arms nothing until first polled.
    pub fn at(at: Instant) -> Self {
        Self { at, state: State::Unarmed }
    }

    /// Goes on as a tokio timer: where this thread keeps no table.
    fn poll_as_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = Box::pin(tokio::time::sleep_until(self.at));
        let polled = sleep.as_mut().poll(cx);
        self.state = State::Timer(sleep);
        polled
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        match &mut self.state {
            State::Timer(sleep) => sleep.as_mut().poll(cx),
            State::Slot(id, i) => {
                let (id, i) = (*id, *i);
                if Instant::now() >= at {
                    return Poll::Ready(());
                }
                let here = with_table(|table| {
                    let Some(table) = table.filter(|t| t.id == id) else { return false };
                    if let Some(waker) = &mut table.slots[i].waker
                        && !waker.will_wake(cx.waker())
                    {
                        waker.clone_from(cx.waker());
                    }
                    true
                });
                if here {
                    return Poll::Pending;
                }
                // Moved to another thread (a worker's tasks never are): its
                // slot there is signalled in time and left.
                self.poll_as_timer(cx)
            }
            State::Unarmed => {
                let slot = with_table(|table| {
                    let table = table?;
                    let slot = Slot { at, waker: Some(cx.waker().clone()) };
                    let i = match table.free.pop() {
                        Some(i) => {
                            table.slots[i] = slot;
                            i
                        }
                        None => {
                            table.slots.push(slot);
                            table.slots.len() - 1
                        }
                    };
                    table.pending += 1;
                    if table.next_due.is_none_or(|next| at < next) {
                        table.next_due = Some(at);
                    }
                    Some((table.id, i, table.sweeper.take()))
                });
                match slot {
                    Some((id, i, sweeper)) => {
                        self.state = State::Slot(id, i);
                        if let Some(sweeper) = sweeper {
                            sweeper.wake();
                        }
                        Poll::Pending
                    }
                    None => self.poll_as_timer(cx),
                }
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let State::Slot(id, i) = self.state else { return };
        // `try_with`: this may run while the thread's locals are torn down.
        let _ = TABLE.try_with(|table| {
            let Ok(mut table) = table.try_borrow_mut() else { return };
            let Some(table) = table.as_mut().filter(|t| t.id == id) else { return };
            if table.slots[i].waker.take().is_some() {
                table.pending -= 1;
            }
            table.free.push(i);
        });
    }
}

/// hyper's timer, on [`Deadline`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer;

struct HyperSleep(Deadline);

impl Future for HyperSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(Deadline::at(Instant::now() + duration)))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(Deadline::at(Instant::from_std(deadline))))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    fn pending_here() -> Option<usize> {
        with_table(|table| table.map(|t| t.pending))
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_within_a_tick_of_its_time() {
        serve_on_this_thread(&tokio::runtime::Handle::current());
        let start = Instant::now();
        Deadline::at(start + Duration::from_millis(95)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(95) && waited <= Duration::from_millis(95) + TICK, "{waited:?}");
        assert_eq!(pending_here(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_leaves_the_table_and_its_slot_is_reused() {
        serve_on_this_thread(&tokio::runtime::Handle::current());
        let far = Instant::now() + Duration::from_secs(30);
        let mut deadlines: Vec<_> = (0..3).map(|_| Box::pin(Deadline::at(far))).collect();
        for d in &mut deadlines {
            assert!(d.as_mut().now_or_never().is_none());
        }
        assert_eq!(pending_here(), Some(3));
        deadlines.truncate(1);
        assert_eq!(pending_here(), Some(1));
        let mut again = Box::pin(Deadline::at(far));
        assert!(again.as_mut().now_or_never().is_none());
        assert_eq!(with_table(|t| t.map(|t| t.slots.len())), Some(3), "a freed slot is taken again");
        // The earlier of two deadlines fires; the other stays pending.
        let soon = Instant::now() + Duration::from_millis(20);
        tokio::select! {
            () = Deadline::at(soon) => {}
            () = &mut again => panic!("the later deadline fired first"),
        }
        assert_eq!(pending_here(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_after_a_later_one_fires_on_time() {
        serve_on_this_thread(&tokio::runtime::Handle::current());
        let start = Instant::now();
        let mut late = Box::pin(Deadline::at(start + Duration::from_secs(30)));
        assert!(late.as_mut().now_or_never().is_none());
        // Ticks go by with nothing due.
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert_eq!(with_table(|t| t.and_then(|t| t.next_due)), Some(start + Duration::from_secs(30)));
        let soon = Instant::now() + Duration::from_millis(40);
        Deadline::at(soon).await;
        let waited = Instant::now() - soon;
        assert!(waited <= TICK, "{waited:?} late");
        assert_eq!(pending_here(), Some(1), "the later one is still pending");
        assert_eq!(
            with_table(|t| t.and_then(|t| t.next_due)),
            Some(start + Duration::from_secs(30)),
            "once the earlier one fired, the next due is the later one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_table_a_deadline_is_a_tokio_timer() {
        assert_eq!(pending_here(), None);
        let start = Instant::now();
        Deadline::at(start + Duration::from_millis(7)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(7));
    }
}
