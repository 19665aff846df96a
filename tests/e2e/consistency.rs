//! Data consistency under kills: `topologies/orders-db.yaml` as shipped (a
//! Flask api writing each order and its outbox row in one transaction with
//! psycopg, the `db` tier relaying the outbox into a durable queue, Python
//! workers and an audit and a native ledger plugin applying each order
//! once, a Redis cache), driven
//! with orders while the api program, a worker replica, the PostgreSQL
//! server and the orchestrator itself are killed with SIGKILL.
//!
//! The checker reads the database (with `psql`) and the api's answers,
//! never the orchestrator's own figures.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{Running, TopologyFile, tier};

/// Orders the test waits to have accepted (2xx) before it stops sending:
/// 2,000, or `ORCH_CHAOS_ORDERS` (`benches/chaos_orders.sh` runs 100,000).
fn orders() -> usize {
    std::env::var("ORCH_CHAOS_ORDERS").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}

/// Everything settles (outbox empty, every order applied), and each stage's
/// orders are accepted, within this: 2 minutes, and 20 ms more per order.
fn settle_within() -> Duration {
    Duration::from_secs(120) + Duration::from_millis(20 * orders() as u64)
}

fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// `topologies/orders-db.yaml`, its gateway on port 0, its paths absolute.
fn orders_db() -> TopologyFile {
    let root = integration_tests::repo_root();
    let file = integration_tests::repo_topology("topologies/orders-db.yaml");
    let yaml = file.yaml.replace(
        "init: [../examples/python/orders/sql/schema.sql]",
        &format!("init: [{}/examples/python/orders/sql/schema.sql]", root.display()),
    );
    assert_ne!(yaml, file.yaml, "the example's init file moved");
    TopologyFile::new(&yaml)
}

async fn start(data: &Path) -> Running {
    let data = data.display().to_string();
    Running::start_with(orders_db(), &["--data-dir", &data]).await
}

/// The database's URL, as a program's link gets it, from what the tier keeps.
fn db_url(data: &Path, status: &serde_json::Value) -> String {
    let password = std::fs::read_to_string(data.join("db/password")).unwrap();
    let port = tier(status, "db")["instances"][0]["detail"]["port"].as_u64().expect("the db's port");
    format!("postgresql://postgres:{}@127.0.0.1:{port}/orders", password.trim())
}

fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-F", ",", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn number(url: &str, sql: &str) -> i64 {
    psql(url, sql).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn postmaster(data: &Path) -> u32 {
    let pid = std::fs::read_to_string(data.join("db/pgdata/postmaster.pid")).unwrap();
    pid.lines().next().unwrap().trim().parse().unwrap()
}

