//! `orchestrator export kubernetes`: the manifests that run a topology on a
//! Kubernetes cluster, and a report of how each part of it was translated.
//!
//! Every pod runs the orchestrator on the topology (a ConfigMap, mounted as a
//! directory, so that an update is an ordinary hot reload) for its own tier
//! (`run --only TIER`), and reaches every other tier through that tier's
//! headless Service (`{tier}-peer`): every ready pod's address, balanced per
//! request and per call by the orchestrator itself, never pinned to one pod
//! by a ClusterIP. The mapping is decision 0011; `docs/kubernetes.md` is its
//! user's guide.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::topology::node::{KeyPath, Node};
use crate::topology::{LinkKind, QueueMode, QueueRole, TierId, TierSpec, Topology};

/// The port of every pod's peer listener.
pub const PEER_PORT: u16 = 7700;
/// The port of every pod's admin API (probes; metrics with the token).
pub const ADMIN_PORT: u16 = 9900;
/// The image named when `--image` is not given: what the repository's
/// `Containerfile` builds.
pub const DEFAULT_IMAGE: &str = "localhost/orchestrator:0.1.0";
/// Where the image keeps the orchestrator (and its plugins, beside it).
pub const BINARY: &str = "/opt/orchestrator/bin/orchestrator";
/// Where the topology's ConfigMap is mounted, unless `--mount-path` says.
pub const DEFAULT_MOUNT_PATH: &str = "/opt/orchestrator/topology";
/// Where the tokens' Secret is mounted.
pub const SECRETS_PATH: &str = "/opt/orchestrator/secrets";
/// Where a durable broker keeps its messages (its PersistentVolumeClaim).
pub const DATA_PATH: &str = "/opt/orchestrator/data";
/// Where a process tier's program, in a container of its own beside the
/// orchestrator, serves (its `PORT`).
pub const PROGRAM_PORT: u16 = 7800;
/// The first of the loopback ports its links' local listeners take.
const FIRST_LINK_PORT: u16 = 7801;
/// The Kubernetes versions the manifests are checked against in CI.
pub const OLDEST: (u32, u32) = (1, 29);
pub const NEWEST: (u32, u32) = (1, 37);
/// The size a durable broker's volume claims.
pub const DATA_VOLUME: &str = "1Gi";
/// What a pod asks for when nothing says otherwise (an overlay changes it).
const REQUESTS: (&str, &str) = ("50m", "64Mi");
/// A pod is given this long to start when its tier says nothing.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a ConfigMap holds (the API server's limit): the topology file.
pub const MAX_CONFIGMAP_BYTES: usize = 1024 * 1024;
/// The most outbound links a program in an image of its own may have (each
/// takes a loopback port from 7801).
pub const MAX_PROGRAM_LINKS: usize = 1000;
/// Longest Kubernetes name (a DNS label).
const MAX_NAME: usize = 63;
/// The files of the tokens' Secret.
pub const PEER_TOKEN: &str = "peer-token";
pub const ADMIN_TOKEN: &str = "admin-token";

/// What the export is asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// `metadata.namespace` of every resource, and the kustomization's.
    pub namespace: Option<String>,
    /// The orchestrator's image; `None` for [`DEFAULT_IMAGE`].
    pub image: Option<String>,
    /// Where the ConfigMap is mounted in the container; `None` for
    /// [`DEFAULT_MOUNT_PATH`]. Relative paths in the topology (a process
    /// tier's `workdir`) resolve against it, as they do against the file's
    /// directory on one machine.
    pub mount_path: Option<String>,
    /// The cluster's version, `(1, minor)`.
    pub version: (u32, u32),
    /// How long a pod's in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { namespace: None, image: None, mount_path: None, version: NEWEST, drain_timeout: Duration::from_secs(30) }
    }
}

/// One line of the translation report.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub kind: NoteKind,
    /// `file:line:column key.path` of what it is about, or the file alone.
    pub at: String,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// Turned into a resource or a field.
    Mapped,
    /// Not in the topology; a default was chosen.
    Defaulted,
    /// In the topology, but nothing on Kubernetes stands for it.
    NotTranslated,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            NoteKind::Mapped => "mapped",
            NoteKind::Defaulted => "defaulted",
            NoteKind::NotTranslated => "not translated",
        };
        write!(f, "{}: {kind}: {}", self.at, self.text)
    }
}

/// One resource, and the file it is written to.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub file: String,
    pub resource: Value,
}

/// What an export produces.
#[derive(Clone, Debug)]
pub struct Export {
    pub manifests: Vec<Manifest>,
    /// `kustomization.yaml`: the manifests, and the tokens' Secret generated
    /// from files under `secrets/`.
    pub kustomization: Value,
    /// The name of the Secret that holds the tokens (generated by the
    /// kustomization; to be created by hand for a stream of manifests).
    pub secret: String,
    /// The `env` values read from files: the Secret that holds them
    /// (`<name>-env`) and, per key, its content; empty when there are none.
    pub env_secret: Option<EnvSecret>,
    pub report: Vec<Note>,
}

