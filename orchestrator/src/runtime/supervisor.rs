//! The supervisor owns the running tiers. It applies topologies — the first
//! one at start, then each reload — as a plan (`topology::diff`): prepare
//! everything new (instances, bound addresses), then commit by swapping
//! routing atomically, then let the old drain. A failure while preparing
//! changes nothing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use indexmap::IndexMap;
use tokio::sync::watch;

use super::status::{
    InstanceStatus, LinkStatus, ReloadCounts, ReloadRecord, State, Status, TierState, TierStatus, Trigger,
    instance_state, timestamp,
};
use crate::links::{Endpoint, LinkTable, Route};
use crate::plugins::{HostCtx, Instance, LoadError, PluginHandle, Registry};
use crate::serve::listener::{Bound, Listener};
use crate::serve::workers::Workers;
use crate::topology::diff::{self, Instances, Listen, Plan};
use crate::topology::{self, LinkSpec, TierId, TierSpec, Topology};

/// Why a topology could not be applied. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tier `{tier}`: {source}")]
    Plugin { tier: TierId, source: LoadError },
    #[error("tier `{tier}` replica {replica} failed to start: {reason}")]
    Instance { tier: TierId, replica: u32, reason: String },
    #[error("tier `{tier}` replica {replica} did not become ready: {reason}")]
    Ready { tier: TierId, replica: u32, reason: String },
    #[error("tier `{tier}` cannot listen on {addr}: {source}")]
    Bind { tier: TierId, addr: SocketAddr, source: std::io::Error },
}

struct RunningTier {
    spec: TierSpec,
    plugin: Arc<PluginHandle>,
    /// Stable for the tier's life: every route to the tier points here.
    endpoint: Arc<Endpoint>,
    /// Stable for the tier's life: every instance of the tier reads it.
    links: Arc<LinkTable>,
    instances: Vec<Arc<Instance>>,
    /// The generation in which the current instances were started.
    generation: u64,
    listener: Option<Listener>,
    /// `starting` until its replicas first settled (ready, or failed), then
    /// `running` (a job: `completed` or `failed`); `blocked` if a tier it
    /// starts after failed.
    state: TierState,
    /// Why it failed or is blocked.
    reason: Option<String>,
}

/// What a reload prepared and has not committed yet. Dropping it undoes it:
/// the new instances are destroyed and the bound addresses released.
/// A store tier to replace stop first, with its spec and plugin as they were.
type Recreate = (TierId, topology::TierSpec, Arc<PluginHandle>);

#[derive(Default)]
struct Prepared {
    instances: HashMap<TierId, Vec<Arc<Instance>>>,
    new_tiers: HashMap<TierId, (Arc<Endpoint>, Arc<LinkTable>)>,
    bound: HashMap<TierId, Bound>,
}

/// Why a restart did not restart every replica asked for.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// No such tier or replica here: nothing was done.
    #[error("{0}")]
    NoSuch(String),
    /// A new replica did not start or become ready: the restart stopped there.
    #[error("{0}")]
    Failed(String),
}

/// The running topology.
pub struct Supervisor {
    registry: Arc<Registry>,
    topology: Topology,
    tiers: IndexMap<TierId, RunningTier>,
    generation: u64,
    started_at: SystemTime,
    drain: Duration,
    /// Colour instances' log lines per tier.
    color: bool,
    state: State,
    last_reload: Option<ReloadRecord>,
    reload_history: std::collections::VecDeque<ReloadRecord>,
    counts: ReloadCounts,
    /// What went wrong in the last apply's rolling updates.
    roll_problems: Vec<String>,
    status: watch::Sender<Status>,
    /// Where the connections of tier and link listeners are served.
    workers: Workers,
    /// The host whose share of a placed topology runs here.
    placement: Option<topology::Placement>,
    /// The tiers that run here, by name, for the peer listener.
    local: Arc<arc_swap::ArcSwap<HashMap<String, Arc<Endpoint>>>>,
    /// Where tiers keep durable state (`--data-dir`): `ORCH_DATA_DIR`.
    data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("topology", &self.topology.name)
            .field("generation", &self.generation)
            .finish()
    }
}

fn instance_status(i: &Arc<Instance>) -> InstanceStatus {
    let detail = i.detail();
    let ready = i.is_ready();
    InstanceStatus {
        replica: i.replica(),
        id: i.id,
        started_at: timestamp(i.started),
        state: instance_state(ready, &detail),
        detail,
        ready,
        handle: Arc::downgrade(i),
    }
}

/// The status of a topology that is not running yet.
pub fn starting_status(topology: &Topology) -> Status {
    // Every tier is shown from the first moment, starting, before any runs.
    let tiers = topology
        .tiers
        .values()
        .map(|spec| TierStatus {
            name: spec.id.to_string(),
            plugin: spec.plugin.clone(),
            plugin_version: String::new(),
            origin: String::new(),
            replicas: spec.replicas,
            listen: None,
            state: TierState::Starting,
            reason: None,
            run: (spec.run == topology::Run::Once).then_some("once"),
            generation: 0,
            instances: Vec::new(),
        })
        .collect();
    Status {
        name: topology.name.clone(),
        file: topology.file.display().to_string(),
        generation: 0,
        state: State::Starting,
        started_at: timestamp(SystemTime::now()),
        tiers,
        links: Vec::new(),
        last_reload: None,
        reloads: ReloadCounts::default(),
        reload_history: Vec::new(),
    }
}

fn empty_like(t: &Topology) -> Topology {
    Topology {
        name: t.name.clone(),
        file: t.file.clone(),
        plugin_dirs: t.plugin_dirs.clone(),
        tiers: IndexMap::new(),
        links: Vec::new(),
        hosts: t.hosts.clone(),
    }
}

impl Supervisor {
    /// A supervisor of nothing yet, for `topology`: [`Supervisor::start`]
    /// starts its tiers.
    pub fn new(
        topology: &Topology,
        registry: Arc<Registry>,
        status: watch::Sender<Status>,
        workers: Workers,
        drain: Duration,
        color: bool,
    ) -> Self {
        Self {
            registry,
            workers,
            topology: empty_like(topology),
            tiers: IndexMap::new(),
            generation: 0,
            started_at: SystemTime::now(),
            drain,
            color,
            state: State::Starting,
            last_reload: None,
            reload_history: Default::default(),
            counts: ReloadCounts::default(),
            roll_problems: Vec::new(),
            status,
            placement: None,
            local: Arc::default(),
            data_dir: None,
        }
    }

