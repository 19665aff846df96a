//! The plugin guide's idempotent consumer: each order message applied to
//! PostgreSQL exactly once, over deliveries that come at least once.
//!
//! In one transaction it records the message's id (`msg.id`, the same on
//! every delivery of it) in `processed`, and only if it was not there adds
//! the order to `ledger`; it returns `Ok` — which acknowledges the delivery
//! — only after the commit. A repeat finds its id there and is acknowledged
//! without applying anything; a failure (the server restarting) returns
//! `Err`, and the broker delivers the message again.
//!
//! It reaches the `db` tier through a `tcp` link (`cx.link_url("db")` is
//! the connection string), with the `postgres` crate's synchronous client
//! on a thread of its own. At most [`QUEUE`] messages wait for it.

#![forbid(unsafe_code)]

use std::sync::{Mutex, mpsc};

use plugin_api::prelude::*;

/// Messages waiting for the database thread, at most.
pub const QUEUE: usize = 64;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS processed (consumer text, message_id text, order_id text, PRIMARY KEY (consumer, message_id));
    CREATE TABLE IF NOT EXISTS ledger (order_id text PRIMARY KEY, quantity integer NOT NULL)";

#[derive(Debug, Default, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Ledger {
    #[serde(skip)]
    worker: Mutex<Option<mpsc::SyncSender<Job>>>,
}

/// A message's id and order, and where the outcome goes (`true`: applied now).
type Job = (String, Order, futures_channel::oneshot::Sender<Result<bool, String>>);

#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde")]
struct Order {
    id: String,
    quantity: i32,
}

impl Ledger {
    fn worker(&self, cx: &Context) -> Result<mpsc::SyncSender<Job>, String> {
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(jobs) = worker.as_ref() {
            return Ok(jobs.clone());
        }
        let url = cx.link_url("db").ok_or("no tcp link `db`")?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("ledger-db".into())
            .spawn(move || serve(&url, &queue))
            .map_err(|e| e.to_string())?;
        *worker = Some(jobs.clone());
        Ok(jobs)
    }
}

/// Applies each job in a transaction of its own, on one connection, opened
/// again after a failure.
fn serve(url: &str, queue: &mpsc::Receiver<Job>) {
    let mut db: Option<postgres::Client> = None;
    while let Ok((message_id, order, reply)) = queue.recv() {
        let mut apply = || -> Result<bool, postgres::Error> {
            if db.is_none() {
                let mut client = postgres::Client::connect(url, postgres::NoTls)?;
                client.batch_execute(SCHEMA)?;
                db = Some(client);
            }
            let mut tx = db.as_mut().expect("connected").transaction()?;
            let first = tx.execute(
                "INSERT INTO processed VALUES ('ledger', $1, $2) ON CONFLICT DO NOTHING",
                &[&message_id, &order.id],
            )? == 1;
            if first {
                tx.execute("INSERT INTO ledger VALUES ($1, $2)", &[&order.id, &order.quantity])?;
            }
            tx.commit()?;
            Ok(first)
        };
        let outcome = apply().map_err(|e| {
            db = None;
            e.to_string()
        });
        let _ = reply.send(outcome);
    }
}

impl Plugin for Ledger {
    const SERVES: &'static [LinkKind] = &[LinkKind::Queue];

    async fn handle(&self, _req: Request, _cx: Context) -> Response {
        Response::error(StatusCode::NOT_FOUND, "the ledger takes queue deliveries only")
    }

    async fn on_message(&self, msg: Message, cx: Context) -> Result<(), String> {
        let order: Order = msg.json().map_err(|e| format!("not an order: {e}"))?;
        let (reply, outcome) = futures_channel::oneshot::channel();
        self.worker(&cx)?.try_send((msg.id, order, reply)).map_err(|_| "too many messages wait for the database")?;
        match outcome.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the database: {e}")),
            Err(_) => Err("the database thread ended".to_owned()),
        }
    }
}

plugin_api::export_plugin!(Ledger, name = "ledger");