/// The Secret of the `env` values read from files.
#[derive(Clone, Debug)]
pub struct EnvSecret {
    pub name: String,
    /// Secret key → (the path under the topology's directory, the value).
    pub keys: BTreeMap<String, (String, String)>,
}

/// The manifests for `topology`, read from `source` (the file's text, which
/// the ConfigMap holds as it is). An error names what cannot be exported.
pub fn export(topology: &Topology, source: &str, opts: &Options) -> Result<Export, Vec<String>> {
    Exporter::new(topology, source, opts)?.run()
}

struct Exporter<'a> {
    topology: &'a Topology,
    source: &'a str,
    opts: &'a Options,
    root: Option<Node>,
    file_name: String,
    report: Vec<Note>,
    manifests: Vec<Manifest>,
    env_secret: Option<EnvSecret>,
}

impl<'a> Exporter<'a> {
    fn new(topology: &'a Topology, source: &'a str, opts: &'a Options) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        if opts.version < OLDEST || opts.version > NEWEST {
            errors.push(format!(
                "Kubernetes {}.{} is not one the manifests are checked against: choose one from {}.{} to {}.{}",
                opts.version.0, opts.version.1, OLDEST.0, OLDEST.1, NEWEST.0, NEWEST.1
            ));
        }
        if let Some(why) = label_value_error(&topology.name) {
            errors.push(format!("the topology's name `{}` cannot be a Kubernetes label value: {why}", topology.name));
        }
        if let Some(ns) = &opts.namespace
            && let Some(why) = dns_label_error(ns, MAX_NAME)
        {
            errors.push(format!("namespace `{ns}` is not a Kubernetes name: {why}"));
        }
        for (id, spec) in &topology.tiers {
            // `<tier>-peer` is a Service's name: a DNS label.
            if let Some(why) = dns_label_error(id.as_str(), MAX_NAME - "-peer".len()) {
                errors.push(format!("tier `{id}` cannot be a Kubernetes name: {why}; rename it"));
            }
            if let Some(addr) = spec.listen
                && addr.port() == 0
            {
                errors.push(format!(
                    "tier `{id}` listens on port 0 (a free port), which no Service can name: give it a port"
                ));
            }
        }
        // Not carried yet: a store's data would live and die with its pod,
        // a tcp link and a job would not work across pods. Refused rather
        // than exported to lose data or fail at run.
        for (id, spec) in &topology.tiers {
            if crate::topology::model::limits::STORE_PLUGINS.contains(&spec.plugin.as_str()) {
                errors.push(format!(
                    "tier `{id}` is a `{}` store: the export does not carry store tiers yet (its data needs a PersistentVolumeClaim); run the database beside the cluster, or leave it out of the topology you export",
                    spec.plugin
                ));
            }
            if spec.run == crate::topology::Run::Once {
                errors.push(format!(
                    "tier `{id}` is a job (`run: once`): the export does not carry jobs yet (they would be restarted as Deployments)"
                ));
            }
        }
        for link in &topology.links {
            if link.kind == LinkKind::Tcp {
                errors.push(format!(
                    "the tcp link {} → {}: the export does not carry tcp links yet (they do not cross pods)",
                    link.from, link.to
                ));
            }
        }
        if source.len() > MAX_CONFIGMAP_BYTES {
            errors.push(format!(
                "the file is {} bytes, and a ConfigMap holds at most {MAX_CONFIGMAP_BYTES} (1 MiB): make it smaller",
                source.len()
            ));
        }
        for (id, spec) in &topology.tiers {
            let links = topology.links_from(id).count();
            if spec.image.is_some() && links > MAX_PROGRAM_LINKS {
                errors.push(format!(
                    "tier `{id}` has {links} links, and a program in an image of its own at most {MAX_PROGRAM_LINKS}"
                ));
            }
        }
        let mut services: BTreeMap<String, &TierId> = BTreeMap::new();
        for (id, spec) in &topology.tiers {
            let mut names = vec![peer_service(id)];
            if spec.listen.is_some() {
                names.push(id.to_string());
            }
            for name in names {
                if let Some(other) = services.insert(name.clone(), id) {
                    errors.push(format!(
                        "tiers `{other}` and `{id}` would both have a Service named `{name}`: rename one"
                    ));
                }
            }
        }
        let env_secret = env_secret(topology, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let file_name =
            topology.file.file_name().map_or_else(|| "topology.yaml".to_owned(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            topology,
            source,
            opts,
            root: Node::parse(source).ok(),
            file_name,
            report: Vec::new(),
            manifests: Vec::new(),
            env_secret,
        })
    }

