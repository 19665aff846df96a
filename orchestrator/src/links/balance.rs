//! The replicas a link can route to, and how one is picked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::plugins::Instance;
use crate::topology::TierId;

/// The ready replicas of one tier. Every link to the tier routes through its
/// endpoint, so swapping the replica list re-routes all of them at once.
pub struct Endpoint {
    pub tier: TierId,
    replicas: ArcSwap<Vec<Arc<Instance>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("tier", &self.tier).field("replicas", &self.len()).finish()
    }
}

impl Endpoint {
    pub fn new(tier: TierId) -> Self {
        Self { tier, replicas: ArcSwap::from_pointee(Vec::new()), next: AtomicUsize::new(0) }
    }

    /// Replaces the routable replicas.
    pub fn set(&self, replicas: Vec<Arc<Instance>>) {
        self.replicas.store(Arc::new(replicas));
    }

    fn len(&self) -> usize {
        self.replicas.load().len()
    }

    /// The next ready replica other than `failed`, for a retry.
    pub fn pick_other(&self, failed: Option<&Arc<Instance>>) -> Option<Arc<Instance>> {
        let Some(failed) = failed else { return self.pick() };
        let replicas = self.replicas.load();
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
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &replicas[(start + i) % n]).find(|r| r.is_ready()).cloned()
    }
}
