//! `GET /admin/metrics`: the status, as Prometheus metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::Status;
use crate::runtime::workers::WorkerReport;

type Labels = Vec<(&'static str, String)>;

/// The metrics of `status` and of the connection `workers`, in the
/// Prometheus text format.
pub fn render(status: &Status, workers: &[WorkerReport]) -> String {
    let mut registry = Registry::with_prefix("orchestrator");

    let generation = Gauge::<i64>::default();
    generation.set(i64::try_from(status.generation).unwrap_or(i64::MAX));
    registry.register("generation", "The running generation: 1 at start, +1 per applied reload", generation);

    let reloads = Family::<Labels, Counter>::default();
    let r = status.reloads;
    let unchanged = r.attempts.saturating_sub(r.applied + r.failed);
    for (outcome, n) in [("applied", r.applied), ("failed", r.failed), ("unchanged", unchanged)] {
        reloads.get_or_create(&vec![("outcome", outcome.to_owned())]).inc_by(n);
    }
    registry.register("reloads", "Reload attempts by outcome", reloads);

    let replicas = Family::<Labels, Gauge>::default();
    let ready = Family::<Labels, Gauge>::default();
    let restarts = Family::<Labels, Counter>::default();
    for tier in &status.tiers {
        let labels = vec![("tier", tier.name.clone())];
        replicas.get_or_create(&labels).set(i64::from(tier.replicas));
        ready.get_or_create(&labels).set(tier.instances.iter().filter(|i| i.ready).count() as i64);
        for instance in &tier.instances {
            if let Some(n) = instance.detail["restarts"].as_u64() {
                let labels = vec![("tier", tier.name.clone()), ("replica", instance.replica.to_string())];
                restarts.get_or_create(&labels).inc_by(n);
            }
        }
    }
    registry.register("tier_replicas", "Replicas configured per tier", replicas);
    registry.register("tier_ready_replicas", "Replicas taking requests per tier", ready);
    registry.register("replica_restarts", "Restarts of a process tier's replica", restarts);

    // None when connections are served on the shared runtime.
    let connections = Family::<Labels, Gauge>::default();
    for (i, worker) in workers.iter().enumerate() {
        let cpu = worker.cpu.map_or_else(|| "any".to_owned(), |c| c.to_string());
        let labels = vec![("worker", i.to_string()), ("cpu", cpu)];
        connections.get_or_create(&labels).set(i64::try_from(worker.connections).unwrap_or(i64::MAX));
    }
    registry.register("worker_connections", "Connections served by each connection worker thread", connections);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