    /// `file:line:column path` of key path `path` (`tiers.web.listen`).
    fn at(&self, path: &str) -> String {
        let file = self.topology.file.display();
        let key = KeyPath::root().join_str(path);
        // A key where there is one (`tiers.web`), else the value (`links[2]`).
        let found = self.root.as_ref().and_then(|r| {
            if path.ends_with(']') { r.locate(&key) } else { r.locate_key(&key).or_else(|| r.locate(&key)) }
        });
        match found {
            Some(loc) => format!("{file}:{}:{} {path}", loc.line, loc.column),
            None => format!("{file} {path}"),
        }
    }

    fn note(&mut self, kind: NoteKind, path: &str, text: impl Into<String>) {
        let at = if path.is_empty() { self.topology.file.display().to_string() } else { self.at(path) };
        self.report.push(Note { kind, at, text: text.into() });
    }

    fn push(&mut self, file: String, resource: Value) {
        self.manifests.push(Manifest { file, resource });
    }

    fn run(mut self) -> Result<Export, Vec<String>> {
        let name = self.topology.name.clone();
        let secret = format!("{name}-tokens");
        let configmap = format!("{name}-topology");
        self.push(
            "configmap-topology.yaml".to_owned(),
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self.metadata(&configmap, None),
                "data": { self.file_name.clone(): self.source },
            }),
        );
        self.note(
            NoteKind::Mapped,
            "",
            format!(
                "the topology → ConfigMap {configmap} (the file as it is), mounted at {} in every pod: an update is a hot reload",
                self.mount_path()
            ),
        );
        if self.opts.image.is_none() {
            self.note(
                NoteKind::Defaulted,
                "",
                format!("image → {DEFAULT_IMAGE} (the repository's Containerfile); --image names another"),
            );
        }
        self.note(
            NoteKind::Defaulted,
            "",
            format!(
                "peer and admin tokens → Secret {secret} (keys {PEER_TOKEN}, {ADMIN_TOKEN}), never in the ConfigMap"
            ),
        );
        if !self.topology.hosts.is_empty() {
            self.note(
                NoteKind::NotTranslated,
                "hosts",
                "the placement on hosts: each tier runs in pods of its own, placed by Kubernetes",
            );
        }
        if !self.topology.plugin_dirs.is_empty() {
            self.note(
                NoteKind::NotTranslated,
                "plugins",
                format!("plugin directories: pods load the plugins the image carries beside {BINARY}"),
            );
        }
        let ids: Vec<TierId> = self.topology.tiers.keys().cloned().collect();
        for id in ids {
            self.tier(&id, &configmap, &secret);
        }
        let links: Vec<String> = self
            .topology
            .links
            .iter()
            .map(|l| {
                let kind = match (l.kind, l.queue_role, l.mode) {
                    (LinkKind::Queue, Some(QueueRole::Deliver), QueueMode::PointToPoint) => "queue, point-to-point".to_owned(),
                    (LinkKind::Queue, Some(QueueRole::Deliver), QueueMode::PubSub) => "queue, pubsub".to_owned(),
                    (LinkKind::Queue, _, _) => "queue, publish".to_owned(),
                    (LinkKind::Rest, ..) => "rest".to_owned(),
                    (LinkKind::Rpc, ..) => "rpc".to_owned(),
                    (LinkKind::Tcp, ..) => "tcp".to_owned(),
                };
                let topic = l.topic.as_ref().map(|t| format!(", topic {t}")).unwrap_or_default();
                format!(
                    "{} → {} ({kind}{topic}): as it is, between the pods' peer listeners (the caller balances over the callee's pods; timeout {} and retries {} as written)",
                    l.from,
                    l.to,
                    humantime::format_duration(l.timeout),
                    l.retries
                )
            })
            .collect();
        for (i, text) in links.into_iter().enumerate() {
            self.note(NoteKind::Mapped, &format!("links[{i}]"), text);
        }
        let mut resources: Vec<String> = self.manifests.iter().map(|m| m.file.clone()).collect();
        resources.sort();
        let mut kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": resources,
            "secretGenerator": [{
                "name": secret,
                "files": [format!("{PEER_TOKEN}=secrets/{PEER_TOKEN}"), format!("{ADMIN_TOKEN}=secrets/{ADMIN_TOKEN}")],
            }],
        });
        if let Some(env) = &self.env_secret {
            let files: Vec<String> = env.keys.keys().map(|k| format!("{k}=secrets/env/{k}")).collect();
            if let Some(generators) = kustomization["secretGenerator"].as_array_mut() {
                generators.push(json!({ "name": env.name, "files": files }));
            }
        }
        if let Some(ns) = &self.opts.namespace {
            kustomization["namespace"] = json!(ns);
        }
        Ok(Export {
            manifests: self.manifests,
            kustomization,
            secret,
            env_secret: self.env_secret,
            report: self.report,
        })
    }

    fn mount_path(&self) -> &str {
        self.opts.mount_path.as_deref().unwrap_or(DEFAULT_MOUNT_PATH)
    }

    fn metadata(&self, name: &str, tier: Option<&TierId>) -> Value {
        let mut labels = json!({
            "app.kubernetes.io/part-of": self.topology.name,
            "app.kubernetes.io/managed-by": "orchestrator",
        });
        if let Some(tier) = tier {
            labels["app.kubernetes.io/name"] = json!(tier.as_str());
        }
        let mut meta = json!({ "name": name, "labels": labels });
        if let Some(ns) = &self.opts.namespace {
            meta["namespace"] = json!(ns);
        }
        meta
    }

    fn selector(&self, tier: &TierId) -> Value {
        json!({ "app.kubernetes.io/part-of": self.topology.name, "app.kubernetes.io/name": tier.as_str() })
    }

    fn tier(&mut self, id: &TierId, configmap: &str, secret: &str) {
        let spec = &self.topology.tiers[id];
        let path = format!("tiers.{id}");
        let broker = spec.plugin == crate::topology::model::limits::BROKER_PLUGIN;
        let durable = broker && spec.config.get("durable").and_then(Value::as_bool).unwrap_or(false);
        let replicas = if broker { 1 } else { spec.replicas };

        let mut args = vec![
            "run".to_owned(),
            format!("{}/{}", self.mount_path(), self.file_name),
            "--only".to_owned(),
            id.to_string(),
            "--peer-address".to_owned(),
            format!("{{tier}}-peer:{PEER_PORT}"),
            "--peer-listen".to_owned(),
            format!("0.0.0.0:{PEER_PORT}"),
            "--peer-token-file".to_owned(),
            format!("{SECRETS_PATH}/{PEER_TOKEN}"),
            "--admin".to_owned(),
            format!("0.0.0.0:{ADMIN_PORT}"),
            "--admin-token-file".to_owned(),
            format!("{SECRETS_PATH}/{ADMIN_TOKEN}"),
            "--drain-timeout".to_owned(),
            humantime::format_duration(self.opts.drain_timeout).to_string(),
        ];
        let mut ports = vec![
            json!({ "name": "peer", "containerPort": PEER_PORT, "protocol": "TCP" }),
            json!({ "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" }),
        ];
        if let Some(listen) = spec.listen {
            args.extend(["--listen-ip".to_owned(), if listen.is_ipv6() { "::" } else { "0.0.0.0" }.to_owned()]);
            ports.push(json!({ "name": "listen", "containerPort": listen.port(), "protocol": "TCP" }));
        }
        if durable {
            args.extend(["--data-dir".to_owned(), DATA_PATH.to_owned()]);
        }
        let program = self.program_container(id);
        if let Some((_, link_ports)) = &program {
            args.extend(["--program-port".to_owned(), PROGRAM_PORT.to_string()]);
            for (name, port) in link_ports {
                args.extend(["--link-port".to_owned(), format!("{name}={port}")]);
            }
        }
        let startup = startup_timeout(spec);
        let probe = |path: &str, period: u64, failures: u64| {
            json!({
                "httpGet": { "path": path, "port": "admin" },
                "periodSeconds": period,
                "timeoutSeconds": 1,
                "failureThreshold": failures,
            })
        };
        let mut mounts = vec![
            json!({ "name": "topology", "mountPath": self.mount_path(), "readOnly": true }),
            json!({ "name": "tokens", "mountPath": SECRETS_PATH, "readOnly": true }),
            json!({ "name": "run", "mountPath": "/tmp" }),
        ];
        if durable {
            mounts.push(json!({ "name": "data", "mountPath": DATA_PATH }));
        }
        let env: Vec<Value> = vec![json!({ "name": "XDG_RUNTIME_DIR", "value": "/tmp" })];
        let container = json!({
            "name": "orchestrator",
            "image": self.opts.image.as_deref().unwrap_or(DEFAULT_IMAGE),
            "command": [BINARY],
            "args": args,
            "env": env,
            "ports": ports,
            "readinessProbe": probe("/admin/ready", 2, 3),
            "livenessProbe": probe("/admin/health", 10, 3),
            "startupProbe": probe("/admin/ready", 1, startup.as_secs().max(1) + 10),
            "resources": { "requests": { "cpu": REQUESTS.0, "memory": REQUESTS.1 } },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"] },
            },
            "volumeMounts": mounts,
        });
        // The topology's directory: the ConfigMap, and the files `env`
        // values are read from (every pod reads the whole topology), at the
        // paths the topology names them by, updated together.
        let topology_volume = match &self.env_secret {
            None => json!({ "name": "topology", "configMap": { "name": configmap } }),
            Some(env) => {
                let items: Vec<Value> =
                    env.keys.iter().map(|(key, (path, _))| json!({ "key": key, "path": path })).collect();
                json!({ "name": "topology", "projected": { "defaultMode": 0o440, "sources": [
                    { "configMap": { "name": configmap } },
                    { "secret": { "name": env.name, "items": items } },
                ] } })
            }
        };
        let volumes = json!([
            topology_volume,
            // Readable by the pod's group (fsGroup), as the container's user is not root.
            { "name": "tokens", "secret": { "secretName": secret, "defaultMode": 0o440 } },
            { "name": "run", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
        ]);
        let grace = self.opts.drain_timeout.as_secs() + 5;
        let mut containers = vec![container];
        containers.extend(program.map(|(c, _)| c));
        let pod = json!({
            "metadata": { "labels": self.selector(id) },
            "spec": {
                "containers": containers,
                "volumes": volumes,
                "terminationGracePeriodSeconds": grace,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": { "fsGroup": 65532, "seccompProfile": { "type": "RuntimeDefault" } },
            },
        });
        let kind = if broker { "StatefulSet" } else { "Deployment" };
        let mut workload = json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": self.metadata(id.as_str(), Some(id)),
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": self.selector(id) },
                "template": pod,
            },
        });
        if broker {
            workload["spec"]["serviceName"] = json!(peer_service(id));
            if durable {
                workload["spec"]["volumeClaimTemplates"] = json!([{
                    "metadata": { "name": "data" },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": { "requests": { "storage": DATA_VOLUME } },
                    },
                }]);
            }
        } else {
            // New pods ready before old ones go: no request is refused for want of a pod.
            workload["spec"]["strategy"] =
                json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } });
        }
        let file = format!("{id}-{}.yaml", kind.to_ascii_lowercase());
        self.push(file, workload);

        // Notes: what this tier became.
        let what = if broker {
            if durable {
                format!(
                    "queue tier `{id}` (durable) → StatefulSet {id} of one pod with a PersistentVolumeClaim ({DATA_VOLUME}) at {DATA_PATH}: messages survive its restarts"
                )
            } else {
                format!(
                    "queue tier `{id}` → StatefulSet {id} of one pod (the embedded broker runs once); not durable: its messages are lost when the pod restarts (`durable: true` keeps them on a volume)"
                )
            }
        } else {
            format!("tier `{id}` → Deployment {id}, {replicas} replica(s), one per pod")
        };
        self.note(NoteKind::Mapped, &path, what);
        if broker && spec.replicas > 1 {
            self.note(
                NoteKind::NotTranslated,
                &format!("{path}.replicas"),
                "replicas of a queue tier: the broker runs once",
            );
        }
        self.note(
            NoteKind::Mapped,
            &path,
            format!(
                "probes → readiness /admin/ready, liveness /admin/health (port {ADMIN_PORT}), startup within {}s; termination grace {grace}s (drain {}s + 5s; SIGTERM drains)",
                startup.as_secs() + 10,
                self.opts.drain_timeout.as_secs()
            ),
        );
        self.note(
            NoteKind::Defaulted,
            &path,
            format!(
                "resources → requests cpu {} memory {}, no limits (set them with a Kustomize patch)",
                REQUESTS.0, REQUESTS.1
            ),
        );
        self.peer_service(id);
        if let Some(listen) = spec.listen {
            self.listen_service(id, listen.port());
        }
        self.network_policy(id);
        self.process_notes(id);
        for (key, file) in spec.env_files.clone() {
            let name = self.env_secret.as_ref().map(|e| e.name.clone()).unwrap_or_default();
            self.note(
                NoteKind::Mapped,
                &format!("{path}.env.{key}"),
                format!("`{key}` (from {file}) → Secret {name}, mounted where the topology names the file (every pod reads the whole topology)"),
            );
        }
        let secrets: Vec<String> =
            spec.env.keys().filter(|k| looks_secret(k) && !spec.env_files.contains_key(*k)).cloned().collect();
        for key in secrets {
            self.note(
                NoteKind::NotTranslated,
                &format!("{path}.env.{key}"),
                format!(
                    "`{key}` looks like a secret, and the ConfigMap holds it in plain text: keep it out of the topology"
                ),
            );
        }
    }

    fn peer_service(&mut self, id: &TierId) {
        let name = peer_service(id);
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(&name, Some(id)),
            "spec": {
                "clusterIP": "None",
                // Callers balance and eject by themselves (they probe each
                // pod): every pod's address, ready or not, so that tiers
                // that call each other start whatever the order.
                "publishNotReadyAddresses": true,
                "selector": self.selector(id),
                "ports": [{ "name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP", "appProtocol": "http" }],
            },
        });
        self.push(format!("{name}-service.yaml"), service);
        self.note(
            NoteKind::Mapped,
            &format!("tiers.{id}"),
            format!(
                "peer listener → headless Service {name} (port {PEER_PORT}): callers balance per request and per call over every pod"
            ),
        );
    }

    fn listen_service(&mut self, id: &TierId, port: u16) {
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(id.as_str(), Some(id)),
            "spec": {
                "type": "ClusterIP",
                "selector": self.selector(id),
                "ports": [{ "name": "listen", "port": port, "targetPort": "listen", "protocol": "TCP", "appProtocol": "http" }],
            },
        });
        self.push(format!("{id}-service.yaml"), service);
        self.note(
            NoteKind::Mapped,
            &format!("tiers.{id}.listen"),
            format!(
                "listen port {port} → Service {id} (ClusterIP; a patch makes it a LoadBalancer), served on every address of the pod"
            ),
        );
    }

    /// Who may reach tier `id`'s pods: on the peer port, the tiers whose
    /// links lead to it; on its listen port, anyone.
    fn network_policy(&mut self, id: &TierId) {
        let callers = callers(self.topology, id);
        let mut ingress = Vec::new();
        if !callers.is_empty() {
            let from: Vec<Value> =
                callers.iter().map(|c| json!({ "podSelector": { "matchLabels": self.selector(c) } })).collect();
            ingress.push(json!({ "from": from, "ports": [{ "port": PEER_PORT, "protocol": "TCP" }] }));
        }
        if let Some(listen) = self.topology.tiers[id].listen {
            ingress.push(json!({ "ports": [{ "port": listen.port(), "protocol": "TCP" }] }));
        }
        let name = format!("{id}-ingress");
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.metadata(&name, Some(id)),
            "spec": {
                "podSelector": { "matchLabels": self.selector(id) },
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        });
        self.push(format!("{name}-networkpolicy.yaml"), policy);
        let who = if callers.is_empty() {
            "no tier".to_owned()
        } else {
            callers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        };
        let listen = if self.topology.tiers[id].listen.is_some() { "; its listen port from anywhere" } else { "" };
        self.note(
            NoteKind::Mapped,
            &format!("tiers.{id}"),
            format!(
                "links → NetworkPolicy {name}: peer port {PEER_PORT} from {who}{listen}; the admin port only from the node (probes)"
            ),
        );
    }

    fn process_notes(&mut self, id: &TierId) {
        let spec = &self.topology.tiers[id];
        if spec.plugin != "process" {
            return;
        }
        let path = format!("tiers.{id}");
        let program = spec.config.get("command").and_then(|c| c.get(0)).and_then(Value::as_str).unwrap_or("");
        if let Some(image) = &spec.image {
            self.note(
                NoteKind::Mapped,
                &format!("{path}.image"),
                format!(
                    "process tier `{id}`: `{program}` runs in container `program` ({image}) beside the orchestrator, which probes it and routes to it on 127.0.0.1:{PROGRAM_PORT} (its PORT) and does not start it: the kubelet does, and restarts it"
                ),
            );
            match spec.config.get("workdir").and_then(Value::as_str) {
                Some(dir) if dir.starts_with('/') => {}
                Some(dir) => self.note(
                    NoteKind::NotTranslated,
                    &format!("{path}.config.workdir"),
                    format!(
                        "`{dir}` is relative to the topology file: the program starts in its image's working directory"
                    ),
                ),
                None => {}
            }
            for key in ["restart", "max_restarts", "backoff", "max_backoff"] {
                if spec.config.get(key).is_some() {
                    self.note(
                        NoteKind::NotTranslated,
                        &format!("{path}.config.{key}"),
                        "the kubelet restarts the program container always, with its own back-off",
                    );
                }
            }
            if spec.config.pointer("/readiness/exec").is_some() {
                self.note(
                    NoteKind::Mapped,
                    &format!("{path}.config.readiness"),
                    "an exec readiness probe would run in the orchestrator's container: a TCP connection to the program stands for it",
                );
            }
        } else {
            let workdir = spec.config.get("workdir").and_then(Value::as_str).unwrap_or(".");
            let dir = crate::topology::model::join_tidy(std::path::Path::new(self.mount_path()), workdir);
            self.note(
                NoteKind::Mapped,
                &format!("{path}.config.command"),
                format!(
                    "process tier `{id}`: the orchestrator starts `{program}` in its own container, in {}: the image must carry the program and what it needs (an `image:` for the tier runs it in a container of its own)",
                    dir.display()
                ),
            );
        }
    }

    /// A process tier's program in a container of its own (the tier has an
    /// `image:`), and the loopback ports its links' local listeners take.
    fn program_container(&self, id: &TierId) -> Option<(Value, Vec<(String, u16)>)> {
        let spec = &self.topology.tiers[id];
        let image = spec.image.as_ref().filter(|_| spec.plugin == "process")?;
        let mut env: BTreeMap<String, String> = spec.env.clone();
        if let Some(own) = spec.config.get("env").and_then(Value::as_object) {
            for (k, v) in own {
                env.insert(k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            }
        }
        env.insert("PORT".to_owned(), PROGRAM_PORT.to_string());
        env.insert("ORCH_TIER".to_owned(), id.to_string());
        env.insert("ORCH_REPLICA".to_owned(), "0".to_owned());
        let mut link_ports = Vec::new();
        for (i, link) in self.topology.links_from(id).enumerate() {
            let port = FIRST_LINK_PORT.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
            let (suffix, value) = match link.kind {
                crate::topology::LinkKind::Rpc => ("ADDR", format!("127.0.0.1:{port}")),
                _ => ("URL", format!("http://127.0.0.1:{port}")),
            };
            env.insert(process::link_var(&link.name, suffix), value);
            link_ports.push((link.name.clone(), port));
        }
        let secret_keys: BTreeMap<&str, &str> = self
            .env_secret
            .iter()
            .flat_map(|e| e.keys.iter().map(move |(key, (path, _))| (path.as_str(), key.as_str())))
            .collect();
        let secret_name = self.env_secret.as_ref().map(|e| e.name.clone());
        let mut env: Vec<Value> = env
            .into_iter()
            .map(|(name, value)| {
                let key = spec.env_files.get(&name).map(|p| tidy(p)).and_then(|p| secret_keys.get(p.as_str()).copied());
                match key {
                    Some(key) => {
                        json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": secret_name, "key": key } } })
                    }
                    None => json!({ "name": name, "value": value }),
                }
            })
            .collect();
        env.push(json!({ "name": "ORCH_HOST", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }));
        let mut container = json!({
            "name": "program",
            "image": image,
            "command": spec.config.get("command").cloned().unwrap_or(json!([])),
            "env": env,
            "ports": [{ "name": "program", "containerPort": PROGRAM_PORT, "protocol": "TCP" }],
            "resources": { "requests": { "cpu": REQUESTS.0, "memory": REQUESTS.1 } },
            "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
        });
        if let Some(dir) = spec.config.get("workdir").and_then(Value::as_str).filter(|d| d.starts_with('/')) {
            container["workingDir"] = json!(dir);
        }
        if let Some(liveness) = spec.config.get("liveness") {
            container["livenessProbe"] = liveness_probe(liveness);
        }
        Some((container, link_ports))
    }
}

