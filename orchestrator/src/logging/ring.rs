//! The recent log lines, kept in memory for the dashboard and
//! `orchestrator logs`: per source (a tier's replica, or the orchestrator
//! itself) the last [`Limits::lines`] lines and at most [`Limits::bytes`]
//! bytes, for at most [`Limits::sources`] sources; older lines are dropped.
//! New lines are also broadcast to followers, who are told how many they
//! missed when they fall behind (a follower never slows the logger down).
//! What is broadcast is a weak handle: a follower that stopped reading keeps
//! no line alive that the ring has dropped (it is told it missed it).
//!
//! Reading back ([`Ring::snapshot`], then [`search`]) holds the lock only to
//! copy the handles of the lines a query's cheap filters select; the
//! pattern runs on that copy, off the lock writers need, within a time
//! budget, and stops at a number of lines and a number of bytes.
//!
//! Lines reach the ring through [`RingLayer`], a `tracing` layer: a tier's
//! lines are those logged in its instance's span (what its plugin logs, a
//! process tier's program output) or with a `tier` field (what the
//! orchestrator says about it).

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, span};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per source, unless `orchestrator run --log-lines` says otherwise.
pub const DEFAULT_LINES: usize = 1000;
/// Bytes of messages kept per source.
pub const DEFAULT_BYTES: usize = 1024 * 1024;
/// Sources kept: past it, the one that logged least recently is dropped.
pub const DEFAULT_SOURCES: usize = 1024;
/// The longest message kept whole; the rest of a longer one is cut.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Lines a follower may fall behind before it misses some. The buffer holds
/// weak handles: it keeps no line alive that the ring dropped.
pub const FOLLOW_BUFFER: usize = 4096;
/// The most bytes of messages one read returns (the newest lines first):
/// what one request may hold.
pub const MAX_READ_BYTES: usize = 8 * 1024 * 1024;
/// How long a search may take before it gives up.
pub const SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// How much the ring keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub lines: usize,
    pub bytes: usize,
    pub sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { lines: DEFAULT_LINES, bytes: DEFAULT_BYTES, sources: DEFAULT_SOURCES }
    }
}

/// One log line.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Increasing across the ring: orders lines of different sources.
    pub seq: u64,
    /// RFC 3339, to the millisecond.
    pub time: String,
    #[serde(skip)]
    pub at: SystemTime,
    /// The tier, or none for the orchestrator's own lines.
    pub tier: Option<Arc<str>>,
    pub replica: Option<u32>,
    pub level: &'static str,
    /// `stderr` for what a program wrote to its standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<&'static str>,
    pub message: String,
}

impl Line {
    fn cost(&self) -> usize {
        self.message.len() + 64
    }
}

/// Where a line comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Source {
    tier: Option<Arc<str>>,
    replica: Option<u32>,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<Arc<Line>>,
    bytes: usize,
    last: u64,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    sources: HashMap<Source, Kept>,
}

/// What to read back.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only these tiers' lines (`orchestrator` for the orchestrator's own);
    /// empty: every line.
    pub tiers: Vec<String>,
    /// Only this replica's (with `tiers`).
    pub replica: Option<u32>,
    /// Only lines logged at or after this time.
    pub since: Option<SystemTime>,
    /// Only lines whose message matches.
    pub grep: Option<regex::Regex>,
    /// Only lines after this one.
    pub after: Option<u64>,
}

/// The name the orchestrator's own lines go by in a [`Query`].
pub const ORCHESTRATOR: &str = "orchestrator";

impl Query {
    pub fn matches(&self, line: &Line) -> bool {
        let tier = line.tier.as_deref().unwrap_or(ORCHESTRATOR);
        (self.tiers.is_empty() || self.tiers.iter().any(|t| t == tier))
            && self.replica.is_none_or(|r| line.replica == Some(r))
            && self.since.is_none_or(|s| line.at >= s)
            && self.after.is_none_or(|a| line.seq > a)
            && self.grep.as_ref().is_none_or(|re| re.is_match(&line.message))
    }
}

/// The recent lines (see the module's doc).
#[derive(Debug)]
pub struct Ring {
    limits: Mutex<Limits>,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Weak<Line>>,
}

impl Ring {
    pub fn new(limits: Limits) -> Self {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        Self { limits: Mutex::new(limits), inner: Mutex::default(), live }
    }

