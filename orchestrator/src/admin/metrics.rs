//! `GET /admin/metrics`: what the request path recorded ([`crate::metrics`])
//! and the status, in the Prometheus text format (or OpenMetrics, when the
//! scraper asks for it). Every name and label is listed in
//! `docs/observability.md`.

use std::collections::HashMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;

use crate::metrics::read::{self, HistogramSnapshot};
use crate::runtime::Status;
use crate::serve::workers::WorkerReport;

type Labels = Vec<(&'static str, String)>;

/// A value: whole numbers are shown as such.
#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i64),
    Float(f64),
}

impl From<u64> for Num {
    fn from(n: u64) -> Self {
        Num::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Num {
    fn from(n: i64) -> Self {
        Num::Int(n)
    }
}

impl From<f64> for Num {
    fn from(n: f64) -> Self {
        Num::Float(n)
    }
}

/// A number from a plugin's JSON report.
fn num(v: &Value) -> Num {
    v.as_i64().map_or_else(|| Num::Float(v.as_f64().unwrap_or(0.0)), Num::Int)
}

/// A family of series, each a label set and a value.
#[derive(Debug)]
enum Series {
    Counter(Vec<(Labels, Num)>),
    Gauge(Vec<(Labels, Num)>),
    Histogram(Vec<(Labels, HistogramSnapshot)>),
    Info(Vec<Labels>),
}

/// One family: name (without the prefix or, for counters, `_total`), help, unit.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    series: Series,
}

/// Everything one scrape shows, encoded by prometheus-client.
#[derive(Debug, Default)]
struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn add(&mut self, name: &'static str, help: &'static str, unit: Option<Unit>, series: Series) {
        self.families.push(Family { name, help, unit, series });
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let kind = match &family.series {
                Series::Counter(_) => MetricType::Counter,
                Series::Gauge(_) => MetricType::Gauge,
                Series::Histogram(_) => MetricType::Histogram,
                Series::Info(_) => MetricType::Info,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), kind)?;
            match &family.series {
                Series::Counter(series) => {
                    for (labels, v) in series {
                        let family = metric.encode_family(labels)?;
                        match *v {
                            Num::Int(n) => ConstCounter::new(n.max(0) as u64).encode(family)?,
                            Num::Float(n) => ConstCounter::new(n).encode(family)?,
                        }
                    }
                }
                Series::Gauge(series) => {
                    for (labels, v) in series {
                        let family = metric.encode_family(labels)?;
                        match *v {
                            Num::Int(n) => ConstGauge::new(n).encode(family)?,
                            Num::Float(n) => ConstGauge::new(n).encode(family)?,
                        }
                    }
                }
                Series::Histogram(series) => {
                    for (labels, h) in series {
                        // prometheus-client sums the buckets itself: each bucket's own count.
                        let mut below = 0;
                        let own: Vec<(f64, u64)> = h
                            .buckets
                            .iter()
                            .map(|&(bound, cumulative)| {
                                let own = cumulative.saturating_sub(below);
                                below = cumulative;
                                (bound, own)
                            })
                            .collect();
                        metric.encode_family(labels)?.encode_histogram::<Labels>(h.sum_seconds, h.count, &own, None)?;
                    }
                }
                Series::Info(series) => {
                    for labels in series {
                        metric.encode_info(labels)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// The build and the ABI it speaks.
fn build(scrape: &mut Scrape) {
    let info = labels(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("abi", &plugin_api::abi::ABI_VERSION.to_string()),
        ("plugin_api", plugin_api::API_VERSION),
    ]);
    scrape.add(
        "build",
        "The orchestrator's version, plugin ABI and plugin-api version",
        None,
        Series::Info(vec![info]),
    );
}

fn reloads(scrape: &mut Scrape, status: &Status) {
    scrape.add(
        "generation",
        "The running generation: 1 at start, +1 per applied reload",
        None,
        Series::Gauge(vec![(Vec::new(), status.generation.into())]),
    );
    let r = status.reloads;
    let unchanged = r.attempts.saturating_sub(r.applied + r.failed);
    let by_outcome = [("applied", r.applied), ("failed", r.failed), ("unchanged", unchanged)]
        .into_iter()
        .map(|(outcome, n)| (labels(&[("outcome", outcome)]), n.into()))
        .collect();
    scrape.add("reloads", "Reload attempts by outcome", None, Series::Counter(by_outcome));
    scrape.add(
        "reload_duration",
        "Time from the change that triggered a reload to the topology applied or refused",
        Some(Unit::Seconds),
        Series::Histogram(vec![(Vec::new(), read::reloads(crate::metrics::registry()))]),
    );
}

fn links(scrape: &mut Scrape) {
    let snapshots = read::links(crate::metrics::registry());
    let base = |s: &read::LinkSnapshot| -> Labels {
        labels(&[("from", &s.key.from), ("to", &s.key.to), ("link", &s.key.link), ("kind", s.key.kind)])
    };
    let with_outcome = |s: &read::LinkSnapshot, of: &[(&'static str, u64)]| -> Vec<(Labels, Num)> {
        of.iter()
            .map(|(outcome, n)| {
                let mut l = base(s);
                l.push(("outcome", (*outcome).to_owned()));
                (l, (*n).into())
            })
            .collect()
    };
    let requests = snapshots.iter().flat_map(|s| with_outcome(s, &s.requests)).collect();
    let attempts = snapshots.iter().flat_map(|s| with_outcome(s, &s.attempts)).collect();
    let each = |f: fn(&read::LinkSnapshot) -> Num| snapshots.iter().map(|s| (base(s), f(s))).collect::<Vec<_>>();
    scrape.add(
        "link_requests",
        "Calls on a link by outcome (HTTP status class, gRPC code, ack/nack, or unavailable/timeout/error/cancelled), counted once however many attempts they took",
        None,
        Series::Counter(requests),
    );
    scrape.add(
        "link_attempts",
        "Attempts of calls on a link, by outcome: each retry counts",
        None,
        Series::Counter(attempts),
    );
    scrape.add(
        "link_retries",
        "Attempts made again on another replica",
        None,
        Series::Counter(each(|s| s.retries.into())),
    );
    scrape.add(
        "link_timeouts",
        "Calls that got no answer within the link's timeout",
        None,
        Series::Counter(each(|s| s.timeouts.into())),
    );
    scrape.add(
        "link_no_ready_replica",
        "Attempts that found no ready replica of the target",
        None,
        Series::Counter(each(|s| s.no_replica.into())),
    );
    scrape.add("link_in_flight", "Calls on a link not answered yet", None, Series::Gauge(each(|s| s.in_flight.into())));
    let latency = snapshots.into_iter().map(|s| (base(&s), s.latency)).collect();
    scrape.add(
        "link_request_duration",
        "Time from a call on a link to its answer or error, over all its attempts",
        Some(Unit::Seconds),
        Series::Histogram(latency),
    );
}

fn tcp_links(scrape: &mut Scrape) {
    let links = crate::metrics::registry().tcp_links();
    let base =
        |k: &crate::metrics::LinkKey| -> Labels { labels(&[("from", &k.from), ("to", &k.to), ("link", &k.link)]) };
    let tcp: Vec<_> = links.iter().filter(|m| m.key.kind == "tcp").collect();
    let outcomes = tcp
        .iter()
        .flat_map(|m| {
            m.outcomes().into_iter().map(|(outcome, n)| {
                let mut l = base(&m.key);
                l.push(("outcome", outcome.to_owned()));
                (l, n.into())
            })
        })
        .collect();
    scrape.add(
        "link_tcp_connections",
        "Connections through a TCP link, by how they began: connected, refused (by every ready replica), unavailable (none ready), timeout (connecting), limit (past max_connections)",
        None,
        Series::Counter(outcomes),
    );
    scrape.add(
        "link_tcp_active_connections",
        "Connections open through a TCP link now",
        None,
        Series::Gauge(tcp.iter().map(|m| (base(&m.key), m.active().into())).collect()),
    );
    let bytes = tcp
        .iter()
        .flat_map(|m| {
            let sent = m.sent.load(std::sync::atomic::Ordering::Relaxed);
            let received = m.received.load(std::sync::atomic::Ordering::Relaxed);
            [("sent", sent), ("received", received)].map(|(direction, n)| {
                let mut l = base(&m.key);
                l.push(("direction", direction.to_owned()));
                (l, n.into())
            })
        })
        .collect();
    scrape.add(
        "link_tcp",
        "Bytes through a TCP link: sent (caller to target) and received",
        Some(Unit::Bytes),
        Series::Counter(bytes),
    );
    scrape.add(
        "link_tcp_connect_duration",
        "Time from accepting a connection on a TCP link to its connection to a replica",
        Some(Unit::Seconds),
        Series::Histogram(tcp.iter().map(|m| (base(&m.key), m.connect_latency())).collect()),
    );
}

fn listeners(scrape: &mut Scrape) {
    let snapshots = read::listeners(crate::metrics::registry());
    let tier = |s: &read::ListenerSnapshot| labels(&[("tier", &s.tier)]);
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    let mut rejected = Vec::new();
    for s in &snapshots {
        for (route, classes, h) in &s.routes {
            for (class, n) in classes {
                requests.push((labels(&[("tier", &s.tier), ("route", route), ("status_class", class)]), (*n).into()));
            }
            latency.push((labels(&[("tier", &s.tier), ("route", route)]), h.clone()));
        }
        for (reason, n) in &s.rejected {
            rejected.push((labels(&[("tier", &s.tier), ("reason", reason)]), (*n).into()));
        }
    }
    let each = |f: fn(&read::ListenerSnapshot) -> Num| snapshots.iter().map(|s| (tier(s), f(s))).collect::<Vec<_>>();
    scrape.add(
        "listener_requests",
        "Requests a tier's listener answered, by gateway route (its path; empty: no route, or not a gateway) and status class",
        None,
        Series::Counter(requests),
    );
    scrape.add(
        "listener_request_duration",
        "Time from a request's head arriving to its answer being ready",
        Some(Unit::Seconds),
        Series::Histogram(latency),
    );
    scrape.add(
        "listener_connections",
        "Connections open on a tier's listener",
        None,
        Series::Gauge(each(|s| s.connections.into())),
    );
    scrape.add(
        "listener_in_flight",
        "Requests on a tier's listener not answered yet",
        None,
        Series::Gauge(each(|s| s.in_flight.into())),
    );
    scrape.add(
        "listener_received",
        "Request body bytes a tier's listener received",
        Some(Unit::Bytes),
        Series::Counter(each(|s| s.bytes_in.into())),
    );
    scrape.add(
        "listener_sent",
        "Response body bytes a tier's listener sent",
        Some(Unit::Bytes),
        Series::Counter(each(|s| s.bytes_out.into())),
    );
    scrape.add(
        "listener_rejected",
        "Requests and connections a tier's listener turned away, by reason",
        None,
        Series::Counter(rejected),
    );
}

/// CPU time (seconds) and resident memory (bytes) of each process group, from `/proc`.
fn process_groups() -> HashMap<i32, (f64, u64)> {
    let mut out: HashMap<i32, (f64, u64)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else { continue };
        // After the command's closing parenthesis: state, ppid, pgrp, … (man 5 proc).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let Some(pgrp) = fields.get(2).and_then(|f| f.parse::<i32>().ok()) else { continue };
        let cpu = (field(11) + field(12)) as f64 / ticks;
        let rss = field(21) * page;
        let e = out.entry(pgrp).or_default();
        e.0 += cpu;
        e.1 += rss;
    }
    out
}

fn tiers(scrape: &mut Scrape, status: &Status) {
    let mut replicas = Vec::new();
    let mut ready = Vec::new();
    let (mut restarts, mut exit_codes, mut probe_failures, mut cpu, mut memory) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut groups = None;
    for tier in &status.tiers {
        replicas.push((labels(&[("tier", &tier.name)]), u64::from(tier.replicas).into()));
        ready
            .push((labels(&[("tier", &tier.name)]), (tier.instances.iter().filter(|i| i.ready).count() as u64).into()));
        for instance in &tier.instances {
            let d = &instance.detail;
            let Some(n) = d["restarts"].as_u64() else { continue };
            let replica = instance.replica.to_string();
            let l = labels(&[("tier", &tier.name), ("replica", &replica)]);
            restarts.push((l.clone(), n.into()));
            probe_failures.push((l.clone(), d["probe_failures"].as_u64().unwrap_or(0).into()));
            if let Some(code) = d["last_exit_code"].as_i64() {
                exit_codes.push((l.clone(), code.into()));
            }
            if let Some(pgid) = d["pgid"].as_i64().and_then(|g| i32::try_from(g).ok()) {
                let groups = groups.get_or_insert_with(process_groups);
                let (seconds, bytes) = groups.get(&pgid).copied().unwrap_or_default();
                cpu.push((l.clone(), seconds.into()));
                memory.push((l, bytes.into()));
            }
        }
    }
    scrape.add("tier_replicas", "Replicas configured per tier", None, Series::Gauge(replicas));
    scrape.add("tier_ready_replicas", "Replicas taking requests per tier", None, Series::Gauge(ready));
    scrape.add("replica_restarts", "Restarts of a process tier's replica", None, Series::Counter(restarts));
    scrape.add(
        "replica_probe_failures",
        "Readiness and liveness probes of a process tier's replica that failed",
        None,
        Series::Counter(probe_failures),
    );
    scrape.add(
        "replica_last_exit_code",
        "A process replica's last exit code (128 + the signal, for one killed by a signal)",
        None,
        Series::Gauge(exit_codes),
    );
    scrape.add(
        "replica_cpu",
        "CPU time (user and system) of a process replica's process group, the program and what it started",
        Some(Unit::Seconds),
        Series::Counter(cpu),
    );
    scrape.add(
        "replica_resident_memory",
        "Resident memory of a process replica's process group",
        Some(Unit::Bytes),
        Series::Gauge(memory),
    );
}

/// Queue tiers: per topic and subscriber, from the broker's own report.
fn queues(scrape: &mut Scrape, status: &Status) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let (mut published, mut depth, mut in_flight, mut oldest) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut deliveries, mut acknowledged, mut redelivered, mut dead, mut lag) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut store_bytes, mut commits) = (Vec::new(), Vec::new());
    for tier in &status.tiers {
        for instance in &tier.instances {
            let d = &instance.detail;
            let Some(topics) = d["topics"].as_object() else { continue };
            for (topic, t) in topics {
                let l = labels(&[("tier", &tier.name), ("topic", topic)]);
                published.push((l.clone(), num(&t["published"])));
                depth.push((l.clone(), num(&t["depth"])));
                in_flight.push((l.clone(), num(&t["in_flight"])));
                let age = t["oldest_published_us"].as_u64().map_or(0.0, |p| now_us.saturating_sub(p) as f64 / 1e6);
                oldest.push((l, age.into()));
                for (subscriber, s) in t["subscribers"].as_object().into_iter().flatten() {
                    let l = labels(&[("tier", &tier.name), ("topic", topic), ("subscriber", subscriber)]);
                    deliveries.push((l.clone(), num(&s["deliveries"])));
                    acknowledged.push((l.clone(), num(&s["delivered"])));
                    redelivered.push((l.clone(), num(&s["redelivered"])));
                    dead.push((l.clone(), num(&s["dead_lettered"])));
                    lag.push((l, num(&s["lag"])));
                }
            }
            let l = labels(&[("tier", &tier.name)]);
            if let Some(bytes) = d["store_bytes"].as_u64() {
                store_bytes.push((l.clone(), bytes.into()));
            }
            if let Some(c) = d["store_commits"].as_object() {
                commits.push((l, commit_histogram(c)));
            }
        }
    }
    scrape.add("queue_published", "Messages published on a topic", None, Series::Counter(published));
    scrape.add(
        "queue_depth",
        "Messages stored on a topic, not yet settled by every subscriber",
        None,
        Series::Gauge(depth),
    );
    scrape.add("queue_in_flight", "Deliveries of a topic's messages not answered yet", None, Series::Gauge(in_flight));
    scrape.add(
        "queue_oldest_message_age",
        "Age of the oldest message stored on a topic",
        Some(Unit::Seconds),
        Series::Gauge(oldest),
    );
    scrape.add(
        "queue_deliveries",
        "Delivery attempts to a subscriber, redeliveries included",
        None,
        Series::Counter(deliveries),
    );
    scrape.add("queue_acknowledged", "Messages a subscriber acknowledged", None, Series::Counter(acknowledged));
    scrape.add("queue_redelivered", "Delivery attempts after the first", None, Series::Counter(redelivered));
    scrape.add(
        "queue_dead_lettered",
        "Messages that failed max_attempts times and went to the dead-letter topic",
        None,
        Series::Counter(dead),
    );
    scrape.add(
        "queue_lag",
        "Messages of a topic a subscriber has not acknowledged yet (its backlog)",
        None,
        Series::Gauge(lag),
    );
    scrape.add(
        "queue_store",
        "Size of a durable queue tier's message database",
        Some(Unit::Bytes),
        Series::Gauge(store_bytes),
    );
    scrape.add(
        "queue_store_commit_duration",
        "Time a durable queue tier's writes took to commit (fsync included, for publishes)",
        Some(Unit::Seconds),
        Series::Histogram(commits),
    );
}