/// The kubelet's form of a process tier's liveness probe (what restarts
/// the program is the kubelet).
fn liveness_probe(probe: &Value) -> Value {
    let seconds = |key: &str, default: u64| {
        probe
            .get(key)
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_duration(t).ok())
            .map_or(default, |d| d.as_secs().max(1))
    };
    let mut out = json!({
        "periodSeconds": seconds("interval", 10),
        "timeoutSeconds": seconds("timeout", 1),
        "failureThreshold": probe.get("failure_threshold").and_then(Value::as_u64).unwrap_or(3),
    });
    if let Some(path) = probe.get("http").and_then(Value::as_str) {
        out["httpGet"] = json!({ "path": path, "port": "program" });
    } else if let Some(cmd) = probe.get("exec") {
        out["exec"] = json!({ "command": cmd });
    } else {
        out["tcpSocket"] = json!({ "port": "program" });
    }
    out
}

/// `path` written tidily, as a volume item's path.
fn tidy(path: &str) -> String {
    crate::topology::model::join_tidy(std::path::Path::new("."), path).display().to_string()
}

/// The Secret of the topology's `env` files: each a key named after its
/// path (`secrets/db-password` → `secrets.db-password`). A file outside the
/// topology's directory cannot be put beside it in a pod: an error — where
/// the path leads, not only how it is written (a symlink under the
/// directory to `/etc/shadow` must not put that file in a Secret).
fn env_secret(topology: &Topology, errors: &mut Vec<String>) -> Option<EnvSecret> {
    let mut keys: BTreeMap<String, (String, String)> = BTreeMap::new();
    let base = topology.base_dir();
    let real_base = std::fs::canonicalize(&base).ok();
    for (id, spec) in &topology.tiers {
        for (name, file) in &spec.env_files {
            let path = tidy(file);
            if path.starts_with('/') || path.starts_with("..") || path == "." {
                errors.push(format!(
                    "tier `{id}`: env `{name}` is read from {file}, outside the topology's directory: a pod cannot have it there; move it under the directory"
                ));
                continue;
            }
            let leads_to = std::fs::canonicalize(base.join(&path)).ok();
            if let (Some(real), Some(dir)) = (&leads_to, &real_base)
                && !real.starts_with(dir)
            {
                errors.push(format!(
                    "tier `{id}`: env `{name}` is read from {file}, which leads to {} through a symlink, outside the topology's directory: it is not exported",
                    real.display()
                ));
                continue;
            }
            let key: String = path.replace('/', ".");
            if key.is_empty()
                || key.len() > 253
                || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                errors.push(format!(
                    "tier `{id}`: env `{name}` is read from {file}, whose name cannot be a Secret's key: letters, digits, `-`, `_`, `.` and `/` only"
                ));
                continue;
            }
            match keys.get(&key) {
                Some((other, _)) if *other != path => {
                    errors.push(format!("{file} and {other} would share Secret key `{key}`: rename one"))
                }
                _ => {
                    keys.insert(key, (path, spec.env[name].clone()));
                }
            }
        }
    }
    (!keys.is_empty()).then(|| EnvSecret { name: format!("{}-env", topology.name), keys })
}

