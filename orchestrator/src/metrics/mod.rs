//! What the request path records for `/admin/metrics`: per link, per tier
//! listener, per reload. Recorded into per-thread shards ([`cells`]) and
//! merged when scraped; metrics are kept by their labels for the life of
//! the process, so a reload that keeps a link or a listener keeps counting
//! on the same series (no reset, no double count).
//!
//! Recording can be turned off (`orchestrator run --no-metrics`) to measure
//! what it costs; the series are then still listed, at zero.

pub mod cells;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwap;
use cells::{Cell, Histogram, Sharded, clock};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How a link call, or one attempt of it, ended: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome(usize);

const HTTP_CLASSES: usize = 5;
const GRPC_CODES: usize = 17;

impl Outcome {
    /// An HTTP status's class (`2xx`…).
    pub fn http(status: u16) -> Self {
        Self((usize::from(status / 100).clamp(1, 5)) - 1)
    }
    /// A gRPC status code (`OK`, `NOT_FOUND`…).
    pub fn grpc(code: u32) -> Self {
        Self(HTTP_CLASSES + (code as usize).min(GRPC_CODES - 1))
    }
    /// A queue tier accepted a publish, or a subscriber a delivery.
    pub const ACK: Self = Self(HTTP_CLASSES + GRPC_CODES);
    /// A queue tier refused a publish, or a subscriber a delivery.
    pub const NACK: Self = Self(HTTP_CLASSES + GRPC_CODES + 1);
    /// No replica took the request (none ready, or the one picked refused it).
    pub const UNAVAILABLE: Self = Self(HTTP_CLASSES + GRPC_CODES + 2);
    /// No answer within the link's timeout.
    pub const TIMEOUT: Self = Self(HTTP_CLASSES + GRPC_CODES + 3);
    /// The target took the request and failed without answering.
    pub const ERROR: Self = Self(HTTP_CLASSES + GRPC_CODES + 4);
    /// The caller went away before the call ended.
    pub const CANCELLED: Self = Self(HTTP_CLASSES + GRPC_CODES + 5);

    pub fn label(self) -> &'static str {
        OUTCOME_LABELS[self.0]
    }
}

const OUTCOMES: usize = HTTP_CLASSES + GRPC_CODES + 6;

const OUTCOME_LABELS: [&str; OUTCOMES] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "ack",
    "nack",
    "unavailable",
    "timeout",
    "error",
    "cancelled",
];

/// How a connection through a TCP link began: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected to a replica.
    Connected = 0,
    /// Every ready replica refused (or failed) the connect.
    Refused = 1,
    /// No ready replica.
    Unavailable = 2,
    /// The connect took longer than the link's connect timeout.
    Timeout = 3,
    /// Past the link's `max_connections` (or the process's budget): closed at once.
    Limit = 4,
}

/// The `outcome` labels of [`TcpOutcome`], in its order.
pub const TCP_OUTCOMES: [&str; 5] = ["connected", "refused", "unavailable", "timeout", "limit"];

/// One TCP link's metrics: connections are not the request path's hot
/// loop, so plain counters (bytes are added once per chunk moved).
#[derive(Debug, Default)]
pub struct TcpMetrics {
    pub key: LinkKey,
    outcomes: [std::sync::atomic::AtomicU64; 5],
    active: std::sync::atomic::AtomicI64,
    /// Bytes from the caller to the target.
    pub sent: std::sync::atomic::AtomicU64,
    /// Bytes from the target to the caller.
    pub received: std::sync::atomic::AtomicU64,
    connect: Mutex<Histogram>,
}

impl TcpMetrics {
    pub fn outcome(&self, outcome: TcpOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connected after `nanos`.
    pub fn connected(&self, nanos: u64) {
        self.outcome(TcpOutcome::Connected);
        self.connect.lock().unwrap_or_else(|e| e.into_inner()).observe(nanos, cells::slot());
    }

    pub fn opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// `(outcome, count)` of each outcome.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        TCP_OUTCOMES.iter().zip(&self.outcomes).map(|(l, n)| (*l, n.load(Ordering::Relaxed))).collect()
    }

    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn connect_latency(&self) -> cells::HistogramSnapshot {
        let h = self.connect.lock().unwrap_or_else(|e| e.into_inner());
        cells::HistogramSnapshot::of(std::iter::once(&*h))
    }
}

