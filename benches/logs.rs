//! What keeping log lines for the dashboard costs: one line logged in a
//! tier's span (as a process tier's program output is), written by the
//! terminal's formatter to a sink, without and with the ring of recent
//! lines (`orchestrator::logging::ring`) beside it; and a search of a full
//! ring. Run: `cargo bench -p benches --bench logs`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::logging::ring::{Limits, Query, Ring, RingLayer};
use tracing_subscriber::layer::SubscriberExt as _;

fn terminal() -> impl tracing_subscriber::Layer<tracing_subscriber::Registry> {
    tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_ansi(false)
}

fn one_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_line");
    let line = r#"127.0.0.1 - - [02/Dec/2026 05:17:43] "POST /messages/orders HTTP/1.1" 204 -"#;
    let baseline = tracing_subscriber::registry().with(terminal());
    tracing::subscriber::with_default(baseline, || {
        let span = tracing::info_span!("tier", tier = "audit", replica = 0u32);
        group.bench_function("terminal_only", |b| b.iter(|| tracing::info!(parent: &span, "{line}")));
    });
    let ring = Arc::new(Ring::new(Limits::default()));
    let with_ring = tracing_subscriber::registry().with(terminal()).with(RingLayer::new(ring.clone()));
    tracing::subscriber::with_default(with_ring, || {
        let span = tracing::info_span!("tier", tier = "audit", replica = 0u32);
        group.bench_function("terminal_and_ring", |b| b.iter(|| tracing::info!(parent: &span, "{line}")));
    });
    group.finish();

    // A full ring: 20 replicas of 1,000 lines each, searched with a pattern.
    let ring = Ring::new(Limits::default());
    for i in 0..20_000u32 {
        ring.push(
            Some(format!("tier{}", i % 20).into()),
            Some(0),
            "INFO",
            None,
            format!("order {i:08x}-1 recorded {line}"),
        );
    }
    let query = Query { grep: Some(regex::Regex::new(r"order 0000ff\w\w-1").unwrap()), ..Query::default() };
    c.bench_function("log_search/20000_lines_regex", |b| b.iter(|| ring.recent(&query, 10_000)));
}

criterion_group!(benches, one_line);
criterion_main!(benches);
