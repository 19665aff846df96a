//! `orchestrator export kubernetes`, proven without a cluster, two ways.
//!
//! 1. **Valid**: every manifest of every topology in `topologies/` passes
//!    `kubernetes-validate --strict` for the oldest and newest Kubernetes
//!    versions claimed, and matches its golden file (`tests/golden/kubernetes/`,
//!    rewritten by `ORCH_UPDATE_GOLDEN=1`); each NetworkPolicy admits exactly
//!    the tiers the topology's links say call it.
//! 2. **They run**, on a simulated cluster: [`Cluster`] plays the kubelet and
//!    the cluster DNS for the manifests. What it simulates, and how:
//!    - a pod: a network namespace with an address of its own on one bridge,
//!      its host name the pod's name (a UTS namespace);
//!    - a container: the manifest's `command`, `args`, `env` and
//!      `workingDir`, run in the pod's namespaces, with its `volumeMounts`
//!      bind-mounted (a mount namespace of its own); the image's files are
//!      this build (`target/debug` at `/opt/orchestrator/bin`) over the
//!      machine's own (a volume over a directory the repository lives in,
//!      such as `/tmp` for a clone there, is left out: no image has it);
//!    - a ConfigMap or Secret volume: a directory written as the kubelet's
//!      atomic writer writes it (a `..<timestamp>` directory, `..data`
//!      linking to it, each key linking through `..data`), and an update as it
//!      makes it (a new directory, `..data` replaced by a rename); the Secret
//!      comes from the kustomization's `secretGenerator` files;
//!    - cluster DNS: each Service's name in every pod's `/etc/hosts`
//!      (`/etc/netns/<ns>/hosts`), resolving to the addresses of the pods its
//!      selector picks (a headless Service's answer);
//!    - readiness: the manifest's readiness probe, polled at its path and
//!      port, as the kubelet does.
//!
//!    What only a real cluster would show: scheduling and resources, the
//!    image itself (the image test runs that), the security context (the
//!    harness runs containers as root, on a writable root), kube-proxy (a
//!    ClusterIP Service: the test sends to the pods behind it), NetworkPolicy
//!    enforcement (a CNI's; checked statically here), probes' effect on
//!    restarts, rolling updates, and PersistentVolumeClaims (a directory).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::repo_root;
use serde_json::Value;

use crate::netns::{Network, in_ns};

/// Pods start, find each other and become ready within this.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The manifests `export kubernetes` wrote into a directory.
struct Exported {
    dir: tempfile::TempDir,
    /// `(file, resource)`, in the kustomization's order.
    resources: Vec<(String, Value)>,
    kustomization: Value,
    /// What the command printed on stderr: the report.
    stderr: String,
}

impl Exported {
    fn of(kind: &str, name: &str) -> impl Fn(&&(String, Value)) -> bool {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        move |(_, r)| r["kind"] == kind.as_str() && r["metadata"]["name"] == name.as_str()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        &self.resources.iter().find(Self::of(kind, name)).unwrap_or_else(|| panic!("no {kind} {name}")).1
    }

    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_owned();
        self.resources.iter().map(|(_, r)| r).filter(move |r| r["kind"] == kind.as_str())
    }
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// `orchestrator export kubernetes TOPOLOGY -o DIR EXTRA…`, run from the
/// repository root (the report names the file as it was given).
fn export(topology: &str, extra: &[&str]) -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(integration_tests::bin())
        .current_dir(repo_root())
        .args(["export", "kubernetes", topology, "-o"])
        .arg(dir.path())
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "export {topology}: {stderr}");
    let kustomization = yaml(&std::fs::read_to_string(dir.path().join("kustomization.yaml")).unwrap());
    let resources = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f.as_str().unwrap().to_owned();
            let text = std::fs::read_to_string(dir.path().join(&file)).unwrap();
            (file, yaml(&text))
        })
        .collect();
    Exported { dir, resources, kustomization, stderr }
}

/// The topologies in `topologies/`, as `topologies/NAME.yaml`.
/// The repository's topologies the export carries: all but those with a
/// store tier, a job or a tcp link, which it refuses (below).
fn repo_topologies() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo_root().join("topologies"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !NOT_EXPORTED.contains(&n.as_str()))
        .map(|n| format!("topologies/{n}"))
        .collect();
    out.sort();
    out
}

/// Topologies the export refuses, for now: stores would lose their data.
const NOT_EXPORTED: [&str; 2] = ["orders-db.yaml", "stores.yaml"];

#[test]
fn a_topology_with_stores_jobs_or_tcp_links_is_refused_with_each_named_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(integration_tests::bin())
        .current_dir(repo_root())
        .args(["export", "kubernetes", "topologies/stores.yaml", "-o"])
        .arg(&out_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    for named in [
        "tier `db` is a `postgres` store",
        "tier `cache` is a `redis` store",
        "tier `migrate` is a job",
        "the tcp link api → db",
    ] {
        assert!(said.contains(named), "{named}: {said}");
    }
    assert!(!out_dir.exists(), "nothing is written");
}

