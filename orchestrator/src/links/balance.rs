//! The replicas a link can route to, and how one is picked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::plugins::Instance;
use crate::topology::TierId;

/// The ready replicas of one tier. Every link to the tier routes through its
/// endpoint, so swapping the replica list re-routes all of them at once.
pub struct Endpoint {
    pub tier: TierId,
    replicas: ArcSwap<Vec<Arc<Instance>>>,
    next: AtomicUsize,
    /// The replicas stand for other hosts (`peer`): each is weighted by the
    /// ready replicas its host reports.
    weighted: AtomicBool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("tier", &self.tier).field("replicas", &self.len()).finish()
    }
}

impl Endpoint {
    pub fn new(tier: TierId) -> Self {
        let replicas = ArcSwap::from_pointee(Vec::new());
        Self { tier, replicas, next: AtomicUsize::new(0), weighted: AtomicBool::new(false) }
    }

    /// Replaces the routable replicas.
    pub fn set(&self, replicas: Vec<Arc<Instance>>) {
        self.weighted.store(replicas.iter().any(|r| r.as_peer().is_some()), Ordering::Relaxed);
        self.replicas.store(Arc::new(replicas));
    }

    /// The routable replicas, ready or not.
    pub fn replicas(&self) -> Arc<Vec<Arc<Instance>>> {
        self.replicas.load_full()
    }

    /// How many replicas are ready.
    pub fn ready_count(&self) -> usize {
        self.replicas.load().iter().filter(|r| r.is_ready()).count()
    }

    /// A ready replica other than `skip`, each as likely as its weight: the
    /// ready replicas of the host a `peer` replica stands for (1 for
    /// others). Weighted round robin: of every `total` picks, a replica
    /// gets its weight's worth.
    fn pick_weighted(&self, replicas: &[Arc<Instance>], skip: Option<&Arc<Instance>>) -> Option<Arc<Instance>> {
        let weight = |r: &Arc<Instance>| -> u64 {
            if skip.is_some_and(|s| Arc::ptr_eq(r, s)) || !r.is_ready() {
                return 0;
            }
            r.as_peer().map_or(1, |p| u64::from(p.weight()))
        };
        let total: u64 = replicas.iter().map(weight).sum();
        if total > 0 {
            // Weights read again: one that changed since falls to the end below.
            let mut slot = self.next.fetch_add(1, Ordering::Relaxed) as u64 % total;
            for r in replicas.iter() {
                let w = weight(r);
                if slot < w {
                    return Some(r.clone());
                }
                slot -= w;
            }
        }
        replicas.iter().find(|r| r.is_ready()).cloned()
    }

    fn len(&self) -> usize {
        self.replicas.load().len()
    }

    /// The next ready replica other than `failed`, for a retry.
    pub fn pick_other(&self, failed: Option<&Arc<Instance>>) -> Option<Arc<Instance>> {
        let Some(failed) = failed else { return self.pick() };
        let replicas = self.replicas.load();
        if self.weighted.load(Ordering::Relaxed) {
            return self.pick_weighted(&replicas, Some(failed));
        }
        let n = replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &replicas[(start + i) % n])
            .find(|r| !Arc::ptr_eq(r, failed) && r.is_ready())
            .or_else(|| replicas.iter().find(|r| r.is_ready()))
            .cloned()
    }

    /// The next ready replica, round robin; `None` when none is ready.
    pub fn pick(&self) -> Option<Arc<Instance>> {
        let replicas = self.replicas.load();
        let n = replicas.len();
        if n == 1 {
            return replicas[0].is_ready().then(|| replicas[0].clone());
        }
        if self.weighted.load(Ordering::Relaxed) {
            return self.pick_weighted(&replicas, None);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &replicas[(start + i) % n]).find(|r| r.is_ready()).cloned()
    }
}