/// The labels of one link's series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub from: String,
    pub to: String,
    pub link: String,
    pub kind: &'static str,
}

#[derive(Debug, Default)]
struct LinkCells {
    requests: [Cell; OUTCOMES],
    attempts: [Cell; OUTCOMES],
    retries: Cell,
    timeouts: Cell,
    no_replica: Cell,
    in_flight: Cell,
    latency: Histogram,
}

/// One link's metrics.
#[derive(Debug)]
pub struct LinkMetrics {
    pub key: LinkKey,
    cells: Sharded<LinkCells>,
}

/// One call on a link while it runs: counted in flight, and when dropped
/// counted once with its outcome and latency (`cancelled` if none was set).
#[derive(Debug)]
pub struct CallRecord<'a> {
    metrics: &'a LinkMetrics,
    start: u64,
    outcome: Outcome,
    /// The outcome is also the last attempt's, not recorded yet.
    last_attempt: bool,
}

impl LinkMetrics {
    /// Starts recording a call; `None` when recording is off.
    #[inline]
    pub fn start(&self) -> Option<CallRecord<'_>> {
        if !enabled() {
            return None;
        }
        let (cells, slot) = self.cells.local();
        cells.in_flight.inc(slot);
        Some(CallRecord { metrics: self, start: clock().raw(), outcome: Outcome::CANCELLED, last_attempt: false })
    }
}

impl CallRecord<'_> {
    /// One attempt ended with `outcome`.
    #[inline]
    pub fn attempt(&self, outcome: Outcome) {
        let (cells, slot) = self.metrics.cells.local();
        cells.attempts[outcome.0].inc(slot);
        if outcome == Outcome::TIMEOUT {
            cells.timeouts.inc(slot);
        }
    }

    /// An attempt found no ready replica.
    pub fn no_replica(&self) {
        let (cells, slot) = self.metrics.cells.local();
        cells.no_replica.inc(slot);
        cells.attempts[Outcome::UNAVAILABLE.0].inc(slot);
    }

    /// Another attempt is made.
    pub fn retry(&self) {
        let (cells, slot) = self.metrics.cells.local();
        cells.retries.inc(slot);
    }

    /// The call ended with `outcome` (its attempts recorded already).
    #[inline]
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// The call's last attempt, and so the call, ended with `outcome`:
    /// recorded together, on one shard.
    #[inline]
    pub fn finish_attempt(mut self, outcome: Outcome) {
        self.outcome = outcome;
        self.last_attempt = true;
    }
}

impl Drop for CallRecord<'_> {
    #[inline]
    fn drop(&mut self) {
        let clock = clock();
        let nanos = clock.delta_as_nanos(self.start, clock.raw());
        let (cells, slot) = self.metrics.cells.local();
        cells.in_flight.dec(slot);
        cells.requests[self.outcome.0].inc(slot);
        if self.last_attempt {
            cells.attempts[self.outcome.0].inc(slot);
            if self.outcome == Outcome::TIMEOUT {
                cells.timeouts.inc(slot);
            }
        }
        cells.latency.observe(nanos, slot);
    }
}

/// The reasons a tier listener turns a request or connection away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The body is larger than the tier's `max_body`.
    BodyTooLarge = 0,
    /// The body did not arrive in time.
    BodyTimeout = 1,
    /// The request head did not arrive in time.
    HeaderTimeout = 2,
    /// Over the connection budget: closed at once.
    ConnectionLimit = 3,
    /// A request refused as malformed (a second `Host`, an encoded `/`).
    BadRequest = 4,
    /// Its body would have crossed the process's budget for bodies.
    BodyMemory = 5,
}

