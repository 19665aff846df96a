//! The transactional outbox: a queue link out of a `postgres` tier relays
//! the committed rows of a table to the link's topic.
//!
//! A program writes its data and a row of the outbox in one transaction;
//! the relay reads the committed rows in `id` order, publishes them in one
//! call to the broker (each message's id: its row's `id`), and deletes them
//! once the broker has accepted them (stored them, on a durable topic).
//! Uncommitted rows are not visible to it, so they are never published; a
//! row is published again only when the relay lost its connection or its
//! orchestrator between the broker's answer and the delete: at least once,
//! with the same id, which is what consumers deduplicate on.
//!
//! It is woken by `LISTEN`/`NOTIFY` (a trigger on the table notifies at each
//! commit that inserted rows) and looks at the table every `poll` anyway.
//! It waits for the server while it is not ready (restarting) and connects
//! again, with a backoff, after any error.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use plugin_api::prelude::*;
use plugin_api::queue::{BatchWriter, MESSAGE_ID, PUBLISH_BATCH, read_publish_batch_answer};
use plugin_api::serde_json;
use process::Replica;
use tokio::sync::Notify;

/// The longest wait between two attempts after an error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the pending rows are counted while rows keep coming.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// One outbox: a queue link with `outbox_table` among its settings.
#[derive(Debug)]
pub struct Outbox {
    pub link: String,
    pub topic: String,
    pub table: String,
    pub create: bool,
    pub poll: Duration,
    pub batch: i64,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    relayed: AtomicU64,
    batches: AtomicU64,
    pending: AtomicU64,
    /// The age of the oldest row not yet relayed, when last counted.
    oldest_ms: AtomicU64,
    /// The oldest row's age when its batch was accepted: commit to publish.
    last_lag_ms: AtomicU64,
    connected: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Outbox {
    /// The tier's outboxes, from its links' settings.
    pub fn of(cx: &Context) -> Vec<Arc<Outbox>> {
        cx.link_infos()
            .into_iter()
            .filter(|l| l.kind == LinkKind::Queue)
            .filter_map(|l| {
                let p = &l.params;
                let number = |key: &str, default: u64| p.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
                Some(Arc::new(Outbox {
                    table: p.get("outbox_table")?.clone(),
                    topic: p.get("topic").cloned().unwrap_or_else(|| l.name.clone()),
                    create: p.get("outbox_create").is_none_or(|v| v == "true"),
                    poll: Duration::from_millis(number("outbox_poll_ms", 1000)),
                    batch: number("outbox_batch", 64) as i64,
                    link: l.name,
                    stats: Stats::default(),
                }))
            })
            .collect()
    }

    /// `NOTIFY` channel of the table.
    fn channel(&self) -> String {
        format!("orch_outbox_{}", self.table)
    }

    /// What `create` makes, each part only if it is missing.
    pub fn ddl(&self) -> String {
        let (t, c) = (&self.table, self.channel());
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id bigserial PRIMARY KEY,
                payload text NOT NULL,
                content_type text NOT NULL DEFAULT 'application/json',
                created_at timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            CREATE OR REPLACE FUNCTION {c}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{c}', ''); RETURN NULL; END $$;
            CREATE OR REPLACE TRIGGER {c} AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {c}();"
        )
    }

    /// The relay's figures and state, for `/admin/status`.
    pub fn status(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "table": self.table,
            "topic": self.topic,
            "connected": s.connected.load(Ordering::Relaxed),
            "relayed": s.relayed.load(Ordering::Relaxed),
            "batches": s.batches.load(Ordering::Relaxed),
            "pending": s.pending.load(Ordering::Relaxed),
            "oldest_pending_ms": s.oldest_ms.load(Ordering::Relaxed),
            "last_lag_ms": s.last_lag_ms.load(Ordering::Relaxed),
            "error": s.error.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }

    fn failed(&self, cx: &Context, why: String, logged: &mut Option<(String, Instant)>) {
        self.stats.connected.store(false, Ordering::Relaxed);
        // Each new reason at once; the same one again at most every 10 s.
        let again = logged.as_ref().is_some_and(|(last, at)| *last == why && at.elapsed() < Duration::from_secs(10));
        if !again {
            cx.warn(format_args!(
                "Outbox `{}` (link `{}`): {why}; trying again (its rows wait in the table)",
                self.table, self.link
            ));
            *logged = Some((why.clone(), Instant::now()));
        }
        if let Ok(mut e) = self.stats.error.lock() {
            *e = Some(why);
        }
    }
}

/// Where the relay connects: the server's socket, as the orchestrator's
/// own probe does (trusted there; no password).
#[derive(Debug, Clone)]
pub struct Target {
    pub replica: Arc<Replica>,
    pub run_dir: PathBuf,
    pub database: String,
}