    /// Tiers keep durable state under `dir` (`ORCH_DATA_DIR`).
    pub fn with_data_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.data_dir = dir;
        self
    }

    /// Runs `placement`'s share of each topology applied from now on.
    pub fn with_placement(mut self, placement: Option<topology::Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// The tiers that run here (not those of other hosts), kept current.
    pub fn local_tiers(&self) -> Arc<arc_swap::ArcSwap<HashMap<String, Arc<Endpoint>>>> {
        self.local.clone()
    }

    /// This host's share of `topology`.
    pub fn share(&self, topology: Topology) -> Result<Topology, String> {
        match &self.placement {
            Some(p) => topology.share(p),
            None => Ok(topology),
        }
    }

    /// Starts every tier of `topology` (generation 1), each as soon as the
    /// tiers it depends on (those it links to) settled — became ready, or
    /// failed to — independently of every other tier: a slow or failing tier
    /// holds up only its callers, and only until it settles. A tier's
    /// listener serves once its own replicas settled. Every tier is in the
    /// status, and routable to once ready, from the first moment.
    ///
    /// A replica that does not become ready does not stop the others: it is
    /// reported, and its tier runs without it. Abandoned (its future
    /// dropped, at a stop signal), what it started so far is consistent, and
    /// [`Supervisor::shutdown`] stops it.
    pub async fn start(&mut self, topology: Topology) -> Result<(), StartError> {
        use futures_util::stream::{FuturesUnordered, StreamExt as _};
        let mut plugins = self.plugins(&topology)?;
        let generation = 1;
        for (id, spec) in &topology.tiers {
            let plugin = plugins.remove(id).expect("every tier of the topology has a plugin");
            let (endpoint, links) = self.tier_routing(id);
            let tier = RunningTier {
                spec: spec.clone(),
                plugin,
                endpoint,
                links,
                instances: Vec::new(),
                generation,
                listener: None,
                state: TierState::Starting,
                reason: None,
            };
            self.tiers.insert(id.clone(), tier);
        }
        let endpoints: HashMap<TierId, Arc<Endpoint>> =
            self.tiers.iter().map(|(id, t)| (id.clone(), t.endpoint.clone())).collect();
        for (id, tier) in &self.tiers {
            tier.links.replace(routes(&topology, id, &endpoints));
        }
        self.topology = topology;
        self.generation = generation;
        self.publish();

        let mut graph = StartGraph::new(&self.topology, |_| true);
        let mut settling = FuturesUnordered::new();
        let mut shown_blocked = 0;
        loop {
            let startable = graph.startable();
            // What will never start, shown so at once.
            let blocked = graph.blocked();
            for (id, why) in blocked.iter().skip(shown_blocked) {
                tracing::error!(tier = %id, reason = %why, "Tier not started.");
                if let Some(tier) = self.tiers.get_mut(id) {
                    tier.state = TierState::Blocked;
                    tier.reason = Some(why.clone());
                }
            }
            if blocked.len() > shown_blocked {
                shown_blocked = blocked.len();
                self.publish();
            }
            for id in startable {
                let tier = &self.tiers[&id];
                let (plugin, links) = (tier.plugin.clone(), tier.links.clone());
                let mut instances = Vec::new();
                for replica in 0..tier.spec.replicas {
                    instances.push(self.new_instance(&self.topology, &id, &plugin, &links, replica)?);
                }
                let tier = self.tiers.get_mut(&id).expect("a tier being started is running");
                tier.instances = instances.clone();
                // Routed to once ready: an endpoint picks only ready replicas.
                tier.endpoint.set(instances.clone());
                self.publish();
                settling.push(async move {
                    let ready = futures_util::future::join_all(instances.iter().map(|i| i.wait_ready())).await;
                    (id, instances, ready)
                });
            }
            let Some((id, instances, ready)) = settling.next().await else { break };
            let job = self.tiers[&id].spec.run == topology::Run::Once;
            let mut failure = None;
            let gave_up = ready.iter().filter(|r| r.is_err()).count();
            for (instance, result) in instances.iter().zip(ready) {
                if let Err(reason) = result {
                    let error =
                        StartError::Ready { tier: instance.tier().clone(), replica: instance.replica(), reason };
                    if job {
                        tracing::error!(error = %error, "A job failed; the tiers that start after it do not start.");
                    } else {
                        tracing::error!(error = %error, "A replica failed to start; its tier runs without it.");
                    }
                    failure.get_or_insert_with(|| error.to_string());
                }
            }
            let tier = self.tiers.get_mut(&id).expect("a started tier is running");
            tier.state = match (job, &failure) {
                (true, None) => TierState::Completed,
                (true, Some(_)) => TierState::Failed,
                // Every replica gave up: nothing of it runs.
                (false, Some(_)) if gave_up == instances.len() => TierState::Failed,
                (false, _) => TierState::Running,
            };
            tier.reason = failure.clone();
            if job && failure.is_none() {
                tracing::info!(tier = %id, "Job completed.");
            }
            if let Some(addr) = tier.spec.listen {
                let bound =
                    Bound::bind(addr).await.map_err(|source| StartError::Bind { tier: id.clone(), addr, source })?;
                let listener =
                    super::listener::serve_tier(bound, tier.endpoint.clone(), tier.spec.max_body, &self.workers);
                tracing::info!(tier = %id, addr = %listener.addr, "Tier listening.");
                tier.listener = Some(listener);
            }
            graph.settle(&id, failure.is_none());
            self.publish();
        }
        self.state = State::Running;
        self.publish();
        Ok(())
    }

    /// The plugin of each tier of `topology`.
    fn plugins(&self, topology: &Topology) -> Result<HashMap<TierId, Arc<PluginHandle>>, StartError> {
        let mut plugins = HashMap::new();
        for (id, spec) in &topology.tiers {
            let plugin = self
                .registry
                .lookup(&spec.plugin, &topology.plugin_dirs)
                .map_err(|source| StartError::Plugin { tier: id.clone(), source })?;
            plugins.insert(id.clone(), plugin);
        }
        Ok(plugins)
    }

    /// A new tier's endpoint (every route to it) and outbound link table.
    fn tier_routing(&self, id: &TierId) -> (Arc<Endpoint>, Arc<LinkTable>) {
        let endpoint = Arc::new(Endpoint::new(id.clone()));
        let ports = self.placement.as_ref().map(|p| p.link_ports.clone()).unwrap_or_default();
        (endpoint, Arc::new(LinkTable::new(HashMap::new(), self.workers.clone()).with_ports(ports)))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The files whose change triggers a reload: the topology and the plugin
    /// libraries in use.
    pub fn watched_files(&self) -> (PathBuf, Vec<PathBuf>) {
        let mut plugins: Vec<PathBuf> =
            self.tiers.values().filter_map(|t| t.plugin.path().map(PathBuf::from)).collect();
        plugins.sort();
        plugins.dedup();
        (self.topology.file.clone(), plugins)
    }

    /// Reads the topology file again and applies what changed. On any error
    /// the running topology is left exactly as it was.
    pub async fn reload(&mut self, trigger: Trigger) -> ReloadRecord {
        let started = Instant::now();
        let file = self.topology.file.clone();
        let result = match topology::load(&file, &self.registry).map(|t| self.share(t)) {
            Ok(Ok(new)) => self.apply(new).await.map_err(ReloadFailure::Start),
            Ok(Err(why)) => Err(ReloadFailure::Placement(why)),
            Err(e) => Err(ReloadFailure::Topology(e)),
        };
        let mut record = ReloadRecord::new(&self.topology.name, &file, trigger, self.generation, started.elapsed());
        self.counts.attempts += 1;
        match result {
            Ok(plan) if plan.is_empty() => {
                record.outcome = "unchanged";
                record.summary = plan.summary();
                tracing::info!(%trigger, generation = self.generation, "Reload: nothing changed.");
            }
            Ok(plan) => {
                self.counts.applied += 1;
                record.outcome = "applied";
                record.summary = plan.summary();
                record.changes = plan.changes();
                for problem in std::mem::take(&mut self.roll_problems) {
                    record.summary.push_str(&format!("; {problem}"));
                }
                tracing::info!(%trigger, generation = self.generation, changes = %record.summary, "Reload applied.");
            }
            Err(failure) => {
                self.counts.failed += 1;
                record.outcome = "failed";
                failure.describe(&mut record);
                tracing::error!(
                    %trigger,
                    generation = self.generation,
                    error = %record.error.as_deref().unwrap_or_default().trim_end(),
                    "Reload failed; the running topology is unchanged."
                );
            }
        }
        self.last_reload = Some(record.clone());
        if self.reload_history.len() == super::status::MAX_RELOAD_HISTORY {
            self.reload_history.pop_front();
        }
        self.reload_history.push_back(record.clone());
        self.publish();
        record
    }

    /// Applies `new`: the plan of differences, prepared then committed. A
    /// replica that does not become ready fails the reload, and the old
    /// keeps serving.
    async fn apply(&mut self, new: Topology) -> Result<Plan, StartError> {
        let plugins = self.plugins(&new)?;
        let replaced: HashSet<String> = new
            .tiers
            .iter()
            .filter(|(id, _)| self.tiers.get(*id).is_some_and(|t| !Arc::ptr_eq(&t.plugin, &plugins[*id])))
            .map(|(_, spec)| spec.plugin.clone())
            .collect();
        let plan = diff::diff(&self.topology, &new, &replaced);
        if plan.is_empty() {
            self.topology = new;
            return Ok(plan);
        }
        let generation = self.generation + 1;
        let prepared = self.prepare(&new, &plan, &plugins).await?;
        let (rolling, recreate) = self.commit(new, &plan, plugins, prepared, generation);
        self.roll_problems = self.roll(rolling).await;
        let recreated = self.recreate(recreate).await;
        self.roll_problems.extend(recreated);
        Ok(plan)
    }

    /// Makes replica `replica` of tier `id` as `new` specifies it.
    fn new_instance(
        &self,
        new: &Topology,
        id: &TierId,
        plugin: &Arc<PluginHandle>,
        links: &Arc<LinkTable>,
        replica: u32,
    ) -> Result<Arc<Instance>, StartError> {
        let spec = &new.tiers[id];
        let base_dir = new.base_dir();
        let link_names: Vec<plugin_api::LinkInfo> = new.links_from(id).map(LinkSpec::info).collect();
        // Compose's palette: cyan, yellow, green, magenta, blue, red.
        const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];
        let color = self.color.then(|| PALETTE[new.tiers.get_index_of(id).unwrap_or(0) % PALETTE.len()]);
        let mut env = spec.env.clone();
        if let Some(dir) = &self.data_dir {
            env.entry(topology::model::DATA_DIR_ENV.to_owned()).or_insert_with(|| dir.display().to_string());
        }
        if spec.run == topology::Run::Once {
            env.insert(topology::model::RUN_ENV.to_owned(), "once".to_owned());
        }
        let ctx = HostCtx::new(id.clone(), replica, links.clone(), env, &base_dir, link_names).with_color(color);
        let instance = Instance::create(plugin.clone(), &spec.config, Arc::new(ctx))
            .map_err(|reason| StartError::Instance { tier: id.clone(), replica, reason })?;
        tracing::info!(tier = %id, replica, instance = instance.id, plugin = %spec.plugin, "Instance started.");
        Ok(instance)
    }

    async fn prepare(
        &self,
        new: &Topology,
        plan: &Plan,
        plugins: &HashMap<TierId, Arc<PluginHandle>>,
    ) -> Result<Prepared, StartError> {
        use futures_util::stream::{FuturesUnordered, StreamExt as _};
        let mut prepared = Prepared::default();
        // Each tier's new replicas start once those of the tiers it calls
        // are ready (tiers in a cycle start together); a tier whose replicas
        // the plan does not start is ready as it is.
        // A store's replacement starts after the commit, once its old
        // server stopped (`recreate`): the two cannot share its data.
        let starts = |id: &TierId| match plan.tiers.get(id).map(|p| &p.instances) {
            Some(Instances::Replace) => !plugins[id].holds_data(),
            Some(Instances::Start) => true,
            Some(Instances::Scale { from, to }) => to > from,
            _ => false,
        };
        let mut graph = StartGraph::new(new, starts);
        let mut settling = FuturesUnordered::new();
        loop {
            for id in graph.startable() {
                let (Some(tier_plan), Some(spec)) = (plan.tiers.get(&id), new.tiers.get(&id)) else { continue };
                let (links, replicas) = match &tier_plan.instances {
                    Instances::Start => {
                        let (endpoint, links) = self.tier_routing(&id);
                        prepared.new_tiers.insert(id.clone(), (endpoint, links.clone()));
                        (links, 0..spec.replicas)
                    }
                    // A tier of several replicas is replaced one replica at a
                    // time: the first (the canary) here, so that a failure
                    // changes nothing; the others after the commit (`roll`).
                    Instances::Replace if plugins[&id].holds_data() => continue,
                    Instances::Replace => (self.tiers[&id].links.clone(), 0..spec.replicas.min(1)),
                    Instances::Scale { from, to } if to > from => (self.tiers[&id].links.clone(), *from..*to),
                    _ => continue,
                };
                let mut instances = Vec::with_capacity(replicas.len());
                for replica in replicas {
                    instances.push(self.new_instance(new, &id, &plugins[&id], &links, replica)?);
                }
                prepared.instances.insert(id.clone(), instances.clone());
                settling.push(async move {
                    let ready = futures_util::future::join_all(instances.iter().map(|i| i.wait_ready())).await;
                    (id, instances, ready)
                });
            }
            let Some((id, instances, ready)) = settling.next().await else { break };
            for (instance, result) in instances.iter().zip(ready) {
                if let Err(reason) = result {
                    return Err(StartError::Ready {
                        tier: instance.tier().clone(),
                        replica: instance.replica(),
                        reason,
                    });
                }
            }
            graph.settle(&id, true);
        }
        for (id, tier_plan) in &plan.tiers {
            if let Listen::Bind(addr) = tier_plan.listen {
                let bound =
                    Bound::bind(addr).await.map_err(|source| StartError::Bind { tier: id.clone(), addr, source })?;
                prepared.bound.insert(id.clone(), bound);
            }
        }
        Ok(prepared)
    }

    /// Switches to what `prepare` made. Cannot fail. Order matters for zero
    /// dropped requests: targets become routable before anything routes to them,
    /// and removed tiers are unrouted before they stop.
    fn commit(
        &mut self,
        new: Topology,
        plan: &Plan,
        mut plugins: HashMap<TierId, Arc<PluginHandle>>,
        mut prepared: Prepared,
        generation: u64,
    ) -> (Vec<TierId>, Vec<Recreate>) {
        let mut retired: Vec<Arc<Instance>> = Vec::new();
        let mut closing: Vec<Listener> = Vec::new();
        let mut rolling = Vec::new();
        let mut recreate = Vec::new();

        // 1. New and changed replicas become routable.
        for (id, tier_plan) in &plan.tiers {
            let Some(spec) = new.tiers.get(id) else { continue };
            let fresh = prepared.instances.remove(id).unwrap_or_default();
            match &tier_plan.instances {
                Instances::Start => {
                    let Some((endpoint, links)) = prepared.new_tiers.remove(id) else { continue };
                    endpoint.set(fresh.clone());
                    let plugin = plugins.remove(id).expect("every tier of the new topology has a plugin");
                    self.tiers.insert(
                        id.clone(),
                        RunningTier {
                            spec: spec.clone(),
                            plugin,
                            endpoint,
                            links,
                            instances: fresh,
                            generation,
                            listener: None,
                            state: if spec.run == topology::Run::Once {
                                TierState::Completed
                            } else {
                                TierState::Running
                            },
                            reason: None,
                        },
                    );
                }
                Instances::Replace if plugins[id].holds_data() => {
                    // Replaced after the commit, stop first (`recreate`).
                    let tier = self.tiers.get_mut(id).expect("a replaced tier is running");
                    let old_plugin = std::mem::replace(
                        &mut tier.plugin,
                        plugins.remove(id).expect("every tier of the new topology has a plugin"),
                    );
                    let old_spec = std::mem::replace(&mut tier.spec, spec.clone());
                    tier.generation = generation;
                    recreate.push((id.clone(), old_spec, old_plugin));
                }
                Instances::Replace => {
                    let tier = self.tiers.get_mut(id).expect("a replaced tier is running");
                    if (fresh.len() as u32) < spec.replicas {
                        // Rolling: the canary takes replica 0's place; `roll` does the rest.
                        let mut replicas = tier.instances.clone();
                        for (i, instance) in fresh.into_iter().enumerate() {
                            match replicas.get_mut(i) {
                                Some(slot) => retired.push(std::mem::replace(slot, instance)),
                                None => replicas.push(instance),
                            }
                        }
                        tier.endpoint.set(replicas.clone());
                        tier.instances = replicas;
                        rolling.push(id.clone());
                    } else {
                        tier.endpoint.set(fresh.clone());
                        retired.extend(std::mem::replace(&mut tier.instances, fresh));
                    }
                    tier.generation = generation;
                    tier.plugin = plugins.remove(id).expect("every tier of the new topology has a plugin");
                    tier.spec = spec.clone();
                    // Its new replicas passed (a job: ran to completion).
                    tier.state =
                        if spec.run == topology::Run::Once { TierState::Completed } else { TierState::Running };
                    tier.reason = None;
                }
                Instances::Scale { to, .. } => {
                    let tier = self.tiers.get_mut(id).expect("a scaled tier is running");
                    tier.instances.extend(fresh);
                    retired.extend(tier.instances.split_off(*to as usize));
                    tier.endpoint.set(tier.instances.clone());
                    tier.spec = spec.clone();
                }
                Instances::Keep => {
                    if let Some(tier) = self.tiers.get_mut(id) {
                        tier.spec = spec.clone();
                    }
                }
                Instances::Stop => {}
            }
        }

        // 2. Every link table is rewired to the new topology.
        let endpoints: HashMap<TierId, Arc<Endpoint>> =
            self.tiers.iter().map(|(id, t)| (id.clone(), t.endpoint.clone())).collect();
        for (id, tier) in &self.tiers {
            if new.tiers.contains_key(id) {
                tier.links.replace(routes(&new, id, &endpoints));
            }
        }

        // 3. Removed tiers: unrouted now (step 2), emptied, their listeners closed.
        for id in plan.tiers_with(&Instances::Stop) {
            if let Some(mut tier) = self.tiers.shift_remove(id) {
                tier.endpoint.set(Vec::new());
                tier.links.replace(HashMap::new());
                retired.append(&mut tier.instances);
                closing.extend(tier.listener.take());
                tracing::info!(tier = %id, "Tier removed.");
            }
        }

        // 4. Listeners: new addresses serve before old ones close.
        for (id, tier_plan) in &plan.tiers {
            let Some(tier) = self.tiers.get_mut(id) else { continue };
            if let Some(bound) = prepared.bound.remove(id) {
                let listener =
                    super::listener::serve_tier(bound, tier.endpoint.clone(), tier.spec.max_body, &self.workers);
                tracing::info!(tier = %id, addr = %listener.addr, "Tier listening.");
                closing.extend(tier.listener.replace(listener));
            } else if tier_plan.listen == Listen::Close {
                closing.extend(tier.listener.take());
            }
            if tier_plan.max_body_changed
                && let Some(listener) = &tier.listener
            {
                listener.set_max_body(tier.spec.max_body);
            }
        }

        // Status is published by the caller, with the reload's record.
        self.topology = new;
        self.generation = generation;

        // 5. The old drains: in-flight calls hold their instance until they
        // finish; the last reference destroys it. Old listeners drain apart.
        let drain = self.drain;
        if !retired.is_empty() {
            tracing::info!(instances = retired.len(), "Old instances draining.");
        }
        for instance in retired {
            tokio::spawn(retire(instance, drain));
        }
        for listener in closing {
            tokio::spawn(async move {
                let addr = listener.addr;
                listener.stop(drain).await;
                tracing::info!(%addr, "Listener closed.");
            });
        }
        (rolling, recreate)
    }

    /// Replaces the replicas of tiers that hold data (stores), stop first:
    /// the old server stops (its callers' connections close; they reconnect
    /// through the same link address), then the new one starts on the same
    /// data. If the new one cannot start, one as before starts again in its
    /// place and the reload says so: a bad change costs a restart, never the
    /// tier. Returns what went wrong, if anything.
    async fn recreate(&mut self, tiers: Vec<Recreate>) -> Vec<String> {
        let mut problems = Vec::new();
        for (id, old_spec, old_plugin) in tiers {
            let Some(tier) = self.tiers.get(&id) else { continue };
            let (plugin, links, old) = (tier.plugin.clone(), tier.links.clone(), tier.instances.clone());
            tier.endpoint.set(Vec::new());
            tracing::info!(tier = %id, "Stopping the tier's server before its replacement starts (they share its data).");
            for instance in &old {
                instance.stop().await;
            }
            let mut fresh = Vec::new();
            let mut failure = None;
            for replica in 0..tier.spec.replicas {
                let started = match self.new_instance(&self.topology, &id, &plugin, &links, replica) {
                    Ok(instance) => instance
                        .wait_ready()
                        .await
                        .map(|()| instance)
                        .map_err(|reason| StartError::Ready { tier: id.clone(), replica, reason }),
                    Err(e) => Err(e),
                };
                match started {
                    Ok(instance) => fresh.push(instance),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                tracing::error!(error = %e, "The tier's new server could not start; its server as before starts again.");
                problems.push(format!("replacing `{id}` failed, its server as before runs again: {e}"));
                for instance in fresh.drain(..) {
                    instance.stop().await;
                }
                // As before: the old spec, the old plugin.
                let mut before = self.topology.clone();
                before.tiers.insert(id.clone(), old_spec.clone());
                for replica in 0..old_spec.replicas {
                    match self.new_instance(&before, &id, &old_plugin, &links, replica) {
                        Ok(instance) => {
                            if let Err(e) = instance.wait_ready().await {
                                problems.push(format!("`{id}` as before could not start either: {e}"));
                            }
                            fresh.push(instance);
                        }
                        Err(e) => problems.push(format!("`{id}` as before could not start either: {e}")),
                    }
                }
                // What runs is the tier as before: saving the change again retries it.
                self.topology.tiers.insert(id.clone(), old_spec.clone());
                if let Some(tier) = self.tiers.get_mut(&id) {
                    tier.spec = old_spec;
                    tier.plugin = old_plugin;
                }
            }
            if let Some(tier) = self.tiers.get_mut(&id) {
                tier.endpoint.set(fresh.clone());
                tier.instances = fresh;
                tier.state = TierState::Running;
                tier.reason = None;
            }
            self.publish();
        }
        problems
    }

    /// Finishes rolling updates: for each tier, replaces its remaining old
    /// replicas one at a time, each new one ready before it takes the old
    /// one's place and the old one drains. If a new replica cannot start, the
    /// update stops there: the old replicas left keep serving. Returns what
    /// went wrong, if anything.
    async fn roll(&mut self, tiers: Vec<TierId>) -> Vec<String> {
        let mut problems = Vec::new();
        for id in tiers {
            let Some(tier) = self.tiers.get(&id) else { continue };
            let (plugin, links, replicas) = (tier.plugin.clone(), tier.links.clone(), tier.spec.replicas);
            let mut complete = true;
            for replica in 1..replicas {
                let started = match self.new_instance(&self.topology, &id, &plugin, &links, replica) {
                    Ok(instance) => instance
                        .wait_ready()
                        .await
                        .map(|()| instance)
                        .map_err(|reason| StartError::Ready { tier: id.clone(), replica, reason }),
                    Err(e) => Err(e),
                };
                let instance = match started {
                    Ok(instance) => instance,
                    Err(e) => {
                        tracing::error!(error = %e, "Rolling update stopped; the remaining old replicas keep serving.");
                        problems.push(format!("rolling update of `{id}` stopped: {e}"));
                        complete = false;
                        break;
                    }
                };
                let Some(tier) = self.tiers.get_mut(&id) else { break };
                let old = match tier.instances.get_mut(replica as usize) {
                    Some(slot) => Some(std::mem::replace(slot, instance)),
                    None => {
                        tier.instances.push(instance);
                        None
                    }
                };
                tier.endpoint.set(tier.instances.clone());
                if let Some(old) = old {
                    tokio::spawn(retire(old, self.drain));
                }
            }
            // Fewer replicas than before: the extra old ones go.
            if let Some(tier) = self.tiers.get_mut(&id)
                && tier.instances.len() > replicas as usize
                && complete
            {
                let extra = tier.instances.split_off(replicas as usize);
                tier.endpoint.set(tier.instances.clone());
                for old in extra {
                    tokio::spawn(retire(old, self.drain));
                }
            }
        }
        problems
    }

    /// Restarts tier `name`'s replicas (all of them, or `replica`), one at
    /// a time, as a reload replaces them: each new instance is ready before
    /// it takes the old one's place, and the old one drains. If a new one
    /// cannot start, the restart stops there and the old ones left keep
    /// serving. Returns the replicas restarted.
    pub async fn restart(&mut self, name: &str, replica: Option<u32>) -> Result<Vec<u32>, RestartError> {
        let Some((id, tier)) = self.tiers.iter().find(|(id, _)| id.as_str() == name) else {
            let names: Vec<&str> = self.tiers.keys().map(TierId::as_str).collect();
            return Err(RestartError::NoSuch(format!(
                "no tier `{name}` runs here; its tiers are: {}",
                names.join(", ")
            )));
        };
        if tier.spec.plugin == topology::PEER_PLUGIN {
            return Err(RestartError::NoSuch(format!("tier `{name}` runs on another host: restart it there")));
        }
        let id = id.clone();
        let count = tier.instances.len() as u32;
        let replicas: Vec<u32> = match replica {
            Some(r) if r < count => vec![r],
            Some(r) => {
                return Err(RestartError::NoSuch(format!(
                    "tier `{name}` has {count} replica(s): 0 to {}; there is no {r}",
                    count.saturating_sub(1)
                )));
            }
            None => (0..count).collect(),
        };
        let (plugin, links) = (tier.plugin.clone(), tier.links.clone());
        let mut restarted = Vec::new();
        for r in replicas {
            // A store's server stops before its next one starts on its data.
            if plugin.holds_data()
                && let Some(tier) = self.tiers.get(&id)
                && let Some(old) = tier.instances.get(r as usize)
            {
                let others: Vec<_> = tier.instances.iter().filter(|i| !Arc::ptr_eq(i, old)).cloned().collect();
                tier.endpoint.set(others);
                old.stop().await;
            }
            let started = match self.new_instance(&self.topology, &id, &plugin, &links, r) {
                Ok(instance) => match instance.wait_ready().await {
                    Ok(()) => Ok(instance),
                    Err(reason) => {
                        // A store's old server is gone: the new one, failed, shows why.
                        if plugin.holds_data()
                            && let Some(slot) = self.tiers.get_mut(&id).and_then(|t| t.instances.get_mut(r as usize))
                        {
                            *slot = instance;
                        }
                        Err(StartError::Ready { tier: id.clone(), replica: r, reason })
                    }
                },
                Err(e) => Err(e),
            };
            let instance = match started {
                Ok(instance) => instance,
                Err(e) => {
                    tracing::error!(error = %e, "Restart stopped; the old replicas left keep serving.");
                    self.publish();
                    let done =
                        if restarted.is_empty() { String::new() } else { format!(" (restarted: {restarted:?})") };
                    return Err(RestartError::Failed(format!("{e}{done}")));
                }
            };
            let Some(tier) = self.tiers.get_mut(&id) else { break };
            let Some(slot) = tier.instances.get_mut(r as usize) else { break };
            let old = std::mem::replace(slot, instance);
            tier.endpoint.set(tier.instances.clone());
            tokio::spawn(retire(old, self.drain));
            tracing::info!(tier = %id, replica = r, "Replica restarted.");
            restarted.push(r);
            self.publish();
        }
        Ok(restarted)
    }

    fn publish(&self) {
        let local = self
            .tiers
            .iter()
            .filter(|(_, t)| t.spec.plugin != topology::PEER_PLUGIN)
            .map(|(id, t)| (id.to_string(), t.endpoint.clone()))
            .collect();
        self.local.store(Arc::new(local));
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
                state: if self.state == State::Stopping { TierState::Stopping } else { t.state },
                reason: t.reason.clone(),
                run: (t.spec.run == topology::Run::Once).then_some("once"),
                generation: t.generation,
                instances: t.instances.iter().map(instance_status).collect(),
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
            state: self.state,
            started_at: timestamp(self.started_at),
            tiers,
            links,
            last_reload: self.last_reload.clone(),
            reloads: self.counts,
            reload_history: self.reload_history.iter().cloned().collect(),
        });
    }

    /// Stops accepting on every listener, drains in-flight requests (at most
    /// the drain timeout), then drops every instance.
    pub async fn shutdown(&mut self) {
        self.state = State::Stopping;
        self.publish();
        let listeners: Vec<Listener> = self.tiers.values_mut().filter_map(|t| t.listener.take()).collect();
        let drain = self.drain;
        futures_util::future::join_all(listeners.into_iter().map(|l| l.stop(drain))).await;
        // Callers stop before the tiers they call.
        let mut order: Vec<TierId> = start_order(&self.topology).into_iter().flatten().collect();
        order.reverse();
        for id in order {
            let Some(mut tier) = self.tiers.shift_remove(&id) else { continue };
            tier.endpoint.set(Vec::new());
            let instances = std::mem::take(&mut tier.instances);
            futures_util::future::join_all(instances.into_iter().map(|i| retire(i, drain))).await;
            tier.links.replace(HashMap::new());
            tracing::info!(tier = %id, "Tier stopped.");
        }
    }
}

