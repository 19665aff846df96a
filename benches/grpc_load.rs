//! A gRPC load generator for the RPC benchmark: unary calls of
//! `pricing.Pricing/Quote` on a few HTTP/2 connections, many in flight.
//!
//! `grpc-load ADDR [--duration SECS] [--concurrency N] [--connections N]`
//! prints one JSON line: calls, errors, calls_per_sec, p50_us, p99_us.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};

const MESSAGE: &[u8] = br#"{"item":"widget","quantity":2}"#;

fn framed() -> Bytes {
    let mut out = Vec::with_capacity(5 + MESSAGE.len());
    out.push(0);
    out.extend_from_slice(&(MESSAGE.len() as u32).to_be_bytes());
    out.extend_from_slice(MESSAGE);
    out.into()
}

async fn connect(addr: &str) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// One call; whether it answered grpc-status 0.
async fn call(sender: &mut SendRequest<Full<Bytes>>, addr: &str, body: Bytes) -> bool {
    let req = hyper::Request::post(format!("http://{addr}/pricing.Pricing/Quote"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .expect("request");
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(resp) = sender.send_request(req).await else { return false };
    let ok_in_headers = resp.headers().get("grpc-status").is_some_and(|s| s == "0");
    let Ok(collected) = resp.into_body().collect().await else { return false };
    ok_in_headers || collected.trailers().and_then(|t| t.get("grpc-status")).is_some_and(|s| s == "0")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().expect("usage: grpc-load ADDR [--duration S] [--concurrency N] [--connections N]");
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (duration, concurrency, connections) =
        (flag("--duration", 5), flag("--concurrency", 32), flag("--connections", 4));
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connect(&addr).await);
    }
    let body = framed();
    let start = Instant::now();
    let end = start + Duration::from_secs(duration);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut sender = senders[i as usize % senders.len()].clone();
            let (addr, body) = (addr.clone(), body.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < end {
                    let t = Instant::now();
                    if call(&mut sender, &addr, body.clone()).await {
                        latencies.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    println!(
        "{{\"calls\": {}, \"errors\": {errors}, \"calls_per_sec\": {:.0}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