    /// Keeps `lines` per source from now on (at least one).
    pub fn set_lines(&self, lines: usize) {
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).lines = lines.max(1);
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a line and sends it to followers.
    pub fn push(
        &self,
        tier: Option<Arc<str>>,
        replica: Option<u32>,
        level: &'static str,
        stream: Option<&'static str>,
        mut message: String,
    ) {
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = message.len() - cut;
            message.truncate(cut);
            let _ = write!(message, " … [{dropped} more bytes dropped]");
        }
        let limits = self.limits();
        let at = SystemTime::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let line =
            Arc::new(Line { seq, time: super::timestamp(at), at, tier: tier.clone(), replica, level, stream, message });
        let source = Source { tier, replica };
        if !inner.sources.contains_key(&source) && inner.sources.len() >= limits.sources {
            let quietest = inner.sources.iter().min_by_key(|(_, k)| k.last).map(|(s, _)| s.clone());
            if let Some(quietest) = quietest {
                inner.sources.remove(&quietest);
            }
        }
        let kept = inner.sources.entry(source).or_default();
        kept.bytes += line.cost();
        kept.last = seq;
        kept.lines.push_back(line.clone());
        while kept.lines.len() > limits.lines || (kept.bytes > limits.bytes && kept.lines.len() > 1) {
            if let Some(old) = kept.lines.pop_front() {
                kept.bytes -= old.cost();
            }
        }
        drop(inner);
        // No follower: nothing to do.
        let _ = self.live.send(Arc::downgrade(&line));
    }

    /// The last `limit` kept lines that match, oldest first (see [`search`]
    /// for a search within a budget).
    pub fn recent(&self, query: &Query, limit: usize) -> Vec<Arc<Line>> {
        let lines = self.snapshot(query);
        search(lines, query.grep.as_ref(), limit, usize::MAX, None).unwrap_or_default()
    }

    /// The handles of the kept lines that `query` selects but for its
    /// pattern, in order: taken under the lock, which nothing else holds
    /// for longer than a copy of handles.
    pub fn snapshot(&self, query: &Query) -> Vec<Arc<Line>> {
        let cheap = Query { grep: None, ..query.clone() };
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<Arc<Line>> =
            inner.sources.values().flat_map(|k| k.lines.iter()).filter(|l| cheap.matches(l)).cloned().collect();
        drop(inner);
        lines.sort_unstable_by_key(|l| l.seq);
        lines
    }

    /// Every line from now on (subscribe before reading [`Ring::recent`],
    /// then skip what that returned, to miss nothing in between).
    pub fn follow(&self) -> broadcast::Receiver<Weak<Line>> {
        self.live.subscribe()
    }
}

/// Why a search gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("the search took longer than its budget of {}s: narrow it (tiers, since) or simplify the pattern", SEARCH_BUDGET.as_secs())]
    OverBudget,
}

/// The last `limit` lines of `lines` (in order) whose message `grep`
/// matches, oldest first, at most `max_bytes` of messages (the newest are
/// kept); an error once `deadline` passed. Runs the pattern newest line
/// first, and stops as soon as it has its lines.
pub fn search(
    lines: Vec<Arc<Line>>,
    grep: Option<&regex::Regex>,
    limit: usize,
    max_bytes: usize,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<Arc<Line>>, SearchError> {
    let mut found = Vec::new();
    let mut bytes = 0usize;
    for (i, line) in lines.into_iter().rev().enumerate() {
        if found.len() >= limit {
            break;
        }
        if i % 64 == 0 && deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(SearchError::OverBudget);
        }
        if grep.is_some_and(|re| !re.is_match(&line.message)) {
            continue;
        }
        bytes += line.message.len();
        if bytes > max_bytes && !found.is_empty() {
            break;
        }
        found.push(line);
    }
    found.reverse();
    Ok(found)
}

/// The process's ring, which [`RingLayer`] fills.
pub fn global() -> &'static Arc<Ring> {
    static RING: OnceLock<Arc<Ring>> = OnceLock::new();
    RING.get_or_init(|| Arc::new(Ring::new(Limits::default())))
}

/// Fills a [`Ring`] with every event it sees.
#[derive(Debug, Clone)]
pub struct RingLayer {
    ring: Arc<Ring>,
}

impl RingLayer {
    pub fn new(ring: Arc<Ring>) -> Self {
        Self { ring }
    }
}

/// The tier and replica a span is about.
#[derive(Clone, Debug, Default)]
struct Origin {
    tier: Option<Arc<str>>,
    replica: Option<u32>,
}

