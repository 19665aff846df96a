//! Running a topology: the supervisor, tier listeners, status, and the
//! process's life from start through reloads to graceful shutdown.

pub mod listener;
pub mod running;
pub mod status;
pub mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use status::Status;
use status::{ReloadRecord, Trigger};
pub use supervisor::{StartError, Supervisor};
use tokio::sync::{mpsc, oneshot, watch};

use crate::admin;
use crate::plugins::Registry;
use crate::reload::{self, Watched};
use crate::serve::{admission, workers};
use crate::topology::Topology;

/// How `orchestrator run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub admin: SocketAddr,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Reload when the topology file or a plugin library changes.
    pub watch: bool,
    /// Colour each tier's log lines (logs go to a terminal).
    pub color: bool,
    /// The threads that serve tier and link listeners' connections.
    pub workers: workers::WorkerThreads,
    /// Bind each of those threads to a CPU of its own.
    pub pin_workers: bool,
    /// Connections served at once across all listeners; `None`: derived
    /// from the limit of open files ([`admission::Admission::default_max`]).
    pub max_connections: Option<usize>,
    /// The timeouts of every tier, link and peer connection.
    pub timeouts: crate::serve::idle::Timeouts,
    /// Who may use the admin API.
    pub admin_access: crate::admin::Access,
    /// Where to export traces; `None`: none are recorded.
    pub traces: Option<crate::traces::TraceOptions>,
    /// The host whose share of a placed topology runs here.
    pub placement: Option<crate::topology::Placement>,
    /// Where the tiers that run here are served to the other hosts.
    pub peer_listen: Option<SocketAddr>,
    /// The token the peer listener asks of them.
    pub peer_token: Option<String>,
    /// Mutual TLS on the peer listener: a certificate signed by the
    /// authority asked of every peer.
    pub peer_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Where the tiers keep durable state (`--data-dir`), if not beside the
    /// topology file.
    pub data_dir: Option<std::path::PathBuf>,
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot serve the admin API on {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot start the connection workers: {0}")]
    Workers(std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot watch files: {0}")]
    Watch(#[from] notify::Error),
    #[error("{0}")]
    Traces(String),
    #[error("{0}")]
    Placement(String),
    #[error("cannot serve the peer listener on {addr}: {source}")]
    Peer { addr: SocketAddr, source: std::io::Error },
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Reread the topology and apply what changed; answer on `reply`.
    /// `since`: when the change that asks for it was seen.
    Reload { trigger: Trigger, reply: Option<oneshot::Sender<ReloadRecord>>, since: std::time::Instant },
    /// Restart a tier's replicas (all, or one) one at a time; answer with
    /// those restarted, or why it stopped.
    Restart { tier: String, replica: Option<u32>, reply: oneshot::Sender<Result<Vec<u32>, supervisor::RestartError>> },
}

/// Runs `topology` until SIGINT or SIGTERM, reloading on SIGHUP, on
/// `POST /admin/reload` and (with `watch`) when files change; then shuts down
/// gracefully.
pub async fn run(topology: Topology, registry: Arc<Registry>, opts: RunOptions) -> Result<(), RunError> {
    let (status_tx, status_rx) = watch::channel(supervisor::starting_status(&topology));
    // The latency clock calibrates on first use: now, not on the first request.
    crate::metrics::cells::clock();
    if let Some(traces) = &opts.traces {
        crate::traces::start(traces).map_err(RunError::Traces)?;
        tracing::info!(endpoint = %traces.endpoint, sample = traces.sample, service = %traces.service, "Exporting traces.");
    }
    let (commands, mut requests) = mpsc::channel::<Command>(16);
    let descriptors = admission::raise_descriptor_limit();
    let max_connections = opts.max_connections.unwrap_or_else(|| admission::Admission::default_max(descriptors));
    tracing::debug!(descriptors, max_connections, "Connection limit set.");
    let workers = workers::Workers::new(opts.workers, opts.pin_workers)
        .map_err(RunError::Workers)?
        .with_admission(admission::Admission::new(max_connections))
        .with_timeouts(opts.timeouts);
    let admin = admin::Admin::bind(opts.admin, opts.admin_access.clone(), status_rx, commands.clone(), workers.clone())
        .await
        .map_err(|source| RunError::Admin { addr: opts.admin, source })?;
    tracing::info!(addr = %admin.addr, "Admin API listening.");
    // Found by `orchestrator reload FILE` while this runs; removed when it returns.
    let _registration = running::Registration::write(&topology.file, &topology.name, admin.addr);

    let mut signals = Signals::new().map_err(RunError::Signals)?;
    let mut supervisor =
        Supervisor::new(&topology, registry, status_tx, workers.clone(), opts.drain_timeout, opts.color)
            .with_placement(opts.placement.clone())
            .with_data_dir(opts.data_dir.clone());
    let topology = supervisor.share(topology).map_err(RunError::Placement)?;
    let mut peer = match opts.peer_listen {
        Some(addr) => {
            let bound =
                crate::serve::listener::Bound::bind(addr).await.map_err(|source| RunError::Peer { addr, source })?;
            let inbound = listener::PeerInbound { token: opts.peer_token.clone(), tiers: supervisor.local_tiers() };
            let served = listener::serve_peer(bound, inbound, opts.peer_tls.clone(), &workers);
            tracing::info!(addr = %served.addr, "Peer listener listening.");
            Some(served)
        }
        None => None,
    };
    // A stop signal while tiers start (a slow program, a readiness wait)
    // abandons the start, as one during a reload does, and stops what started.
    let started = tokio::select! {
        started = supervisor.start(topology) => Ok(started),
        signal = signals.stop("Still starting; SIGHUP ignored.") => Err(signal),
    };
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if let Some(peer) = peer.take() {
                peer.stop(opts.drain_timeout).await;
            }
            supervisor.shutdown().await;
            admin.stop().await;
            return Err(e.into());
        }
        Err(signal) => {
            tracing::warn!(signal, "Stopping while the topology starts: stopping what started.");
            if let Some(peer) = peer.take() {
                peer.stop(opts.drain_timeout).await;
            }
            supervisor.shutdown().await;
            admin.stop().await;
            crate::traces::shutdown(TRACE_FLUSH).await;
            tracing::info!("Stopped.");
            return Ok(());
        }
    }
    let mut watcher =
        if opts.watch { Some(reload::Watcher::start(watched(&supervisor), commands.clone())?) } else { None };
    tracing::info!(
        topology = %supervisor.topology().name,
        tiers = supervisor.topology().tiers.len(),
        generation = supervisor.generation(),
        "Topology running."
    );

    let signal = loop {
        let (trigger, reply, since) = tokio::select! {
            signal = signals.next() => match signal {
                "SIGHUP" => (Trigger::Signal, None, std::time::Instant::now()),
                other => break other,
            },
            Some(command) = requests.recv() => match command {
                Command::Reload { trigger, reply, since } => (trigger, reply, since),
                Command::Restart { tier, replica, reply } => {
                    let answer = tokio::select! {
                        answer = supervisor.restart(&tier, replica) => answer,
                        signal = signals.stop("A restart is running; SIGHUP ignored.") => {
                            tracing::warn!(signal, "Stopping during a restart: the restart is abandoned.");
                            break signal;
                        }
                    };
                    let _ = reply.send(answer);
                    continue;
                }
            },
        };
        // A stop signal does not wait for a reload to finish (one that starts
        // slow programs can take a while): the reload is abandoned at its next
        // await point, where everything it has done so far is consistent, and
        // the shutdown stops what it started.
        let mut stop = None;
        let record = tokio::select! {
            record = supervisor.reload(trigger) => {
                crate::metrics::registry().reload_took(since.elapsed().as_secs_f64());
                Some(record)
            }
            signal = signals.stop("A reload is already running; SIGHUP ignored.") => {
                stop = Some(signal);
                None
            }
        };
        if let Some(signal) = stop {
            tracing::warn!(signal, "Stopping during a reload: the reload is abandoned.");
            break signal;
        }
        if let (Some(reply), Some(record)) = (reply, record) {
            let _ = reply.send(record);
        }
        if let Some(w) = &mut watcher
            && let Err(e) = w.update(watched(&supervisor))
        {
            tracing::warn!(error = %e, "Cannot watch a plugin directory; its changes will not trigger reloads.");
        }
    };
    tracing::info!(signal, drain_timeout = %humantime::format_duration(opts.drain_timeout), "Shutting down.");
    drop(watcher);
    // Other hosts stop sending here first, then the tiers drain.
    if let Some(peer) = peer.take() {
        peer.stop(opts.drain_timeout).await;
    }
    supervisor.shutdown().await;
    admin.stop().await;
    crate::traces::shutdown(TRACE_FLUSH).await;
    tracing::info!("Stopped.");
    Ok(())
}

/// How long the spans still queued at shutdown may take to be exported.
const TRACE_FLUSH: Duration = Duration::from_secs(5);

fn watched(supervisor: &Supervisor) -> Watched {
    let (topology, plugins) = supervisor.watched_files();
    Watched::new(reload::normalize(&topology), plugins.iter().map(|p| reload::normalize(p)).collect())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal (SIGTERM, SIGINT); a SIGHUP before it is logged
    /// as `ignored`, as when one arrives while another change is under way.
    async fn stop(&mut self, ignored: &'static str) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => tracing::info!("{ignored}"),
                other => return other,
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
