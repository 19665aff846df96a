//! The admin HTTP API (loopback by default):
//! - `GET /admin/status` — the topology, its generation, tiers, instances,
//!   links and the last reload attempt (JSON). With `?min_generation=N` (or
//!   `?min_attempts=N`, counting reload attempts) it waits until the status
//!   reaches it, at most `wait` (default `10s`), then answers whatever it is:
//!   scripts and tests wait on events instead of sleeping;
//! - `GET /admin/ready` — 200 once the topology runs, 503 before and while stopping;
//! - `GET /admin/health` — 200 while the process serves;
//! - `GET /admin/metrics` — generation, reloads, replicas and ready replicas
//!   per tier, process restarts, connections per connection worker, in the
//!   Prometheus text format;
//! - `POST /admin/reload` — reread the topology and apply what changed; answers
//!   the attempt's record: 200 when applied or unchanged, 422 when it failed.

mod metrics;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State as Extract};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::runtime::status::{State, Trigger};
use crate::runtime::workers::Workers;
use crate::runtime::{Command, Status};

/// The running admin server.
#[derive(Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    status: watch::Receiver<Status>,
    commands: mpsc::Sender<Command>,
    workers: Workers,
}

impl Admin {
    /// Binds `addr` and serves the admin API from `status` snapshots, sending
    /// reload requests to `commands`; its metrics include `workers`' load.
    pub async fn bind(
        addr: SocketAddr,
        status: watch::Receiver<Status>,
        commands: mpsc::Sender<Command>,
        workers: Workers,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/admin/status", get(status_handler))
            .route("/admin/ready", get(ready_handler))
            .route("/admin/health", get(|| async { "ok\n" }))
            .route("/admin/reload", post(reload_handler))
            .route("/admin/metrics", get(metrics_handler))
            .with_state(Shared { status, commands, workers });
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.changed().await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "The admin API failed.");
            }
        });
        Ok(Self { addr, stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct StatusQuery {
    min_generation: Option<u64>,
    min_attempts: Option<u64>,
    wait: Option<String>,
}

async fn status_handler(Extract(shared): Extract<Shared>, Query(q): Query<StatusQuery>) -> impl IntoResponse {
    let wait = match q.wait.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d.min(Duration::from_secs(60)),
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": format!("wait: {e}") })))
                .into_response();
        }
    };
    if q.min_generation.is_some() || q.min_attempts.is_some() {
        let mut status = shared.status.clone();
        let reached = |s: &Status| {
            q.min_generation.is_none_or(|g| s.generation >= g) && q.min_attempts.is_none_or(|a| s.reloads.attempts >= a)
        };
        let _ = tokio::time::timeout(wait, status.wait_for(reached)).await;
    }
    let live = shared.status.borrow().live();
    Json(live).into_response()
}

async fn metrics_handler(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    let status = shared.status.borrow().live();
    let body = metrics::render(&status, &shared.workers.report());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn ready_handler(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    let s = shared.status.borrow();
    let body = serde_json::json!({ "ready": s.state == State::Running, "generation": s.generation, "state": s.state });
    let code = if s.state == State::Running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn reload_handler(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    let (reply, answer) = oneshot::channel();
    let unavailable =
        |why: &str| (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": why }))).into_response();
    if shared.commands.send(Command::Reload { trigger: Trigger::Admin, reply: Some(reply) }).await.is_err() {
        return unavailable("the orchestrator is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(120), answer).await {
        Ok(Ok(record)) => {
            let code = if record.outcome == "failed" { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
            (code, Json(record)).into_response()
        }
        _ => unavailable("the reload did not complete"),
    }
}