/// The file an unreadable topology's error is about.
fn unreadable_file(e: &topology::Error) -> PathBuf {
    match e {
        topology::Error::Read { path, .. }
        | topology::Error::NotRegular { path, .. }
        | topology::Error::TooLarge { path, .. }
        | topology::Error::Insecure { path, .. } => path.clone(),
        topology::Error::Invalid(d) => d.file.clone(),
    }
}

/// Why a reload failed.
enum ReloadFailure {
    Topology(topology::Error),
    /// The file no longer names this host.
    Placement(String),
    Start(StartError),
}

impl ReloadFailure {
    fn describe(&self, record: &mut ReloadRecord) {
        match self {
            ReloadFailure::Topology(topology::Error::Invalid(d)) => {
                record.error_kind = Some("invalid");
                record.error = Some(d.to_string());
                record.errors =
                    d.items.iter().map(|i| super::status::LocatedError::in_source(&d.file, i, &d.source)).collect();
            }
            ReloadFailure::Topology(e) => {
                record.error_kind =
                    Some(if matches!(e, topology::Error::Insecure { .. }) { "insecure" } else { "unreadable" });
                record.error = Some(e.to_string());
                // Located at the file itself: it has no line to point at.
                let d = topology::Diagnostic::new(&topology::node::KeyPath::root(), e.to_string());
                record.errors = vec![super::status::LocatedError::new(&unreadable_file(e), &d)];
            }
            ReloadFailure::Placement(why) => {
                record.error_kind = Some("invalid");
                record.error = Some(why.clone());
            }
            ReloadFailure::Start(e) => {
                record.error_kind = Some("start");
                record.error = Some(e.to_string());
            }
        }
    }
}

