//! Running a topology: the supervisor, tier listeners, status, and the
//! process's life from start to graceful shutdown.

pub mod listener;
pub mod status;
pub mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use status::Status;
pub use supervisor::{StartError, Supervisor};
use tokio::sync::watch;

use crate::admin;
use crate::plugins::Registry;
use crate::topology::Topology;

/// How `orchestrator run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub admin: SocketAddr,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot serve the admin API on {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

/// Runs `topology` until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(topology: Topology, registry: Arc<Registry>, opts: RunOptions) -> Result<(), RunError> {
    let (status_tx, status_rx) = watch::channel(supervisor::starting_status(&topology));
    let admin = admin::Admin::bind(opts.admin, status_rx)
        .await
        .map_err(|source| RunError::Admin { addr: opts.admin, source })?;
    tracing::info!(addr = %admin.addr, "Admin API listening.");

    let mut signals = Signals::new().map_err(RunError::Signals)?;
    let name = topology.name.clone();
    let tiers = topology.tiers.len();
    let mut supervisor = match Supervisor::start(topology, &registry, status_tx).await {
        Ok(s) => s,
        Err(e) => {
            admin.stop().await;
            return Err(e.into());
        }
    };
    tracing::info!(topology = %name, tiers, generation = supervisor.generation(), "Topology running.");

    let signal = signals.next().await;
    tracing::info!(signal, drain_timeout = %humantime::format_duration(opts.drain_timeout), "Shutting down.");
    supervisor.shutdown(opts.drain_timeout).await;
    admin.stop().await;
    tracing::info!("Stopped.");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