/// The headless Service of tier `id`'s peer listeners.
pub fn peer_service(id: &TierId) -> String {
    format!("{id}-peer")
}

/// The tiers whose links (REST, RPC, queue publish or delivery) call `id`.
pub fn callers(topology: &Topology, id: &TierId) -> Vec<TierId> {
    let mut out: Vec<TierId> =
        topology.links.iter().filter(|l| &l.to == id && l.from != *id).map(|l| l.from.clone()).collect();
    out.sort();
    out.dedup();
    out
}

fn startup_timeout(spec: &TierSpec) -> Duration {
    spec.config
        .get("startup_timeout")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(STARTUP_TIMEOUT)
}

/// An environment variable's name that says it holds a secret.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY", "CREDENTIAL"].iter().any(|w| key.contains(w))
}

/// Why `s` is not a DNS label of at most `max` characters (RFC 1035, as
/// Kubernetes checks a Service's name), if it is not.
fn dns_label_error(s: &str, max: usize) -> Option<String> {
    if s.is_empty() || s.len() > max {
        return Some(format!("it must be 1 to {max} characters long"));
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("only lower-case letters, digits and `-` may be used".to_owned());
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) || s.ends_with('-') {
        return Some("it must start with a letter and end with a letter or digit".to_owned());
    }
    None
}

