//! From the YAML node tree to a typed [`Topology`], collecting every error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use super::diagnostic::{Diagnostic, Diagnostics};
use super::model::{LinkKind, LinkSpec, OutboxSpec, QueueMode, QueueRole, TierId, TierSpec, Topology, limits};
use super::node::{KeyPath, Node, Seg, Value};
use super::raw::{
    RawDuration, RawEnvValue, RawFileRef, RawLink, RawLinkKind, RawQueueMode, RawSize, RawTier, TOP_LEVEL_KEYS,
};
use crate::plugins::{LoadError, Registry};

/// Parses and validates topology `source` read from `file`.
pub fn parse(file: &Path, source: &str, registry: &Registry) -> Result<Topology, Diagnostics> {
    let mut diags = Diagnostics::new(file, source.into());
    let root = match Node::parse(source) {
        Ok(root) => root,
        Err(e) => {
            diags.push(syntax_error(&e, source));
            return Err(diags);
        }
    };
    let base = super::model::base_dir(file);
    let mut v = Validator {
        root: &root,
        diags,
        registry,
        base,
        suggestions: SUGGESTION_BUDGET,
        plugin_names: None,
        plugins_checked: None,
    };
    let topology = v.topology(file);
    match topology {
        Some(t) if v.diags.is_empty() => Ok(t),
        _ => {
            // In the file's order, as a compiler lists them.
            v.diags.items.sort_by_key(|d| d.loc.map_or((u32::MAX, u32::MAX), |l| (l.line, l.column)));
            Err(v.diags)
        }
    }
}

fn syntax_error(e: &serde_saphyr::Error, source: &str) -> Diagnostic {
    let loc = e.location().and_then(|l| super::node::Loc::from_location(&l, source));
    let text = e.without_snippet().to_string();
    let mut message = text.lines().next().unwrap_or("invalid YAML").trim();
    // The location is the diagnostic's own; the parser's text repeats it.
    if loc.is_some()
        && let Some((before, _)) = message.rsplit_once(" at line ")
    {
        message = before.trim_end();
    }
    let message = message.to_owned();
    Diagnostic::new(&KeyPath::root(), format!("invalid YAML: {message}")).at(loc)
}

/// The field an "unknown field" error from serde is about.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// Removes `key` from the object at `path` inside `json`; whether it was there.
fn remove_key(json: &mut serde_json::Value, path: &[Seg], key: &str) -> bool {
    let mut node = json;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => node.get_mut(k.as_str()),
            Seg::Index(i) => node.get_mut(*i),
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.as_object_mut().is_some_and(|o| o.remove(key).is_some())
}

/// Closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate `word` is most likely a misspelling of, if one is close.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 200
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && topic.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

struct Validator<'a> {
    root: &'a Node,
    diags: Diagnostics,
    registry: &'a Registry,
    base: PathBuf,
    /// How many more names "did you mean" may compare: a file with thousands
    /// of misspelt names among thousands of tiers would otherwise take
    /// minutes. Once spent, errors are still reported, without the hint.
    suggestions: usize,
    /// The plugin names, listed once for every unknown-plugin hint.
    plugin_names: Option<Vec<String>>,
    /// The plugins that would load, and those refused, checked once.
    plugins_checked: Option<(Vec<String>, Vec<String>)>,
}

/// The comparisons "did you mean" may make in one file, some 0.1 s of them.
const SUGGESTION_BUDGET: usize = 2_000_000;

/// `names` as a list for a message, the first few of many.
fn some_of(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!("{}, … and {} more", names[..SHOWN].join(", "), names.len() - SHOWN)
    }
}

struct TierDraft {
    raw: RawTier,
    path: KeyPath,
    serves: Option<Vec<LinkKind>>,
    /// It has an error already: it still exists for the checks that follow
    /// (a link to it is no "unknown tier"), which say nothing more of it.
    broken: bool,
}