/// The outbound links of `tier` in `topology`, routed to `endpoints`.
fn routes(
    topology: &Topology,
    tier: &TierId,
    endpoints: &HashMap<TierId, Arc<Endpoint>>,
) -> HashMap<String, Arc<Route>> {
    topology
        .links_from(tier)
        .filter_map(|spec| {
            let target = endpoints.get(&spec.to)?.clone();
            Some((spec.name.clone(), Arc::new(Route::new(spec.clone(), target))))
        })
        .collect()
}

/// Lets `instance` finish its in-flight calls (at most `drain`), then stops it.
async fn retire(instance: Arc<Instance>, drain: Duration) {
    if !instance.drained(drain).await {
        tracing::warn!(tier = %instance.tier(), replica = instance.replica(), "Drain timeout: stopping with calls in flight.");
    }
    instance.stop().await;
}

/// The tiers of `topology` grouped so that each group's predecessors (link
/// targets, `after:`) are in earlier groups or in the group itself (a cycle
/// of links): the order to start them, reversed to stop them.
fn start_order(topology: &Topology) -> Vec<Vec<TierId>> {
    // The start graph's edges: a cycle through a queue is broken at its
    // delivery, so that its subscribers stop before the tiers they call
    // (a worker's connections to its database close before the database
    // drains).
    let waits = start_edges(topology);
    start_order_by(topology, |_, v| waits.get(v).into_iter().flatten().map(|(to, _)| to.clone()).collect())
}

