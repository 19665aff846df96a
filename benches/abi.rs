//! The cost of the plugin boundary, in-process (no sockets):
//!
//! - `plugin_call/direct`: the backend handler called as a Rust function;
//! - `plugin_call/abi`: the same handler, loaded from `libbackend.so`, called
//!   through the C ABI (request copied in, FFI future polled, response handed back);
//! - `link_call/gateway_to_backend`: the built-in gateway's handler calling the
//!   backend over a REST link through the host (plugin → host → plugin);
//! - `rpc_call/link_to_pricing`: one unary RPC over an `rpc` link to the native
//!   `pricing` plugin, as the host routes it (native → native);
//! - `link_call/gateway_to_backend_unrecorded`: `link_call/gateway_to_backend`
//!   with the request metrics off (`run --no-metrics`): what recording costs;
//! - `link_call/recording_cost` (printed): the two alternated batch by batch,
//!   the median difference per call.
//!
//! ABI overhead per call = abi − direct; link-call overhead = link_call − abi.
//! Run: `cargo bench -p benches --bench abi` (after `cargo build --release --workspace`).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::links::{Endpoint, LinkTable, Route};
use orchestrator::plugins::{BorrowedRequest, HostCtx, Instance, Registry};
use orchestrator::serve::workers::Workers;
use orchestrator::topology::{LinkKind, LinkSpec, QueueMode, TierId};
use plugin_api::abi::encode_headers;
use plugin_api::{Plugin, Request};

const BODY: &[u8] = br#"{"message":"Hello Go!"}"#;

fn release_dir() -> std::path::PathBuf {
    // target/release/deps/abi-<hash> → target/release
    let exe = std::env::current_exe().expect("bench executable");
    exe.parent().and_then(|p| p.parent()).expect("target/release").to_path_buf()
}

/// A link named after its target, with the default timeout and no retries.
fn link(from: &str, to: &str, kind: LinkKind) -> LinkSpec {
    LinkSpec {
        from: TierId::new(from),
        to: TierId::new(to),
        name: to.into(),
        kind,
        timeout: std::time::Duration::from_secs(30),
        retries: 0,
        topic: None,
        mode: QueueMode::PubSub,
        concurrency: 1,
        path: None,
        queue_role: None,
        idle_timeout: std::time::Duration::from_secs(3600),
        max_connections: 1024,
        outbox: None,
    }
}

fn instance(
    registry: &Registry,
    plugin: &str,
    tier: &str,
    config: serde_json::Value,
    links: Arc<LinkTable>,
) -> Arc<Instance> {
    let plugin = registry.lookup(plugin, &[]).expect("plugin library: run `cargo build --release --workspace`");
    Instance::create(
        plugin,
        &config,
        Arc::new(HostCtx::new(TierId::new(tier), 0, links, Default::default(), std::path::Path::new("."), Vec::new())),
    )
    .expect("instance")
}

fn bench(c: &mut Criterion) {
    // Calibrated now, as `run` does, not inside the first measurement.
    orchestrator::metrics::cells::clock();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let registry = Registry::with_dirs(vec![release_dir()]);

    let mut headers = Vec::new();
    encode_headers([(&b"content-type"[..], &b"application/json"[..])], &mut headers);

    // Direct: the handler as a Rust call.
    let backend = backend::Backend::default();
    let cx = plugin_api::testing::detached_context();
    let request = Request::post("/backend").with_header("content-type", "application/json").with_body(BODY);
    let mut group = c.benchmark_group("plugin_call");
    group.bench_function("direct", |b| {
        b.iter(|| rt.block_on(async { black_box(backend.handle(request.clone(), cx.clone()).await) }))
    });

    // Through the ABI: the same handler from libbackend.so. No link here
    // opens a listener, so one worker is plenty.
    let workers = Workers::start(1, None).expect("a worker thread");
    let no_links = || Arc::new(LinkTable::new(HashMap::new(), workers.clone()));
    let loaded = instance(&registry, "backend", "backend", serde_json::json!({}), no_links());
    group.bench_function("abi", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = BorrowedRequest::new(b"POST", b"/backend", &headers, BODY);
                black_box(loaded.call(&req).await.expect("response"))
            })
        })
    });
    group.finish();

    // Gateway → host → backend over a link.
    let endpoint = Arc::new(Endpoint::new(TierId::new("backend")));
    endpoint.set(vec![loaded.clone()]);
    let spec = link("web", "backend", LinkKind::Rest);
    let routes = HashMap::from([("backend".to_owned(), Arc::new(Route::new(spec, endpoint)))]);
    let links = Arc::new(LinkTable::new(routes, workers.clone()));
    let gateway = instance(
        &registry,
        "gateway",
        "web",
        serde_json::json!({ "routes": [{ "path": "/", "link": "backend" }] }),
        links,
    );
    let pricing = instance(&registry, "pricing", "pricing", serde_json::json!({}), no_links());
    let pricing_endpoint = Arc::new(Endpoint::new(TierId::new("pricing")));
    pricing_endpoint.set(vec![pricing]);
    let rpc_route = Arc::new(Route::new(link("caller", "pricing", LinkKind::Rpc), pricing_endpoint));
    let mut rpc_headers = Vec::new();
    encode_headers([(&b"content-type"[..], &b"application/grpc"[..])], &mut rpc_headers);
    c.bench_function("rpc_call/link_to_pricing", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = BorrowedRequest::new(
                    b"POST",
                    b"/pricing.Pricing/Quote",
                    &rpc_headers,
                    br#"{"item":"widget","quantity":2}"#,
                );
                black_box(orchestrator::links::call(&rpc_route, &req).await.expect("answer"))
            })
        })
    });

    c.bench_function("link_call/gateway_to_backend", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = BorrowedRequest::new(b"POST", b"/backend", &headers, BODY);
                black_box(gateway.call(&req).await.expect("response"))
            })
        })
    });

    // The same link call with the request metrics not recorded (`run
    // --no-metrics`): the difference is what recording them costs.
    orchestrator::metrics::set_enabled(false);
    c.bench_function("link_call/gateway_to_backend_unrecorded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = BorrowedRequest::new(b"POST", b"/backend", &headers, BODY);
                black_box(gateway.call(&req).await.expect("response"))
            })
        })
    });
    orchestrator::metrics::set_enabled(true);

    // Recorded and unrecorded calls alternated, batch by batch, so that the
    // machine's drift falls on both alike: the median difference per call.
    let batch = |recorded: bool| {
        orchestrator::metrics::set_enabled(recorded);
        let started = std::time::Instant::now();
        rt.block_on(async {
            for _ in 0..20_000 {
                let req = BorrowedRequest::new(b"POST", b"/backend", &headers, BODY);
                black_box(gateway.call(&req).await.expect("response"));
            }
        });
        started.elapsed().as_nanos() as f64 / 20_000.0
    };
    let mut differences: Vec<f64> = (0..31).map(|_| batch(true) - batch(false)).collect();
    orchestrator::metrics::set_enabled(true);
    differences.sort_by(f64::total_cmp);
    println!(
        "link_call/recording_cost: median {:+.1} ns per call (quartiles {:+.1} to {:+.1}; 31 alternations of 20,000 calls)",
        differences[15], differences[7], differences[23]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
