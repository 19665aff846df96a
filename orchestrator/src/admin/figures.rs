//! What the dashboard and `orchestrator status` show beside the status:
//! per link and per listening tier, requests per second, error rate and p99
//! latency over the last [`WINDOW`] seconds; per process replica, the CPU
//! and memory of its processes. A task samples the request metrics every
//! [`TICK`] (and `/proc` for the process groups of process tiers' replicas);
//! figures are differences between the newest sample and the oldest kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::read::{self, HistogramSnapshot};
use crate::runtime::Status;

/// How often a sample is taken.
pub const TICK: Duration = Duration::from_secs(1);
/// Samples kept: the figures cover this many ticks.
pub const WINDOW: usize = 10;

/// The outcomes that count as errors: a server error, a gRPC status other
/// than OK, a refused delivery, no replica, no answer in time, or a failure
/// without an answer. A client's error (4xx) or a cancelled call does not.
fn is_error(outcome: &str) -> bool {
    !matches!(outcome, "1xx" | "2xx" | "3xx" | "4xx" | "OK" | "ack" | "cancelled")
}

/// Cumulative counts at one sample.
#[derive(Clone, Debug, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    /// Cumulative per bucket bound, `+Inf` last.
    buckets: Vec<(f64, u64)>,
}

impl Counts {
    fn of(outcomes: &[(&'static str, u64)], latency: &HistogramSnapshot) -> Self {
        Self {
            requests: outcomes.iter().map(|(_, n)| n).sum(),
            errors: outcomes.iter().filter(|(o, _)| is_error(o)).map(|(_, n)| n).sum(),
            buckets: latency.buckets.clone(),
        }
    }

    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 += theirs.1;
            }
        }
    }
}

/// A link or listener's figures.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Rates {
    /// Requests since the orchestrator started.
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// Errors among the window's requests, 0 to 1; none without requests.
    pub error_rate: Option<f64>,
    /// The window's 99th percentile latency, interpolated within its
    /// histogram bucket; none without requests.
    pub p99_ms: Option<f64>,
}

/// The `q` quantile of the observations between two cumulative histograms,
/// in seconds, interpolated linearly within the bucket it falls in (as
/// Prometheus's `histogram_quantile` does).
fn quantile(q: f64, old: &[(f64, u64)], new: &[(f64, u64)]) -> Option<f64> {
    let delta: Vec<(f64, u64)> = new
        .iter()
        .enumerate()
        .map(|(i, &(bound, n))| (bound, n.saturating_sub(old.get(i).map_or(0, |o| o.1))))
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(bound, cumulative) in &delta {
        if cumulative as f64 >= rank {
            if bound.is_infinite() {
                // Beyond the last finite bound: that bound is all one can say.
                return Some(below.0);
            }
            let within = (cumulative - below.1) as f64;
            let fraction = if within == 0.0 { 1.0 } else { (rank - below.1 as f64) / within };
            return Some(below.0 + (bound - below.0) * fraction);
        }
        below = (bound, cumulative);
    }
    Some(below.0)
}

fn rates(old: Option<&Counts>, new: &Counts, seconds: f64) -> Rates {
    let empty = Counts::default();
    let old = old.unwrap_or(&empty);
    let requests = new.requests.saturating_sub(old.requests);
    let errors = new.errors.saturating_sub(old.errors);
    Rates {
        requests: new.requests,
        errors: new.errors,
        rate: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p99_ms: quantile(0.99, &old.buckets, &new.buckets).map(|s| s * 1000.0),
    }
}

/// One process group's use of the machine.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Usage {
    /// Percent of one CPU over the window (200 is two CPUs busy).
    pub cpu_percent: Option<f64>,
    /// Resident memory of the group's processes.
    pub rss_bytes: u64,
    pub processes: u32,
}

/// A TCP link's counters: connections made, connections refused (any
/// outcome but connected), bytes each way, connections open now.
#[derive(Clone, Copy, Debug, Default)]
struct TcpCounts {
    connected: u64,
    failed: u64,
    sent: u64,
    received: u64,
    active: i64,
}

#[derive(Clone, Debug, Default)]
struct Sample {
    at: Option<Instant>,
    links: HashMap<(String, String, String), (&'static str, Counts)>,
    tcp: HashMap<(String, String, String), TcpCounts>,
    listeners: HashMap<String, Counts>,
    /// Per process group: CPU ticks, resident bytes, processes.
    groups: HashMap<i32, (u64, u64, u32)>,
}

/// A link's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LinkFigures {
    pub from: String,
    pub to: String,
    pub link: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub rates: Rates,
}

