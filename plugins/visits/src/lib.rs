//! The plugin guide's store client: counts each path's visits in Redis.
//!
//! It reaches the `cache` tier through a `tcp` link: `cx.link_url("cache")`
//! is the cache's connection string (`redis://default:PASSWORD@127.0.0.1:PORT/0`),
//! at an address that stays the same whatever happens to the server. It
//! talks to it with the `redis` crate's synchronous connection, on a thread
//! of its own — a plugin's handler runs on the orchestrator's threads and
//! must not block them — and answers each request once that thread did:
//!
//! ```text
//! GET /anything   →  {"path": "/anything", "visits": 3}
//! ```
//!
//! At most [`QUEUE`] requests wait for the thread; past that, 503. A
//! connection that fails (the server restarted) is opened again once, at
//! the same address, for the same command.

#![forbid(unsafe_code)]

use std::sync::{Mutex, mpsc};
use std::time::Duration;

use plugin_api::prelude::*;

/// Requests waiting for the Redis thread, at most.
pub const QUEUE: usize = 64;

/// The tier's `config`.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Visits {
    /// The tcp link to Redis (default `cache`).
    link: Option<String>,
    #[serde(skip)]
    worker: Mutex<Option<mpsc::SyncSender<Job>>>,
}

/// A path to count, and where its count goes.
type Job = (String, futures_channel::oneshot::Sender<Result<i64, String>>);

impl Visits {
    fn link(&self) -> &str {
        self.link.as_deref().unwrap_or("cache")
    }

    /// The Redis thread's queue, started at the first request.
    fn worker(&self, cx: &Context) -> Result<mpsc::SyncSender<Job>, String> {
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(jobs) = worker.as_ref() {
            return Ok(jobs.clone());
        }
        let url = cx.link_url(self.link()).ok_or_else(|| format!("no link `{}`", self.link()))?;
        let client = redis::Client::open(url).map_err(|e| format!("link `{}`: {e}", self.link()))?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("visits-redis".into())
            .spawn(move || serve(&client, &queue))
            .map_err(|e| e.to_string())?;
        *worker = Some(jobs.clone());
        Ok(jobs)
    }
}

/// Runs each job on one connection, opened again when it failed.
fn serve(client: &redis::Client, queue: &mpsc::Receiver<Job>) {
    let mut conn: Option<redis::Connection> = None;
    // Ends when the plugin is dropped (its sender with it).
    while let Ok((path, reply)) = queue.recv() {
        let mut count = || -> redis::RedisResult<i64> {
            if conn.is_none() {
                conn = Some(client.get_connection_with_timeout(Duration::from_secs(5))?);
            }
            let c = conn.as_mut().expect("connected");
            let result = redis::cmd("INCR").arg(format!("visits:{path}")).query(c);
            if result.is_err() {
                conn = None;
            }
            result
        };
        // Once more on a new connection: the server may have restarted.
        let counted = count().or_else(|_| count()).map_err(|e| e.to_string());
        let _ = reply.send(counted);
    }
}

impl Plugin for Visits {
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if cx.has_link(self.link()) {
            return Ok(());
        }
        Err(vec![
            ConfigIssue::new("link", format!("no outbound link `{}`", self.link()))
                .with_hint("link this tier to a redis tier: `{ from: …, to: cache, kind: tcp }`"),
        ])
    }

    async fn handle(&self, req: Request, cx: Context) -> Response {
        let jobs = match self.worker(&cx) {
            Ok(jobs) => jobs,
            Err(e) => return Response::error(StatusCode::SERVICE_UNAVAILABLE, &e),
        };
        let (reply, counted) = futures_channel::oneshot::channel();
        if jobs.try_send((req.path().to_owned(), reply)).is_err() {
            return Response::error(StatusCode::SERVICE_UNAVAILABLE, "too many requests wait for Redis");
        }
        match counted.await {
            Ok(Ok(visits)) => Response::json(&plugin_api::serde_json::json!({ "path": req.path(), "visits": visits })),
            Ok(Err(e)) => Response::error(StatusCode::SERVICE_UNAVAILABLE, &format!("Redis: {e}")),
            Err(_) => Response::error(StatusCode::SERVICE_UNAVAILABLE, "the Redis thread ended"),
        }
    }
}

plugin_api::export_plugin!(Visits, name = "visits");
