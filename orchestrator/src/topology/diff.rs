//! What a reload changes: the running topology against a new one, compared as
//! typed specs, tier by tier.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use indexmap::IndexMap;

use super::model::{LinkKind, TierId, TierSpec, Topology};

/// What happens to a tier's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instances {
    /// Unchanged: the same instances keep serving.
    Keep,
    /// A new tier: start its replicas.
    Start,
    /// Plugin, configuration, environment or library changed: start new
    /// replicas, switch to them, drain the old ones.
    Replace,
    /// Only the replica count changed: start or stop the difference.
    Scale { from: u32, to: u32 },
    /// The tier is gone: unroute, drain, stop.
    Stop,
}

/// What happens to a tier's listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Keep,
    /// Bind this address (a new listener, or a move: the new address is bound
    /// before the old one closes).
    Bind(SocketAddr),
    /// Close the listener after draining it.
    Close,
}

/// The plan for one tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPlan {
    pub instances: Instances,
    pub listen: Listen,
    /// The body limit changed (applied live to a kept listener).
    pub max_body_changed: bool,
}

impl TierPlan {
    pub fn is_noop(&self) -> bool {
        self.instances == Instances::Keep && self.listen == Listen::Keep && !self.max_body_changed
    }
}

/// A reload, as a plan: every tier of either topology, and whether links changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub tiers: IndexMap<TierId, TierPlan>,
    pub links_changed: bool,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.links_changed && self.tiers.values().all(TierPlan::is_noop)
    }

    /// Tiers whose plan is `instances`.
    pub fn tiers_with(&self, instances: &Instances) -> Vec<&TierId> {
        self.tiers.iter().filter(|(_, p)| &p.instances == instances).map(|(id, _)| id).collect()
    }

    /// The tiers added, replaced, scaled and removed.
    pub fn changes(&self) -> Changes {
        let names = |want: fn(&Instances) -> bool| -> Vec<String> {
            self.tiers.iter().filter(|(_, p)| want(&p.instances)).map(|(id, _)| id.to_string()).collect()
        };
        Changes {
            added: names(|i| matches!(i, Instances::Start)),
            replaced: names(|i| matches!(i, Instances::Replace)),
            scaled: self
                .tiers
                .iter()
                .filter_map(|(id, p)| match p.instances {
                    Instances::Scale { from, to } => Some(format!("{id} {from}→{to}")),
                    _ => None,
                })
                .collect(),
            removed: names(|i| matches!(i, Instances::Stop)),
            links_changed: self.links_changed,
        }
    }

    /// One line for the log: `added [a], replaced [b], scaled [c 3→1], removed [d], links changed`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let names = |want: fn(&Instances) -> bool| -> Vec<String> {
            self.tiers.iter().filter(|(_, p)| want(&p.instances)).map(|(id, _)| id.to_string()).collect()
        };
        for (label, list) in [
            ("added", names(|i| matches!(i, Instances::Start))),
            ("replaced", names(|i| matches!(i, Instances::Replace))),
            ("removed", names(|i| matches!(i, Instances::Stop))),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label} {}", list.join(", ")));
            }
        }
        let scaled: Vec<String> = self
            .tiers
            .iter()
            .filter_map(|(id, p)| match p.instances {
                Instances::Scale { from, to } => Some(format!("{id} {from}→{to}")),
                _ => None,
            })
            .collect();
        if !scaled.is_empty() {
            parts.push(format!("scaled {}", scaled.join(", ")));
        }
        let listeners: Vec<String> = self
            .tiers
            .iter()
            .filter(|(_, p)| p.listen != Listen::Keep || p.max_body_changed)
            .map(|(id, _)| id.to_string())
            .collect();
        if !listeners.is_empty() {
            parts.push(format!("listeners {}", listeners.join(", ")));
        }
        if self.links_changed {
            parts.push("links changed".to_owned());
        }
        if parts.is_empty() { "nothing changed".to_owned() } else { parts.join("; ") }
    }
}

impl Plan {
    /// The tiers' specs once this plan, made from `old` to `new`, is applied
    /// to `old`: what the supervisor does, without running anything. Kept and
    /// scaled tiers keep their old spec but for what the plan changes in it
    /// (the replica count, the listen address, the body limit, taken from
    /// `new`); started and replaced tiers take `new`'s; stopped ones are gone.
    /// That this equals `new.tiers` is the property the diff must have.
    pub fn apply(&self, old: &Topology, new: &Topology) -> IndexMap<TierId, TierSpec> {
        let mut out = IndexMap::new();
        for (id, plan) in &self.tiers {
            let spec = match (&plan.instances, old.tiers.get(id), new.tiers.get(id)) {
                (Instances::Stop, _, _) => continue,
                (Instances::Start | Instances::Replace, _, Some(after)) => after.clone(),
                (Instances::Keep | Instances::Scale { .. }, Some(before), Some(after)) => {
                    let mut spec = before.clone();
                    if let Instances::Scale { to, .. } = plan.instances {
                        spec.replicas = to;
                    }
                    match plan.listen {
                        Listen::Keep => {}
                        Listen::Bind(addr) => spec.listen = Some(addr),
                        Listen::Close => spec.listen = None,
                    }
                    if plan.max_body_changed {
                        spec.max_body = after.max_body;
                    }
                    spec
                }
                // A plan names only tiers of `old` or `new`; anything else is
                // a plan of other topologies, and applies to nothing.
                _ => continue,
            };
            out.insert(id.clone(), spec);
        }
        out
    }
}