/// Outboxes: per `postgres` tier and link, from the relay's own report.
fn outboxes(scrape: &mut Scrape, status: &Status) {
    let (mut relayed, mut pending, mut oldest, mut lag) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for tier in &status.tiers {
        for instance in &tier.instances {
            for (link, o) in instance.detail["outbox"].as_object().into_iter().flatten() {
                let table = o["table"].as_str().unwrap_or_default();
                let l = labels(&[("tier", &tier.name), ("link", link), ("table", table)]);
                relayed.push((l.clone(), num(&o["relayed"])));
                pending.push((l.clone(), num(&o["pending"])));
                let ms = |v: &Value| (v.as_u64().unwrap_or(0) as f64 / 1e3).into();
                oldest.push((l.clone(), ms(&o["oldest_pending_ms"])));
                lag.push((l, ms(&o["last_lag_ms"])));
            }
        }
    }
    scrape.add(
        "outbox_relayed",
        "Outbox rows the broker accepted (then deleted from the table)",
        None,
        Series::Counter(relayed),
    );
    scrape.add("outbox_pending", "Committed outbox rows not relayed yet", None, Series::Gauge(pending));
    scrape.add(
        "outbox_oldest_pending_age",
        "Age of the oldest outbox row not relayed yet",
        Some(Unit::Seconds),
        Series::Gauge(oldest),
    );
    scrape.add(
        "outbox_relay_lag",
        "From the oldest row of the last batch relayed being written to the broker accepting it",
        Some(Unit::Seconds),
        Series::Gauge(lag),
    );
}

