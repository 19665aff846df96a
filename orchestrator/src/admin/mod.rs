//! The admin HTTP API (loopback by default):
//! - `GET /admin/status` — the topology, its generation, tiers, instances and links (JSON);
//! - `GET /admin/ready` — 200 once the topology runs, 503 before and while stopping;
//! - `GET /admin/health` — 200 while the process serves.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runtime::Status;
use crate::runtime::status::State;

/// The running admin server.
#[derive(Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

type Shared = watch::Receiver<Status>;

impl Admin {
    /// Binds `addr` and serves the admin API from `status` snapshots.
    pub async fn bind(addr: SocketAddr, status: Shared) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/admin/status", get(status_handler))
            .route("/admin/ready", get(ready_handler))
            .route("/admin/health", get(|| async { "ok\n" }))
            .with_state(status);
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

async fn status_handler(Extract(status): Extract<Shared>) -> Json<Status> {
    Json(status.borrow().clone())
}

async fn ready_handler(Extract(status): Extract<Shared>) -> impl IntoResponse {
    let s = status.borrow();
    let body = serde_json::json!({ "ready": s.state == State::Running, "generation": s.generation, "state": s.state });
    let code = if s.state == State::Running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}