/// Tarjan's strongly connected components of `topology`'s tiers along
/// `next`, callees first.
fn start_order_by(topology: &Topology, next: impl Fn(&Topology, &TierId) -> Vec<TierId>) -> Vec<Vec<TierId>> {
    // Tarjan's algorithm emits strongly connected components callees-first.
    struct Tarjan<'a, F> {
        topology: &'a Topology,
        successors: F,
        index: HashMap<TierId, usize>,
        low: HashMap<TierId, usize>,
        stack: Vec<TierId>,
        on_stack: HashSet<TierId>,
        next: usize,
        out: Vec<Vec<TierId>>,
    }
    impl<F: Fn(&Topology, &TierId) -> Vec<TierId>> Tarjan<'_, F> {
        fn visit(&mut self, v: &TierId) {
            self.index.insert(v.clone(), self.next);
            self.low.insert(v.clone(), self.next);
            self.next += 1;
            self.stack.push(v.clone());
            self.on_stack.insert(v.clone());
            let targets: Vec<TierId> = (self.successors)(self.topology, v)
                .into_iter()
                .filter(|w| self.topology.tiers.contains_key(w))
                .collect();
            for w in &targets {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v.clone(), low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v.clone(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = &w == v;
                    group.push(w);
                    if done {
                        break;
                    }
                }
                self.out.push(group);
            }
        }
    }
    let mut t = Tarjan {
        topology,
        successors: next,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: HashSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for id in topology.tiers.keys() {
        if !t.index.contains_key(id) {
            t.visit(id);
        }
    }
    t.out
}

