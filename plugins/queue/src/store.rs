//! Durable topics: messages kept in a redb database until every subscriber
//! has acknowledged them.
//!
//! One writer thread owns the write transactions and commits in groups: it
//! takes every operation queued while the previous commit ran and applies
//! them in one transaction. A commit that stores a message is
//! `Durability::Immediate` (fsync) and publishers hear back only after it; a
//! commit of removals alone is not synced (a crash then redelivers a message,
//! which at-least-once allows).
//!
//! A commit that fails (the disk full, an I/O error) leaves the database
//! unusable until it is opened again: the writer then closes it, and opens
//! it again and tries an empty commit, every [`RETRY`] until one succeeds.
//! Meanwhile the store is not [`Store::healthy`] (the tier reports itself
//! not ready) and a publish fails at once, saying why; removals wait, and
//! are applied once it writes again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use plugin_api::serde_json;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// (topic, sequence number) → encoded [`Record`].
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// A stored message.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    pub published_us: u64,
    /// Headers carried with the message (`content-type`, trace context, dead-letter reasons).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Record {
    /// Metadata as JSON, then the body: `u32 LE metadata length, metadata, body`.
    fn encode(&self) -> Vec<u8> {
        let meta = serde_json::json!({ "id": self.id, "published_us": self.published_us, "headers": self.headers });
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + meta.len() + self.body.len());
        out.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let meta: serde_json::Value = serde_json::from_slice(rest.get(..len)?).ok()?;
        let headers = serde_json::from_value(meta.get("headers")?.clone()).ok()?;
        Some(Self {
            id: meta.get("id")?.as_str()?.to_owned(),
            published_us: meta.get("published_us")?.as_u64()?,
            headers,
            body: Bytes::copy_from_slice(&rest[len..]),
        })
    }
}

enum Op {
    Put { topic: String, values: Vec<(u64, Vec<u8>)>, done: oneshot::Sender<Result<(), String>> },
    Remove { topic: String, seq: u64 },
}

/// How often a store that cannot write tries again.
pub const RETRY: Duration = Duration::from_millis(500);
/// Removals kept while the store cannot write; past it the oldest are
/// dropped (their messages are delivered again after a restart).
pub const MAX_PENDING_REMOVALS: usize = 1 << 20;

/// A durable broker's database.
pub struct Store {
    path: PathBuf,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    commits: Arc<Commits>,
    health: Arc<Health>,
}

/// Whether the store writes, and why not.
#[derive(Debug, Default)]
struct Health {
    failing: AtomicBool,
    error: Mutex<Option<String>>,
}

/// Upper bounds of the commit latency buckets, in seconds.
pub const COMMIT_BUCKETS: [f64; 12] =
    [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The writer's commits: how many, and how long each took (a histogram).
#[derive(Debug, Default)]
pub struct Commits {
    /// Per bucket of [`COMMIT_BUCKETS`], then beyond the last.
    counts: [AtomicU64; 13],
    sum_nanos: AtomicU64,
}

impl Commits {
    fn observe(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        let i = COMMIT_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(COMMIT_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// `{"count", "sum_seconds", "buckets": [[le, cumulative count]…]}`.
    pub fn report(&self) -> serde_json::Value {
        let mut cumulative = 0;
        let buckets: Vec<serde_json::Value> = COMMIT_BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                serde_json::json!([bound, cumulative])
            })
            .collect();
        let count = cumulative + self.counts[COMMIT_BUCKETS.len()].load(Ordering::Relaxed);
        serde_json::json!({
            "count": count,
            "sum_seconds": self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            "buckets": buckets,
        })
    }
}

impl Drop for Store {
    /// Lets the writer finish what is queued and close the database.
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// What a durable broker finds when it opens its database.
pub type Recovered = Vec<(String, u64, Record)>;

impl Store {
    /// Opens (or creates) the database at `path` and reads back the messages
    /// it holds, in topic and publish order.
    pub fn open(path: &Path) -> Result<(Self, Recovered), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", &e))?;
        }
        let db = Database::create(path).map_err(|e| fail("cannot open the message database", &e))?;
        let mut recovered = Vec::new();
        {
            let read = db.begin_read().map_err(|e| fail("cannot read", &e))?;
            match read.open_table(MESSAGES) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| fail("cannot read", &e))? {
                        let (key, value) = entry.map_err(|e| fail("cannot read", &e))?;
                        let (topic, seq) = key.value();
                        match Record::decode(value.value()) {
                            Some(record) => recovered.push((topic.to_owned(), seq, record)),
                            None => return Err(format!("{}: message {topic}/{seq} is unreadable", path.display())),
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(fail("cannot read", &e)),
            }
        }
        let (ops, rx) = mpsc::channel();
        let thread_path = path.to_owned();
        let commits = Arc::new(Commits::default());
        let health = Arc::new(Health::default());
        let (writer_commits, writer_health) = (commits.clone(), health.clone());
        let writer = std::thread::Builder::new()
            .name("queue-store".into())
            .spawn(move || writer(db, rx, &thread_path, &writer_commits, &writer_health))
            .map_err(|e| fail("cannot start the writer for", &e))?;
        Ok((Self { path: path.to_owned(), ops: Some(ops), writer: Some(writer), commits, health }, recovered))
    }

    /// Whether it writes now (see the module's documentation).
    pub fn healthy(&self) -> bool {
        !self.health.failing.load(Ordering::Relaxed)
    }

    /// Why it last failed to write, while it cannot.
    pub fn error(&self) -> Option<String> {
        if self.healthy() {
            return None;
        }
        self.health.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file's size.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    pub fn commits(&self) -> &Commits {
        &self.commits
    }

    /// Stores messages (by sequence number); the receiver completes once they are on disk.
    pub fn put(&self, topic: &str, records: Vec<(u64, Record)>) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        let values = records.into_iter().map(|(seq, record)| (seq, record.encode())).collect();
        let op = Op::Put { topic: topic.to_owned(), values, done };
        if let Some(Err(mpsc::SendError(Op::Put { done, .. }))) = self.ops.as_ref().map(|ops| ops.send(op)) {
            let _ = done.send(Err("the message store has stopped".to_owned()));
        }
        rx
    }

    /// Forgets a message every subscriber is done with.
    pub fn remove(&self, topic: &str, seq: u64) {
        if let Some(ops) = &self.ops {
            let _ = ops.send(Op::Remove { topic: topic.to_owned(), seq });
        }
    }
}

