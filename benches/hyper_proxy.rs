//! A reference for the HTTP benchmarks: a reverse proxy made of hyper alone,
//! built the way the orchestrator serves a hop to a process tier, without
//! anything else (no plugins, links, limits, timeouts or logs). Each
//! connection stays on one thread running a single-threaded runtime; the
//! request body is read whole, sent on a keep-alive connection from that
//! thread's pool (each driven by a task of its own), and the answer read
//! whole and sent back; heads and bodies are written from one buffer
//! (`writev(false)`), as the orchestrator writes them. What it costs per
//! request is what hyper costs for such a hop: the floor for the
//! orchestrator's.
//!
//! `hyper-proxy UPSTREAM [--threads N|shared] [--pin]` prints `listening on
//! ADDR` (a free loopback port). `shared` serves connections on tokio's
//! work-stealing runtime instead; the default is one thread. `--pin` binds
//! thread `i` to the `i`-th CPU this process may use, as the orchestrator's
//! `--pin-workers` does.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

type Response = hyper::Response<Full<Bytes>>;

thread_local! {
    /// Idle keep-alive connections to the upstream, opened by this thread.
    static POOL: RefCell<Vec<SendRequest<Full<Bytes>>>> = const { RefCell::new(Vec::new()) };
}

fn bad_gateway(why: impl std::fmt::Display) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    resp
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(upstream).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn proxy(req: hyper::Request<Incoming>, upstream: SocketAddr) -> Result<Response, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_gateway(e)),
    };
    let pooled = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        std::iter::from_fn(|| pool.pop()).find(|s| !s.is_closed())
    });
    let mut sender = match pooled {
        Some(s) => s,
        None => match connect(upstream).await {
            Ok(s) => s,
            Err(e) => return Ok(bad_gateway(e)),
        },
    };
    if let Err(e) = sender.ready().await {
        return Ok(bad_gateway(e));
    }
    let resp = match sender.send_request(hyper::Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(e) => return Ok(bad_gateway(e)),
    };
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_gateway(e)),
    };
    POOL.with(|p| p.borrow_mut().push(sender));
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

async fn serve(stream: std::net::TcpStream, upstream: SocketAddr) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
    let service = service_fn(move |req| proxy(req, upstream));
    let _ = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count()).filter(|&cpu| allowed.is_set(cpu).unwrap_or(false)).collect())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || std::io::Error::other("usage: hyper-proxy UPSTREAM [--threads N|shared] [--pin]");
    let upstream: SocketAddr = args.first().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let threads = match args.iter().position(|a| a == "--threads").map(|i| args.get(i + 1)) {
        None => Some(1),
        Some(Some(t)) if t == "shared" => None,
        Some(Some(n)) => Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(usage)?),
        Some(None) => return Err(usage()),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("listening on {}", listener.local_addr()?);

    let Some(count) = threads else {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return rt.block_on(async {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream.into_std()?, upstream));
            }
        });
    };
    // One single-threaded runtime per thread; connections dealt in turn.
    let cpus = if args.iter().any(|a| a == "--pin") { allowed_cpus()? } else { Vec::new() };
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(rt.handle().clone());
        let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let mut set = CpuSet::new();
                let bound = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
                if let Err(e) = bound {
                    eprintln!("cannot bind thread {i} to CPU {cpu}: {e}");
                }
            }
            rt.block_on(std::future::pending::<()>())
        });
    }
    for (stream, i) in listener.incoming().zip((0..count).cycle()) {
        let stream = stream?;
        let _ = stream.set_nodelay(true);
        stream.set_nonblocking(true)?;
        handles[i].spawn(serve(stream, upstream));
    }
    Ok(())
}