/// The order tiers start in: each once every tier it depends on settled —
/// the tiers it links to (but those in a cycle of links with it, which
/// start with it) and those it names in `after:` — independently of all
/// others, never in waves. A tier it links to may have failed (the caller
/// starts without it); one it starts `after:` must have succeeded (a job
/// completed, a service's replicas ready), else it never starts.
struct StartGraph {
    /// Tier → the tiers it waits for, each with whether it must succeed.
    waits_for: IndexMap<TierId, Vec<(TierId, bool)>>,
    started: HashSet<TierId>,
    /// Settled tiers, and whether they succeeded.
    settled: HashMap<TierId, bool>,
    /// Tiers that will never start, in the order found.
    blocked: Vec<TierId>,
}

impl StartGraph {
    /// The graph of `topology`'s tiers; those `starts` says no to are
    /// settled already (they run as they are).
    fn new(topology: &Topology, starts: impl Fn(&TierId) -> bool) -> Self {
        let waits = start_edges(topology);
        let groups = start_order_by(topology, |_, v| {
            waits.get(v).into_iter().flatten().filter(|(_, after)| !after).map(|(to, _)| to.clone()).collect()
        });
        let group_of: HashMap<&TierId, usize> =
            groups.iter().enumerate().flat_map(|(g, ids)| ids.iter().map(move |id| (id, g))).collect();
        let mut graph =
            Self { waits_for: IndexMap::new(), started: HashSet::new(), settled: HashMap::new(), blocked: Vec::new() };
        for id in topology.tiers.keys() {
            if !starts(id) {
                graph.started.insert(id.clone());
                graph.settled.insert(id.clone(), true);
                continue;
            }
            // What any tier of its cycle of links (or itself alone) depends on outside of it.
            let group = group_of[id];
            let mut deps: Vec<(TierId, bool)> = groups[group]
                .iter()
                .flat_map(|member| waits.get(member).into_iter().flatten())
                .filter(|(to, after)| *after || group_of.get(to).is_some_and(|g| *g != group))
                .filter(|(to, _)| topology.tiers.contains_key(to))
                .cloned()
                .collect();
            deps.sort();
            deps.dedup();
            graph.waits_for.insert(id.clone(), deps);
        }
        graph
    }