/// Why `s` is not a Kubernetes label value, if it is not.
fn label_value_error(s: &str) -> Option<String> {
    if s.len() > MAX_NAME {
        return Some(format!("it is longer than {MAX_NAME} characters"));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty()
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || !edge(s.chars().next())
        || !edge(s.chars().last())
    {
        return Some("letters, digits, `-`, `_` and `.` only, starting and ending with a letter or digit".to_owned());
    }
    None
}

/// `1.30` as `(1, 30)`.
pub fn parse_version(s: &str) -> Result<(u32, u32), String> {
    let s = s.trim_start_matches('v');
    let mut parts = s.split('.');
    match (parts.next().map(str::parse), parts.next().map(str::parse), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), None | Some(_)) => Ok((major, minor)),
        _ => Err(format!("`{s}` is not a Kubernetes version such as 1.30")),
    }
}

/// `resource` as a YAML document.
pub fn to_yaml(resource: &Value) -> String {
    let mut out = serde_saphyr::to_string(resource).unwrap_or_default();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Every manifest as one stream of YAML documents.
pub fn stream(export: &Export) -> String {
    let mut out = String::new();
    for m in &export.manifests {
        out.push_str("---\n");
        out.push_str(&format!("# {}\n", m.file));
        out.push_str(&to_yaml(&m.resource));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kubernetes_refuses_are_told_why() {
        assert_eq!(dns_label_error("web", 58), None);
        assert_eq!(dns_label_error("web-2", 58), None);
        assert!(dns_label_error("Web", 58).is_some());
        assert!(dns_label_error("web_api", 58).is_some());
        assert!(dns_label_error("2web", 58).is_some());
        assert!(dns_label_error("web-", 58).is_some());
        assert!(dns_label_error(&"a".repeat(58), 58).is_none());
        assert!(dns_label_error(&"a".repeat(59), 58).is_some());
        assert_eq!(label_value_error("python-go"), None);
        assert!(label_value_error("my app").is_some());
        assert!(label_value_error(&"a".repeat(64)).is_some());
    }

    #[test]
    fn stores_jobs_and_tcp_links_are_refused_not_exported_to_lose_data() {
        let yaml = "version: 1\nname: t\ntiers:\n  db: { plugin: postgres }\n  migrate: { plugin: process, run: once, config: { command: [x] } }\n  api: { plugin: process, after: [migrate], config: { command: [x] } }\nlinks:\n  - { from: api, to: db, kind: tcp }\n";
        let registry = crate::plugins::Registry::with_dirs(Vec::new());
        let topology = crate::topology::validate::parse(std::path::Path::new("t.yaml"), yaml, &registry).unwrap();
        let Err(errors) = export(&topology, yaml, &Options::default()) else { panic!("exported") };
        let all = errors.join("\n");
        for expected in ["tier `db` is a `postgres` store", "tier `migrate` is a job", "the tcp link api → db"] {
            assert!(all.contains(expected), "{all}");
        }
    }

    #[test]
    fn versions_read_as_major_and_minor() {
        assert_eq!(parse_version("1.30"), Ok((1, 30)));
        assert_eq!(parse_version("v1.37.0"), Ok((1, 37)));
        assert!(parse_version("latest").is_err());
    }

    #[test]
    fn secret_looking_names() {
        assert!(looks_secret("DB_PASSWORD"));
        assert!(looks_secret("stripe_api_key"));
        assert!(!looks_secret("GREETING"));
    }
}
