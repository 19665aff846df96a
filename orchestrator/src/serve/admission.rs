//! How many connections this process serves at once, across every tier and
//! link listener: each takes a file descriptor (two when it is proxied to a
//! program), and a process out of descriptors can accept nothing, reload
//! nothing and start no program. Past the limit a new connection is closed as
//! soon as it is accepted, and a warning says so at most every 10 seconds.
//!
//! No listener may hold more than [`Admission::share`] of the budget (three
//! quarters of it): a flood of one listener's clients — connections to the
//! peer listener that never present a token, say — leaves the others room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the warnings of refused connections (or failed accepts) are logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection budget.
#[derive(Debug)]
pub struct Admission {
    open: AtomicUsize,
    max: usize,
    /// The most one listener may hold.
    share: usize,
    refused: AtomicU64,
    warnings: RateLimited,
}

impl Admission {
    /// A budget of `max` connections that listeners share.
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Self::with_share(max, (max / 4 * 3 + max % 4 * 3 / 4).max(1))
    }

    /// A budget of `max` connections for one listener alone (the admin API's).
    pub fn single(max: usize) -> Arc<Self> {
        Self::with_share(max.max(1), max.max(1))
    }

    fn with_share(max: usize, share: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            share,
            refused: AtomicU64::new(0),
            warnings: RateLimited::new(),
        })
    }

    /// The default for a process allowed `descriptors` open files: half of
    /// what is left after 256 for everything else (a proxied connection
    /// holds two), and at least 64.
    pub fn default_max(descriptors: u64) -> usize {
        usize::try_from(descriptors.saturating_sub(256) / 2).unwrap_or(usize::MAX).max(64)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The most connections one listener may hold: three quarters of the
    /// budget (at least one), or all of it for a budget of one listener.
    pub fn share(&self) -> usize {
        self.share
    }

    /// A place for one more connection of the listener whose connections
    /// `listener` counts, held until the guard drops; `None` (counted, and
    /// warned of now and then) when all are taken, or the listener holds
    /// its [`Admission::share`].
    pub fn admit(self: &Arc<Self>, listener: &Arc<AtomicUsize>) -> Option<Admitted> {
        let mine = listener.fetch_add(1, Ordering::Relaxed);
        let taken = self.open.fetch_add(1, Ordering::Relaxed);
        if taken < self.max && mine < self.share {
            return Some(Admitted(self.clone(), listener.clone()));
        }
        listener.fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.warnings.ready() {
            tracing::warn!(
                max_connections = self.max,
                listener_share = self.share,
                refused_total = refused,
                refused_since_last_warning = suppressed + 1,
                "Connection limit reached (in all, or one listener's share): new connections are closed (raise it with --max-connections)."
            );
        }
        None
    }
}

/// One connection's place in the budget, and in its listener's share.
#[derive(Debug)]
pub struct Admitted(Arc<Admission>, Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets an event through at most every [`WARN_EVERY`], counting the others.
#[derive(Debug)]
pub struct RateLimited {
    start: Instant,
    /// Milliseconds from `start` of the last event let through, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimited {
    pub fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(events suppressed since the last one let through)` if this one may go.
    pub fn ready(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new()
    }
}

/// Raises this process's soft limit of open files to its hard limit (as
/// nginx's `worker_rlimit_nofile` and systemd services do); the limit in
/// force afterwards.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_admits_up_to_its_max_and_frees_a_place_on_close() {
        let admission = Admission::single(2);
        let listener = Arc::new(AtomicUsize::new(0));
        let a = admission.admit(&listener).unwrap();
        let _b = admission.admit(&listener).unwrap();
        assert!(admission.admit(&listener).is_none());
        assert!(admission.admit(&listener).is_none());
        assert_eq!((admission.open(), admission.refused()), (2, 2));
        drop(a);
        assert!(admission.admit(&listener).is_some());
    }

    #[test]
    fn one_listener_holds_three_quarters_of_the_budget_at_most() {
        let admission = Admission::new(8);
        assert_eq!(admission.share(), 6);
        assert_eq!(Admission::new(100).share(), 75);
        assert_eq!(Admission::new(1).share(), 1);
        let (flooded, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let held: Vec<_> = (0..6).map(|_| admission.admit(&flooded).unwrap()).collect();
        assert!(admission.admit(&flooded).is_none(), "past its share");
        assert_eq!(flooded.load(Ordering::Relaxed), 6, "a refusal leaves its count as it was");
        let others: Vec<_> = (0..2).map(|_| admission.admit(&other).unwrap()).collect();
        assert!(admission.admit(&other).is_none(), "the budget is spent");
        drop((held, others));
        assert_eq!((admission.open(), flooded.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn warnings_come_once_per_period_and_count_the_rest() {
        let limited = RateLimited::new();
        assert_eq!(limited.ready(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limited.ready(), None);
        }
        assert_eq!(limited.suppressed.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn the_default_leaves_room_and_counts_two_descriptors_a_connection() {
        assert_eq!(Admission::default_max(20_000), 9_872);
        assert_eq!(Admission::default_max(1024), 384);
        assert_eq!(Admission::default_max(100), 64);
    }
}