const REJECTED_LABELS: [&str; 6] =
    ["body_too_large", "body_timeout", "header_timeout", "connection_limit", "bad_request", "body_memory"];

#[derive(Debug, Default)]
struct ListenerCells {
    connections: Cell,
    bytes_in: Cell,
    bytes_out: Cell,
    rejected: [Cell; 6],
    in_flight: Cell,
}

#[derive(Debug, Default)]
struct RouteCells {
    /// By status class, then `cancelled`: the client went away first.
    requests: [Cell; HTTP_CLASSES + 1],
    latency: Histogram,
}

const ROUTE_LABELS: [&str; HTTP_CLASSES + 1] = ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"];

/// A gateway route's path, and its series.
type RouteEntry = (Box<str>, Arc<Sharded<RouteCells>>);

/// A tier listener's metrics. The `route` label is the gateway route's path
/// (`""` for a tier that is not a gateway, or a request no route matched).
#[derive(Debug)]
pub struct ListenerMetrics {
    pub tier: String,
    cells: Sharded<ListenerCells>,
    /// By route path, a few: scanned (cheaper than hashing the path), read
    /// without a lock; a route seen first is added under one.
    routes: ArcSwap<Vec<RouteEntry>>,
    adding: Mutex<()>,
    unrouted: Arc<Sharded<RouteCells>>,
}

/// One request on a listener while it runs; recorded when dropped (as
/// `cancelled` if it was not answered).
#[derive(Debug)]
pub struct RequestRecord {
    listener: Arc<ListenerMetrics>,
    route: Option<Arc<Sharded<RouteCells>>>,
    start: u64,
    bytes_in: u64,
    bytes_out: u64,
    class: usize,
}

impl ListenerMetrics {
    fn new(tier: &str) -> Self {
        Self {
            tier: tier.to_owned(),
            cells: Sharded::default(),
            routes: ArcSwap::from_pointee(Vec::new()),
            adding: Mutex::new(()),
            unrouted: Arc::default(),
        }
    }

    /// A connection opened (`true`) or closed.
    pub fn connection(&self, open: bool) {
        let (cells, slot) = self.cells.local();
        if open { cells.connections.inc(slot) } else { cells.connections.dec(slot) }
    }

    pub fn rejected(&self, why: Rejected) {
        if !enabled() {
            return;
        }
        let (cells, slot) = self.cells.local();
        cells.rejected[why as usize].inc(slot);
    }

    /// Starts recording a request whose head arrived; `None` when recording is off.
    #[inline]
    pub fn start(self: &Arc<Self>) -> Option<RequestRecord> {
        if !enabled() {
            return None;
        }
        let (cells, slot) = self.cells.local();
        cells.in_flight.inc(slot);
        Some(RequestRecord {
            listener: self.clone(),
            route: None,
            start: clock().raw(),
            bytes_in: 0,
            bytes_out: 0,
            class: HTTP_CLASSES,
        })
    }

    fn route(&self, path: &str) -> Arc<Sharded<RouteCells>> {
        let find = |routes: &[RouteEntry]| routes.iter().find(|(p, _)| **p == *path).map(|(_, cells)| cells.clone());
        if let Some(cells) = find(&self.routes.load()) {
            return cells;
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let routes = self.routes.load();
        if let Some(cells) = find(&routes) {
            return cells;
        }
        let cells = Arc::<Sharded<RouteCells>>::default();
        let mut more = Vec::clone(&routes);
        more.push((path.into(), cells.clone()));
        self.routes.store(Arc::new(more));
        cells
    }
}

impl RequestRecord {
    /// The gateway route the request matched, by its path.
    pub fn route(&mut self, path: &str) {
        self.route = Some(self.listener.route(path));
    }

    /// The request's body was `bytes` long.
    pub fn body(&mut self, bytes: u64) {
        self.bytes_in = bytes;
    }

    /// The listener turned the request away.
    pub fn rejected(&self, why: Rejected) {
        self.listener.rejected(why);
    }