/// Relays `outbox` for as long as the task runs.
pub async fn relay(outbox: Arc<Outbox>, target: Target, cx: Context) {
    let mut backoff = Duration::from_millis(100);
    let mut logged = None;
    loop {
        if !target.replica.is_ready() {
            outbox.stats.connected.store(false, Ordering::Relaxed);
            cx.sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Err(why) = session(&outbox, &target, &cx, &mut backoff).await {
            outbox.failed(&cx, why, &mut logged);
            cx.sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// A database error as the server said it.
fn pg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// Aborts the connection's task when the session ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection: relays until an error.
async fn session(outbox: &Outbox, target: &Target, cx: &Context, backoff: &mut Duration) -> Result<(), String> {
    let (client, mut connection) = tokio_postgres::Config::new()
        .host_path(&target.run_dir)
        .port(target.replica.port())
        .user("postgres")
        .dbname(&target.database)
        .application_name("orchestrator-outbox")
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect: {}", pg(e)))?;
    let wake = Arc::new(Notify::new());
    let woken = wake.clone();
    let _driver = Driver(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |c| connection.poll_message(c));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                woken.notify_one();
            }
        }
        // The connection is gone: the next query says why.
        woken.notify_one();
    }));
    let table = &outbox.table;
    client.batch_execute(&format!("LISTEN {}", outbox.channel())).await.map_err(pg)?;
    let shape = |e| format!("table `{table}` is not an outbox ({}); see docs/consistency.md", pg(e));
    let select = client
        .prepare(&format!(
            "SELECT id::bigint, payload::text, content_type::text, \
             (extract(epoch FROM clock_timestamp() - created_at) * 1000)::float8 \
             FROM {table} ORDER BY id LIMIT $1"
        ))
        .await
        .map_err(shape)?;
    let delete = client.prepare(&format!("DELETE FROM {table} WHERE id = ANY($1::bigint[])")).await.map_err(pg)?;
    let count = client
        .prepare(&format!(
            "SELECT count(*), coalesce((extract(epoch FROM clock_timestamp() - min(created_at)) * 1000)::float8, 0) FROM {table}"
        ))
        .await
        .map_err(pg)?;
    let stats = &outbox.stats;
    stats.connected.store(true, Ordering::Relaxed);
    if let Ok(mut e) = stats.error.lock() {
        *e = None;
    }
    *backoff = Duration::from_millis(100);
    let mut counted = Instant::now();
    let mut publish_backoff = Duration::from_millis(50);
    loop {
        let notified = wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let rows = client.query(&select, &[&outbox.batch]).await.map_err(pg)?;
        let read_at = Instant::now();
        if rows.is_empty() {
            stats.pending.store(0, Ordering::Relaxed);
            stats.oldest_ms.store(0, Ordering::Relaxed);
            tokio::select! {
                () = notified => {}
                () = cx.sleep(outbox.poll) => {}
            }
            continue;
        }
        if counted.elapsed() >= COUNT_EVERY {
            let row = client.query_one(&count, &[]).await.map_err(pg)?;
            stats.pending.store(row.get::<_, i64>(0).max(0) as u64, Ordering::Relaxed);
            stats.oldest_ms.store(row.get::<_, f64>(1).max(0.0) as u64, Ordering::Relaxed);
            counted = Instant::now();
        }
        let mut writer = BatchWriter::new();
        let mut ids = Vec::with_capacity(rows.len());
        let mut oldest = 0f64;
        for row in &rows {
            let id: i64 = row.get(0);
            let payload: &str = row.get(1);
            let content_type: Option<&str> = row.get(2);
            oldest = oldest.max(row.get::<_, Option<f64>>(3).unwrap_or(0.0));
            let id_text = id.to_string();
            let mut headers = vec![(MESSAGE_ID.as_bytes(), id_text.as_bytes())];
            if let Some(ct) = content_type {
                headers.push((b"content-type".as_slice(), ct.as_bytes()));
            }
            writer.push(headers, payload.as_bytes());
            ids.push(id);
        }
        let (n, body) = writer.finish();
        let request = Request::post(String::new()).with_header(PUBLISH_BATCH, &n.to_string()).with_body(body);
        // The broker's answer, however long it takes: the rows stay until then.
        let mut logged = None;
        loop {
            match read_publish_batch_answer(cx.call(&outbox.link, request.clone()).await) {
                Ok(_) => break,
                Err(e) => {
                    outbox.failed(cx, format!("the broker did not take {n} rows: {e}"), &mut logged);
                    cx.sleep(publish_backoff).await;
                    publish_backoff = (publish_backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if logged.is_some() {
            if let Ok(mut e) = stats.error.lock() {
                *e = None;
            }
            stats.connected.store(true, Ordering::Relaxed);
        }
        publish_backoff = Duration::from_millis(50);
        // The oldest row's age when read, and the time until the broker took it.
        let lag_ms = oldest + read_at.elapsed().as_secs_f64() * 1000.0;
        stats.last_lag_ms.store(lag_ms as u64, Ordering::Relaxed);
        client.execute(&delete, &[&ids]).await.map_err(pg)?;
        stats.relayed.fetch_add(n as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
    }
}