fn kubernetes_validate() -> PathBuf {
    let path = repo_root().join(".venv/bin/kubernetes-validate");
    assert!(path.exists(), "{} is missing: run scripts/setup-tools", path.display());
    path
}

#[test]
fn every_repository_topology_exports_to_manifests_valid_for_the_oldest_and_newest_kubernetes_claimed() {
    for topology in repo_topologies() {
        let exported = export(&topology, &[]);
        let files: Vec<PathBuf> = exported.resources.iter().map(|(f, _)| exported.dir.path().join(f)).collect();
        assert!(files.len() >= 4, "{topology}: {files:?}");
        for version in ["1.29.0", "1.37.0"] {
            let out = Command::new(kubernetes_validate())
                .args(["--strict", "--quiet", "-k", version])
                .args(&files)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{topology} under Kubernetes {version} --strict:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A check that cannot fail proves nothing: the same validator refuses a typo.
        let typo = exported.dir.path().join("typo.yaml");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        std::fs::write(&typo, text.replacen("metadata:", "metadatas:", 1)).unwrap();
        let out = Command::new(kubernetes_validate())
            .args(["--strict", "--quiet", "-k", "1.29.0"])
            .arg(&typo)
            .output()
            .unwrap();
        assert!(!out.status.success(), "a misspelt field passed");
    }
}

/// Golden files: the manifests, kustomization and report of every
/// repository topology, reviewed like code. `ORCH_UPDATE_GOLDEN=1` rewrites them.
#[test]
fn exported_manifests_match_their_golden_files() {
    let update = std::env::var_os("ORCH_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for topology in repo_topologies() {
        let name = Path::new(&topology).file_stem().unwrap().to_string_lossy().into_owned();
        let golden = repo_root().join("tests/golden/kubernetes").join(&name);
        let exported = export(&topology, &[]);
        let mut files: Vec<String> = exported.resources.iter().map(|(f, _)| f.clone()).collect();
        files.extend(["kustomization.yaml".to_owned(), "translation-report.txt".to_owned()]);
        if update {
            let _ = std::fs::remove_dir_all(&golden);
            std::fs::create_dir_all(&golden).unwrap();
        }
        for file in &files {
            let got = std::fs::read_to_string(exported.dir.path().join(file)).unwrap();
            if update {
                std::fs::write(golden.join(file), &got).unwrap();
                continue;
            }
            match std::fs::read_to_string(golden.join(file)) {
                Ok(want) if want == got => {}
                Ok(_) => stale.push(format!("{name}/{file} differs")),
                Err(_) => stale.push(format!("{name}/{file} is missing")),
            }
        }
        if !update {
            let on_disk = std::fs::read_dir(&golden).map(|d| d.count()).unwrap_or(0);
            if on_disk != files.len() {
                stale.push(format!("{name}: {on_disk} golden files for {} exported", files.len()));
            }
        }
    }
    assert!(stale.is_empty(), "golden files out of date (ORCH_UPDATE_GOLDEN=1 rewrites them):\n{}", stale.join("\n"));
}

/// The pods a selector picks: `matchLabels` against each workload's pod labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// The tier of the workload whose pods `selector` picks.
fn tier_selected(exported: &Exported, selector: &Value) -> Vec<String> {
    let mut out: Vec<String> = ["Deployment", "StatefulSet"]
        .iter()
        .flat_map(|k| exported.all(k))
        .filter(|w| selects(selector, &w["spec"]["template"]["metadata"]["labels"]))
        .map(|w| w["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn network_policies_admit_exactly_the_tiers_whose_links_call_them() {
    for topology in repo_topologies() {
        let exported = export(&topology, &[]);
        // The topology read here, not by the exporter: who calls whom.
        let source = yaml(&std::fs::read_to_string(repo_root().join(&topology)).unwrap());
        let tiers = source["tiers"].as_object().unwrap();
        for (tier, spec) in tiers {
            let mut callers: Vec<String> = source["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["to"] == tier.as_str() && l["from"] != tier.as_str())
                .map(|l| l["from"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            callers.sort();
            let policy = exported.get("NetworkPolicy", &format!("{tier}-ingress"));
            assert_eq!(tier_selected(&exported, &policy["spec"]["podSelector"]["matchLabels"]), vec![tier.clone()]);
            assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]), "{topology} {tier}");
            let mut from_peers = Vec::new();
            let mut open_ports = Vec::new();
            for rule in policy["spec"]["ingress"].as_array().unwrap() {
                let ports: Vec<u64> =
                    rule["ports"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
                match rule.get("from") {
                    Some(from) => {
                        assert_eq!(
                            ports,
                            vec![7700],
                            "{topology} {tier}: a rule with sources opens the peer port only"
                        );
                        for source in from.as_array().unwrap() {
                            from_peers.extend(tier_selected(&exported, &source["podSelector"]["matchLabels"]));
                        }
                    }
                    None => open_ports.extend(ports),
                }
            }
            from_peers.sort();
            assert_eq!(from_peers, callers, "{topology}: who may reach `{tier}`'s peer port");
            let listen: Vec<u64> =
                spec["listen"].as_str().map(|l| l.rsplit_once(':').unwrap().1.parse().unwrap()).into_iter().collect();
            assert_eq!(open_ports, listen, "{topology}: `{tier}` is open to anyone on its listen port only");
        }
    }
}

#[test]
fn what_cannot_be_exported_is_refused_with_the_reason_and_writes_nothing() {
    let bad = integration_tests::TopologyFile::new(
        "version: 1\nname: t\ntiers:\n  Web_1: { plugin: gateway, listen: \"127.0.0.1:0\", config: { routes: [] } }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(integration_tests::bin())
        .args(["export", "kubernetes", bad.path_str(), "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("tier `Web_1` cannot be a Kubernetes name"), "{stderr}");
    assert!(stderr.contains("listens on port 0"), "{stderr}");
    assert!(!out_dir.exists(), "nothing is written");
    let hello = repo_root().join("topologies/hello.yaml");
    let out = integration_tests::orchestrator(&[
        "export",
        "kubernetes",
        hello.to_str().unwrap(),
        "--kubernetes-version",
        "1.20",
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose one from 1.29 to 1.37"));

    // An env file under the directory that is a symlink to a file outside
    // it: where it leads counts, and nothing of it is written.
    let leaking = integration_tests::TopologyFile::new(
        "version: 1\nname: t\ntiers:\n  app:\n    plugin: hello\n    env: { SHADOW: { file: secrets/shadow } }\n",
    );
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("shadow");
    std::fs::write(&target, "root:the-hash-of-roots-password:19000::::::\n").unwrap();
    std::fs::create_dir(leaking.dir.path().join("secrets")).unwrap();
    std::os::unix::fs::symlink(&target, leaking.dir.path().join("secrets/shadow")).unwrap();
    let out = Command::new(integration_tests::bin())
        .args(["export", "kubernetes", leaking.path_str(), "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("leads to") && stderr.contains("outside the topology's directory"), "{stderr}");
    assert!(!out_dir.exists(), "nothing is written");
}

#[test]
fn the_report_says_how_each_part_was_translated_and_a_stream_needs_its_secret_made() {
    let exported = export("topologies/orders.yaml", &[]);
    let report = &exported.stderr;
    for line in [
        "topologies/orders.yaml:23:3 tiers.orders: mapped: queue tier `orders` → StatefulSet orders of one pod",
        "topologies/orders.yaml:16:5 tiers.web.listen: mapped: listen port 8080 → Service web",
        "topologies/orders.yaml:30:3 tiers.worker: mapped: tier `worker` → Deployment worker, 2 replica(s)",
        "topologies/orders.yaml:35:5 tiers.audit.image: mapped: process tier `audit`: `.venv/bin/python` runs in container `program`",
        "tiers.audit.config.workdir: not translated:",
        "topologies/orders.yaml:45:5 links[3]: mapped: orders → worker (queue, point-to-point, topic orders)",
        "defaulted: resources → requests cpu 50m memory 64Mi",
    ] {
        assert!(report.contains(line), "no `{line}` in:\n{report}");
    }
    // The tokens: files of their own, kept across exports, never in the ConfigMap.
    let secrets = exported.dir.path().join("secrets");
    let token = std::fs::read_to_string(secrets.join("peer-token")).unwrap();
    assert!(token.trim().len() >= 32, "{token}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(secrets.join("peer-token")).unwrap().permissions().mode() & 0o777, 0o600);
    let configmap = exported.get("ConfigMap", "orders-topology");
    assert!(!configmap.to_string().contains(token.trim()));
    assert_eq!(
        configmap["data"]["orders.yaml"],
        std::fs::read_to_string(repo_root().join("topologies/orders.yaml")).unwrap()
    );
    let again = Command::new(integration_tests::bin())
        .current_dir(repo_root())
        .args(["export", "kubernetes", "topologies/orders.yaml", "-o"])
        .arg(exported.dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(secrets.join("peer-token")).unwrap(), token, "a re-export keeps the tokens");
    // `-o -`: one stream of documents, and how to make the Secret it does not carry.
    let hello = repo_root().join("topologies/hello.yaml");
    let out = integration_tests::orchestrator(&["export", "kubernetes", hello.to_str().unwrap(), "-o", "-"]);
    assert!(out.status.success());
    let stream = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<Value> = stream.split("\n---\n").map(|d| yaml(d.trim_start_matches("---\n"))).collect();
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["ConfigMap", "Deployment", "NetworkPolicy", "Service"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubectl create secret generic hello-tokens"));
}

/// One container's process, its stderr kept.
struct Process {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A pod of the simulated cluster.
struct Pod {
    name: String,
    /// The workload's name: its tier.
    workload: String,
    labels: Value,
    ns: String,
    ip: String,
    spec: Value,
    /// Volume name → the directory standing for it.
    volumes: BTreeMap<String, PathBuf>,
    containers: Vec<Process>,
}

/// The kubelet and the cluster DNS, simulated (see the module's docs).
struct Cluster {
    pods: Vec<Pod>,
    network: Network,
    /// The namespace the test sends from (no pod runs there).
    client: String,
    root: tempfile::TempDir,
    /// ConfigMaps and Secrets: name → key → content.
    sources: BTreeMap<String, BTreeMap<String, String>>,
    writes: u64,
    admin_token: String,
}

impl Cluster {
    fn start(exported: &Exported) -> Self {
        let mut sources: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for cm in exported.all("ConfigMap") {
            let data = cm["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()));
            sources.insert(cm["metadata"]["name"].as_str().unwrap().to_owned(), data.collect());
        }
        for generator in exported.kustomization["secretGenerator"].as_array().into_iter().flatten() {
            let mut data = BTreeMap::new();
            for file in generator["files"].as_array().unwrap() {
                let (key, path) = file.as_str().unwrap().split_once('=').unwrap();
                data.insert(key.to_owned(), std::fs::read_to_string(exported.dir.path().join(path)).unwrap());
            }
            sources.insert(generator["name"].as_str().unwrap().to_owned(), data);
        }
        let admin_token = sources.values().find_map(|d| d.get("admin-token")).unwrap().trim().to_owned();
        let mut pods = Vec::new();
        for workload in ["Deployment", "StatefulSet"].iter().flat_map(|k| exported.all(k)) {
            let name = workload["metadata"]["name"].as_str().unwrap();
            for r in 0..workload["spec"]["replicas"].as_u64().unwrap() {
                let pod_name =
                    if workload["kind"] == "StatefulSet" { format!("{name}-{r}") } else { format!("{name}-pod{r}") };
                pods.push(Pod {
                    name: pod_name,
                    workload: name.to_owned(),
                    labels: workload["spec"]["template"]["metadata"]["labels"].clone(),
                    ns: String::new(),
                    ip: String::new(),
                    spec: workload["spec"]["template"]["spec"].clone(),
                    volumes: BTreeMap::new(),
                    containers: Vec::new(),
                });
            }
        }
        let network = Network::new(pods.len() + 1);
        for (i, pod) in pods.iter_mut().enumerate() {
            pod.ns = network.ns(&format!("h{}", i + 1));
            pod.ip = network.addr(i + 1);
        }
        let client = network.ns(&format!("h{}", pods.len() + 1));
        let mut cluster = Self { pods, network, client, root: volumes_root(), sources, writes: 0, admin_token };
        cluster.dns(exported);
        for i in 0..cluster.pods.len() {
            cluster.volumes(i);
            cluster.run_containers(i);
        }
        cluster
    }

    /// Every Service's name, in every pod's hosts file (and the client's):
    /// the addresses of the pods its selector picks.
    fn dns(&self, exported: &Exported) {
        let mut lines = String::new();
        for service in exported.all("Service") {
            let name = service["metadata"]["name"].as_str().unwrap();
            for pod in self.pods.iter().filter(|p| selects(&service["spec"]["selector"], &p.labels)) {
                lines.push_str(&format!("{} {name} {name}.default.svc.cluster.local\n", pod.ip));
            }
        }
        for i in 1..=self.pods.len() + 1 {
            let own = self.pods.get(i - 1).map(|p| format!("{} {}\n", p.ip, p.name)).unwrap_or_default();
            self.network.hosts_file(i, &format!("{own}{lines}"));
        }
    }

    /// The directories standing for pod `i`'s volumes.
    fn volumes(&mut self, i: usize) {
        let dir = self.root.path().join(&self.pods[i].name);
        let volumes: Vec<Value> = self.pods[i].spec["volumes"].as_array().cloned().unwrap_or_default();
        for v in volumes {
            let name = v["name"].as_str().unwrap().to_owned();
            let path = dir.join(&name);
            std::fs::create_dir_all(&path).unwrap();
            match self.volume_data(&v) {
                Some(data) => self.write_atomically(&path, &data, file_mode(&v)),
                None => assert!(v.get("emptyDir").is_some(), "volume kind not simulated: {v}"),
            }
            self.pods[i].volumes.insert(name, path);
        }
        // A StatefulSet's claims: a directory each.
        for claim in
            self.pods[i].spec.get("volumeClaimTemplates").and_then(Value::as_array).cloned().unwrap_or_default()
        {
            let name = claim["metadata"]["name"].as_str().unwrap().to_owned();
            let path = dir.join(&name);
            std::fs::create_dir_all(&path).unwrap();
            self.pods[i].volumes.insert(name, path);
        }
    }

    /// What a ConfigMap, Secret or projected volume holds: path → content
    /// (its `items`, or every key under its own name).
    fn volume_data(&self, v: &Value) -> Option<BTreeMap<String, String>> {
        let one = |source: &Value, name: &str| -> BTreeMap<String, String> {
            let data = &self.sources[name];
            match source["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| (i["path"].as_str().unwrap().to_owned(), data[i["key"].as_str().unwrap()].clone()))
                    .collect(),
                None => data.clone(),
            }
        };
        if let Some(name) = v["configMap"]["name"].as_str() {
            return Some(one(&v["configMap"], name));
        }
        if let Some(name) = v["secret"]["secretName"].as_str() {
            return Some(one(&v["secret"], name));
        }
        let sources = v["projected"]["sources"].as_array()?;
        let mut out = BTreeMap::new();
        for source in sources {
            let (s, name) = match (source.get("configMap"), source.get("secret")) {
                (Some(c), _) => (c, c["name"].as_str().unwrap()),
                (_, Some(s)) => (s, s["name"].as_str().unwrap()),
                _ => panic!("projected source not simulated: {source}"),
            };
            out.extend(one(s, name));
        }
        Some(out)
    }

    /// Writes `data` into volume directory `dir` as the kubelet's atomic
    /// writer does: the files in a new `..<timestamp>` directory, `..data`
    /// switched to it by a rename, each top-level name a link through
    /// `..data`, and the previous directory removed.
    /// Each file has `mode`, as the volume's `defaultMode` says.
    fn write_atomically(&mut self, dir: &Path, data: &BTreeMap<String, String>, mode: u32) {
        self.writes += 1;
        let stamp = format!("..2026_12_02_00_00_00.{:09}", self.writes);
        let new = dir.join(&stamp);
        std::fs::create_dir(&new).unwrap();
        for (path, value) in data {
            let file = new.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, value).unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        let top: BTreeSet<&str> = data.keys().map(|p| p.split('/').next().unwrap()).collect();
        for name in top {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }

    /// Starts pod `i`'s containers: each the manifest's command, args, env
    /// and working directory, its mounts bound in a mount namespace of its own.
    fn run_containers(&mut self, i: usize) {
        let pod = &self.pods[i];
        let bin = integration_tests::bin();
        let image = bin.parent().unwrap();
        let mut started = Vec::new();
        for c in pod.spec["containers"].as_array().unwrap() {
            let sq = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
            let mut script = vec![
                "set -e".to_owned(),
                "mount -t tmpfs tmpfs /opt".to_owned(),
                "mkdir -p /opt/orchestrator/bin".to_owned(),
                format!("mount --bind {} /opt/orchestrator/bin", sq(image.to_str().unwrap())),
                format!("hostname {}", sq(&pod.name)),
            ];
            // Parents before children, as container runtimes order them.
            let mut mounts: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
            mounts.sort_by_key(|m| Path::new(m["mountPath"].as_str().unwrap()).components().count());
            for m in mounts {
                let target = m["mountPath"].as_str().unwrap();
                // The image's tree is this machine's: a volume over a
                // directory this repository (or its build) lives in would
                // hide it, which no real image does (a CI clone under /tmp,
                // and the pod's /tmp volume). That volume stays the machine's.
                if repo_root().starts_with(target) || integration_tests::target_dir().starts_with(target) {
                    continue;
                }
                let source = &pod.volumes[m["name"].as_str().unwrap()];
                script.push(format!("mkdir -p {}", sq(target)));
                script.push(format!("mount --bind {} {}", sq(source.to_str().unwrap()), sq(target)));
                if m["readOnly"] == true {
                    script.push(format!("mount -o remount,bind,ro {}", sq(target)));
                }
            }
            // An image of the tier's own stands for this repository's tree,
            // where its program starts.
            let workdir = match c["workingDir"].as_str() {
                Some(dir) => Some(dir.to_owned()),
                None if c["name"] == "program" => Some(repo_root().display().to_string()),
                None => None,
            };
            if let Some(dir) = workdir {
                script.push(format!("cd {}", sq(&dir)));
            }
            let mut exec = vec![
                "exec env -i".to_owned(),
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                sq(&format!("HOSTNAME={}", pod.name)),
                "ORCH_LOG=info".to_owned(),
                "NO_COLOR=1".to_owned(),
            ];
            for e in c["env"].as_array().into_iter().flatten() {
                let secret = &e["valueFrom"]["secretKeyRef"];
                let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                    (Some(v), _) => v.to_owned(),
                    (None, Some("metadata.name")) => pod.name.clone(),
                    _ if secret.is_object() => {
                        self.sources[secret["name"].as_str().unwrap()][secret["key"].as_str().unwrap()].clone()
                    }
                    _ => panic!("env not simulated: {e}"),
                };
                exec.push(sq(&format!("{}={value}", e["name"].as_str().unwrap())));
            }
            for arg in c["command"].as_array().unwrap().iter().chain(c["args"].as_array().into_iter().flatten()) {
                exec.push(sq(arg.as_str().unwrap()));
            }
            script.push(exec.join(" "));
            let mut child = Command::new("ip")
                .args(["netns", "exec", &pod.ns, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c"])
                .arg(script.join("\n"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a container");
            // Both streams, as the kubelet keeps a container's log.
            let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
            let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
            let (log, lines) = integration_tests::collect_lines([out, err]);
            started.push(Process { child, lines, log });
        }
        self.pods[i].containers = started;
    }

    /// `GET path` at pod `pod`'s named or numbered container `port`, as the
    /// kubelet probes it (from outside the pod).
    fn probe(&self, pod: &Pod, probe: &Value) -> bool {
        let port = &probe["httpGet"]["port"];
        let port = match port.as_u64() {
            Some(p) => p,
            None => pod.spec["containers"][0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *port)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap(),
        };
        let addr: SocketAddr = format!("{}:{port}", pod.ip).parse().unwrap();
        let path = probe["httpGet"]["path"].as_str().unwrap().to_owned();
        in_ns(&self.client, async move || {
            let req =
                hyper::Request::get(format!("http://{addr}{path}")).body(http_body_util::Full::default()).unwrap();
            matches!(
                tokio::time::timeout(Duration::from_secs(1), integration_tests::client().request(req)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            )
        })
    }

    /// Waits until every pod passes its readiness probe; a container that
    /// exits meanwhile fails the test with its log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..self.pods.len() {
            let probe = self.pods[i].spec["containers"][0]["readinessProbe"].clone();
            // The probe's period, shortened: the kubelet polls, and so does this.
            let period =
                Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10)).min(Duration::from_millis(200));
            while !self.probe(&self.pods[i], &probe) {
                let exited = self.pods[i].containers.iter_mut().find_map(|c| c.child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    panic!("pod {} exited ({status}):\n{}", self.pods[i].name, self.logs(&self.pods[i]));
                }
                if Instant::now() > deadline {
                    panic!(
                        "pod {} not ready within {READY_WITHIN:?}:\n{}",
                        self.pods[i].name,
                        self.logs(&self.pods[i])
                    );
                }
                std::thread::sleep(period);
            }
        }
        self.wait_routed();
    }

    /// Waits until every pod sees every other tier it reaches as ready: a
    /// pod's probe passing is not yet its callers' probes passing.
    fn wait_routed(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        for pod in &self.pods {
            loop {
                let status = self.status(pod, "");
                let unrouted: Vec<String> = status["tiers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["plugin"] == "peer")
                    .filter(|t| !t["instances"].as_array().unwrap().iter().all(|i| i["ready"] == true))
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect();
                if unrouted.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "{} does not reach {unrouted:?}: {status}", pod.name);
                // The peers' probe period: how often a caller looks again.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn logs(&self, pod: &Pod) -> String {
        pod.containers.iter().map(|c| c.log.lock().unwrap().join("\n")).collect::<Vec<_>>().join("\n--\n")
    }

    fn pods_of(&self, workload: &str) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(move |p| p.workload == workload)
    }

    /// Waits for a line containing `needle` from any pod of `workload`
    /// (logged before this call, or after).
    fn wait_for_line(&self, workload: &str, needle: &str) -> String {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for pod in self.pods_of(workload) {
                for c in &pod.containers {
                    if let Some(line) = c.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                        return line.clone();
                    }
                }
            }
            assert!(Instant::now() < deadline, "no `{needle}` from {workload}");
            // Wait for the next line of any of them.
            for pod in self.pods_of(workload) {
                for c in &pod.containers {
                    if let Err(RecvTimeoutError::Disconnected) = c.lines.recv_timeout(Duration::from_millis(20)) {
                        panic!("{} exited:\n{}", pod.name, self.logs(pod));
                    }
                }
            }
        }
    }

    /// `method path` with `body` to `addr`, from the client namespace; the
    /// admin token is presented to an admin port.
    fn send(&self, method: &str, addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
        let token = (addr.port() == 9900).then(|| self.admin_token.clone());
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        in_ns(&self.client, async move || {
            let mut req = hyper::Request::builder().method(method.as_str()).uri(format!("http://{addr}{path}"));
            if let Some(token) = token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(20), integration_tests::client().request(req))
                .await
                .expect("answered in time")
                .expect("sent");
            let code = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            (code, String::from_utf8_lossy(&body).into_owned())
        })
    }

    fn admin(&self, pod: &Pod) -> SocketAddr {
        format!("{}:9900", pod.ip).parse().unwrap()
    }

    fn status(&self, pod: &Pod, query: &str) -> Value {
        let (code, body) = self.send("GET", self.admin(pod), &format!("/admin/status{query}"), "");
        assert_eq!(code, 200, "{}: {body}", pod.name);
        serde_json::from_str(&body).unwrap()
    }

    /// Updates ConfigMap `name` (key `key` to `text`) in every pod that
    /// mounts it, as the kubelet does: an atomic swap of `..data`.
    fn update_configmap(&mut self, name: &str, key: &str, text: &str) {
        self.sources.get_mut(name).unwrap().insert(key.to_owned(), text.to_owned());
        let mut writes = Vec::new();
        for pod in &self.pods {
            for v in pod.spec["volumes"].as_array().into_iter().flatten() {
                let named = v["configMap"]["name"] == name
                    || v["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["configMap"]["name"] == name);
                if named {
                    let dir = pod.volumes[v["name"].as_str().unwrap()].clone();
                    writes.push((dir, self.volume_data(v).unwrap(), file_mode(v)));
                }
            }
        }
        for (dir, data, mode) in writes {
            self.write_atomically(&dir, &data, mode);
        }
    }
}

impl Drop for Cluster {
    /// Stops every container by its PID (SIGTERM: it drains), and waits.
    fn drop(&mut self) {
        for pod in &self.pods {
            for c in &pod.containers {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for pod in &mut self.pods {
            for c in &mut pod.containers {
                while c.child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = c.child.kill();
                        let _ = c.child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The pod address and `listen` port of a Service's pods (kube-proxy is
/// not simulated: the test sends to the pods behind the Service).
fn service_pods(cluster: &Cluster, exported: &Exported, service: &str) -> Vec<SocketAddr> {
    let svc = exported.get("Service", service);
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    cluster
        .pods
        .iter()
        .filter(|p| selects(&svc["spec"]["selector"], &p.labels))
        .map(|p| format!("{}:{port}", p.ip).parse().unwrap())
        .collect()
}

#[test]
fn the_hello_topology_runs_from_its_manifests_and_a_configmap_update_reloads_every_pod() {
    let exported = export("topologies/hello.yaml", &["--drain-timeout", "2s"]);
    let mut cluster = Cluster::start(&exported);
    cluster.wait_ready();
    assert_eq!(cluster.pods_of("backend").count(), 3, "a Deployment replica per pod");
    let web = service_pods(&cluster, &exported, "web")[0];
    for _ in 0..30 {
        let (code, body) = cluster.send("GET", web, "/api", "");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("Hello Python!"), "{body}");
    }
    // The frontend pod reaches the backend through its headless Service:
    // every backend pod, each one ready.
    let frontend = cluster.pods_of("frontend").next().unwrap();
    let status = cluster.status(frontend, "");
    let peers = integration_tests::tier(&status, "backend")["instances"][0]["detail"]["peers"].clone();
    let mut addresses: Vec<String> =
        peers.as_array().unwrap().iter().map(|p| p["address"].as_str().unwrap().to_owned()).collect();
    addresses.sort();
    let mut want: Vec<String> = cluster.pods_of("backend").map(|p| format!("{}:7700", p.ip)).collect();
    want.sort();
    assert_eq!(addresses, want, "{peers}");

    // Each pod's reload attempts and generation now; then the ConfigMap
    // changes as `kubectl apply` would change it.
    let before: Vec<(String, u64, u64)> = cluster
        .pods
        .iter()
        .map(|p| {
            let status = cluster.status(p, "");
            (p.name.clone(), status["reloads"]["attempts"].as_u64().unwrap(), status["generation"].as_u64().unwrap())
        })
        .collect();
    let source = exported.get("ConfigMap", "hello-topology")["data"]["hello.yaml"].as_str().unwrap().to_owned();
    let changed = source.replace("greeting: Hello Python!", "greeting: Hello Kubernetes!");
    assert_ne!(changed, source);
    cluster.update_configmap("hello-topology", "hello.yaml", &changed);
    // Every pod rereads the file; the backend's pods apply the change, the
    // others find nothing of theirs changed.
    for (pod, attempts, generation) in before {
        let pod = cluster.pods.iter().find(|p| p.name == pod).unwrap();
        let status = cluster.status(pod, &format!("?min_attempts={}&wait=15s", attempts + 1));
        let last = &status["last_reload"];
        assert_eq!(last["trigger"], "file", "{}: {status}", pod.name);
        if pod.workload == "backend" {
            assert_eq!(last["outcome"], "applied", "{}: {last}", pod.name);
            assert_eq!(status["generation"].as_u64().unwrap(), generation + 1, "{}", pod.name);
        } else {
            assert_eq!(last["outcome"], "unchanged", "{}: {last}", pod.name);
        }
    }
    let (code, body) = cluster.send("GET", web, "/api", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Hello Kubernetes!"), "{body}");
}

/// Orders through the queue tier: the workers (point-to-point) and the
/// audit program (pub/sub) each get them.
fn orders_flow(exported: &Exported) {
    let mut cluster = Cluster::start(exported);
    cluster.wait_ready();
    let web = service_pods(&cluster, exported, "web")[0];
    let mut ids = Vec::new();
    for i in 1..=6 {
        let (code, body) =
            cluster.send("POST", web, "/api/orders", &format!("{{\"item\": \"widget-{i}\", \"quantity\": {i}}}"));
        assert_eq!(code, 202, "{body}");
        ids.push(serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        cluster.wait_for_line("worker", &format!("Processed order {id}"));
        cluster.wait_for_line("audit", &format!("audit: order {id} recorded"));
    }
    // On a loaded machine a probe can time out (500 ms) and a caller eject
    // the only pod for a moment: the callers see their peers ready first.
    cluster.wait_routed();
    let (code, body) = cluster.send("GET", web, "/audit", "");
    let web_pod = cluster.pods_of("web").next().unwrap();
    assert_eq!(code, 200, "{body}\n{}\n{}", cluster.status(web_pod, ""), cluster.logs(web_pod));
    for id in &ids {
        assert!(body.contains(id.as_str()), "{id} not in {body}");
    }
}

#[test]
fn the_orders_topology_runs_from_its_manifests_its_program_in_a_container_of_its_own() {
    // `audit` has an `image:`: its program is the pod's second container,
    // which the orchestrator beside it probes and routes to.
    integration_tests::venv_python();
    let exported = export("topologies/orders.yaml", &["--drain-timeout", "2s"]);
    let audit = exported.get("Deployment", "audit");
    let containers = audit["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["orchestrator", "program"]);
    orders_flow(&exported);
}

#[test]
fn the_orders_topology_runs_from_its_manifests_its_program_started_by_the_orchestrator() {
    // Without `image:`, the orchestrator's container starts the program, as
    // on one machine, relative to the topology's directory: the image's
    // tree must have it there (here: the ConfigMap is mounted over a copy's
    // directory, whose `workdir` names the repository).
    integration_tests::venv_python();
    let yaml = std::fs::read_to_string(repo_root().join("topologies/orders.yaml")).unwrap();
    let yaml: String =
        yaml.lines().filter(|l| !l.trim_start().starts_with("image:")).map(|l| format!("{l}\n")).collect();
    let topology = integration_tests::TopologyFile::new(
        &yaml.replace("workdir: ..", &format!("workdir: {}", repo_root().display())),
    );
    let exported =
        export(topology.path_str(), &["--drain-timeout", "2s", "--mount-path", topology.dir.path().to_str().unwrap()]);
    let audit = exported.get("Deployment", "audit");
    assert_eq!(audit["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    orders_flow(&exported);
}

/// Where the volumes' directories live: beside the build, not in the
/// machine's /tmp, which a pod's `/tmp` volume covers.
/// The mode of a volume's files: its `defaultMode`, else the kubelet's 0644.
fn file_mode(volume: &Value) -> u32 {
    ["configMap", "secret", "projected"]
        .iter()
        .find_map(|kind| volume[kind]["defaultMode"].as_u64())
        .map_or(0o644, |m| m as u32)
}

fn volumes_root() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("k8s-volumes").tempdir_in(integration_tests::target_dir()).unwrap()
}

#[test]
fn a_program_beside_its_orchestrator_calls_its_links_at_the_ports_its_manifest_gives_and_secrets_stay_secret() {
    // python-go: the Flask frontend in a container of its own (an `image:`)
    // calls the Go backend through ORCH_LINK_BACKEND_URL, the loopback port
    // its manifest names, which the orchestrator beside it listens on; the
    // backend's program is started by its pods' orchestrators. The
    // backend's greeting and the frontend's key are read from files: on
    // Kubernetes, a Secret, never the ConfigMap.
    integration_tests::venv_python();
    let backend = integration_tests::go_backend();
    let root = repo_root();
    let yaml = std::fs::read_to_string(root.join("topologies/python-go.yaml"))
        .unwrap()
        .replace(
            "    plugin: process\n    config:\n      command: [.venv/bin/python",
            "    plugin: process\n    image: localhost/frontend:1\n    env: { API_KEY: { file: secrets/api-key } }\n    config:\n      command: [.venv/bin/python",
        )
        .replace("env: { GREETING: Hello Python! }", "env: { GREETING: { file: greeting.txt } }")
        .replace("command: [go, run, .]", &format!("command: [{}]", backend.display()))
        .replace("workdir: ../examples/go/backend", &format!("workdir: {}/examples/go/backend", root.display()))
        .replace("workdir: ..", &format!("workdir: {}", root.display()));
    assert!(yaml.contains("image: localhost/frontend:1") && yaml.contains("file: greeting.txt"), "{yaml}");
    let topology = integration_tests::TopologyFile::new(&yaml);
    std::fs::write(topology.dir.path().join("greeting.txt"), "Hello from a Secret!\n").unwrap();
    std::fs::create_dir(topology.dir.path().join("secrets")).unwrap();
    std::fs::write(topology.dir.path().join("secrets/api-key"), "k-0123456789\n").unwrap();
    let exported =
        export(topology.path_str(), &["--drain-timeout", "2s", "--mount-path", topology.dir.path().to_str().unwrap()]);
    let configmap = exported.get("ConfigMap", "python-go-topology").to_string();
    assert!(!configmap.contains("Hello from a Secret") && !configmap.contains("k-0123456789"));
    let generated = std::fs::read_to_string(exported.dir.path().join("secrets/env/greeting.txt")).unwrap();
    assert_eq!(generated, "Hello from a Secret!\n");
    let frontend = exported.get("Deployment", "frontend");
    let containers = frontend["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let env = containers[1]["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).unwrap().clone();
    assert_eq!(var("ORCH_LINK_BACKEND_URL")["value"], "http://127.0.0.1:7801");
    assert_eq!(
        var("API_KEY")["valueFrom"]["secretKeyRef"],
        serde_json::json!({ "name": "python-go-env", "key": "secrets.api-key" })
    );
    let args: Vec<&str> = containers[0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--link-port", "backend=7801"]), "{args:?}");
    let mut cluster = Cluster::start(&exported);
    cluster.wait_ready();
    let web = service_pods(&cluster, &exported, "web")[0];
    for _ in 0..10 {
        let (code, body) = cluster.send("GET", web, "/api", "");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("Hello from a Secret!"), "{body}");
    }
}
