//! Counters written on the request path without a lock, an allocation or a
//! locked instruction, and summed when metrics are scraped.
//!
//! Every thread that records takes a *slot* (its own, until it exits, when
//! the slot goes back to be reused) and writes only the shard of its slot:
//! one writer per shard, so an increment is a plain load and store, not an
//! atomic read-modify-write. A scrape reads every shard with relaxed loads.
//! Threads beyond [`max_slots`] share one last shard, with atomic adds.
//!
//! Shards are allocated on a thread's first write to a metric, so a metric
//! costs memory only for the threads that record it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};

/// How many threads get a shard of their own: four per CPU and eight more
/// (connection workers, the runtime's threads, timers), at most 256.
pub fn max_slots() -> usize {
    static SLOTS: LazyLock<usize> = LazyLock::new(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cpus * 4 + 8).min(256)
    });
    *SLOTS
}

/// A thread's shard, and whether it is the thread's alone.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    index: usize,
    exclusive: bool,
}

struct Owned(usize);

static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Owned {
    fn take() -> Option<Self> {
        if let Some(index) = FREE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(Self(index));
        }
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        if index < max_slots() {
            Some(Self(index))
        } else {
            NEXT.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Through the mutex: the next owner sees every write of this one.
        FREE.lock().unwrap_or_else(|e| e.into_inner()).push(self.0);
    }
}

thread_local! {
    static OWNED: Option<Owned> = Owned::take();
}

/// This thread's slot.
#[inline]
pub fn slot() -> Slot {
    let shared = Slot { index: max_slots(), exclusive: false };
    OWNED.try_with(|owned| owned.as_ref().map_or(shared, |o| Slot { index: o.0, exclusive: true })).unwrap_or(shared)
}

/// A counter cell of one shard (also a gauge: adds wrap, and a sum of
/// wrapped adds read as `i64` is the gauge's value).
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    #[inline]
    pub fn add(&self, n: u64, slot: Slot) {
        if slot.exclusive {
            self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn inc(&self, slot: Slot) {
        self.add(1, slot);
    }

    #[inline]
    pub fn dec(&self, slot: Slot) {
        self.add(u64::MAX, slot);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `T` (a struct of [`Cell`]s) once per slot.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[OnceLock<Box<T>>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Self { shards: (0..=max_slots()).map(|_| OnceLock::new()).collect() }
    }
}

impl<T: Default> Sharded<T> {
    /// The shard of this thread's slot, and the slot to write it with.
    #[inline]
    pub fn local(&self) -> (&T, Slot) {
        let slot = slot();
        (self.shards[slot.index].get_or_init(Box::default), slot)
    }

    /// Every shard written so far.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().filter_map(|s| s.get().map(|b| &**b))
    }

    /// The sum over shards of `f`.
    pub fn sum(&self, f: impl Fn(&T) -> &Cell) -> u64 {
        self.each().fold(0u64, |n, shard| n.wrapping_add(f(shard).get()))
    }
}

/// Upper bounds of the latency buckets, in seconds: from 1 µs (an in-process
/// call) to a minute.
pub const BUCKETS: [f64; 24] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
];

const BUCKET_NANOS: [u64; 24] = {
    let mut out = [0u64; 24];
    let mut i = 0;
    while i < 24 {
        out[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram's shard: a count per bucket (the last is `+Inf`),
/// and the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [Cell; 25],
    sum_nanos: Cell,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, nanos: u64, slot: Slot) {
        let i = BUCKET_NANOS.iter().position(|&b| nanos <= b).unwrap_or(BUCKETS.len());
        self.counts[i].inc(slot);
        self.sum_nanos.add(nanos, slot);
    }
}

/// A histogram summed over shards, as Prometheus shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket bound (seconds), `+Inf` excluded.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn of<'a>(shards: impl Iterator<Item = &'a Histogram>) -> Self {
        let mut counts = [0u64; 25];
        let mut sum = 0u64;
        for h in shards {
            for (total, cell) in counts.iter_mut().zip(&h.counts) {
                *total = total.wrapping_add(cell.get());
            }
            sum = sum.wrapping_add(h.sum_nanos.get());
        }
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (bound, n) in BUCKETS.iter().zip(counts) {
            cumulative += n;
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + counts[BUCKETS.len()];
        buckets.push((f64::INFINITY, count));
        Self { buckets, count, sum_seconds: sum as f64 / 1e9 }
    }
}

/// The clock latencies are measured with: the CPU's time-stamp counter where
/// it is invariant (a read costs a few nanoseconds, a quarter of a
/// `clock_gettime`), else the system's monotonic clock.
pub fn clock() -> &'static quanta::Clock {
    static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);
    &CLOCK
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Debug, Default)]
    struct Two {
        a: Cell,
        b: Cell,
    }

    #[test]
    fn every_threads_writes_are_summed_and_slots_are_reused() {
        let sharded = Arc::new(Sharded::<Two>::default());
        // More threads than slots, several rounds: slots are given back and
        // taken again, and the shared shard takes the rest.
        for _ in 0..3 {
            let threads: Vec<_> = (0..max_slots() + 5)
                .map(|_| {
                    let sharded = sharded.clone();
                    std::thread::spawn(move || {
                        for _ in 0..1000 {
                            let (shard, slot) = sharded.local();
                            shard.a.inc(slot);
                            shard.b.add(2, slot);
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
        let threads = 3 * (max_slots() as u64 + 5);
        assert_eq!(sharded.sum(|s| &s.a), threads * 1000);
        assert_eq!(sharded.sum(|s| &s.b), threads * 2000);
        assert!(sharded.each().count() <= max_slots() + 1);
    }

    #[test]
    fn a_gauge_goes_down_on_another_thread_than_it_went_up() {
        let sharded = Arc::new(Sharded::<Two>::default());
        let (shard, slot) = sharded.local();
        shard.a.inc(slot);
        shard.a.inc(slot);
        let other = sharded.clone();
        std::thread::spawn(move || {
            let (shard, slot) = other.local();
            shard.a.dec(slot);
        })
        .join()
        .unwrap();
        assert_eq!(sharded.sum(|s| &s.a) as i64, 1);
    }

    #[test]
    fn observations_land_in_their_bucket_at_its_edges() {
        let h = Histogram::default();
        let slot = slot();
        h.observe(1_000, slot); // 1 µs: the first bucket, its bound included
        h.observe(1_001, slot); // just above: the second
        h.observe(60_000_000_000, slot); // a minute: the last finite bucket
        h.observe(60_000_000_001, slot); // beyond: +Inf only
        let s = HistogramSnapshot::of(std::iter::once(&h));
        assert_eq!(s.buckets[0], (0.000_001, 1));
        assert_eq!(s.buckets[1], (0.000_002_5, 2));
        assert_eq!(s.buckets[23], (60.0, 3));
        assert_eq!(s.buckets[24], (f64::INFINITY, 4));
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 120.000_002_002).abs() < 1e-9);
    }
}