fn commit_histogram(c: &serde_json::Map<String, Value>) -> HistogramSnapshot {
    let mut buckets: Vec<(f64, u64)> =
        c["buckets"].as_array().into_iter().flatten().filter_map(|b| Some((b[0].as_f64()?, b[1].as_u64()?))).collect();
    let count = c["count"].as_u64().unwrap_or(0);
    buckets.push((f64::INFINITY, count));
    HistogramSnapshot { buckets, count, sum_seconds: c["sum_seconds"].as_f64().unwrap_or(0.0) }
}

fn traces(scrape: &mut Scrape) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = crate::traces::counts();
    scrape.add(
        "trace_spans_exported",
        "Spans the OTLP collector accepted",
        None,
        Series::Counter(vec![(Vec::new(), c.exported.load(Relaxed).into())]),
    );
    let dropped = [("queue_full", &c.dropped_queue_full), ("export_failed", &c.dropped_export_failed)]
        .into_iter()
        .map(|(reason, n)| (labels(&[("reason", reason)]), n.load(Relaxed).into()))
        .collect();
    scrape.add(
        "trace_spans_dropped",
        "Spans not exported: the export queue was full, or the collector could not be reached or refused them",
        None,
        Series::Counter(dropped),
    );
}

fn workers(scrape: &mut Scrape, workers: &[WorkerReport]) {
    // None when connections are served on the shared runtime.
    let series = workers
        .iter()
        .enumerate()
        .map(|(i, worker)| {
            let cpu = worker.cpu.map_or_else(|| "any".to_owned(), |c| c.to_string());
            (vec![("worker", i.to_string()), ("cpu", cpu)], (worker.connections as u64).into())
        })
        .collect();
    scrape.add(
        "worker_connections",
        "Connections served by each connection worker thread",
        None,
        Series::Gauge(series),
    );
}

fn bodies(scrape: &mut Scrape) {
    let held = crate::serve::listener::BodyBudget::global().held();
    scrape.add(
        "request_body_held_bytes",
        "Bytes of request bodies held now, against --max-body-memory",
        None,
        Series::Gauge(vec![(Vec::new(), held.into())]),
    );
}

/// The exposition format asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text, version 0.0.4.
    Prometheus,
    /// OpenMetrics text 1.0.
    OpenMetrics,
}

impl Format {
    /// From a request's `Accept` header: OpenMetrics if it is listed.
    pub fn from_accept(accept: Option<&str>) -> Self {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every metric, in `format`.
pub fn render(status: &Status, workers_report: &[WorkerReport], format: Format) -> String {
    let mut scrape = Scrape::default();
    build(&mut scrape);
    reloads(&mut scrape, status);
    tiers(&mut scrape, status);
    links(&mut scrape);
    tcp_links(&mut scrape);
    listeners(&mut scrape);
    queues(&mut scrape, status);
    outboxes(&mut scrape, status);
    traces(&mut scrape);
    workers(&mut scrape, workers_report);
    bodies(&mut scrape);
    let mut registry = Registry::with_prefix("orchestrator");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    out
}