/// A TCP link's figures: connections and bytes, not requests.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TcpFigures {
    pub from: String,
    pub to: String,
    pub link: String,
    /// Connections open now.
    pub active: i64,
    /// Connections made since start, and per second over the window.
    pub connections: u64,
    pub connection_rate: f64,
    /// Connections that found no replica, were refused, timed out or were over the limit, since start.
    pub failed: u64,
    /// Bytes per second, caller to target and back, over the window.
    pub sent_per_second: f64,
    pub received_per_second: f64,
}

/// The figures, as served.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    /// The seconds the rates cover (less than the window just after start).
    pub window_seconds: f64,
    pub links: Vec<LinkFigures>,
    /// TCP links.
    pub tcp: Vec<TcpFigures>,
    /// Per tier that listens: what its listener served.
    pub listeners: HashMap<String, Rates>,
    /// Per process group id (a process replica's `detail.pgid`).
    pub groups: HashMap<i32, Usage>,
}

/// The samples, shared between the sampling task and the handlers.
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl Sampler {
    /// Samples every [`TICK`] until `status` closes.
    pub fn start(status: watch::Receiver<Status>) -> Self {
        let sampler = Self::default();
        let task = sampler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if status.has_changed().is_err() {
                    return;
                }
                let groups = process_groups(&status.borrow());
                let sample = tokio::task::spawn_blocking(move || take(&groups)).await.unwrap_or_default();
                task.push(sample);
            }
        });
        sampler
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample);
        while samples.len() > WINDOW + 1 {
            samples.pop_front();
        }
    }

    /// The figures from the samples kept.
    pub fn figures(&self) -> Figures {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(new), Some(old)) = (samples.back(), samples.front()) else { return Figures::default() };
        let seconds = match (new.at, old.at) {
            (Some(n), Some(o)) => n.duration_since(o).as_secs_f64(),
            _ => 0.0,
        };
        let old = (samples.len() > 1).then_some(old);
        let mut links: Vec<LinkFigures> = new
            .links
            .iter()
            .map(|((from, to, link), (kind, counts))| LinkFigures {
                from: from.clone(),
                to: to.clone(),
                link: link.clone(),
                kind,
                rates: rates(
                    old.and_then(|o| o.links.get(&(from.clone(), to.clone(), link.clone()))).map(|(_, c)| c),
                    counts,
                    seconds,
                ),
            })
            .collect();
        links.sort_by(|a, b| (&a.from, &a.to, &a.link).cmp(&(&b.from, &b.to, &b.link)));
        let per_second = |now: u64, then: u64| {
            if seconds > 0.0 { now.saturating_sub(then) as f64 / seconds } else { 0.0 }
        };
        let mut tcp: Vec<TcpFigures> = new
            .tcp
            .iter()
            .map(|(key, now)| {
                let then = old.and_then(|o| o.tcp.get(key)).copied().unwrap_or_default();
                TcpFigures {
                    from: key.0.clone(),
                    to: key.1.clone(),
                    link: key.2.clone(),
                    active: now.active,
                    connections: now.connected,
                    connection_rate: per_second(now.connected, then.connected),
                    failed: now.failed,
                    sent_per_second: per_second(now.sent, then.sent),
                    received_per_second: per_second(now.received, then.received),
                }
            })
            .collect();
        tcp.sort_by(|a, b| (&a.from, &a.to, &a.link).cmp(&(&b.from, &b.to, &b.link)));
        let listeners = new
            .listeners
            .iter()
            .map(|(tier, counts)| (tier.clone(), rates(old.and_then(|o| o.listeners.get(tier)), counts, seconds)))
            .collect();
        let groups = new
            .groups
            .iter()
            .map(|(&pgid, &(ticks, rss_bytes, processes))| {
                let cpu_percent =
                    old.and_then(|o| o.groups.get(&pgid)).filter(|_| seconds > 0.0).map(|&(before, ..)| {
                        // /proc counts CPU time in USER_HZ ticks, 100 a second on Linux.
                        ticks.saturating_sub(before) as f64 / USER_HZ / seconds * 100.0
                    });
                (pgid, Usage { cpu_percent, rss_bytes, processes })
            })
            .collect();
        Figures { window_seconds: seconds, links, tcp, listeners, groups }
    }
}

const USER_HZ: f64 = 100.0;

/// The process groups of the status's process replicas.
fn process_groups(status: &Status) -> HashSet<i32> {
    status
        .live()
        .tiers
        .iter()
        .flat_map(|t| &t.instances)
        .filter_map(|i| i.detail.get("pgid").and_then(serde_json::Value::as_i64))
        .filter_map(|g| i32::try_from(g).ok())
        .collect()
}