impl Validator<'_> {
    /// [`did_you_mean`], while the budget of comparisons lasts.
    fn suggest(&mut self, word: &str, candidates: &[&str]) -> Option<String> {
        self.suggest_name(word, candidates).map(|c| format!("did you mean `{c}`?"))
    }

    fn suggest_name<'c>(&mut self, word: &str, candidates: &[&'c str]) -> Option<&'c str> {
        self.suggestions = self.suggestions.checked_sub(candidates.len())?;
        closest(word, candidates.iter().copied())
    }

    /// The hint for a plugin not found: the plugins that load, and those that
    /// are there but refused.
    fn available_plugins(&mut self, plugin_dirs: &[PathBuf]) -> String {
        let registry = self.registry;
        let (usable, refused) = self.plugins_checked.get_or_insert_with(|| registry.names_checked(plugin_dirs));
        let usable: Vec<&str> = usable.iter().map(String::as_str).collect();
        let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
        let mut hint = if usable.is_empty() {
            "no plugins found; build them with `cargo build --release`".to_owned()
        } else {
            format!("available plugins: {}", some_of(&usable))
        };
        if !refused.is_empty() {
            hint.push_str(&format!("; found but refused: {} (`orchestrator plugins` says why)", some_of(&refused)));
        }
        hint
    }

    fn error(&mut self, path: &KeyPath, message: impl Into<String>) -> &mut Diagnostic {
        let d = Diagnostic::new(path, message).at(self.root.locate(path));
        self.diags.push(d);
        self.diags.items.last_mut().expect("just pushed")
    }

    fn key_error(&mut self, path: &KeyPath, message: impl Into<String>) -> &mut Diagnostic {
        let d = Diagnostic::new(path, message).at(self.root.locate_key(path));
        self.diags.push(d);
        self.diags.items.last_mut().expect("just pushed")
    }

    /// Deserializes `node` (at `path`) into `T`. Unknown keys, and keys whose
    /// value is wrong, are reported and left out so that the rest is still
    /// checked: every mistake of a mapping is reported in one pass. A missing
    /// key (one left out for its wrong value is not reported again) gives `None`.
    fn de<T: DeserializeOwned>(&mut self, node: &Node, path: &KeyPath) -> Option<T> {
        let mut json = node.to_json();
        let mut left_out: Vec<String> = Vec::new();
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, T>(json.clone()) {
                Ok(t) => return Some(t),
                Err(e) => {
                    let mut at = path.join_serde(e.path());
                    let message = e.inner().to_string();
                    if let Some(name) = unknown_field(&message) {
                        // The path of an unknown field ends with the field itself.
                        if at.0.last() == Some(&Seg::Key(name.to_owned())) {
                            at.0.pop();
                        }
                        let removed = remove_key(&mut json, &at.0[path.0.len()..], name);
                        self.serde_error(&at, &message);
                        if removed {
                            continue;
                        }
                    } else if let Some(rest) = message.strip_prefix("missing field `") {
                        let name = rest.split('`').next().unwrap_or_default();
                        if !left_out.iter().any(|k| k == name) {
                            self.serde_error(&at, &message);
                        }
                    } else {
                        self.serde_error(&at, &message);
                        // Leave out the key whose value is wrong (the one
                        // holding the list, for an item of a list), and go on.
                        let rel = &at.0[path.0.len().min(at.0.len())..];
                        if let Some(i) = rel.iter().rposition(|seg| matches!(seg, Seg::Key(_)))
                            && let Seg::Key(name) = &rel[i]
                            && remove_key(&mut json, &rel[..i], name)
                        {
                            left_out.push(name.clone());
                            continue;
                        }
                    }
                    return None;
                }
            }
        }
        None
    }

    fn serde_error(&mut self, at: &KeyPath, message: &str) {
        let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
        if let Some(name) = unknown_field(message) {
            let hint = did_you_mean(name, quoted.iter().skip(1).copied())
                .or_else(|| (quoted.len() > 1).then(|| format!("expected one of: {}", quoted[1..].join(", "))));
            self.key_error(&at.key(name), format!("unknown key `{name}`")).hint = hint;
        } else if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            self.error(at, format!("missing key `{name}`"));
        } else if let Some(rest) = message.strip_prefix("unknown variant `") {
            let name = rest.split('`').next().unwrap_or_default();
            let hint = did_you_mean(name, quoted.iter().skip(1).copied())
                .or_else(|| Some(format!("expected one of: {}", quoted[1..].join(", "))));
            self.error(at, format!("unknown value `{name}`")).hint = hint;
        } else {
            self.error(at, message.to_owned());
        }
    }

    fn topology(&mut self, file: &Path) -> Option<Topology> {
        let root = self.root;
        let top = KeyPath::root();
        let Some(entries) = root.as_map() else {
            self.error(
                &top,
                format!("a topology is a mapping with `version`, `name` and `tiers`, not {}", root.kind()),
            );
            return None;
        };
        for (key, _) in entries {
            if !TOP_LEVEL_KEYS.contains(&key.name.as_str()) {
                let hint = did_you_mean(&key.name, TOP_LEVEL_KEYS);
                self.key_error(&top.key(&key.name), format!("unknown key `{}`", key.name)).hint =
                    hint.or_else(|| Some(format!("expected one of: {}", TOP_LEVEL_KEYS.join(", "))));
            }
        }

        match root.get("version") {
            None => {
                self.error(&top, "missing key `version`").hint = Some("add `version: 1`".into());
            }
            Some(n) => {
                if !matches!(n.value, Value::Int(1)) {
                    self.error(&top.key("version"), "unsupported topology version").hint =
                        Some("this orchestrator reads `version: 1`".into());
                }
            }
        }
        let name = match root.get("name") {
            None => {
                self.error(&top, "missing key `name`").hint = Some("add `name: <your application>`".into());
                String::new()
            }
            Some(n) => self.de::<String>(n, &top.key("name")).unwrap_or_default(),
        };

        let plugin_dirs: Vec<PathBuf> = match root.get("plugins") {
            Some(n) => self.de::<Vec<String>>(n, &top.key("plugins")).unwrap_or_default(),
            None => Vec::new(),
        }
        .into_iter()
        .map(|d| super::model::join_tidy(&self.base, &d))
        .collect();

        let tiers = self.tiers(&plugin_dirs);
        let (links, declared) = self.links(&tiers);
        self.listen_conflicts(&tiers);
        self.order(&tiers, &links);
        self.images(&tiers);
        self.plugin_configs(&tiers, &declared, &plugin_dirs);

        let hosts = self.placement(&tiers);
        let tiers =
            tiers.into_iter().filter_map(|(id, draft)| Some((id.clone(), self.tier_spec(&id, draft)?))).collect();
        Some(Topology { name, file: file.to_owned(), plugin_dirs, tiers, links, hosts })
    }

    /// `hosts:` and each tier's `host:`: every name known, every tier placed
    /// once per host, every host running a tier, a queue tier on one host.
    fn placement(&mut self, tiers: &IndexMap<TierId, TierDraft>) -> IndexMap<String, String> {
        let path = KeyPath::root().key("hosts");
        let mut hosts = IndexMap::new();
        if let Some(node) = self.root.get("hosts") {
            let Some(entries) = node.as_map() else {
                self.error(&path, format!("`hosts` is a mapping from host name to host, not {}", node.kind()));
                return hosts;
            };
            for (key, host_node) in entries {
                let hpath = path.key(&key.name);
                if !valid_name(&key.name) {
                    self.key_error(&hpath, format!("`{}` is not a valid host name", key.name)).hint =
                        Some("use letters, digits, `-` and `_`".into());
                    continue;
                }
                let Some(raw) = self.de::<super::raw::RawHost>(host_node, &hpath) else { continue };
                let valid = raw.peer.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !valid {
                    self.error(&hpath.key("peer"), format!("`{}` is not an `address:port`", raw.peer)).hint = Some(
                        "the address of the host's peer listener, e.g. `10.0.0.2:7700` or `backend.internal:7700`"
                            .into(),
                    );
                }
                hosts.insert(key.name.clone(), raw.peer);
            }
        }
        let names: Vec<&str> = hosts.keys().map(String::as_str).collect();
        let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (id, draft) in tiers {
            let hpath = draft.path.key("host");
            let placed: Vec<String> = match &draft.raw.host {
                None => Vec::new(),
                Some(super::raw::RawPlacement::One(h)) => vec![h.clone()],
                Some(super::raw::RawPlacement::Many(hs)) => hs.clone(),
            };
            if draft.raw.host.is_none() {
                if !hosts.is_empty() && !draft.broken {
                    self.error(&draft.path, format!("tier `{id}` has no `host:`, and the topology places its tiers"))
                        .hint = Some(format!("add `host:` with one or more of: {}", some_of(&names)));
                }
                continue;
            }
            if hosts.is_empty() {
                self.error(&hpath, "no `hosts:` are declared").hint =
                    Some("declare the hosts under `hosts:` (name → `peer: address:port`), or remove `host:`".into());
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            for (i, host) in placed.iter().enumerate() {
                let at = if matches!(draft.raw.host, Some(super::raw::RawPlacement::Many(_))) {
                    hpath.index(i)
                } else {
                    hpath.clone()
                };
                if !hosts.contains_key(host) {
                    let hint =
                        self.suggest(host, &names).unwrap_or_else(|| format!("the hosts are: {}", some_of(&names)));
                    self.error(&at, format!("unknown host `{host}`")).hint = Some(hint);
                } else if !seen.insert(host.clone()) {
                    self.error(&at, format!("tier `{id}` is placed on host `{host}` twice")).hint =
                        Some("name each host once; `replicas:` sets how many run on each".into());
                } else {
                    used.insert(host.clone());
                }
            }
            if placed.is_empty() {
                self.error(&hpath, format!("tier `{id}` is placed on no host")).hint =
                    Some(format!("name one or more of: {}", some_of(&names)));
            }
            // On JetStream, the tier's instances on several hosts share one stream.
            let on_nats =
                draft.raw.config.as_ref().and_then(|c| c.get("backend")).and_then(|b| b.as_str()) == Some("nats");
            if draft.raw.plugin == limits::BROKER_PLUGIN && seen.len() > 1 && !on_nats {
                self.error(&hpath, format!("queue tier `{id}` is placed on {} hosts", seen.len())).hint = Some(
                    "the embedded broker runs on one host: its publishers and subscribers reach it from the others (`backend: nats` runs on several)"
                        .into(),
                );
            }
        }
        for name in hosts.keys() {
            if !used.contains(name) && tiers.values().all(|d| !d.broken) {
                self.key_error(&path.key(name), format!("host `{name}` runs no tier")).hint =
                    Some(format!("place a tier on it with `host: {name}`, or remove it"));
            }
        }
        hosts
    }

    fn tiers(&mut self, plugin_dirs: &[PathBuf]) -> IndexMap<TierId, TierDraft> {
        let mut out = IndexMap::new();
        let path = KeyPath::root().key("tiers");
        let Some(node) = self.root.get("tiers") else {
            self.error(&KeyPath::root(), "missing key `tiers`").hint =
                Some("declare at least one tier under `tiers:`".into());
            return out;
        };
        let Some(entries) = node.as_map() else {
            self.error(&path, format!("`tiers` is a mapping from tier name to tier, not {}", node.kind()));
            return out;
        };
        if entries.is_empty() {
            self.error(&path, "no tiers declared");
        }
        for (key, tier_node) in entries {
            let tpath = path.key(&key.name);
            if !valid_name(&key.name) {
                self.key_error(&tpath, format!("`{}` is not a valid tier name", key.name)).hint =
                    Some("use letters, digits, `-` and `_`, starting with a letter or digit".into());
            }
            let Some(raw) = self.de::<RawTier>(tier_node, &tpath) else {
                let plugin = tier_node.get("plugin").and_then(|n| match &n.value {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                });
                let raw = RawTier {
                    plugin: plugin.unwrap_or_default(),
                    replicas: None,
                    listen: None,
                    max_body: None,
                    config: None,
                    env: IndexMap::new(),
                    host: None,
                    image: None,
                    run: None,
                    after: None,
                };
                out.insert(TierId::new(&key.name), TierDraft { raw, path: tpath, serves: None, broken: true });
                continue;
            };
            if raw.plugin.contains('/') || raw.plugin.ends_with(std::env::consts::DLL_SUFFIX) {
                let file = Path::new(&raw.plugin);
                let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let name = name.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(name);
                let dir =
                    file.parent().filter(|d| !d.as_os_str().is_empty()).map_or(".".into(), |d| d.display().to_string());
                self.error(&tpath.key("plugin"), format!("`{}` is a file; a plugin is named", raw.plugin)).hint =
                    Some(format!("write `plugin: {name}`, and add `{dir}` to the topology's `plugins:` directories"));
                out.insert(TierId::new(&key.name), TierDraft { raw, path: tpath, serves: None, broken: true });
                continue;
            }
            let serves = match self.registry.lookup(&raw.plugin, plugin_dirs) {
                Ok(p) => Some(p.serves()),
                Err(e) => {
                    let names = self.plugin_names.get_or_insert_with(|| self.registry.names(plugin_dirs)).clone();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let hint = match &e {
                        LoadError::NotFound { .. } => Some(match self.suggest(&raw.plugin, &names) {
                            Some(hint) => hint,
                            None => self.available_plugins(plugin_dirs),
                        }),
                        _ => None,
                    };
                    self.error(&tpath.key("plugin"), e.to_string()).hint = hint;
                    None
                }
            };
            if let Some(r) = raw.replicas
                && !(1..=limits::MAX_REPLICAS).contains(&r)
            {
                self.error(
                    &tpath.key("replicas"),
                    format!("replicas must be between 1 and {}, not {r}", limits::MAX_REPLICAS),
                );
            }
            if raw.plugin == limits::BROKER_PLUGIN && raw.replicas.is_some_and(|r| r != 1) {
                self.error(&tpath.key("replicas"), "a queue tier is one broker: it runs exactly one replica").hint =
                    Some("remove `replicas:`; scale the subscribing tiers instead".into());
            }
            if limits::STORE_PLUGINS.contains(&raw.plugin.as_str()) && raw.replicas.is_some_and(|r| r != 1) {
                self.error(
                    &tpath.key("replicas"),
                    format!("a `{}` tier is one server: it runs exactly one replica", raw.plugin),
                )
                .hint = Some("remove `replicas:` (replication is not supported yet)".into());
            }
            if raw.run == Some(super::raw::RawRun::Once) {
                if raw.plugin != "process" {
                    self.error(
                        &tpath.key("run"),
                        format!("only a process tier can run once, not a `{}` tier", raw.plugin),
                    )
                    .hint = Some("give the job `plugin: process` and its `command`".into());
                }
                if raw.replicas.is_some_and(|r| r != 1) {
                    self.error(&tpath.key("replicas"), "a job (`run: once`) runs one replica").hint =
                        Some("remove `replicas:`".into());
                }
                if raw.listen.is_some() {
                    self.error(&tpath.key("listen"), "a job (`run: once`) takes no traffic: it has no `listen`").hint =
                        Some("remove `listen:`".into());
                }
            }
            let broken = serves.is_none();
            out.insert(TierId::new(&key.name), TierDraft { raw, path: tpath, serves, broken });
        }
        out
    }

    /// The valid links, and the (caller, name) of every link that parsed, valid
    /// or not, so that plugins checking their link names see no false errors.
    fn links(&mut self, tiers: &IndexMap<TierId, TierDraft>) -> (Vec<LinkSpec>, Vec<(TierId, String)>) {
        let mut out: Vec<LinkSpec> = Vec::new();
        let mut declared = Vec::new();
        let path = KeyPath::root().key("links");
        let Some(node) = self.root.get("links") else { return (out, declared) };
        let items: &[Node] = match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.error(&path, format!("`links` is a list of links, not {}", node.kind()));
                return (out, declared);
            }
        };
        let tier_names: Vec<&str> = tiers.keys().map(TierId::as_str).collect();
        let mut seen: HashMap<(TierId, String), usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let lpath = path.index(i);
            let Some(raw) = self.de::<RawLink>(item, &lpath) else {
                // Still a link of its caller's, for the plugin's own checks of its link names.
                let text = |key: &str| {
                    item.get(key).and_then(|n| match &n.value {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                };
                if let (Some(from), Some(name)) = (text("from"), text("name").or_else(|| text("to"))) {
                    declared.push((TierId::new(&from), name));
                }
                continue;
            };
            let mut ok = true;
            // A misspelt target the link is named after: the caller's plugin
            // is told of the name meant as well, so that the one mistake is
            // not also reported as the caller's missing link.
            let mut meant = None;
            for (end, name) in [("from", &raw.from), ("to", &raw.to)] {
                if !tiers.contains_key(&TierId::new(name)) {
                    let suggestion = self.suggest_name(name, &tier_names);
                    if end == "to" && raw.name.is_none() {
                        meant = suggestion.map(str::to_owned);
                    }
                    let hint = suggestion.map_or_else(
                        || format!("the tiers are: {}", some_of(&tier_names)),
                        |c| format!("did you mean `{c}`?"),
                    );
                    self.error(&lpath.key(end), format!("unknown tier `{name}`")).hint = Some(hint);
                    ok = false;
                }
            }
            if let Some(meant) = meant {
                declared.push((TierId::new(&raw.from), meant));
            }
            let kind = match raw.kind {
                RawLinkKind::Rest => LinkKind::Rest,
                RawLinkKind::Rpc => LinkKind::Rpc,
                RawLinkKind::Queue => LinkKind::Queue,
                RawLinkKind::Tcp => LinkKind::Tcp,
            };
            if let Some(target) = tiers.get(&TierId::new(&raw.to))
                && target.raw.run == Some(super::raw::RawRun::Once)
            {
                self.error(
                    &lpath.key("to"),
                    format!("tier `{}` is a job (`run: once`): nothing can call it", raw.to),
                )
                .hint = Some(format!("to start after it, write `after: [{}]` on the caller", raw.to));
                ok = false;
            }
            if let Some(target) = tiers.get(&TierId::new(&raw.to))
                && let Some(serves) = &target.serves
                && !serves.contains(&kind)
            {
                let served: Vec<&str> = serves.iter().map(|k| k.as_str()).collect();
                self.error(
                    &lpath.key("kind"),
                    format!("tier `{}` (plugin `{}`) cannot serve `{kind}` links", raw.to, target.raw.plugin),
                )
                .hint = Some(if served.is_empty() {
                    "that plugin serves no links".to_owned()
                } else {
                    format!("it serves: {}", served.join(", "))
                });
                ok = false;
            }
            let name = raw.name.clone().unwrap_or_else(|| raw.to.clone());
            declared.push((TierId::new(&raw.from), name.clone()));
            if !valid_name(&name) {
                self.error(&lpath.key("name"), format!("`{name}` is not a valid link name")).hint =
                    Some("use letters, digits, `-` and `_`".into());
                ok = false;
            }
            if let Some(first) = seen.insert((TierId::new(&raw.from), name.clone()), i) {
                self.error(
                    &lpath.key(if raw.name.is_some() { "name" } else { "to" }),
                    format!("tier `{}` already has an outbound link named `{name}` (links[{first}])", raw.from),
                )
                .hint = Some("give one of them a distinct `name:`".into());
                ok = false;
            }
            let timeout = match &raw.timeout {
                None => limits::DEFAULT_TIMEOUT,
                Some(RawDuration::Number(n)) => {
                    self.error(&lpath.key("timeout"), format!("`{n}` is not a duration: it has no unit")).hint =
                        Some(format!("did you mean `{n}s`?"));
                    ok = false;
                    Duration::ZERO
                }
                Some(RawDuration::Text(t)) => match humantime::parse_duration(t) {
                    Ok(d) if d > Duration::ZERO => d,
                    Ok(_) => {
                        self.error(&lpath.key("timeout"), "the timeout must be greater than zero");
                        ok = false;
                        Duration::ZERO
                    }
                    Err(e) => {
                        self.error(&lpath.key("timeout"), format!("`{t}` is not a duration: {e}")).hint =
                            Some("write a number with a unit, e.g. `2s` or `500ms`".into());
                        ok = false;
                        Duration::ZERO
                    }
                },
            };
            let retries = raw.retries.unwrap_or(0);
            if retries > limits::MAX_RETRIES {
                self.error(
                    &lpath.key("retries"),
                    format!("retries must be at most {}, not {retries}", limits::MAX_RETRIES),
                );
                ok = false;
            }
            let is_broker =
                |tier: &str| tiers.get(&TierId::new(tier)).is_some_and(|t| t.raw.plugin == limits::BROKER_PLUGIN);
            let queue_role = match (kind, is_broker(&raw.from), is_broker(&raw.to)) {
                (LinkKind::Queue, false, true) => Some(QueueRole::Publish),
                (LinkKind::Queue, true, false) => Some(QueueRole::Deliver),
                (LinkKind::Queue, from, to) => {
                    let why = if from && to {
                        "a queue link cannot join two queue tiers"
                    } else {
                        "a queue link goes into a queue tier (to publish) or out of one (to deliver)"
                    };
                    self.error(&lpath.key("kind"), why).hint = Some(format!(
                        "declare a tier with `plugin: {}` and link publishers to it and it to subscribers",
                        limits::BROKER_PLUGIN
                    ));
                    ok = false;
                    None
                }
                _ => None,
            };
            for (key, set) in
                [("idle_timeout", raw.idle_timeout.is_some()), ("max_connections", raw.max_connections.is_some())]
            {
                if set && kind != LinkKind::Tcp {
                    self.key_error(&lpath.key(key), format!("`{key}` only applies to tcp links"));
                    ok = false;
                }
            }
            if kind == LinkKind::Tcp && raw.retries.is_some() {
                self.key_error(&lpath.key("retries"), "`retries` does not apply to tcp links").hint =
                    Some("a refused connection is tried on another replica anyway".into());
                ok = false;
            }
            let idle_timeout = match &raw.idle_timeout {
                None => limits::TCP_IDLE_TIMEOUT,
                Some(RawDuration::Number(n)) => {
                    self.error(&lpath.key("idle_timeout"), format!("`{n}` is not a duration: it has no unit")).hint =
                        Some(format!("did you mean `{n}s`?"));
                    ok = false;
                    Duration::ZERO
                }
                Some(RawDuration::Text(t)) => match humantime::parse_duration(t) {
                    Ok(d) if d > Duration::ZERO => d,
                    _ => {
                        self.error(&lpath.key("idle_timeout"), format!("`{t}` is not a duration greater than zero"))
                            .hint = Some("write a number with a unit, e.g. `30m` or `1h`".into());
                        ok = false;
                        Duration::ZERO
                    }
                },
            };
            let max_connections = raw.max_connections.unwrap_or(limits::TCP_MAX_CONNECTIONS);
            if !(1..=limits::TCP_MAX_CONNECTIONS_LIMIT).contains(&max_connections) {
                self.error(
                    &lpath.key("max_connections"),
                    format!(
                        "max_connections must be between 1 and {}, not {max_connections}",
                        limits::TCP_MAX_CONNECTIONS_LIMIT
                    ),
                );
                ok = false;
            }
            let settings = [
                ("topic", raw.topic.is_some(), queue_role.is_some()),
                ("mode", raw.mode.is_some(), queue_role == Some(QueueRole::Deliver)),
                ("concurrency", raw.concurrency.is_some(), queue_role == Some(QueueRole::Deliver)),
                ("path", raw.path.is_some(), queue_role == Some(QueueRole::Deliver)),
            ];
            for (key, set, applies) in settings {
                if set && !applies && (kind != LinkKind::Queue || queue_role.is_some()) {
                    let what = if key == "topic" { "queue links" } else { "queue links out of a queue tier" };
                    self.key_error(&lpath.key(key), format!("`{key}` only applies to {what}"));
                    ok = false;
                }
            }
            if let Some(topic) = &raw.topic
                && !valid_topic(topic)
            {
                self.error(&lpath.key("topic"), format!("`{topic}` is not a valid topic name")).hint =
                    Some("use letters, digits, `-`, `_` and `.`".into());
                ok = false;
            }
            let concurrency = raw.concurrency.unwrap_or(1);
            if !(1..=limits::MAX_CONCURRENCY).contains(&concurrency) {
                self.error(
                    &lpath.key("concurrency"),
                    format!("concurrency must be between 1 and {}, not {concurrency}", limits::MAX_CONCURRENCY),
                );
                ok = false;
            }
            if let Some(path) = &raw.path
                && !path.starts_with('/')
            {
                self.error(&lpath.key("path"), format!("delivery path `{path}` does not start with `/`")).hint =
                    Some(format!("write `/{path}`"));
                ok = false;
            }
            let mode = match raw.mode {
                Some(RawQueueMode::PointToPoint) => QueueMode::PointToPoint,
                _ => QueueMode::PubSub,
            };
            let from_postgres =
                tiers.get(&TierId::new(&raw.from)).is_some_and(|t| t.raw.plugin == limits::OUTBOX_PLUGIN);
            let outbox = match (&raw.outbox, queue_role == Some(QueueRole::Publish) && from_postgres) {
                (Some(_), false) => {
                    self.key_error(
                        &lpath.key("outbox"),
                        format!(
                            "`outbox` only applies to queue links out of a `{}` tier (into a queue tier)",
                            limits::OUTBOX_PLUGIN
                        ),
                    );
                    ok = false;
                    None
                }
                (None, true) => {
                    self.error(
                        &lpath.key("kind"),
                        format!("tier `{}` is a postgres tier: it publishes the rows of an outbox table", raw.from),
                    )
                    .hint = Some("say which: `outbox: { table: outbox }` (see docs/consistency.md)".into());
                    ok = false;
                    None
                }
                (Some(o), true) => self.outbox(o, &lpath.key("outbox"), &mut ok),
                (None, false) => None,
            };
            if ok {
                let topic = match queue_role {
                    Some(QueueRole::Publish) => Some(raw.topic.unwrap_or_else(|| name.clone())),
                    Some(QueueRole::Deliver) => Some(raw.topic.unwrap_or_else(|| raw.from.clone())),
                    None => None,
                };
                let path = match queue_role {
                    Some(QueueRole::Deliver) => {
                        Some(raw.path.unwrap_or_else(|| format!("/messages/{}", topic.as_deref().unwrap_or_default())))
                    }
                    _ => None,
                };
                let spec = LinkSpec {
                    from: TierId::new(&raw.from),
                    to: TierId::new(&raw.to),
                    topic,
                    name,
                    kind,
                    timeout,
                    retries,
                    mode,
                    concurrency,
                    path,
                    queue_role,
                    idle_timeout,
                    max_connections,
                    outbox,
                };
                out.push(spec);
            }
        }
        (out, declared)
    }

    /// A queue link's `outbox`, checked.
    fn outbox(&mut self, raw: &super::raw::RawOutbox, path: &KeyPath, ok: &mut bool) -> Option<OutboxSpec> {
        let before = self.diags.items.len();
        let table = &raw.table;
        let mut chars = table.chars();
        let identifier = table.len() <= limits::OUTBOX_TABLE_MAX
            && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !identifier {
            self.error(&path.key("table"), format!("`{table}` is not a table name an outbox takes")).hint =
                Some(format!(
                    "lower-case letters, digits and `_`, starting with a letter, at most {} characters",
                    limits::OUTBOX_TABLE_MAX
                ));
        }
        let poll = match &raw.poll {
            None => limits::OUTBOX_POLL,
            Some(RawDuration::Number(n)) => {
                self.error(&path.key("poll"), format!("`{n}` is not a duration: it has no unit")).hint =
                    Some(format!("did you mean `{n}s`?"));
                Duration::ZERO
            }
            Some(RawDuration::Text(t)) => match humantime::parse_duration(t) {
                Ok(d) if (limits::OUTBOX_POLL_MIN..=limits::OUTBOX_POLL_MAX).contains(&d) => d,
                _ => {
                    self.error(&path.key("poll"), format!("`{t}` is not a duration from 10ms to 1h")).hint =
                        Some("e.g. `1s`; a notification wakes the relay at once anyway".into());
                    Duration::ZERO
                }
            },
        };
        let batch = raw.batch.unwrap_or(limits::OUTBOX_BATCH);
        if !(1..=limits::OUTBOX_BATCH_MAX).contains(&batch) {
            self.error(
                &path.key("batch"),
                format!("batch must be between 1 and {}, not {batch}", limits::OUTBOX_BATCH_MAX),
            );
        }
        if self.diags.items.len() > before {
            *ok = false;
            return None;
        }
        Some(OutboxSpec { table: table.clone(), create: raw.create.unwrap_or(true), poll, batch })
    }

    /// `image:`: a process tier's, a reference without spaces.
    fn images(&mut self, tiers: &IndexMap<TierId, TierDraft>) {
        for (id, draft) in tiers {
            let Some(image) = &draft.raw.image else { continue };
            let path = draft.path.key("image");
            if draft.raw.plugin != "process" {
                self.error(
                    &path,
                    format!("tier `{id}` is not a process tier: only a program runs in an image of its own"),
                )
                .hint = Some(
                    "remove `image`; the orchestrator's own image (`export kubernetes --image`) runs the other tiers"
                        .into(),
                );
            } else if image.is_empty() || image.len() > 255 || image.contains(char::is_whitespace) {
                self.error(&path, format!("`{image}` is not an image reference")).hint =
                    Some("write it as `registry/name:tag`, e.g. `ghcr.io/acme/audit:1.4`".into());
            }
        }
    }

    fn listen_conflicts(&mut self, tiers: &IndexMap<TierId, TierDraft>) {
        let mut seen: HashMap<SocketAddr, TierId> = HashMap::new();
        for (id, draft) in tiers {
            let Some(text) = &draft.raw.listen else { continue };
            let path = draft.path.key("listen");
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => {}
                Ok(addr) => {
                    if let Some(other) = seen.insert(addr, id.clone()) {
                        self.error(&path, format!("tier `{other}` already listens on {addr}")).hint =
                            Some("give each tier its own address, or port 0 for any free port".into());
                    }
                }
                Err(_) => {
                    self.error(&path, format!("`{text}` is not an IP:port address")).hint =
                        Some("write an IP address and a port, e.g. `127.0.0.1:8080`".into());
                }
            }
        }
    }

    fn plugin_configs(&mut self, tiers: &IndexMap<TierId, TierDraft>, links: &[(TierId, String)], dirs: &[PathBuf]) {
        let mut outbound_of: HashMap<&TierId, Vec<String>> = HashMap::new();
        for (from, name) in links {
            outbound_of.entry(from).or_default().push(name.clone());
        }
        for (id, draft) in tiers {
            if draft.broken {
                continue;
            }
            let Ok(plugin) = self.registry.lookup(&draft.raw.plugin, dirs) else { continue };
            let mut outbound = outbound_of.remove(id).unwrap_or_default();
            // Each name once, however many links (in error) have it.
            let mut seen = HashSet::new();
            outbound.retain(|name| seen.insert(name.clone()));
            let config = draft.raw.config.clone().unwrap_or_else(|| serde_json::json!({}));
            let cpath = draft.path.key("config");
            for issue in plugin.validate(&config, &outbound) {
                let at = cpath.join_str(&issue.path);
                let message = format!("{} (plugin `{}`)", issue.message, draft.raw.plugin);
                if issue.message.starts_with("unknown field `") {
                    let name = issue.message.split('`').nth(1).unwrap_or_default().to_owned();
                    let quoted: Vec<&str> = issue.message.split('`').skip(3).step_by(2).collect();
                    let hint = issue.hint.clone().or_else(|| did_you_mean(&name, quoted.iter().copied()));
                    let at = if at.0.last() == Some(&Seg::Key(name.clone())) { at } else { at.key(&name) };
                    self.key_error(&at, format!("unknown key `{name}` (plugin `{}`)", draft.raw.plugin)).hint = hint;
                } else {
                    self.error(&at, message).hint = issue.hint;
                }
            }
        }
    }

    fn tier_spec(&mut self, id: &TierId, draft: TierDraft) -> Option<TierSpec> {
        if draft.broken {
            return None;
        }
        let raw = draft.raw;
        let max_body = match &raw.max_body {
            None => limits::DEFAULT_MAX_BODY,
            Some(RawSize::Bytes(b)) => *b,
            Some(RawSize::Text(t)) => match t.parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    self.error(&draft.path.key("max_body"), format!("`{t}` is not a size: {e}")).hint =
                        Some("write bytes or a size with a unit, e.g. `512KiB`, `1MiB`".into());
                    return None;
                }
            },
        };
        let mut env = BTreeMap::new();
        let mut env_files = BTreeMap::new();
        let mut unreadable = false;
        for (key, value) in raw.env {
            match value {
                RawEnvValue::Scalar(v) => {
                    env.insert(key, v.into_text());
                }
                RawEnvValue::File(RawFileRef { file }) => {
                    let path = super::model::join_tidy(&self.base, &file);
                    match super::read(&path, limits::MAX_ENV_FILE) {
                        Ok(text) => {
                            let text =
                                text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                            env.insert(key.clone(), text.to_owned());
                            env_files.insert(key, file);
                        }
                        Err(e) => {
                            unreadable = true;
                            let why = match e {
                                super::Error::TooLarge { limit, .. } => {
                                    format!("cannot read {}: it is larger than {limit} bytes", path.display())
                                }
                                e => e.to_string(),
                            };
                            self.error(&draft.path.key("env").key(&key), why).hint =
                                Some("the path is relative to the topology file".into());
                        }
                    }
                }
            }
        }
        if unreadable {
            return None;
        }
        Some(TierSpec {
            id: id.clone(),
            plugin: raw.plugin,
            replicas: raw.replicas.and_then(|r| u32::try_from(r).ok()).unwrap_or(1),
            listen: raw.listen.and_then(|l| l.parse().ok()),
            max_body,
            config: raw.config.unwrap_or_else(|| serde_json::json!({})),
            env,
            hosts: match raw.host {
                None => Vec::new(),
                Some(super::raw::RawPlacement::One(h)) => vec![h],
                Some(super::raw::RawPlacement::Many(hs)) => hs,
            },
            image: raw.image,
            env_files,
            run: match raw.run {
                Some(super::raw::RawRun::Once) => super::model::Run::Once,
                _ => super::model::Run::Always,
            },
            after: raw
                .after
                .map(super::raw::RawNames::into_vec)
                .unwrap_or_default()
                .iter()
                .map(|t| TierId::new(t))
                .collect(),
        })
    }

    /// `after:`: every name a tier of the file, not the tier itself, and no
    /// cycle that `after:` closes (through other `after:` or links: each
    /// would wait for the other). Cycles of links alone start together.
    fn order(&mut self, tiers: &IndexMap<TierId, TierDraft>, links: &[LinkSpec]) {
        let names: Vec<&str> = tiers.keys().map(TierId::as_str).collect();
        let mut edges: HashMap<&str, Vec<(&str, Option<KeyPath>)>> = HashMap::new();
        for l in links {
            edges.entry(l.from.as_str()).or_default().push((l.to.as_str(), None));
        }
        for (id, draft) in tiers {
            let Some(after) = &draft.raw.after else { continue };
            let (list, one) = match after {
                super::raw::RawNames::One(n) => (std::slice::from_ref(n), true),
                super::raw::RawNames::Many(ns) => (ns.as_slice(), false),
            };
            for (i, name) in list.iter().enumerate() {
                let path = if one { draft.path.key("after") } else { draft.path.key("after").index(i) };
                if name == id.as_str() {
                    self.error(&path, format!("tier `{id}` cannot start after itself"));
                } else if !tiers.contains_key(&TierId::new(name)) {
                    let hint =
                        self.suggest(name, &names).unwrap_or_else(|| format!("the tiers are: {}", some_of(&names)));
                    self.error(&path, format!("unknown tier `{name}`")).hint = Some(hint);
                } else {
                    edges.entry(id.as_str()).or_default().push((name.as_str(), Some(path)));
                }
            }
        }
        // A cycle through an `after:` edge: from its target, the way back to its tier.
        for (from, targets) in &edges {
            for (to, path) in targets {
                let Some(path) = path else { continue };
                if let Some(way) = Self::way(&edges, to, from) {
                    let cycle: Vec<&str> = std::iter::once(*from).chain(way).collect();
                    self.error(path, format!("a start-order cycle: {}", cycle.join(" → "))).hint =
                        Some("each would wait for the other: remove one `after:` (or link)".into());
                }
            }
        }
    }

    /// The tiers from `start` to `goal` along `edges`, if `goal` is reachable.
    fn way<'a>(
        edges: &HashMap<&'a str, Vec<(&'a str, Option<KeyPath>)>>,
        start: &'a str,
        goal: &'a str,
    ) -> Option<Vec<&'a str>> {
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = std::collections::HashSet::from([start]);
        while let Some(at) = queue.pop_front() {
            if at == goal {
                let mut way = vec![at];
                let mut cur = at;
                while let Some(p) = parent.get(cur) {
                    way.push(p);
                    cur = p;
                }
                way.reverse();
                return Some(way);
            }
            for (next, _) in edges.get(at).into_iter().flatten() {
                if seen.insert(next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Topology, Diagnostics> {
        parse(Path::new("t.yaml"), yaml, &Registry::with_dirs(Vec::new()))
    }

    /// `(key path, line, column, message)` of every error.
    fn errors(yaml: &str) -> Vec<(String, u32, u32, String)> {
        let diags = check(yaml).expect_err("the topology should be invalid");
        diags
            .items
            .iter()
            .map(|d| (d.path.clone(), d.loc.map_or(0, |l| l.line), d.loc.map_or(0, |l| l.column), d.message.clone()))
            .collect()
    }

    const BASE: &str = "version: 1\nname: t\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config: { routes: [{ path: /, link: api }] }\n  api:\n    plugin: gateway\n";

    #[test]
    fn a_valid_topology_becomes_typed_specs() {
        let t =
            check(&format!("{BASE}links:\n  - {{ from: web, to: api, kind: rest, timeout: 1500ms, retries: 2 }}\n"))
                .unwrap();
        assert_eq!(t.name, "t");
        assert_eq!(t.tiers.len(), 2);
        let web = &t.tiers[&TierId::new("web")];
        assert_eq!(web.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(web.replicas, 1);
        assert_eq!(web.max_body, limits::DEFAULT_MAX_BODY);
        let link = &t.links[0];
        assert_eq!(
            (link.name.as_str(), link.kind, link.timeout, link.retries),
            ("api", LinkKind::Rest, Duration::from_millis(1500), 2)
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = errors("version: 1\nname: [oops\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].1, e[0].2), (2, 7));
        assert!(e[0].3.starts_with("invalid YAML"), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_located_with_suggestions() {
        let diags = check(&format!("{BASE}    replcas: 2\nlink: []\n")).unwrap_err();
        let e: Vec<_> = diags.items.iter().map(|d| (d.path.as_str(), d.loc.unwrap().line, d.hint.clone())).collect();
        assert!(e.contains(&("link", 11, Some("did you mean `links`?".into()))), "{e:?}");
        assert!(e.contains(&("tiers.api.replcas", 10, Some("did you mean `replicas`?".into()))), "{e:?}");
        // The gateway's own route check still ran: its link does not exist.
        assert!(diags.items.iter().any(|d| d.path == "tiers.web.config.routes[0].link"));
    }

    #[test]
    fn unknown_tier_in_a_link() {
        let diags = check(&format!("{BASE}links:\n  - {{ from: web, to: apu, kind: rest }}\n")).unwrap_err();
        let d = diags.items.iter().find(|d| d.path == "links[0].to").unwrap();
        assert_eq!((d.loc.unwrap().line, d.loc.unwrap().column), (11, 22));
        assert_eq!(d.message, "unknown tier `apu`");
        assert_eq!(d.hint.as_deref(), Some("did you mean `api`?"));
    }

    #[test]
    fn thousands_of_bad_links_among_thousands_of_tiers_are_each_reported() {
        // Validation was quadratic here (every tier's links found by a scan of
        // all links, every hint searched over every tier, every report's line
        // counted from the top): see benches/validate_scale.py for the times.
        let n = 3000;
        let mut yaml = String::from("version: 1\nname: big\ntiers:\n");
        for i in 0..n {
            yaml.push_str(&format!("  t{i}: {{ plugin: gateway }}\n"));
        }
        yaml.push_str("links:\n");
        for i in 0..n {
            yaml.push_str(&format!("  - {{ from: t{i}, to: tier{i}x, kind: rest }}\n"));
        }
        let diags = check(&yaml).unwrap_err();
        let unknown: Vec<_> = diags.items.iter().filter(|d| d.message.starts_with("unknown tier")).collect();
        assert_eq!(unknown.len(), n);
        assert_eq!(unknown[n - 1].path, format!("links[{}].to", n - 1));
        assert_eq!(unknown[n - 1].loc.unwrap().line as usize, 3 + n + 1 + n);
        // The hint lists the first few tiers, not all of them.
        assert_eq!(
            unknown[0].hint.as_deref(),
            Some("the tiers are: t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, … and 2990 more")
        );
        let rendered = diags.render(false);
        assert!(rendered.contains(&format!("links[{}].to: unknown tier `tier{}x`", n - 1, n - 1)));
        assert!(rendered.contains(&format!(
            " {} │   - {{ from: t{}, to: tier{}x, kind: rest }}",
            2 * n + 4,
            n - 1,
            n - 1
        )));
    }

    #[test]
    fn numbers_in_env_are_text_and_a_bare_number_is_no_duration() {
        let t = check(&format!(
            "{BASE}    env: {{ WORKERS: 4, DEBUG: true, RATIO: 0.5, NAME: x }}\nlinks:\n  - {{ from: web, to: api, kind: rest }}\n"
        ))
        .unwrap();
        let env = &t.tiers[&TierId::new("api")].env;
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("DEBUG", "true"), ("NAME", "x"), ("RATIO", "0.5"), ("WORKERS", "4")]);

        let diags =
            check(&format!("{BASE}links:\n  - {{ from: web, to: api, kind: rest, timeout: 5 }}\n")).unwrap_err();
        let d = diags.items.iter().find(|d| d.path == "links[0].timeout").unwrap();
        assert_eq!(d.message, "`5` is not a duration: it has no unit");
        assert_eq!(d.hint.as_deref(), Some("did you mean `5s`?"));
    }

    #[test]
    fn a_plugin_named_as_a_file_gets_the_name_and_the_directory_to_write() {
        let diags =
            check("version: 1\nname: t\ntiers:\n  a: { plugin: ./target/release/libpricing.so }\n").unwrap_err();
        assert_eq!(diags.items.len(), 1, "{diags}");
        let d = &diags.items[0];
        assert_eq!(d.message, "`./target/release/libpricing.so` is a file; a plugin is named");
        assert_eq!(
            d.hint.as_deref(),
            Some("write `plugin: pricing`, and add `./target/release` to the topology's `plugins:` directories")
        );
    }

    #[test]
    fn a_syntax_error_says_its_location_once() {
        let diags = check("version: 1\nname: t\ntiers: [\n").unwrap_err();
        let d = &diags.items[0];
        assert!(d.loc.is_some(), "{diags}");
        assert!(d.message.starts_with("invalid YAML: ") && !d.message.contains(" at line "), "{}", d.message);
    }

    /// Every error of `yaml` as `path: message`.
    fn all(yaml: &str) -> Vec<String> {
        check(yaml).unwrap_err().items.iter().map(|d| format!("{}: {}", d.path, d.message)).collect()
    }

    #[test]
    fn a_tier_with_a_wrong_value_still_exists_for_its_links() {
        // Before, the tier was dropped: `links[0].to: unknown tier api` followed.
        let e = all(&format!("{BASE}    replicas: lots\nlinks:\n  - {{ from: web, to: api, kind: rest }}\n"));
        assert_eq!(e, ["tiers.api.replicas: invalid type: string \"lots\", expected i64"]);
    }

    #[test]
    fn every_wrong_value_of_one_mapping_is_reported_in_one_pass() {
        let e = all(&format!(
            "{BASE}    replicas: lots\n    listen: [1]\n    max_body: {{ a: 1 }}\nlinks:\n  - {{ from: web, to: api, kind: rest }}\n"
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        for key in ["replicas", "listen", "max_body"] {
            assert!(e.iter().any(|m| m.starts_with(&format!("tiers.api.{key}: "))), "{key}: {e:?}");
        }
    }

    #[test]
    fn a_link_with_a_wrong_value_is_still_its_callers_link() {
        // Before, the gateway also said `this tier has no outbound links: add one`.
        let e =
            all(&format!("{BASE}links:\n  - {{ from: web, to: api, kind: rest, retries: many, concurrency: x }}\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("links[0].retries: invalid type"), "{e:?}");
        assert!(e[1].starts_with("links[0].concurrency: invalid type"), "{e:?}");
        // And the gateway's own check found the link it routes to.
        assert!(e.iter().all(|m| !m.contains("no outbound link")), "{e:?}");
    }

    #[test]
    fn a_misspelt_link_target_is_one_error() {
        // Before, the gateway also said `no outbound link named `api``: the
        // link was named after the misspelling.
        let e = all(&format!("{BASE}links:\n  - {{ from: web, to: apu, kind: rest }}\n"));
        assert_eq!(e, ["links[0].to: unknown tier `apu`"]);
        // With nothing close, the caller's check still says what it misses.
        let e = all(&format!("{BASE}links:\n  - {{ from: web, to: zzzz, kind: rest }}\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[1].contains("no outbound link named `api`") || e[0].contains("no outbound link named `api`"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_link_names_per_caller() {
        let e = errors(&format!(
            "{BASE}links:\n  - {{ from: web, to: api, kind: rest }}\n  - {{ from: web, to: web, kind: rest, name: api }}\n"
        ));
        assert_eq!(e[0].0, "links[1].name");
        assert_eq!(e[0].1, 12);
        assert!(e[0].3.contains("already has an outbound link named `api`"));
    }

    #[test]
    fn unknown_plugin_names_the_file_searched() {
        let e = errors("version: 1\nname: t\ntiers:\n  a:\n    plugin: gatewy\n");
        assert_eq!((e[0].0.as_str(), e[0].1, e[0].2), ("tiers.a.plugin", 5, 13));
        assert!(e[0].3.contains("no plugin named `gatewy`"), "{e:?}");
        let hint = check("version: 1\nname: t\ntiers:\n  a:\n    plugin: gatewy\n").unwrap_err().items[0].hint.clone();
        assert_eq!(hint.as_deref(), Some("did you mean `gateway`?"));
    }

    #[test]
    fn plugin_config_errors_are_located_inside_config() {
        let e = errors(
            "version: 1\nname: t\ntiers:\n  a:\n    plugin: gateway\n    config:\n      routes:\n        - { path: x, link: nowhere }\n",
        );
        assert_eq!(e[0].0, "tiers.a.config.routes[0].path");
        assert_eq!((e[0].1, e[0].2), (8, 19));
        assert_eq!(e[1].0, "tiers.a.config.routes[0].link");
        let e = errors("version: 1\nname: t\ntiers:\n  a:\n    plugin: gateway\n    config:\n      rotes: []\n");
        assert_eq!((e[0].0.as_str(), e[0].1), ("tiers.a.config.rotes", 7));
        assert!(e[0].3.starts_with("unknown key `rotes`"), "{e:?}");
    }

    #[test]
    fn replicas_out_of_range() {
        for (value, ok) in [("0", false), ("257", false), ("-1", false), ("256", true), ("1", true)] {
            let r = check(&format!("version: 1\nname: t\ntiers:\n  a:\n    plugin: gateway\n    replicas: {value}\n"));
            assert_eq!(r.is_ok(), ok, "replicas {value}");
            if let Err(d) = r {
                assert_eq!((d.items[0].path.as_str(), d.items[0].loc.unwrap().line), ("tiers.a.replicas", 6));
            }
        }
    }

    #[test]
    fn two_tiers_on_one_listen_address() {
        let e = errors(
            "version: 1\nname: t\ntiers:\n  a: { plugin: gateway, listen: 127.0.0.1:8080 }\n  b: { plugin: gateway, listen: 127.0.0.1:8080 }\n  c: { plugin: gateway, listen: localhost:80 }\n",
        );
        assert_eq!(e[0].0, "tiers.b.listen");
        assert!(e[0].3.contains("tier `a` already listens on 127.0.0.1:8080"));
        assert_eq!(e[1].0, "tiers.c.listen");
        // Port 0 twice is fine: each gets its own port.
        assert!(check("version: 1\nname: t\ntiers:\n  a: { plugin: gateway, listen: 127.0.0.1:0 }\n  b: { plugin: gateway, listen: 127.0.0.1:0 }\n").is_ok());
    }

    #[test]
    fn a_link_kind_the_target_cannot_serve() {
        let e = errors(&format!("{BASE}links:\n  - {{ from: web, to: api, kind: queue }}\n"));
        let d = e.iter().find(|d| d.0 == "links[0].kind").unwrap();
        assert!(d.3.contains("cannot serve `queue` links"), "{d:?}");
        assert_eq!(d.1, 11);
    }

    const JOBS: &str = "version: 1\nname: t\ntiers:\n  db:\n    plugin: process\n    config: { command: [server] }\n  migrate:\n    plugin: process\n    run: once\n    config: { command: [migrate] }\n  api:\n    plugin: process\n    after: [migrate]\n    config: { command: [api] }\n";

    #[test]
    fn jobs_after_and_tcp_links_become_specs() {
        let t = check(&format!(
            "{JOBS}links:\n  - {{ from: migrate, to: db, kind: tcp }}\n  - {{ from: api, to: db, kind: tcp, idle_timeout: 5m, max_connections: 10 }}\n"
        ))
        .unwrap();
        assert_eq!(t.tiers[&TierId::new("migrate")].run, super::super::model::Run::Once);
        assert_eq!(t.tiers[&TierId::new("api")].after, [TierId::new("migrate")]);
        let api = t.links.iter().find(|l| l.from.as_str() == "api").unwrap();
        assert_eq!((api.kind, api.idle_timeout, api.max_connections), (LinkKind::Tcp, Duration::from_secs(300), 10));
        let migrate = t.links.iter().find(|l| l.from.as_str() == "migrate").unwrap();
        assert_eq!((migrate.idle_timeout, migrate.max_connections), (Duration::from_secs(3600), 1024));
    }

    #[test]
    fn order_mistakes_are_located() {
        let e = errors(&JOBS.replace("after: [migrate]", "after: [migrat, api]"));
        let unknown = e.iter().find(|d| d.0 == "tiers.api.after[0]").unwrap();
        assert!(unknown.3.contains("unknown tier `migrat`"), "{unknown:?}");
        assert!(e.iter().any(|d| d.0 == "tiers.api.after[1]" && d.3.contains("cannot start after itself")), "{e:?}");
        // A cycle `after:` closes, through a link.
        let e = errors(&format!(
            "{}links:\n  - {{ from: migrate, to: api, kind: rest }}\n",
            JOBS.replace("    run: once\n", "")
        ));
        let cycle = e.iter().find(|d| d.3.contains("start-order cycle")).unwrap();
        assert_eq!(cycle.0, "tiers.api.after[0]");
        assert!(cycle.3.contains("api → migrate → api"), "{cycle:?}");
        // Nothing calls a job; a job runs one replica and listens nowhere; only a process tier runs once.
        let e = errors(&format!(
            "{}links:\n  - {{ from: api, to: migrate, kind: rest }}\n",
            JOBS.replace(
                "    config: { command: [migrate] }",
                "    replicas: 2\n    listen: 127.0.0.1:0\n    config: { command: [migrate] }"
            )
        ));
        assert!(e.iter().any(|d| d.0 == "links[0].to" && d.3.contains("is a job")), "{e:?}");
        assert!(e.iter().any(|d| d.0 == "tiers.migrate.replicas"), "{e:?}");
        assert!(e.iter().any(|d| d.0 == "tiers.migrate.listen"), "{e:?}");
        let e = errors("version: 1\nname: t\ntiers:\n  web:\n    plugin: gateway\n    run: once\n");
        assert!(e.iter().any(|d| d.0 == "tiers.web.run" && d.3.contains("only a process tier")), "{e:?}");
    }

    #[test]
    fn tcp_settings_apply_to_tcp_links_only() {
        let e = errors(&format!(
            "{JOBS}links:\n  - {{ from: api, to: db, kind: rest, max_connections: 3 }}\n  - {{ from: migrate, to: db, kind: tcp, retries: 2, idle_timeout: 0s }}\n"
        ));
        assert!(
            e.iter().any(|d| d.0 == "links[0].max_connections" && d.3.contains("only applies to tcp links")),
            "{e:?}"
        );
        assert!(e.iter().any(|d| d.0 == "links[1].retries"), "{e:?}");
        assert!(e.iter().any(|d| d.0 == "links[1].idle_timeout"), "{e:?}");
        let e = errors(&format!("{JOBS}links:\n  - {{ from: api, to: db, kind: tcp, max_connections: 0 }}\n"));
        assert!(e.iter().any(|d| d.0 == "links[0].max_connections"), "{e:?}");
    }

    const QUEUE: &str = "version: 1\nname: t\ntiers:\n  web:\n    plugin: gateway\n    config: { routes: [{ path: /, link: orders }] }\n  orders:\n    plugin: queue\n  worker:\n    plugin: process\n    config: { command: [\"true\"] }\n";

    #[test]
    fn an_outbox_is_a_queue_link_out_of_a_postgres_tier_and_its_mistakes_are_located() {
        let base = format!("{QUEUE}  db:\n    plugin: postgres\n")
            .replace("{ routes: [{ path: /, link: orders }] }", "{ routes: [] }");
        let t = check(&format!(
            "{base}links:\n  - {{ from: db, to: orders, kind: queue, topic: orders, outbox: {{ table: outbox, poll: 250ms, batch: 10 }} }}\n"
        ))
        .unwrap();
        let outbox = t.links[0].outbox.clone().unwrap();
        assert_eq!(
            outbox,
            super::super::model::OutboxSpec {
                table: "outbox".into(),
                create: true,
                poll: Duration::from_millis(250),
                batch: 10
            }
        );
        // The plugin reads it from the link's settings.
        let params = t.links[0].info().params;
        assert_eq!(params["outbox_table"], "outbox");
        assert_eq!(params["outbox_poll_ms"], "250");
        // A postgres tier publishes only through an outbox.
        let e = errors(&format!("{base}links:\n  - {{ from: db, to: orders, kind: queue }}\n"));
        assert!(e.iter().any(|d| d.0 == "links[0].kind" && d.3.contains("outbox table")), "{e:?}");
        // …and only a postgres tier has one.
        let e =
            errors(&format!("{base}links:\n  - {{ from: web, to: orders, kind: queue, outbox: {{ table: o }} }}\n"));
        assert!(e.iter().any(|d| d.0 == "links[0].outbox" && d.3.contains("only applies")), "{e:?}");
        // Its values, each located; at the edge of each limit.
        let e = errors(&format!(
            "{base}links:\n  - {{ from: db, to: orders, kind: queue, outbox: {{ table: Out-box, poll: 5ms, batch: 1001 }} }}\n"
        ));
        for (path, says) in [
            ("links[0].outbox.table", "not a table name"),
            ("links[0].outbox.poll", "from 10ms to 1h"),
            ("links[0].outbox.batch", "between 1 and 1000"),
        ] {
            assert!(e.iter().any(|d| d.0 == path && d.3.contains(says)), "{path}: {e:?}");
        }
        let long = "t".repeat(limits::OUTBOX_TABLE_MAX);
        assert!(
            check(&format!(
                "{base}links:\n  - {{ from: db, to: orders, kind: queue, outbox: {{ table: {long}, poll: 10ms, batch: 1000 }} }}\n"
            ))
            .is_ok()
        );
        let e = errors(&format!(
            "{base}links:\n  - {{ from: db, to: orders, kind: queue, outbox: {{ table: {long}t, unknown: 1 }} }}\n"
        ));
        assert!(e.iter().any(|d| d.0 == "links[0].outbox.table"), "{e:?}");
        assert!(e.iter().any(|d| d.0.starts_with("links[0].outbox") && d.3.contains("unknown")), "{e:?}");
    }

    #[test]
    fn queue_links_publish_into_a_broker_and_deliver_out_of_it() {
        let t = check(&format!(
            "{QUEUE}links:\n  - {{ from: web, to: orders, kind: queue }}\n  - {{ from: orders, to: worker, kind: queue, mode: point-to-point, concurrency: 4 }}\n"
        ))
        .unwrap();
        let (publish, deliver) = (&t.links[0], &t.links[1]);
        assert_eq!((publish.queue_role, publish.topic.as_deref()), (Some(QueueRole::Publish), Some("orders")));
        assert_eq!((deliver.queue_role, deliver.topic.as_deref()), (Some(QueueRole::Deliver), Some("orders")));
        assert_eq!((deliver.mode, deliver.concurrency), (QueueMode::PointToPoint, 4));
        assert_eq!(deliver.path.as_deref(), Some("/messages/orders"));
        let info = deliver.info();
        assert_eq!(info.param("mode"), Some("point-to-point"));
        assert_eq!(plugin_api::LinkInfo::parse(&info.to_line()), Some(info));
    }

    #[test]
    fn misplaced_queue_settings_are_located() {
        let e = errors(&format!(
            "{}links:\n  - {{ from: web, to: worker, kind: queue }}\n  - {{ from: web, to: orders, kind: queue, mode: point-to-point }}\n  - {{ from: orders, to: worker, kind: queue, topic: 'no spaces', path: messages }}\n  - {{ from: web, to: worker, kind: rest, name: w, concurrency: 2 }}\n",
            QUEUE.replace("plugin: queue", "plugin: queue\n    replicas: 2")
        ));
        let at: Vec<(&str, &str)> = e.iter().map(|d| (d.0.as_str(), d.3.as_str())).collect();
        let has = |path: &str, text: &str| at.iter().any(|(p, m)| *p == path && m.contains(text));
        assert!(has("tiers.orders.replicas", "exactly one replica"), "{at:?}");
        assert!(has("links[0].kind", "goes into a queue tier"), "{at:?}");
        assert!(has("links[1].mode", "only applies to queue links out of a queue tier"), "{at:?}");
        assert!(has("links[2].topic", "not a valid topic name"), "{at:?}");
        assert!(has("links[2].path", "does not start with `/`"), "{at:?}");
        assert!(has("links[3].concurrency", "only applies to queue links out of a queue tier"), "{at:?}");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let e = errors(
            "version: 2\nname: t\ntiers:\n  a: { plugin: gateway, max_body: lots }\nlinks:\n  - { from: a, to: a, kind: rst, timeout: 3 }\n  - { from: a, to: a, kind: rest, timeout: soon, topic: x, retries: 99 }\n",
        );
        let paths: Vec<&str> = e.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(
            paths,
            // In the file's order.
            ["version", "tiers.a.max_body", "links[0].kind", "links[1].timeout", "links[1].topic", "links[1].retries"]
        );
    }

    #[test]
    fn not_a_mapping() {
        let e = errors("- just\n- a list\n");
        assert!(e[0].3.contains("a topology is a mapping"));
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(did_you_mean("backnd", ["backend", "frontend"]).as_deref(), Some("did you mean `backend`?"));
        assert_eq!(did_you_mean("zzz", ["backend", "frontend"]), None);
    }

    #[test]
    fn only_a_process_tier_has_an_image_and_it_is_one_word() {
        let e = errors(
            "version: 1\nname: t\ntiers:\n  a: { plugin: gateway, image: x:1, config: { routes: [] } }\n  b: { plugin: process, image: \"my image\", config: { command: [x] } }\n",
        );
        let found: Vec<(&str, u32, u32)> = e.iter().map(|d| (d.0.as_str(), d.1, d.2)).collect();
        assert_eq!(found, [("tiers.a.image", 4, 32), ("tiers.b.image", 5, 32)], "{e:?}");
        assert!(e[0].3.contains("not a process tier"), "{e:?}");
        assert!(e[1].3.contains("not an image reference"), "{e:?}");
        let ok = check("version: 1\nname: t\ntiers:\n  b: { plugin: process, image: ghcr.io/acme/b:1, config: { command: [x] } }\n")
            .unwrap();
        assert_eq!(ok.tiers[&TierId::new("b")].image.as_deref(), Some("ghcr.io/acme/b:1"));
    }

    #[test]
    fn an_env_value_from_a_file_is_its_content_up_to_64_kib_and_a_missing_one_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let at_limit = dir.path().join("at-limit");
        std::fs::write(&at_limit, format!("{}\n", "k".repeat(64 * 1024 - 1))).unwrap();
        let over = dir.path().join("over");
        std::fs::write(&over, "k".repeat(64 * 1024 + 1)).unwrap();
        let yaml = |file: &std::path::Path| {
            format!(
                "version: 1\nname: t\ntiers:\n  a:\n    plugin: gateway\n    config: {{ routes: [] }}\n    env: {{ KEY: {{ file: {} }} }}\n",
                file.display()
            )
        };
        let ok = check(&yaml(&at_limit)).unwrap();
        let a = &ok.tiers[&TierId::new("a")];
        assert_eq!(a.env["KEY"].len(), 64 * 1024 - 1, "the final newline is not part of it");
        assert_eq!(a.env_files["KEY"], at_limit.display().to_string());
        let e = errors(&yaml(&over));
        assert_eq!((e[0].0.as_str(), e[0].1), ("tiers.a.env.KEY", 7), "{e:?}");
        assert!(e[0].3.contains("larger than 65536 bytes"), "{e:?}");
        let e = errors(&yaml(&dir.path().join("missing")));
        assert!(e[0].3.contains("No such file"), "{e:?}");
    }
}