/// Compares `old` (running) with `new`. `replaced_plugins` names plugins whose
/// library file changed on disk since the running instances were made.
pub fn diff(old: &Topology, new: &Topology, replaced_plugins: &HashSet<String>) -> Plan {
    let mut tiers = IndexMap::new();
    for (id, spec) in &new.tiers {
        let plan = match old.tiers.get(id) {
            None => TierPlan {
                instances: Instances::Start,
                listen: spec.listen.map_or(Listen::Keep, Listen::Bind),
                max_body_changed: false,
            },
            Some(before) => {
                // Instances learn their outbound link names when they start
                // (a process tier passes them to its program as environment).
                let renamed = link_names(old, id) != link_names(new, id);
                tier_plan(before, spec, replaced_plugins.contains(&spec.plugin) || renamed)
            }
        };
        tiers.insert(id.clone(), plan);
    }
    for (id, before) in &old.tiers {
        if !new.tiers.contains_key(id) {
            let listen = if before.listen.is_some() { Listen::Close } else { Listen::Keep };
            tiers.insert(id.clone(), TierPlan { instances: Instances::Stop, listen, max_body_changed: false });
        }
    }
    Plan { tiers, links_changed: old.links != new.links }
}

/// What a tier's instances learn of their outbound links when they start:
/// their names, and the settings of queue links (a broker's subscriptions).
fn link_names(topology: &Topology, tier: &TierId) -> BTreeSet<String> {
    topology
        .links_from(tier)
        .map(|l| if l.kind == LinkKind::Queue { l.info().to_line() } else { l.name.clone() })
        .collect()
}

fn tier_plan(before: &TierSpec, after: &TierSpec, library_changed: bool) -> TierPlan {
    let same_handler = before.plugin == after.plugin && before.config == after.config && before.env == after.env;
    let instances = if !same_handler || library_changed {
        Instances::Replace
    } else if before.replicas != after.replicas {
        Instances::Scale { from: before.replicas, to: after.replicas }
    } else {
        Instances::Keep
    };
    let listen = match (before.listen, after.listen) {
        (a, b) if a == b => Listen::Keep,
        (_, Some(addr)) => Listen::Bind(addr),
        (Some(_), None) => Listen::Close,
        (None, None) => Listen::Keep,
    };
    TierPlan { instances, listen, max_body_changed: before.max_body != after.max_body }
}

/// The tiers a reload changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    /// New instances replaced the old (a changed config, plugin or program).
    pub replaced: Vec<String>,
    /// `tier from→to` replicas.
    pub scaled: Vec<String>,
    pub removed: Vec<String>,
    pub links_changed: bool,
}

#[cfg(test)]
mod properties {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::plugins::Registry;
    use crate::topology::validate::parse;

    /// One tier of a generated topology: `(replicas, port, max_body, env value, plugin)`.
    type Tier = (u32, Option<u16>, Option<u32>, Option<u8>, u8);

    fn yaml(tiers: &[Option<Tier>]) -> String {
        let mut out = String::from("version: 1\nname: prop\ntiers:\n");
        for (i, tier) in tiers.iter().enumerate() {
            let Some((replicas, port, max_body, env, plugin)) = tier else { continue };
            if *plugin == 1 {
                out.push_str(&format!("  t{i}:\n    plugin: queue\n"));
            } else {
                out.push_str(&format!("  t{i}:\n    plugin: gateway\n    replicas: {replicas}\n"));
            }
            if let (Some(port), 0) = (port, plugin) {
                out.push_str(&format!("    listen: 127.0.0.{}:{}\n", i + 1, 1000 + port));
            }
            if let Some(b) = max_body {
                out.push_str(&format!("    max_body: {}\n", 1 + b))
            }
            if let Some(v) = env {
                out.push_str(&format!("    env: {{ V: \"{v}\" }}\n"));
            }
        }
        out
    }