/// Applies operations in groups until every `Store` handle is gone.
fn writer(db: Database, ops: mpsc::Receiver<Op>, path: &Path, commits: &Commits, health: &Health) {
    let mut db = Some(db);
    // Removals that came while the database could not be written.
    let mut pending: std::collections::VecDeque<Op> = std::collections::VecDeque::new();
    loop {
        let Some(open) = &db else {
            // Closed after a failure: open it again and try an empty commit;
            // meanwhile, a publish fails at once and a removal waits.
            let deadline = std::time::Instant::now() + RETRY;
            loop {
                match ops.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(Op::Put { done, .. }) => {
                        let why = health.error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
                        let _ =
                            done.send(Err(format!("the message store cannot write ({why}); it tries again by itself")));
                    }
                    Ok(remove) => {
                        if pending.len() >= MAX_PENDING_REMOVALS {
                            pending.pop_front();
                        }
                        pending.push_back(remove);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            match Database::create(path).map_err(redb::Error::from).and_then(|db| commit(&db, &[], true).map(|()| db)) {
                Ok(reopened) => {
                    db = Some(reopened);
                    health.failing.store(false, Ordering::Relaxed);
                    eprintln!("queue store: {} writes again", path.display());
                }
                Err(e) => *health.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string()),
            }
            continue;
        };
        let mut batch: Vec<Op> = pending.drain(..).collect();
        if batch.is_empty() {
            match ops.recv() {
                Ok(first) => batch.push(first),
                Err(_) => return,
            }
        }
        while let Ok(op) = ops.try_recv() {
            batch.push(op);
            if batch.len() >= 4096 {
                break;
            }
        }
        let stores = batch.iter().any(|op| matches!(op, Op::Put { .. }));
        let started = std::time::Instant::now();
        let result = commit(open, &batch, stores).map_err(|e| format!("cannot write to {}: {e}", path.display()));
        commits.observe(started.elapsed());
        if let Err(e) = &result {
            eprintln!("queue store: {e}; closing it, to open it again");
            *health.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
            health.failing.store(true, Ordering::Relaxed);
            db = None;
        }
        for op in batch {
            match op {
                Op::Put { done, .. } => {
                    let _ = done.send(result.clone());
                }
                // Not written: applied once the database writes again.
                remove if result.is_err() => pending.push_back(remove),
                Op::Remove { .. } => {}
            }
        }
    }
}

fn commit(db: &Database, batch: &[Op], sync: bool) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(if sync { Durability::Immediate } else { Durability::None })?;
    {
        let mut table = tx.open_table(MESSAGES)?;
        for op in batch {
            match op {
                Op::Put { topic, values, .. } => {
                    for (seq, value) in values {
                        table.insert((topic.as_str(), *seq), value.as_slice())?;
                    }
                }
                Op::Remove { topic, seq } => {
                    table.remove((topic.as_str(), *seq))?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            published_us: 7,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from_static(b"body"),
        }
    }

    #[test]
    fn records_round_trip() {
        let r = record("x-1");
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"\xff\xff\xff\xff{}"), None);
    }

    #[tokio::test]
    async fn stored_messages_are_read_back_and_removed_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        {
            let (store, recovered) = Store::open(&path).unwrap();
            assert!(recovered.is_empty());
            let records = (1..=3).map(|seq| (seq, record(&format!("x-{seq}")))).collect();
            store.put("orders", records).await.unwrap().unwrap();
            store.remove("orders", 2);
            // The removal is committed before this put is acknowledged.
            store.put("audit", vec![(1, record("y-1"))]).await.unwrap().unwrap();
        }
        // Dropping the store closed the database.
        let (_store, recovered) = Store::open(&path).unwrap();
        let keys: Vec<_> = recovered.iter().map(|(t, s, r)| (t.as_str(), *s, r.id.as_str())).collect();
        assert_eq!(keys, [("audit", 1, "y-1"), ("orders", 1, "x-1"), ("orders", 3, "x-3")]);
    }
}
