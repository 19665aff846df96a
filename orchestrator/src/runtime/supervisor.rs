//! The supervisor owns the running tiers: it starts them from a topology,
//! publishes status snapshots, and stops them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use tokio::sync::watch;

use super::listener::Listener;
use super::status::{InstanceStatus, LinkStatus, State, Status, TierStatus, timestamp};
use crate::links::{Endpoint, LinkTable, Route};
use crate::plugins::{HostCtx, Instance, LoadError, PluginHandle, Registry};
use crate::topology::{TierId, TierSpec, Topology};

/// Why a topology could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tier `{tier}`: {source}")]
    Plugin { tier: TierId, source: LoadError },
    #[error("tier `{tier}` replica {replica} failed to start: {reason}")]
    Instance { tier: TierId, replica: u32, reason: String },
    #[error("tier `{tier}` cannot listen on {addr}: {source}")]
    Bind { tier: TierId, addr: SocketAddr, source: std::io::Error },
}

struct RunningTier {
    spec: TierSpec,
    plugin: Arc<PluginHandle>,
    endpoint: Arc<Endpoint>,
    instances: Vec<Arc<Instance>>,
    listener: Option<Listener>,
}

/// The running topology.
pub struct Supervisor {
    topology: Topology,
    tiers: IndexMap<TierId, RunningTier>,
    generation: u64,
    started_at: SystemTime,
    status: watch::Sender<Status>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("topology", &self.topology.name)
            .field("generation", &self.generation)
            .finish()
    }
}

/// The status of a topology that is not running yet.
pub fn starting_status(topology: &Topology) -> Status {
    Status {
        name: topology.name.clone(),
        file: topology.file.display().to_string(),
        generation: 0,
        state: State::Starting,
        started_at: timestamp(SystemTime::now()),
        tiers: Vec::new(),
        links: Vec::new(),
    }
}

impl Supervisor {
    /// Starts every tier of `topology`: instances first, then links are routed
    /// to them, then listeners open. On failure everything started is stopped.
    pub async fn start(
        topology: Topology,
        registry: &Registry,
        status: watch::Sender<Status>,
    ) -> Result<Self, StartError> {
        let endpoints: HashMap<TierId, Arc<Endpoint>> =
            topology.tiers.keys().map(|id| (id.clone(), Arc::new(Endpoint::new(id.clone())))).collect();
        let mut tiers = IndexMap::new();
        for (id, spec) in &topology.tiers {
            let plugin = registry
                .lookup(&spec.plugin, &topology.plugin_dirs)
                .map_err(|source| StartError::Plugin { tier: id.clone(), source })?;
            let links = Arc::new(link_table(&topology, id, &endpoints));
            let mut instances = Vec::with_capacity(spec.replicas as usize);
            for replica in 0..spec.replicas {
                let ctx = Arc::new(HostCtx::new(id.clone(), replica, links.clone(), spec.env.clone()));
                let instance = Instance::create(plugin.clone(), &spec.config, ctx)
                    .map_err(|reason| StartError::Instance { tier: id.clone(), replica, reason })?;
                tracing::info!(tier = %id, replica, instance = instance.id, plugin = %spec.plugin, "Instance started.");
                instances.push(instance);
            }
            let endpoint = endpoints[id].clone();
            tiers.insert(id.clone(), RunningTier { spec: spec.clone(), plugin, endpoint, instances, listener: None });
        }
        // Every instance exists: make them routable.
        for tier in tiers.values() {
            tier.endpoint.set(tier.instances.clone());
        }
        let mut supervisor = Self { topology, tiers, generation: 0, started_at: SystemTime::now(), status };
        let to_bind: Vec<(TierId, SocketAddr)> =
            supervisor.tiers.iter().filter_map(|(id, t)| Some((id.clone(), t.spec.listen?))).collect();
        for (id, addr) in to_bind {
            let tier = &supervisor.tiers[&id];
            match Listener::bind(addr, tier.endpoint.clone(), tier.spec.max_body).await {
                Ok(listener) => {
                    tracing::info!(tier = %id, addr = %listener.addr, "Tier listening.");
                    if let Some(t) = supervisor.tiers.get_mut(&id) {
                        t.listener = Some(listener);
                    }
                }
                Err(source) => {
                    supervisor.shutdown(Duration::ZERO).await;
                    return Err(StartError::Bind { tier: id, addr, source });
                }
            }
        }
        supervisor.generation = 1;
        supervisor.publish(State::Running);
        Ok(supervisor)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The address tier `id` listens on, if it does.
    pub fn listen_addr(&self, id: &TierId) -> Option<SocketAddr> {
        self.tiers.get(id)?.listener.as_ref().map(|l| l.addr)
    }

    fn publish(&self, state: State) {
        let tiers = self
            .tiers
            .iter()
            .map(|(id, t)| TierStatus {
                name: id.to_string(),
                plugin: t.spec.plugin.clone(),
                plugin_version: t.plugin.version().to_owned(),
                origin: t.plugin.path().map_or_else(|| "built-in".to_owned(), |p| p.display().to_string()),
                replicas: t.spec.replicas,
                listen: t.listener.as_ref().map(|l| l.addr.to_string()),
                state,
                instances: t
                    .instances
                    .iter()
                    .map(|i| InstanceStatus { replica: i.replica(), id: i.id, started_at: timestamp(i.started) })
                    .collect(),
            })
            .collect();
        let links = self
            .topology
            .links
            .iter()
            .map(|l| LinkStatus {
                from: l.from.to_string(),
                to: l.to.to_string(),
                name: l.name.clone(),
                kind: l.kind.to_string(),
                timeout_ms: u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX),
                retries: l.retries,
            })
            .collect();
        self.status.send_replace(Status {
            name: self.topology.name.clone(),
            file: self.topology.file.display().to_string(),
            generation: self.generation,
            state,
            started_at: timestamp(self.started_at),
            tiers,
            links,
        });
    }

    /// Stops accepting on every listener, drains in-flight requests (at most
    /// `drain`), then destroys every instance.
    pub async fn shutdown(&mut self, drain: Duration) {
        self.publish(State::Stopping);
        let listeners: Vec<Listener> = self.tiers.values_mut().filter_map(|t| t.listener.take()).collect();
        let stops = listeners.into_iter().map(|l| l.stop(drain));
        futures_util::future::join_all(stops).await;
        for (id, tier) in self.tiers.drain(..) {
            tier.endpoint.set(Vec::new());
            tracing::info!(tier = %id, "Tier stopped.");
        }
    }
}

/// The outbound links of `tier`, routed to the target endpoints.
fn link_table(topology: &Topology, tier: &TierId, endpoints: &HashMap<TierId, Arc<Endpoint>>) -> LinkTable {
    let routes = topology
        .links_from(tier)
        .filter_map(|spec| {
            let target = endpoints.get(&spec.to)?.clone();
            Some((spec.name.clone(), Arc::new(Route { spec: spec.clone(), target })))
        })
        .collect();
    LinkTable::new(routes)
}