    /// The request was answered with `status` and `bytes_out` bytes of body.
    pub fn finish(mut self, status: u16, bytes_out: u64) {
        self.class = Outcome::http(status).0;
        self.bytes_out = bytes_out;
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let clock = clock();
        let nanos = clock.delta_as_nanos(self.start, clock.raw());
        let (cells, slot) = self.listener.cells.local();
        cells.in_flight.dec(slot);
        cells.bytes_in.add(self.bytes_in, slot);
        cells.bytes_out.add(self.bytes_out, slot);
        let route = self.route.as_ref().unwrap_or(&self.listener.unrouted);
        let (route, slot) = route.local();
        route.requests[self.class].inc(slot);
        route.latency.observe(nanos, slot);
    }
}

/// Every metric the request path records, for the life of the process.
#[derive(Debug, Default)]
pub struct Registry {
    links: Mutex<Vec<Arc<LinkMetrics>>>,
    tcp_links: Mutex<Vec<Arc<TcpMetrics>>>,
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
    reloads: Mutex<Histogram>,
}

/// The process's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
    &REGISTRY
}

impl Registry {
    /// The metrics of the link `key`: the same series as before if the link
    /// existed already (a reload that keeps it keeps counting on them).
    pub fn link(&self, key: LinkKey) -> Arc<LinkMetrics> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = links.iter().find(|m| m.key == key) {
            return m.clone();
        }
        let m = Arc::new(LinkMetrics { key, cells: Sharded::default() });
        links.push(m.clone());
        m
    }

    /// The TCP metrics of link `key` (the same series as before if the link
    /// existed already).
    pub fn tcp_link(&self, key: LinkKey) -> Arc<TcpMetrics> {
        let mut links = self.tcp_links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = links.iter().find(|m| m.key == key) {
            return m.clone();
        }
        let m = Arc::new(TcpMetrics { key, ..TcpMetrics::default() });
        links.push(m.clone());
        m
    }

    /// Every TCP link's metrics.
    pub fn tcp_links(&self) -> Vec<Arc<TcpMetrics>> {
        self.tcp_links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The metrics of tier `tier`'s listener.
    pub fn listener(&self, tier: &str) -> Arc<ListenerMetrics> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = listeners.iter().find(|m| m.tier == tier) {
            return m.clone();
        }
        let m = Arc::new(ListenerMetrics::new(tier));
        listeners.push(m.clone());
        m
    }

    /// A reload took `seconds`, from the change that triggered it to the
    /// topology applied (or refused).
    pub fn reload_took(&self, seconds: f64) {
        let h = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        h.observe((seconds * 1e9) as u64, cells::slot());
    }
}

/// What a scrape reads.
pub mod read {
    use super::*;
    pub use cells::HistogramSnapshot;