    /// The tiers that may start now (each returned once). A tier that waits
    /// `after:` one that did not succeed never starts: it is settled as
    /// failed (see [`StartGraph::blocked`]), so that its own callers start
    /// without it.
    fn startable(&mut self) -> Vec<TierId> {
        loop {
            let blocked: Vec<TierId> = self
                .waits_for
                .iter()
                .filter(|(id, deps)| {
                    !self.started.contains(*id)
                        && deps.iter().any(|(d, must)| *must && self.settled.get(d) == Some(&false))
                })
                .map(|(id, _)| id.clone())
                .collect();
            if blocked.is_empty() {
                break;
            }
            for id in blocked {
                self.started.insert(id.clone());
                self.settled.insert(id.clone(), false);
                self.blocked.push(id);
            }
        }
        let ready: Vec<TierId> = self
            .waits_for
            .iter()
            .filter(|(id, deps)| {
                !self.started.contains(*id)
                    && deps.iter().all(|(d, must)| self.settled.get(d).is_some_and(|ok| *ok || !must))
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.started.extend(ready.iter().cloned());
        ready
    }

    /// `id`'s replicas settled (`ok`: they all succeeded): the tiers waiting
    /// for it may start.
    fn settle(&mut self, id: &TierId, ok: bool) {
        self.settled.insert(id.clone(), ok);
    }

    /// The tiers that never started, each with why: the tiers it starts
    /// after that did not succeed (failed, or never started in turn).
    fn blocked(&self) -> Vec<(TierId, String)> {
        self.blocked
            .iter()
            .map(|id| {
                let failed: Vec<&str> = self.waits_for[id]
                    .iter()
                    .filter(|(d, must)| *must && self.settled.get(d) != Some(&true))
                    .map(|(d, _)| d.as_str())
                    .collect();
                (id.clone(), format!("it starts after {}, which did not succeed", failed.join(", ")))
            })
            .collect()
    }
}

/// What each tier waits for to start (with whether it is an `after:`):
/// the tiers it links to and names in `after:`, but for a delivery out of a
/// queue tier that closes a cycle of links. A broker keeps the messages of
/// a subscriber that is not ready yet, so it need not wait for it; and the
/// subscriber may need a tier that publishes into the broker, as a consumer
/// writing into the database whose outbox feeds the queue does.
fn start_edges(topology: &Topology) -> HashMap<TierId, Vec<(TierId, bool)>> {
    let cycles = start_order_by(topology, |t, v| t.links_from(v).map(|l| l.to.clone()).collect());
    let cycle_of: HashMap<&TierId, usize> =
        cycles.iter().enumerate().flat_map(|(g, ids)| ids.iter().map(move |id| (id, g))).collect();
    let closes_a_cycle = |l: &crate::topology::LinkSpec| {
        l.queue_role == Some(crate::topology::QueueRole::Deliver) && cycle_of.get(&l.from) == cycle_of.get(&l.to)
    };
    topology
        .tiers
        .iter()
        .map(|(id, tier)| {
            let links = topology.links_from(id).filter(|l| !closes_a_cycle(l)).map(|l| (l.to.clone(), false));
            let after = tier.after.iter().map(|t| (t.clone(), true));
            (id.clone(), links.chain(after).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::topology::validate::parse;

    /// Each group's tier names, sorted.
    fn names(groups: Vec<Vec<TierId>>) -> Vec<Vec<String>> {
        groups
            .into_iter()
            .map(|g| {
                let mut names: Vec<String> = g.iter().map(ToString::to_string).collect();
                names.sort();
                names
            })
            .collect()
    }

    #[test]
    fn each_tier_starts_once_its_own_callees_settled() {
        let yaml = "version: 1\nname: t\ntiers:\n  web: { plugin: gateway }\n  a: { plugin: gateway }\n  b: { plugin: gateway }\n  c: { plugin: gateway }\n  lone: { plugin: gateway }\n  other: { plugin: gateway }\nlinks:\n  - { from: web, to: a, kind: rest }\n  - { from: a, to: b, kind: rest }\n  - { from: b, to: a, kind: rest, name: back }\n  - { from: b, to: c, kind: rest }\n  - { from: other, to: lone, kind: rest }\n";
        let topology = parse(Path::new("t.yaml"), yaml, &Registry::with_dirs(Vec::new())).unwrap();
        let mut graph = StartGraph::new(&topology, |_| true);
        let sorted = |ids: Vec<TierId>| names(vec![ids]).remove(0);
        assert_eq!(sorted(graph.startable()), ["c", "lone"]);
        assert!(graph.startable().is_empty(), "each tier is started once");
        // `lone` settling lets its caller start, whatever `c` is doing.
        graph.settle(&TierId::new("lone"), true);
        assert_eq!(sorted(graph.startable()), ["other"]);
        // `a` and `b` call each other: they start together, once `c` settled.
        graph.settle(&TierId::new("c"), true);
        assert_eq!(sorted(graph.startable()), ["a", "b"]);
        // `web` calls `a` only: `b` may still be starting.
        graph.settle(&TierId::new("a"), true);
        assert_eq!(sorted(graph.startable()), ["web"]);
    }

    #[test]
    fn a_cycle_through_a_queue_is_broken_at_the_delivery() {
        // The outbox's cycle: db publishes into orders, orders delivers to
        // worker, worker writes into db. The broker keeps the worker's
        // messages; the worker needs the database: db first, then worker.
        let yaml = "version: 1\nname: t\ntiers:\n  db: { plugin: postgres }\n  orders: { plugin: queue }\n  worker: { plugin: process, config: { command: [w] } }\n  other: { plugin: process, config: { command: [o] } }\nlinks:\n  - { from: db, to: orders, kind: queue, outbox: { table: outbox } }\n  - { from: orders, to: worker, kind: queue }\n  - { from: worker, to: db, kind: tcp }\n  - { from: orders, to: other, kind: queue, name: o2 }\n";
        let topology = parse(Path::new("t.yaml"), yaml, &Registry::with_dirs(Vec::new())).unwrap();
        let mut graph = StartGraph::new(&topology, |_| true);
        let sorted = |ids: Vec<TierId>| names(vec![ids]).remove(0);
        // A subscriber outside the cycle still starts before its broker.
        assert_eq!(sorted(graph.startable()), ["other"]);
        graph.settle(&TierId::new("other"), true);
        assert_eq!(sorted(graph.startable()), ["orders"]);
        graph.settle(&TierId::new("orders"), true);
        assert_eq!(sorted(graph.startable()), ["db"]);
        graph.settle(&TierId::new("db"), true);
        assert_eq!(sorted(graph.startable()), ["worker"]);
        // Stopped the other way round: the worker before the database it calls.
        assert_eq!(names(start_order(&topology)), [vec!["other"], vec!["orders"], vec!["db"], vec!["worker"]]);
    }

    #[test]
    fn callees_start_first_and_cycles_together() {
        let yaml = "version: 1\nname: t\ntiers:\n  web: { plugin: gateway }\n  a: { plugin: gateway }\n  b: { plugin: gateway }\n  c: { plugin: gateway }\n  lone: { plugin: gateway }\nlinks:\n  - { from: web, to: a, kind: rest }\n  - { from: a, to: b, kind: rest }\n  - { from: b, to: a, kind: rest, name: back }\n  - { from: b, to: c, kind: rest }\n";
        let topology = parse(Path::new("t.yaml"), yaml, &Registry::with_dirs(Vec::new())).unwrap();
        assert_eq!(names(start_order(&topology)), [vec!["c"], vec!["a", "b"], vec!["web"], vec!["lone"]]);
    }
}