/// A sample of the request metrics now, and of `groups` in `/proc`.
fn take(groups: &HashSet<i32>) -> Sample {
    let registry = crate::metrics::registry();
    let links = read::links(registry)
        .into_iter()
        .map(|l| ((l.key.from, l.key.to, l.key.link), (l.key.kind, Counts::of(&l.requests, &l.latency))))
        .collect();
    let listeners = read::listeners(registry)
        .into_iter()
        .map(|l| {
            let mut total = Counts::default();
            for (_, classes, latency) in &l.routes {
                total.add(&Counts::of(classes, latency));
            }
            (l.tier, total)
        })
        .collect();
    let tcp = registry
        .tcp_links()
        .iter()
        .map(|m| {
            let outcomes = m.outcomes();
            let connected = outcomes.iter().find(|(o, _)| *o == "connected").map_or(0, |(_, n)| *n);
            let counts = TcpCounts {
                connected,
                failed: outcomes.iter().map(|(_, n)| n).sum::<u64>() - connected,
                sent: m.sent.load(std::sync::atomic::Ordering::Relaxed),
                received: m.received.load(std::sync::atomic::Ordering::Relaxed),
                active: m.active(),
            };
            ((m.key.from.clone(), m.key.to.clone(), m.key.link.clone()), counts)
        })
        .collect();
    Sample {
        at: Some(Instant::now()),
        links,
        tcp,
        listeners,
        groups: if groups.is_empty() { HashMap::new() } else { scan(groups) },
    }
}

/// Per process group among `groups`: CPU ticks (user and system) and
/// resident bytes of its processes, and how many there are.
fn scan(groups: &HashSet<i32>) -> HashMap<i32, (u64, u64, u32)> {
    let mut found: HashMap<i32, (u64, u64, u32)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((pgrp, ticks)) = parse_stat(&stat) else { continue };
        if !groups.contains(&pgrp) {
            continue;
        }
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| vm_rss(&s)).unwrap_or(0);
        let group = found.entry(pgrp).or_default();
        group.0 += ticks;
        group.1 += rss;
        group.2 += 1;
    }
    found
}

/// From `/proc/PID/stat`: the process group, and user plus system ticks.
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    // The command name, in parentheses, may hold anything: fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5) … utime (14), stime (15).
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

/// From `/proc/PID/status`: the resident set, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(counts: &[u64]) -> Vec<(f64, u64)> {
        let bounds = [0.001, 0.002, 0.004, f64::INFINITY];
        let mut sum = 0;
        bounds
            .iter()
            .zip(counts)
            .map(|(&b, &n)| {
                sum += n;
                (b, sum)
            })
            .collect()
    }

    #[test]
    fn the_quantile_is_interpolated_in_its_bucket_and_capped_at_the_last_bound() {
        let none = cumulative(&[0, 0, 0, 0]);
        assert_eq!(quantile(0.99, &none, &none), None, "no observation, no quantile");
        // 100 observations, all in (1 ms, 2 ms]: p50 half-way through that bucket.
        let h = cumulative(&[0, 100, 0, 0]);
        assert!((quantile(0.5, &none, &h).unwrap() - 0.0015).abs() < 1e-9);
        // Only the difference between the samples counts.
        let later = cumulative(&[0, 100, 10, 0]);
        assert!((quantile(0.5, &h, &later).unwrap() - 0.003).abs() < 1e-9);
        let slow = cumulative(&[0, 0, 0, 5]);
        assert_eq!(quantile(0.99, &none, &slow), Some(0.004));
    }

    #[test]
    fn rates_count_server_errors_but_not_client_errors_or_cancels() {
        let latency = HistogramSnapshot { buckets: cumulative(&[0, 0, 0, 0]), count: 0, sum_seconds: 0.0 };
        let old = Counts::of(&[("2xx", 10)], &latency);
        let new = Counts::of(&[("2xx", 25), ("4xx", 3), ("5xx", 2), ("cancelled", 1), ("timeout", 1)], &latency);
        let r = rates(Some(&old), &new, 2.0);
        assert_eq!((r.requests, r.errors), (32, 3));
        assert_eq!(r.rate, 11.0);
        assert_eq!(r.error_rate, Some(3.0 / 22.0));
        assert_eq!(rates(Some(&new), &new, 1.0).error_rate, None, "no request in the window");
    }

    #[test]
    fn proc_stat_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) prog) S 1 4240 4240 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1000 20 0";
        assert_eq!(parse_stat(stat), Some((4240, 300)));
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        // This test's own process: it is in some group and has used some CPU.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (pgrp, _) = parse_stat(&own).unwrap();
        assert_eq!(pgrp, nix::unistd::getpgrp().as_raw());
        let found = scan(&HashSet::from([pgrp]));
        assert!(found[&pgrp].1 > 0 && found[&pgrp].2 >= 1);
    }
}