    fn tier() -> impl Strategy<Value = Option<Tier>> {
        proptest::option::weighted(
            0.8,
            (
                1u32..4,
                proptest::option::of(0u16..3),
                proptest::option::of(0u32..3),
                proptest::option::of(0u8..3),
                0u8..2,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The diff of `a` to `b`, applied to `a`, gives `b`'s tiers; and a
        /// topology's diff with itself is empty.
        #[test]
        fn a_plan_applied_to_the_old_topology_gives_the_new(
            a in proptest::collection::vec(tier(), 1..6),
            b in proptest::collection::vec(tier(), 1..6),
        ) {
            let registry = Registry::with_dirs(Vec::new());
            let parsed = |tiers: &[Option<Tier>]| parse(Path::new("t.yaml"), &yaml(tiers), &registry);
            let (Ok(old), Ok(new)) = (parsed(&a), parsed(&b)) else {
                // Every tier left out: an empty topology is refused, rightly.
                prop_assume!(false);
                unreachable!();
            };
            let plan = diff(&old, &new, &HashSet::new());
            let applied = plan.apply(&old, &new);
            prop_assert_eq!(applied.len(), new.tiers.len());
            for (id, spec) in &new.tiers {
                prop_assert_eq!(applied.get(id), Some(spec), "tier {}", id);
            }
            prop_assert!(diff(&old, &old, &HashSet::new()).is_empty());
            prop_assert_eq!(plan.is_empty(), old.tiers == new.tiers && old.links == new.links);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plugins::Registry;
    use crate::topology::validate::parse;

    fn topo(yaml: &str) -> Topology {
        parse(Path::new("t.yaml"), yaml, &Registry::with_dirs(Vec::new())).expect("valid")
    }

    const BASE: &str = "version: 1\nname: t\ntiers:\n  web: { plugin: gateway, listen: 127.0.0.1:0, config: { routes: [{ path: /, link: api }] } }\n  api: { plugin: gateway, replicas: 3 }\nlinks:\n  - { from: web, to: api, kind: rest }\n";

    fn plan_of(new: &str) -> Plan {
        diff(&topo(BASE), &topo(new), &HashSet::new())
    }

    #[test]
    fn the_same_topology_is_an_empty_plan() {
        let plan = plan_of(BASE);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.summary(), "nothing changed");
    }

    #[test]
    fn a_config_change_replaces_only_that_tier() {
        let plan = plan_of(&BASE.replace(
            "api: { plugin: gateway, replicas: 3 }",
            "api: { plugin: gateway, replicas: 3, config: { routes: [] } }",
        ));
        assert_eq!(plan.tiers[&TierId::new("api")].instances, Instances::Replace);
        assert_eq!(plan.tiers[&TierId::new("web")].instances, Instances::Keep);
        assert!(!plan.links_changed);
    }

    #[test]
    fn replica_changes_scale_without_replacing() {
        let plan = plan_of(&BASE.replace("replicas: 3", "replicas: 1"));
        assert_eq!(plan.tiers[&TierId::new("api")].instances, Instances::Scale { from: 3, to: 1 });
        assert_eq!(plan.summary(), "scaled api 3→1");
    }

    #[test]
    fn a_changed_library_replaces_the_tiers_using_it() {
        let plan = diff(&topo(BASE), &topo(BASE), &HashSet::from(["gateway".to_owned()]));
        assert_eq!(plan.tiers_with(&Instances::Replace).len(), 2);
    }

    #[test]
    fn added_and_removed_tiers_and_links() {
        let new = BASE
            .replace("links:\n", "  extra: { plugin: gateway }\nlinks:\n  - { from: web, to: extra, kind: rest }\n");
        let plan = plan_of(&new);
        assert_eq!(plan.tiers[&TierId::new("extra")].instances, Instances::Start);
        assert!(plan.links_changed);
        let back = diff(&topo(&new), &topo(BASE), &HashSet::new());
        assert_eq!(back.tiers[&TierId::new("extra")].instances, Instances::Stop);
        assert_eq!(back.summary(), "replaced web; removed extra; links changed");
    }

    #[test]
    fn listen_changes_do_not_restart_instances() {
        let plan = plan_of(&BASE.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1234"));
        let web = &plan.tiers[&TierId::new("web")];
        assert_eq!(web.instances, Instances::Keep);
        assert_eq!(web.listen, Listen::Bind("127.0.0.1:1234".parse().unwrap()));
        let plan = plan_of(&BASE.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:0, max_body: 10"));
        assert!(plan.tiers[&TierId::new("web")].max_body_changed);
        assert_eq!(plan.tiers[&TierId::new("web")].listen, Listen::Keep);
    }

    #[test]
    fn a_new_outbound_link_name_restarts_the_caller() {
        let new = BASE
            .replace("links:\n", "  extra: { plugin: gateway }\nlinks:\n  - { from: web, to: extra, kind: rest }\n");
        let plan = plan_of(&new);
        assert_eq!(plan.tiers[&TierId::new("web")].instances, Instances::Replace);
        assert_eq!(plan.tiers[&TierId::new("api")].instances, Instances::Keep);
    }

    #[test]
    fn a_timeout_change_rewires_links_only() {
        let plan = plan_of(&BASE.replace("kind: rest }", "kind: rest, timeout: 1s }"));
        assert!(plan.links_changed);
        assert!(plan.tiers.values().all(|t| t.instances == Instances::Keep));
    }
}
