//! Benchmark tier for `benches/queue_load.py`.
//!
//! - `POST /run?n=N&size=S&window=W` publishes N messages of S bytes on the
//!   outbound queue link `q`, W publishes in flight at a time (1: one after
//!   the other), and answers when all were accepted;
//! - deliveries are counted, with their publish→deliver latency (from the
//!   broker's `orch-published-at`);
//! - `GET /result?n=N` waits until N deliveries arrived (or none for 3 s) and
//!   answers end-to-end messages/s (first publish to last delivery) and
//!   latency percentiles, then forgets the run.

#![forbid(unsafe_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use plugin_api::prelude::*;
use plugin_api::serde_json::json;

#[derive(Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
struct QBench {}

static RECEIVED: AtomicU64 = AtomicU64::new(0);
/// How many deliveries `/result` waits for, and its wake-up when they are in.
static EXPECTED: AtomicU64 = AtomicU64::new(u64::MAX);
static ALL_RECEIVED: event_listener::Event = event_listener::Event::new();
static FIRST_PUBLISH_US: AtomicU64 = AtomicU64::new(0);
static LAST_DELIVERY_US: AtomicU64 = AtomicU64::new(0);
static LATENCIES_US: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn param(req: &Request, key: &str, default: u64) -> u64 {
    req.query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok()))
        .unwrap_or(default)
}

impl Plugin for QBench {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Queue];

    async fn handle(&self, req: Request, cx: Context) -> Response {
        match req.path() {
            "/run" => {
                let (n, size, window) = (param(&req, "n", 100_000), param(&req, "size", 128), param(&req, "window", 1));
                let batch = param(&req, "batch", 1).max(1);
                let link = req
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("link=")))
                    .unwrap_or("q")
                    .to_owned();
                let link = link.as_str();
                RECEIVED.store(0, Ordering::Release);
                EXPECTED.store(u64::MAX, Ordering::Release);
                LATENCIES_US.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let body = plugin_api::Bytes::from(vec![b'x'; size as usize]);
                FIRST_PUBLISH_US.store(now_us(), Ordering::Release);
                let publish = |first: u64| {
                    let count = batch.min(n - first);
                    let one = (count == 1).then(|| cx.publish(link, body.clone()));
                    let many = (count > 1).then(|| cx.publish_batch(link, (0..count).map(|_| body.clone())));
                    async move {
                        let sent = match (one, many) {
                            (Some(one), _) => one.await.map(drop),
                            (_, Some(many)) => many.await.map(drop),
                            _ => Ok(()),
                        };
                        sent.map_err(|e| (count, e))
                    }
                };
                let calls = (0..n).step_by(batch as usize).map(publish);
                let mut results = futures_util::stream::iter(calls).buffer_unordered(window.max(1) as usize);
                let mut failed = 0u64;
                let mut error = None;
                while let Some(result) = results.next().await {
                    if let Err((count, e)) = result {
                        failed += count;
                        error.get_or_insert(e.to_string());
                    }
                }
                let publish_s = (now_us() - FIRST_PUBLISH_US.load(Ordering::Acquire)) as f64 / 1e6;
                Response::json(
                    &json!({ "published": n - failed, "failed": failed, "error": error, "publish_s": publish_s }),
                )
            }
            "/result" => {
                let n = param(&req, "n", 0);
                EXPECTED.store(n, Ordering::Release);
                let mut last = u64::MAX;
                loop {
                    // Woken by the n-th delivery; every 3 s, give up if none came since.
                    let listener = ALL_RECEIVED.listen();
                    let count = RECEIVED.load(Ordering::Acquire);
                    if count >= n || count == last {
                        break;
                    }
                    last = count;
                    let _ =
                        futures_util::future::select(listener, std::pin::pin!(cx.sleep(Duration::from_secs(3)))).await;
                }
                let received = RECEIVED.load(Ordering::Acquire);
                let elapsed_us = LAST_DELIVERY_US
                    .load(Ordering::Acquire)
                    .saturating_sub(FIRST_PUBLISH_US.load(Ordering::Acquire))
                    .max(1);
                let mut lat = std::mem::take(&mut *LATENCIES_US.lock().unwrap_or_else(|e| e.into_inner()));
                lat.sort_unstable();
                let pct = |p: f64| {
                    lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0)
                };
                Response::json(&json!({
                    "messages": n,
                    "received": received,
                    "lost": n.saturating_sub(received),
                    "msgs_per_s": received as f64 * 1e6 / elapsed_us as f64,
                    "p50_us": pct(0.50),
                    "p99_us": pct(0.99),
                    "p999_us": pct(0.999),
                }))
            }
            "/noop" => Response::new(StatusCode::ACCEPTED),
            "/reset" => {
                RECEIVED.store(0, Ordering::Release);
                EXPECTED.store(u64::MAX, Ordering::Release);
                LATENCIES_US.lock().unwrap_or_else(|e| e.into_inner()).clear();
                FIRST_PUBLISH_US.store(now_us(), Ordering::Release);
                Response::new(StatusCode::NO_CONTENT)
            }
            _ => Response::error(StatusCode::NOT_FOUND, "POST /run, GET /result, POST /noop or POST /reset"),
        }
    }

    async fn on_message(&self, msg: Message, _cx: Context) -> Result<(), String> {
        let now = now_us();
        let latency = now.saturating_sub(msg.published_at_us).min(u32::MAX as u64) as u32;
        LATENCIES_US.lock().unwrap_or_else(|e| e.into_inner()).push(latency);
        LAST_DELIVERY_US.store(now, Ordering::Release);
        if RECEIVED.fetch_add(1, Ordering::AcqRel) + 1 == EXPECTED.load(Ordering::Acquire) {
            ALL_RECEIVED.notify(usize::MAX);
        }
        Ok(())
    }
}

export_plugin!(QBench);
