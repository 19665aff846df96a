//! Draw a topology: Mermaid for Markdown, DOT for Graphviz.

use std::fmt::Write as _;

use super::model::{LinkKind, LinkSpec, QueueMode, TierSpec, Topology};

/// Output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

/// Renders `topology` as a graph: a node per tier, an edge per link.
pub fn render(topology: &Topology, format: Format) -> String {
    match format {
        Format::Mermaid => mermaid(topology),
        Format::Dot => dot(topology),
    }
}

fn tier_label(t: &TierSpec) -> String {
    let mut label = format!("{}\\n{}", t.id, t.plugin);
    if t.replicas > 1 {
        let _ = write!(label, " ×{}", t.replicas);
    }
    if let Some(addr) = t.listen {
        let _ = write!(label, "\\n{addr}");
    }
    if t.run == super::model::Run::Once {
        label.push_str("\\nrun once");
    }
    label
}

fn link_label(l: &LinkSpec) -> String {
    let mut label = l.kind.to_string();
    if l.name != l.to.as_str() {
        let _ = write!(label, " as {}", l.name);
    }
    if l.kind == LinkKind::Queue {
        if let Some(topic) = &l.topic {
            let _ = write!(label, " {topic}");
        }
        if l.mode == QueueMode::PointToPoint {
            label.push_str(" p2p");
        }
    }
    label
}

/// Mermaid ids must be plain words; tier names may hold `-`.
fn mermaid_id(name: &str) -> String {
    format!("t_{}", name.replace('-', "_"))
}

fn mermaid(t: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    for tier in t.tiers.values() {
        let label = tier_label(tier).replace("\\n", "<br/>");
        let _ = writeln!(out, "    {}[\"{}\"]", mermaid_id(tier.id.as_str()), label.replace('"', "#quot;"));
    }
    for l in &t.links {
        let _ = writeln!(
            out,
            "    {} -- \"{}\" --> {}",
            mermaid_id(l.from.as_str()),
            link_label(l),
            mermaid_id(l.to.as_str())
        );
    }
    for tier in t.tiers.values() {
        for before in &tier.after {
            let _ = writeln!(out, "    {} -. after .-> {}", mermaid_id(tier.id.as_str()), mermaid_id(before.as_str()));
        }
    }
    out
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

fn dot(t: &Topology) -> String {
    let mut out = format!("digraph {} {{\n    rankdir=LR;\n    node [shape=box];\n", dot_quote(&t.name));
    for tier in t.tiers.values() {
        let _ = writeln!(out, "    {} [label={}];", dot_quote(tier.id.as_str()), dot_quote(&tier_label(tier)));
    }
    for l in &t.links {
        let style = match l.kind {
            LinkKind::Rest => "solid",
            LinkKind::Rpc => "bold",
            LinkKind::Queue => "dashed",
            LinkKind::Tcp => "solid, penwidth=2",
        };
        let _ = writeln!(
            out,
            "    {} -> {} [label={}, style={style}];",
            dot_quote(l.from.as_str()),
            dot_quote(l.to.as_str()),
            dot_quote(&link_label(l))
        );
    }
    for tier in t.tiers.values() {
        for before in &tier.after {
            let _ = writeln!(
                out,
                "    {} -> {} [label=\"after\", style=dotted];",
                dot_quote(tier.id.as_str()),
                dot_quote(before.as_str())
            );
        }
    }
    out.push_str("}\n");
    out
}