fn kill(pid: u32) {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Clients posting orders with ids of their own until stopped: the ids
/// answered 2xx (with when), and those that got no 2xx.
/// The orders answered 201, with when: each one announced to those
/// waiting for a count of them.
type Accepted = Arc<tokio::sync::watch::Sender<Vec<(String, Instant)>>>;

/// Until `accepted` holds `n` orders (within the settle time).
async fn accepted_count(accepted: &Accepted, n: usize) {
    let mut rx = accepted.subscribe();
    tokio::time::timeout(settle_within(), rx.wait_for(|a| a.len() >= n))
        .await
        .unwrap_or_else(|_| panic!("{n} orders accepted"))
        .expect("the clients' list");
}

struct Clients {
    stop: Arc<AtomicBool>,
    web: Arc<Mutex<SocketAddr>>,
    accepted: Accepted,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(web: SocketAddr, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let web = Arc::new(Mutex::new(web));
        let (accepted, failed) =
            (Arc::new(tokio::sync::watch::Sender::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let http = integration_tests::client();
        let items = ["widget", "gadget", "gizmo"];
        let tasks = (0..tasks)
            .map(|t| {
                let (stop, web, accepted, failed, http) =
                    (stop.clone(), web.clone(), accepted.clone(), failed.clone(), http.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("c{t}-{n}");
                        let body =
                            format!(r#"{{"id": "{id}", "item": "{}", "quantity": {}}}"#, items[n % 3], 1 + n % 5);
                        let addr = *web.lock().unwrap();
                        match integration_tests::request(&http, "POST", addr, "/api/orders", Bytes::from(body)).await {
                            Ok((201, _)) => accepted.send_modify(|a| a.push((id, Instant::now()))),
                            _ => {
                                failed.lock().unwrap().push(id);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, web, accepted, failed, tasks }
    }

    async fn wait_accepted(&self, n: usize) {
        accepted_count(&self.accepted, n).await;
    }

    /// How long after `at` the next order was accepted.
    async fn recovered_after(&self, at: Instant) -> Duration {
        let after = |a: &Vec<(String, Instant)>| a.iter().map(|(_, t)| *t).filter(|t| *t > at).min();
        let mut rx = self.accepted.subscribe();
        let accepted = tokio::time::timeout(settle_within(), rx.wait_for(|a| after(a).is_some()))
            .await
            .expect("orders accepted again after the kill")
            .expect("the clients' list");
        after(&accepted).expect("one after the kill") - at
    }

    async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let accepted = self.accepted.borrow().iter().map(|(id, _)| id.clone()).collect();
        let failed = self.failed.lock().unwrap().clone();
        (accepted, failed)
    }
}

/// Until every order in the database is applied by the worker, the audit
/// and the ledger, and the outbox is empty: `Err` with the counts (orders,
/// outbox, applied, audited, in the ledger) if that does not come within
/// the settle time. The database is polled: nothing announces this state.
fn poll_settled(sql: &dyn Fn(&str) -> String) -> Result<(), Vec<i64>> {
    let deadline = Instant::now() + settle_within();
    loop {
        let row = sql("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), \
             (SELECT count(*) FROM processed WHERE consumer = 'worker'), (SELECT count(*) FROM audit), \
             (SELECT count(*) FROM ledger)");
        let n: Vec<i64> = row.split(',').map(|v| v.parse().unwrap()).collect();
        if n[1] == 0 && n[2] == n[0] && n[3] == n[0] && n[4] == n[0] {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`poll_settled`], failing with what the queue and the log say.
async fn settled(orch: &Running, url: &str) {
    let Err(n) = poll_settled(&|sql| psql(url, sql)) else { return };
    let status = orch.status().await;
    let queue = &tier(&status, "orders")["instances"][0]["detail"];
    let failures: Vec<String> = orch
        .log()
        .into_iter()
        .filter(|l| l.contains("dead-lettered") || l.contains("Delivery failed") || l.contains("Outbox"))
        .take(40)
        .collect();
    let unaudited = psql(
        url,
        "SELECT o.id, o.created_at, (SELECT string_agg(consumer || ':' || message_id, ' ') FROM processed p \
         WHERE p.order_id = o.id) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.order_id = o.id)",
    );
    orch.fail(&format!(
        "not settled: orders, outbox, applied, audited, in the ledger = {n:?}\nqueue: {queue}\nnot audited: {unaudited}\n{}",
        failures.join("\n")
    ));
}

/// What the database says of the orders, read once every tier settled.
struct Checked {
    accepted: usize,
    failed: usize,
    failed_but_stored: usize,
    stored: usize,
    lost: Vec<String>,
    applied: i64,
    ordered: i64,
    stock_taken: i64,
    audited: i64,
    ledger: (i64, i64),
    processed_twice: i64,
    orphans: i64,
    duplicates: i64,
}

impl Checked {
    /// Reads it with `sql` (a query's rows, one per line, columns split by `,`).
    fn read(sql: &dyn Fn(&str) -> String, accepted: &[String], failed: &[String], stock_before: i64) -> Self {
        let n = |q: &str| -> i64 { sql(q).parse().unwrap_or_else(|e| panic!("{q}: {e}")) };
        let stored: BTreeSet<String> = sql("SELECT id FROM orders").lines().map(str::to_owned).collect();
        Self {
            accepted: accepted.len(),
            failed: failed.len(),
            failed_but_stored: failed.iter().filter(|id| stored.contains(*id)).count(),
            lost: accepted.iter().filter(|id| !stored.contains(*id)).cloned().collect(),
            stored: stored.len(),
            applied: n("SELECT count(*) FROM orders WHERE status = 'applied' AND version = 2"),
            ordered: n("SELECT coalesce(sum(quantity), 0) FROM orders"),
            stock_taken: stock_before - n("SELECT sum(quantity) FROM stock"),
            audited: n("SELECT count(*) FROM audit"),
            ledger: (n("SELECT count(*) FROM ledger"), n("SELECT coalesce(sum(quantity), 0) FROM ledger")),
            processed_twice: n(
                "SELECT count(*) FROM (SELECT order_id FROM processed GROUP BY consumer, order_id HAVING count(*) > 1) x",
            ),
            orphans: n(
                "SELECT count(*) FROM processed p WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = p.order_id)",
            ),
            duplicates: n("SELECT count(*) FROM duplicates"),
        }
    }

    /// Every accepted order is in the database once (its id is the key),
    /// and applied once: the stock went down by exactly the orders' sum,
    /// each order is marked applied, audited once, in the ledger once,
    /// processed once by each consumer; no message went out for an order
    /// that was not committed.
    fn assert_exactly_once(&self) {
        assert!(self.lost.is_empty(), "accepted orders lost: {:?}", self.lost);
        assert_eq!(self.applied as usize, self.stored, "orders not applied, or applied more than once");
        assert_eq!(self.stock_taken, self.ordered, "the stock did not go down by exactly the orders");
        assert_eq!(self.audited as usize, self.stored);
        // The native consumer (plugins/ledger), in process with the orchestrator.
        assert_eq!((self.ledger.0 as usize, self.ledger.1), (self.stored, self.ordered), "the ledger's orders");
        assert_eq!(self.processed_twice, 0);
        assert_eq!(self.orphans, 0, "a message went out for an order that was never committed");
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "orders: accepted {}, not answered 2xx {} (of which stored {}), stored {}, applied {}, lost {}, \
             duplicates delivered and suppressed {}",
            self.accepted,
            self.failed,
            self.failed_but_stored,
            self.stored,
            self.applied,
            self.lost.len(),
            self.duplicates
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_order_is_applied_exactly_once_through_kills_of_every_tier_and_of_the_orchestrator() {
    let data = data_dir();
    let mut orch = start(data.path()).await;
    let status = orch.status().await;
    for name in ["web", "api", "db", "cache", "orders", "worker", "audit", "ledger"] {
        assert_eq!(tier(&status, name)["state"], "running", "{status}");
    }
    let url = db_url(data.path(), &status);
    let stock_before = number(&url, "SELECT sum(quantity) FROM stock");
    let web = orch.tier_addr("web").await;
    let clients = Clients::start(web, 6);
    let mut recoveries = Vec::new();

    // The api program, killed mid-request.
    clients.wait_accepted(orders() / 6).await;
    let api = integration_tests::program_pids(&orch.status().await, "api")[0];
    println!("kill api at {}", psql(&url, "SELECT now()"));
    let at = Instant::now();
    kill(api);
    recoveries.push(("api program", clients.recovered_after(at).await));

    // A worker replica, killed while deliveries are in flight to it.
    clients.wait_accepted(2 * orders() / 6).await;
    let worker = integration_tests::program_pids(&orch.status().await, "worker")[0];
    println!("kill worker at {}", psql(&url, "SELECT now()"));
    let at = Instant::now();
    kill(worker);
    recoveries.push(("worker replica", clients.recovered_after(at).await));

    // PostgreSQL itself: the api's writes, the relay and the consumers all
    // lose their connections and come back to the same address.
    clients.wait_accepted(3 * orders() / 6).await;
    println!("kill postgres at {}", psql(&url, "SELECT now()"));
    let at = Instant::now();
    kill(postmaster(data.path()));
    recoveries.push(("PostgreSQL", clients.recovered_after(at).await));

    // The orchestrator: every tier dies with it; started again on the same
    // data directory, the database, the outbox's rows and the queue's
    // messages are where they were.
    clients.wait_accepted(4 * orders() / 6).await;
    println!("kill orchestrator at {}", psql(&url, "SELECT now()"));
    let at = Instant::now();
    orch.signal("KILL");
    orch.wait_exit();
    let mut orch = start(data.path()).await;
    *clients.web.lock().unwrap() = orch.tier_addr("web").await;
    recoveries.push(("orchestrator", clients.recovered_after(at).await));
    let url = db_url(data.path(), &orch.status().await);

    clients.wait_accepted(orders()).await;
    let (accepted, failed) = clients.stop().await;
    settled(&orch, &url).await;

    // A row relayed again (as when a relay dies between the broker's answer
    // and its delete): the same message id, recognised by both consumers.
    let duplicates_before = number(&url, "SELECT count(*) FROM duplicates");
    psql(
        &url,
        "INSERT INTO outbox (id, payload) SELECT 1, json_build_object('id', o.id, 'item', o.item, 'quantity', o.quantity)::text \
         FROM orders o JOIN processed p ON p.order_id = o.id WHERE p.consumer = 'worker' AND p.message_id = '1'",
    );
    // Polled: only the consumers' own table says they saw it.
    let deadline = Instant::now() + settle_within();
    while number(&url, "SELECT count(*) FROM duplicates") < duplicates_before + 2 {
        assert!(Instant::now() < deadline, "the repeated message was not seen by both consumers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settled(&orch, &url).await;

    let checked = Checked::read(&|sql| psql(&url, sql), &accepted, &failed, stock_before);
    let duplicates = checked.duplicates;

    // What the cache serves, for every accepted order: the database's state.
    let web = orch.tier_addr("web").await;
    let mut stale = Vec::new();
    for id in &accepted {
        let (code, body) = orch.get(web, &format!("/api/orders/{id}")).await;
        let order: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code != 200 || order["status"] != "applied" || order["version"] != 2 {
            stale.push(format!("{id}: {code} {body}"));
        }
    }
    println!("{checked}, stale cache reads {}", stale.len());
    for (what, took) in &recoveries {
        println!("recovery: {what} killed, the next order answered 201 after {took:?}");
    }
    checked.assert_exactly_once();
    assert!(duplicates >= 2, "the repeated message was not recognised");
    assert!(stale.is_empty(), "the cache served states older than the database: {stale:?}");
    assert_eq!(number(&url, "SELECT count(*) FROM outbox"), 0);
    let status = orch.status().await;
    let relay = &tier(&status, "db")["instances"][0]["detail"]["outbox"]["orders"];
    assert_eq!(relay["connected"], true, "{status}");
    assert_eq!(relay["pending"], 0, "{status}");
    // The relay's figures, as Prometheus reads them.
    let (_, metrics) = orch.get(orch.admin, "/admin/metrics").await;
    let relayed = metrics
        .lines()
        .find(|l| l.starts_with("orchestrator_outbox_relayed_total{") && l.contains(r#"table="outbox""#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no outbox_relayed_total: {metrics}"));
    assert!(relayed > 0, "relayed {relayed}");
    assert!(metrics.contains("orchestrator_outbox_pending{"), "{metrics}");

    // A stop: the consumers, whose connections to the database count as
    // calls in flight there, stop before it, so it drains at once.
    orch.terminate();
    assert!(orch.wait_exit().success());
    let waited: Vec<String> = orch.log().into_iter().filter(|l| l.contains("Drain timeout")).collect();
    assert!(waited.is_empty(), "a tier waited out the drain timeout: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_relays_to_jetstream_where_a_row_relayed_twice_is_stored_once() {
    let data = data_dir();
    let store = tempfile::tempdir().unwrap();
    let nats = integration_tests::NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let subscriber = integration_tests::python_server(
        "",
        r#"    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        print("got " + self.headers["orch-message-id"] + " " + body.decode(), flush=True)
        self.reply(204, {}, b"")

    def do_GET(self):
        self.reply(200, {}, b"ok")
"#,
    );
    std::fs::write(dir.path().join("subscriber.py"), subscriber).unwrap();
    let topology = TopologyFile::new(&format!(
        r#"
version: 1
name: outbox-nats
tiers:
  db: {{ plugin: postgres }}
  orders:
    plugin: queue
    config: {{ backend: nats, url: 'nats://127.0.0.1:{port}', stream: {{ name: outbox-test }} }}
  audit:
    plugin: process
    config: {{ command: [{py}, {dir}/subscriber.py], readiness: {{ http: / }} }}
  caller:
    plugin: process
    config: {{ command: [sh, -c, 'echo "URL=$ORCH_LINK_DB_URL"; exec sleep 3600'], readiness: {{ exec: ["true"] }} }}
links:
  - {{ from: db, to: orders, kind: queue, topic: orders, outbox: {{ table: outbox, poll: 50ms }} }}
  - {{ from: orders, to: audit, kind: queue, topic: orders }}
  - {{ from: caller, to: db, kind: tcp }}
"#,
        port = nats.port,
        py = integration_tests::venv_python().display(),
        dir = dir.path().display()
    ));
    let data_arg = data.path().display().to_string();
    let orch = Running::start_with(topology, &["--data-dir", &data_arg]).await;
    let url = crate::tcp::printed(&orch, "URL");
    psql(&url, "INSERT INTO outbox (payload) VALUES ('one'), ('two'), ('three')");
    for line in ["got 1 one", "got 2 two", "got 3 three"] {
        orch.wait_for_line(line);
    }
    // Row 2 again (a relay that died before its delete), then a new row in
    // the same transaction: JetStream keeps one message per id within its
    // duplicate window, so the subscriber sees the new row and not row 2
    // again (deliveries come in order: a repeat would come first).
    psql(
        &url,
        "BEGIN; INSERT INTO outbox (id, payload) VALUES (2, 'two'); INSERT INTO outbox (payload) VALUES ('four'); COMMIT",
    );
    orch.wait_for_line("got 4 four");
    let repeats = orch.log().iter().filter(|l| l.contains("got 2 two")).count();
    assert_eq!(repeats, 1, "row 2 was delivered again");
    assert_eq!(number(&url, "SELECT count(*) FROM outbox"), 0);
}

/// `topologies/orders-db.yaml` over two hosts in network namespaces: the
/// workers on h2, everything else on h1. The workers receive their
/// deliveries through h1's peer listener and reach the database and the
/// cache through tcp links tunnelled the same way.
fn orders_db_across(network: &crate::netns::Network) -> TopologyFile {
    let base = orders_db();
    let mut yaml = base.yaml.replace("tiers:\n", &format!("{}tiers:\n", network.hosts_yaml()));
    for tier in ["web", "api", "db", "cache", "orders", "ledger", "audit"] {
        let (from, to) = (format!("\n  {tier}:\n"), format!("\n  {tier}:\n    host: h1\n"));
        assert!(yaml.contains(&from), "no tier {tier}");
        yaml = yaml.replacen(&from, &to, 1);
    }
    yaml = yaml.replacen("\n  worker:\n", "\n  worker:\n    host: h2\n", 1).replace("127.0.0.1:0", "127.0.0.1:18080");
    let topology = TopologyFile::new(&yaml);
    // PostgreSQL, run as `postgres`, keeps its data beside the topology file.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(topology.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    topology
}

#[test]
fn every_accepted_order_is_applied_exactly_once_while_the_workers_host_is_cut_off() {
    use crate::hosts::{Host, token_file};
    let network = crate::netns::Network::new(2);
    let topology = orders_db_across(&network);
    let dir = topology.dir.path().to_path_buf();
    let token = token_file(&dir);
    // The database's host first: the workers' host learns its connection
    // string from it before the workers start.
    let h1 = Host::start(&network, 1, &topology, &token);
    let h2 = Host::start(&network, 2, &topology, &token);
    let status = h2.wait_status("workers ready", |s| {
        tier(s, "worker")["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|r| r["ready"] == true))
    });
    let ns1 = network.ns("h1");
    let port = tier(&h1.status(), "db")["instances"][0]["detail"]["port"].as_u64().unwrap();
    let password = std::fs::read_to_string(dir.join(".orchestrator/db/password")).unwrap();
    let url = format!("postgresql://postgres:{}@127.0.0.1:{port}/orders", password.trim());
    let sql = |q: &str| -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns1, "psql", "-X", "-A", "-t", "-F", ",", "-v", "ON_ERROR_STOP=1", &url, "-c", q])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {q}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let stock_before: i64 = sql("SELECT sum(quantity) FROM stock").parse().unwrap();
    drop(status);

    // Clients on h1, until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Accepted = Arc::new(tokio::sync::watch::Sender::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients = {
        let (stop, accepted, failed, ns1) = (stop.clone(), accepted.clone(), failed.clone(), ns1.clone());
        std::thread::spawn(move || {
            crate::netns::in_ns(&ns1, async move || {
                let http = integration_tests::client();
                let web: SocketAddr = "127.0.0.1:18080".parse().unwrap();
                let tasks: Vec<_> = (0..4)
                    .map(|t| {
                        let (stop, accepted, failed, http) =
                            (stop.clone(), accepted.clone(), failed.clone(), http.clone());
                        tokio::spawn(async move {
                            let mut n = 0;
                            while !stop.load(Ordering::Relaxed) {
                                n += 1;
                                let id = format!("n{t}-{n}");
                                let body = format!(r#"{{"id": "{id}", "item": "gizmo", "quantity": {}}}"#, 1 + n % 4);
                                match integration_tests::request(&http, "POST", web, "/api/orders", Bytes::from(body))
                                    .await
                                {
                                    Ok((201, _)) => accepted.send_modify(|a| a.push((id, Instant::now()))),
                                    _ => {
                                        failed.lock().unwrap().push(id);
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            })
        })
    };
    // The clients run on a runtime of their own, in h1's namespace.
    let waiting = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let wait_accepted = |n: usize| waiting.block_on(accepted_count(&accepted, n));

    // The workers' host cut off while orders come in: h1 goes on taking
    // them (the api and the database are there); the queue keeps their
    // messages for the workers, which cannot be reached.
    wait_accepted(200);
    network.link(2, false);
    let cut = accepted.borrow().len();
    wait_accepted(cut + 200);
    let status = h1.status();
    let lag = &tier(&status, "orders")["instances"][0]["detail"]["topics"]["orders"]["subscribers"]["worker"]["lag"];
    assert!(lag.as_u64().unwrap_or(0) > 0, "no backlog for the cut-off workers: {status}");
    // Back: the backlog goes to the workers, each order applied once.
    network.link(2, true);
    wait_accepted(cut + 400);
    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();
    let accepted: Vec<String> = accepted.borrow().iter().map(|(id, _)| id.clone()).collect();
    let failed = failed.lock().unwrap().clone();

    if let Err(n) = poll_settled(&sql) {
        panic!("not settled: orders, outbox, applied, audited, in the ledger = {n:?}");
    }
    let checked = Checked::read(&sql, &accepted, &failed, stock_before);
    println!("{checked} (the workers' host cut off after {cut} accepted)");
    checked.assert_exactly_once();
    drop((h2, h1));
}
