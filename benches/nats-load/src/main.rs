//! Publishes N messages to a local nats-server and receives them, on separate
//! connections, then prints one JSON line: end-to-end messages/s (first
//! publish to last delivery) and publish→deliver latency percentiles.
//!
//! Modes: `core` (pub/sub, one subscriber), `queue` (core queue group of
//! `--subscribers` competing subscribers), `jetstream` (a file-backed stream,
//! acknowledged publishes with `--window` in flight, one pull consumer with
//! explicit acks).
//!
//! Usage: nats-load <nats://127.0.0.1:PORT> <core|queue|jetstream> [--messages N] [--size BYTES] [--window W] [--subscribers K]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A payload of `size` bytes starting with the publish time.
fn payload(size: usize) -> Vec<u8> {
    let mut body = vec![b'x'; size.max(8)];
    body[..8].copy_from_slice(&now_us().to_le_bytes());
    body
}

fn sent_at(body: &[u8]) -> u64 {
    body.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// What the subscribers saw.
struct Seen {
    count: AtomicU64,
    last_us: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
    done: tokio::sync::Notify,
    expected: u64,
}

impl Seen {
    fn record(&self, body: &[u8]) {
        let now = now_us();
        self.latencies.lock().unwrap().push(now.saturating_sub(sent_at(body)).min(u32::MAX as u64) as u32);
        self.last_us.store(now, Ordering::Relaxed);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            self.done.notify_one();
        }
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, mode) = (args.get(1).ok_or("no server URL")?.clone(), args.get(2).ok_or("no mode")?.clone());
    let messages = arg(&args, "--messages", 1_000_000);
    let size = arg(&args, "--size", 128) as usize;
    let window = arg(&args, "--window", 256) as usize;
    let subscribers = arg(&args, "--subscribers", 2);
    let seen = Arc::new(Seen {
        count: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        latencies: std::sync::Mutex::new(Vec::with_capacity(messages as usize)),
        done: tokio::sync::Notify::new(),
        expected: messages,
    });
    let publisher = async_nats::connect(&url).await?;
    let first_us;
    let publish_time;
    match mode.as_str() {
        "core" | "queue" => {
            let n = if mode == "core" { 1 } else { subscribers };
            for _ in 0..n {
                let client = async_nats::connect(&url).await?;
                let mut sub = if mode == "core" {
                    client.subscribe("bench.core").await?
                } else {
                    client.queue_subscribe("bench.core", "workers".into()).await?
                };
                client.flush().await?;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _client = client;
                    while let Some(msg) = sub.next().await {
                        seen.record(&msg.payload);
                    }
                });
            }
            let started = Instant::now();
            first_us = now_us();
            for _ in 0..messages {
                publisher.publish("bench.core", Bytes::from(payload(size))).await?;
            }
            publisher.flush().await?;
            publish_time = started.elapsed();
        }
        "jetstream" => {
            let js = jetstream::new(publisher.clone());
            let _ = js.delete_stream("BENCH").await;
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: "BENCH".into(),
                    subjects: vec!["bench.js".into()],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await?;
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await?;
            let sub_client = async_nats::connect(&url).await?;
            let sub_js = jetstream::new(sub_client);
            let consumer: jetstream::consumer::PullConsumer =
                sub_js.get_consumer_from_stream("bench", "BENCH").await.unwrap_or(consumer);
            let seen2 = seen.clone();
            tokio::spawn(async move {
                let Ok(mut messages) = consumer.messages().await else { return };
                while let Some(Ok(msg)) = messages.next().await {
                    seen2.record(&msg.payload);
                    let _ = msg.ack().await;
                }
            });
            let started = Instant::now();
            first_us = now_us();
            let mut acks = VecDeque::with_capacity(window);
            for _ in 0..messages {
                if acks.len() >= window {
                    let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("non-empty");
                    ack.await?;
                }
                acks.push_back(js.publish("bench.js", Bytes::from(payload(size))).await?);
            }
            for ack in acks {
                ack.await?;
            }
            publish_time = started.elapsed();
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    // Done when all arrived, or when none arrived for 3 s (core NATS drops
    // messages for a subscriber that falls too far behind).
    let mut timed_out = false;
    loop {
        let before = seen.count.load(Ordering::Acquire);
        if before >= messages {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(3), seen.done.notified()).await.is_err()
            && seen.count.load(Ordering::Acquire) == before
        {
            timed_out = true;
            break;
        }
    }
    let received = seen.count.load(Ordering::Acquire);
    let elapsed_us = seen.last_us.load(Ordering::Relaxed).saturating_sub(first_us).max(1);
    let mut lat = std::mem::take(&mut *seen.latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let out = serde_json::json!({
        "mode": mode,
        "messages": messages,
        "received": received,
        "lost": messages - received,
        "stalled": timed_out,
        "msgs_per_s": received as f64 * 1e6 / elapsed_us as f64,
        "publish_s": publish_time.as_secs_f64(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
    });
    println!("{out}");
    Ok(())
}