impl Visit for Origin {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "tier" {
            self.tier = Some(value.into());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "replica" {
            self.replica = u32::try_from(value).ok();
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "replica" {
            self.replica = u32::try_from(value).ok();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "tier" {
            self.tier = Some(format!("{value:?}").into());
        }
    }
}

/// An event's message, origin, stream, and its other fields as `key=value`.
#[derive(Default)]
struct EventFields {
    origin: Origin,
    message: String,
    rest: String,
    stream: Option<&'static str>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "stream" if value == "stderr" => self.stream = Some("stderr"),
            "tier" => self.origin.record_str(field, value),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "replica" => self.origin.record_u64(field, value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "replica" => self.origin.record_i64(field, value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "tier" => self.origin.record_debug(field, value),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// A tier's line without the coloured `tier.replica | ` tag a terminal's
/// lines start with (the ring knows the tier and replica), without colours,
/// its other control characters shown escaped ([`super::terminal`]).
fn untagged(message: String, origin: &Origin) -> String {
    let message = match super::terminal::sanitize(&message, false) {
        std::borrow::Cow::Borrowed(_) => message,
        std::borrow::Cow::Owned(plain) => plain,
    };
    let (Some(tier), Some(replica)) = (&origin.tier, origin.replica) else { return message };
    let tag = format!("{tier}.{replica} | ");
    match message.strip_prefix(&tag) {
        Some(rest) => rest.to_owned(),
        None => message,
    }
}

impl<S> Layer<S> for RingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut origin = Origin::default();
        attrs.record(&mut origin);
        if origin.tier.is_some()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(origin);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if fields.origin.tier.is_none()
            && let Some(scope) = ctx.event_scope(event)
        {
            for span in scope {
                if let Some(origin) = span.extensions().get::<Origin>() {
                    fields.origin = origin.clone();
                    break;
                }
            }
        }
        let mut message = untagged(fields.message, &fields.origin);
        message.push_str(&fields.rest);
        let level = event.metadata().level().as_str();
        self.ring.push(fields.origin.tier, fields.origin.replica, level, fields.stream, message);
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn messages(lines: &[Arc<Line>]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn each_source_keeps_its_last_lines_and_bytes() {
        let ring = Ring::new(Limits { lines: 3, bytes: 1024, sources: 8 });
        for i in 0..5 {
            ring.push(Some("a".into()), Some(0), "INFO", None, format!("a{i}"));
        }
        ring.push(Some("b".into()), Some(0), "INFO", None, "b0".into());
        assert_eq!(messages(&ring.recent(&Query::default(), 100)), ["a2", "a3", "a4", "b0"]);
        // At the byte limit: a line of 1000 bytes leaves room for nothing else.
        ring.push(Some("a".into()), Some(0), "INFO", None, "x".repeat(1000));
        let a = Query { tiers: vec!["a".into()], ..Query::default() };
        assert_eq!(ring.recent(&a, 100).len(), 1);
        // One line longer than the limit is kept, alone.
        ring.push(Some("a".into()), Some(0), "INFO", None, "y".repeat(2000));
        assert_eq!(ring.recent(&a, 100)[0].message.len(), 2000);
        assert_eq!(ring.recent(&Query::default(), 1).len(), 1, "the limit asked for");
    }

    #[test]
    fn past_the_source_limit_the_quietest_source_goes() {
        let ring = Ring::new(Limits { lines: 10, bytes: 1 << 20, sources: 2 });
        ring.push(Some("a".into()), Some(0), "INFO", None, "a".into());
        ring.push(Some("b".into()), Some(0), "INFO", None, "b".into());
        ring.push(Some("a".into()), Some(0), "INFO", None, "a again".into());
        ring.push(Some("c".into()), Some(0), "INFO", None, "c".into());
        assert_eq!(messages(&ring.recent(&Query::default(), 100)), ["a", "a again", "c"]);
    }

    #[test]
    fn a_message_is_cut_at_the_limit_and_says_so() {
        let ring = Ring::new(Limits::default());
        ring.push(None, None, "INFO", None, "é".repeat(MAX_MESSAGE));
        let line = &ring.recent(&Query::default(), 1)[0];
        assert!(line.message.len() <= MAX_MESSAGE + 40);
        assert!(line.message.ends_with(&format!("[{} more bytes dropped]", MAX_MESSAGE)), "{}", &line.message[..20]);
    }

    #[test]
    fn a_stalled_follower_keeps_no_dropped_line_alive() {
        let ring = Ring::new(Limits { lines: 2, bytes: 1 << 20, sources: 8 });
        let mut stalled = ring.follow();
        for i in 0..10 {
            ring.push(Some("a".into()), Some(0), "INFO", None, format!("{i}{}", "x".repeat(1000)));
        }
        // The first eight lines left the ring: the follower holds nothing of them.
        let held: Vec<Option<Arc<Line>>> = (0..10).map(|_| stalled.try_recv().unwrap().upgrade()).collect();
        assert_eq!(held.iter().filter(|l| l.is_some()).count(), 2);
        assert!(held[8].is_some() && held[9].is_some());
    }

    #[test]
    fn a_search_stops_at_its_lines_its_bytes_and_its_deadline() {
        let ring = Ring::new(Limits::default());
        for i in 0..100 {
            ring.push(Some("a".into()), Some(0), "INFO", None, format!("line {i:03} {}", "x".repeat(100)));
        }
        let lines = ring.snapshot(&Query::default());
        assert_eq!(lines.len(), 100);
        let re = regex::Regex::new(r"line 0[0-4]\d").unwrap();
        let found = search(lines.clone(), Some(&re), 3, usize::MAX, None).unwrap();
        assert_eq!(messages(&found).iter().map(|m| &m[..8]).collect::<Vec<_>>(), ["line 047", "line 048", "line 049"]);
        // The byte budget: the newest lines that fit (at least one).
        let found = search(lines.clone(), None, 100, 250, None).unwrap();
        assert_eq!(found.len(), 2, "two lines of 109 bytes fit in 250");
        assert_eq!(search(lines.clone(), None, 100, 1, None).unwrap().len(), 1);
        let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
        assert_eq!(search(lines, Some(&re), 3, usize::MAX, Some(past)).unwrap_err(), SearchError::OverBudget);
    }

    #[test]
    fn queries_filter_by_tier_replica_time_and_pattern() {
        let ring = Ring::new(Limits::default());
        ring.push(Some("web".into()), Some(0), "INFO", None, "GET /a 200".into());
        ring.push(Some("web".into()), Some(1), "WARN", Some("stderr"), "Traceback".into());
        ring.push(None, None, "INFO", None, "Reload applied.".into());
        let q = |tiers: &[&str], replica, grep: Option<&str>| Query {
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            replica,
            grep: grep.map(|g| regex::Regex::new(g).unwrap()),
            ..Query::default()
        };
        assert_eq!(messages(&ring.recent(&q(&["web"], None, None), 10)), ["GET /a 200", "Traceback"]);
        assert_eq!(messages(&ring.recent(&q(&["web"], Some(1), None), 10)), ["Traceback"]);
        assert_eq!(messages(&ring.recent(&q(&[ORCHESTRATOR], None, None), 10)), ["Reload applied."]);
        assert_eq!(messages(&ring.recent(&q(&[], None, Some(r"^GET /\w+ 2\d\d$")), 10)), ["GET /a 200"]);
        let later = Query { since: Some(SystemTime::now() + std::time::Duration::from_secs(1)), ..Query::default() };
        assert!(ring.recent(&later, 10).is_empty());
        let after = Query { after: Some(2), ..Query::default() };
        assert_eq!(messages(&ring.recent(&after, 10)), ["Reload applied."]);
    }

    #[test]
    fn the_layer_attributes_lines_to_their_tier_and_marks_stderr() {
        let ring = Arc::new(Ring::new(Limits::default()));
        let mut live = ring.follow();
        let subscriber = tracing_subscriber::registry().with(RingLayer::new(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("tier", tier = "audit", replica = 1u32);
            tracing::info!(parent: &span, "\x1b[36maudit.1 |\x1b[0m listening on :5000");
            tracing::warn!(parent: &span, stream = "stderr", "Traceback (most recent call last):");
            tracing::info!(tier = %"worker", replica = 0u32, instance = 7u64, "Instance started.");
            tracing::info!("Topology running.");
        });
        let lines = ring.recent(&Query::default(), 10);
        assert_eq!(
            messages(&lines),
            [
                "listening on :5000",
                "Traceback (most recent call last):",
                "Instance started. instance=7",
                "Topology running."
            ]
        );
        assert_eq!((lines[0].tier.as_deref(), lines[0].replica, lines[0].stream), (Some("audit"), Some(1), None));
        assert_eq!((lines[1].level, lines[1].stream), ("WARN", Some("stderr")));
        assert_eq!((lines[2].tier.as_deref(), lines[2].replica), (Some("worker"), Some(0)));
        assert_eq!(lines[3].tier, None);
        assert_eq!(
            live.try_recv().unwrap().upgrade().unwrap().message,
            "listening on :5000",
            "followers get each line"
        );
    }
}