    /// A link's series, summed over threads.
    #[derive(Debug)]
    pub struct LinkSnapshot {
        pub key: LinkKey,
        /// `(outcome, count)` of each outcome seen, for effective calls.
        pub requests: Vec<(&'static str, u64)>,
        /// The same, per attempt.
        pub attempts: Vec<(&'static str, u64)>,
        pub retries: u64,
        pub timeouts: u64,
        pub no_replica: u64,
        pub in_flight: i64,
        pub latency: HistogramSnapshot,
    }

    fn by_outcome(n: impl Fn(usize) -> u64) -> Vec<(&'static str, u64)> {
        (0..OUTCOMES).map(|i| (OUTCOME_LABELS[i], n(i))).filter(|(_, n)| *n > 0).collect()
    }

    pub fn links(registry: &Registry) -> Vec<LinkSnapshot> {
        let links = registry.links.lock().unwrap_or_else(|e| e.into_inner()).clone();
        links
            .iter()
            .map(|m| {
                let c = &m.cells;
                LinkSnapshot {
                    key: m.key.clone(),
                    requests: by_outcome(|i| c.sum(|s| &s.requests[i])),
                    attempts: by_outcome(|i| c.sum(|s| &s.attempts[i])),
                    retries: c.sum(|s| &s.retries),
                    timeouts: c.sum(|s| &s.timeouts),
                    no_replica: c.sum(|s| &s.no_replica),
                    in_flight: c.sum(|s| &s.in_flight) as i64,
                    latency: HistogramSnapshot::of(c.each().map(|s| &s.latency)),
                }
            })
            .collect()
    }

    /// Per route path: `(class, count)` of each class seen, and the latency.
    pub type RouteSnapshot = (String, Vec<(&'static str, u64)>, HistogramSnapshot);

    /// A listener's series.
    #[derive(Debug)]
    pub struct ListenerSnapshot {
        pub tier: String,
        pub connections: i64,
        pub in_flight: i64,
        pub bytes_in: u64,
        pub bytes_out: u64,
        pub rejected: Vec<(&'static str, u64)>,
        pub routes: Vec<RouteSnapshot>,
    }

    pub fn listeners(registry: &Registry) -> Vec<ListenerSnapshot> {
        let listeners = registry.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        listeners
            .iter()
            .map(|m| {
                let c = &m.cells;
                let mut routes: Vec<(String, Arc<Sharded<RouteCells>>)> =
                    m.routes.load().iter().map(|(p, r)| (p.to_string(), r.clone())).collect();
                routes.sort_by(|a, b| a.0.cmp(&b.0));
                routes.insert(0, (String::new(), m.unrouted.clone()));
                let routes = routes
                    .into_iter()
                    .map(|(path, r)| {
                        let classes = (0..ROUTE_LABELS.len())
                            .map(|i| (ROUTE_LABELS[i], r.sum(|s| &s.requests[i])))
                            .filter(|(_, n)| *n > 0)
                            .collect::<Vec<_>>();
                        (path, classes, HistogramSnapshot::of(r.each().map(|s| &s.latency)))
                    })
                    .filter(|(_, classes, _)| !classes.is_empty())
                    .collect();
                ListenerSnapshot {
                    tier: m.tier.clone(),
                    connections: c.sum(|s| &s.connections) as i64,
                    in_flight: c.sum(|s| &s.in_flight) as i64,
                    bytes_in: c.sum(|s| &s.bytes_in),
                    bytes_out: c.sum(|s| &s.bytes_out),
                    rejected: (0..REJECTED_LABELS.len())
                        .map(|i| (REJECTED_LABELS[i], c.sum(|s| &s.rejected[i])))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    routes,
                }
            })
            .collect()
    }

    pub fn reloads(registry: &Registry) -> HistogramSnapshot {
        let h = registry.reloads.lock().unwrap_or_else(|e| e.into_inner());
        HistogramSnapshot::of(std::iter::once(&*h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_line_up() {
        assert_eq!(Outcome::http(204).label(), "2xx");
        assert_eq!(Outcome::http(599).label(), "5xx");
        assert_eq!(Outcome::grpc(0).label(), "OK");
        assert_eq!(Outcome::grpc(5).label(), "NOT_FOUND");
        assert_eq!(Outcome::grpc(16).label(), "UNAUTHENTICATED");
        assert_eq!(Outcome::CANCELLED.label(), "cancelled");
        assert_eq!(Outcome::ACK.label(), "ack");
    }

    #[test]
    fn a_call_is_counted_once_with_its_attempts_and_a_dropped_one_as_cancelled() {
        let registry = Registry::default();
        let key = LinkKey { from: "a".into(), to: "b".into(), link: "b".into(), kind: "rest" };
        let m = registry.link(key.clone());
        assert!(Arc::ptr_eq(&m, &registry.link(key)), "the same series for the same labels");
        let call = m.start().unwrap();
        call.attempt(Outcome::UNAVAILABLE);
        call.retry();
        call.finish_attempt(Outcome::http(200));
        drop(m.start().unwrap());
        let snap = &read::links(&registry)[0];
        assert_eq!(snap.requests, [("2xx", 1), ("cancelled", 1)]);
        assert_eq!(snap.attempts, [("2xx", 1), ("unavailable", 1)]);
        assert_eq!((snap.retries, snap.in_flight, snap.latency.count), (1, 0, 2));
    }
}
