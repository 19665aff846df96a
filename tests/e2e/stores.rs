//! Store tiers: the machine's real PostgreSQL and Redis servers (Debian's
//! `postgresql` and `redis-server`, which the test command installs), run
//! by the orchestrator, reached by programs through `tcp` links with the
//! clients users use (psycopg and redis-py, in the example
//! `topologies/stores.yaml`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use integration_tests::{DEADLINE, Running, TopologyFile, tier};

/// A data directory the server's user can reach: when the suite runs as
/// root, PostgreSQL runs as `postgres`, which must pass through every
/// directory above its own (a temporary directory is 0700).
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// `topologies/stores.yaml`, as shipped, with its paths made absolute and
/// its gateway on port 0.
fn inventory() -> TopologyFile {
    let root = integration_tests::repo_root();
    let file = integration_tests::repo_topology("topologies/stores.yaml");
    let yaml = file.yaml.replace(
        "init: [../examples/python/inventory/sql/schema.sql]",
        &format!("init: [{}/examples/python/inventory/sql/schema.sql]", root.display()),
    );
    assert_ne!(yaml, file.yaml, "the example's init file moved");
    TopologyFile::new(&yaml)
}

fn start_args(data: &Path) -> Vec<String> {
    vec!["--data-dir".into(), data.display().to_string()]
}

async fn start(topology: TopologyFile, data: &Path) -> Running {
    let args = start_args(data);
    Running::start_with(topology, &args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// The PostgreSQL server's own pid (the postmaster), from its data directory.
fn postmaster(data: &Path) -> u32 {
    let pid = std::fs::read_to_string(data.join("db/pgdata/postmaster.pid")).unwrap();
    pid.lines().next().unwrap().trim().parse().unwrap()
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Items created through the API from `tasks` tasks until stopped: the ids
/// it acknowledged (201), and how many requests it did not.
struct Writers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Each acknowledged id announced to those waiting for a count.
    acked: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Writers {
    fn start(web: SocketAddr, tasks: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(tokio::sync::watch::Sender::new(Vec::new()));
        let http = integration_tests::client();
        let tasks = (0..tasks)
            .map(|t| {
                let (stop, acked, http) = (stop.clone(), acked.clone(), http.clone());
                tokio::spawn(async move {
                    let mut refused = 0;
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let body = format!(r#"{{"name": "item {t}-{n}", "price_cents": {n}}}"#);
                        match integration_tests::request(&http, "POST", web, "/items", Bytes::from(body)).await {
                            Ok((201, body)) => {
                                let id: serde_json::Value = serde_json::from_str(&body).unwrap();
                                acked.send_modify(|a| a.push(id["id"].as_u64().unwrap()));
                            }
                            _ => refused += 1,
                        }
                    }
                    refused
                })
            })
            .collect();
        Self { stop, acked, tasks }
    }

    /// Waits until `n` more items than now are acknowledged.
    async fn wait_more(&self, n: usize) {
        let mut rx = self.acked.subscribe();
        let target = rx.borrow().len() + n;
        tokio::time::timeout(DEADLINE, rx.wait_for(|a| a.len() >= target))
            .await
            .unwrap_or_else(|_| panic!("{n} more acknowledged writes"))
            .expect("the writers' list");
    }

    async fn stop(self) -> (Vec<u64>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut refused = 0;
        for task in self.tasks {
            refused += task.await.unwrap();
        }
        let acked = self.acked.borrow().clone();
        (acked, refused)
    }
}

/// Every acknowledged item, read back from PostgreSQL (not the cache).
async fn all_there(orch: &Running, web: SocketAddr, acked: &[u64]) {
    for id in acked {
        let (code, body) = orch.get(web, &format!("/items/{id}?fresh=1")).await;
        assert_eq!(code, 200, "acknowledged item {id} is lost: {body}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["cached"], false);
    }
}

/// The pids of every process of a store tier: the shim's group and the
/// server's own (PostgreSQL's backends are the postmaster's children).
fn store_processes(status: &serde_json::Value, data: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for name in ["db", "cache"] {
        for pid in integration_tests::program_pids(status, name) {
            pids.push(pid);
            pids.extend(integration_tests::group_members(pid));
        }
    }
    let postmaster = postmaster(data);
    pids.push(postmaster);
    pids.extend(children(postmaster));
    pids
}

fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_keeps_what_it_committed_through_a_killed_database_and_a_killed_orchestrator() {
    let data = data_dir();
    let mut orch = start(inventory(), data.path()).await;
    let status = orch.status().await;
    assert_eq!(tier(&status, "migrate")["state"], "completed", "{status}");
    for name in ["db", "cache", "api", "web"] {
        assert_eq!(tier(&status, name)["state"], "running", "{status}");
    }
    assert!(orch.log().iter().any(|l| l.contains("applied 0002_name_index")));

    // psycopg and redis-py reach their servers through the links' URLs.
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.post(web, "/items", r#"{"name": "tea", "price_cents": 250}"#).await;
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
    let item = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap();
    let (_, first) = orch.get(web, &format!("/items/{id}")).await;
    let (_, second) = orch.get(web, &format!("/items/{id}")).await;
    assert_eq!((item(first)["cached"].clone(), item(second)["cached"].clone()), (false.into(), true.into()));

    // The passwords are in the data directory, 0600, and nowhere else.
    let secrets: Vec<String> = ["db/password", "cache/password"]
        .iter()
        .map(|f| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = data.path().join(f);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
            std::fs::read_to_string(path).unwrap().trim().to_owned()
        })
        .collect();
    let (_, overview) = orch.get(orch.admin, "/admin/overview").await;
    for shown in [status.to_string(), overview, orch.log().join("\n")] {
        for secret in &secrets {
            assert!(!shown.contains(secret.as_str()), "a password is shown: {shown}");
        }
    }

    // PostgreSQL killed under a load of writes: restarted on its own, the
    // clients reconnect through the same address, nothing committed lost.
    let writers = Writers::start(web, 3);
    writers.wait_more(30).await;
    kill(postmaster(data.path()), "KILL");
    orch.wait_for_line("Replica exited");
    orch.wait_for_line("Replica ready on port");
    writers.wait_more(30).await;
    let (acked, _refused) = writers.stop().await;
    all_there(&orch, web, &acked).await;
    let status = orch.status().await;
    assert_eq!(tier(&status, "db")["instances"][0]["detail"]["restarts"], 1, "{status}");

    // The orchestrator killed: no server outlives it; started again on the
    // same data directory, it initialises nothing again and loses nothing.
    let servers = store_processes(&status, data.path());
    orch.signal("KILL");
    orch.wait_exit();
    if let Err(alive) = integration_tests::wait_all_gone(&servers) {
        panic!("store processes outlived the orchestrator: {alive:?}");
    }
    let orch = start(inventory(), data.path()).await;
    let web = orch.tier_addr("web").await;
    all_there(&orch, web, &acked).await;
    let log = orch.log();
    // The schema's init file ran once (a second run would fail: the table
    // exists), the migrations once.
    assert!(!log.iter().any(|l| l.contains("applied 0001")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("schema up to date")), "{log:?}");
    for (file, secret) in ["db/password", "cache/password"].iter().zip(&secrets) {
        assert_eq!(std::fs::read_to_string(data.path().join(file)).unwrap().trim(), secret, "{file} changed");
    }
}

/// A topology with one PostgreSQL tier and `config`, and a caller that
/// prints its link's variables.
fn one_db(config: &str) -> TopologyFile {
    TopologyFile::new(&format!(
        r#"
version: 1
name: store
tiers:
  db:
    plugin: postgres
    config: {config}
  caller:
    plugin: process
    config: {{ command: [sh, -c, 'echo "URL=$ORCH_LINK_DB_URL"; echo "PORT=$ORCH_LINK_DB_PORT"; exec sleep 3600'], readiness: {{ exec: ["true"] }} }}
links:
  - {{ from: caller, to: db, kind: tcp }}
"#
    ))
}

/// `psql` on `url`, its output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_file_with_an_error_is_located_and_nothing_of_it_is_applied() {
    let data = data_dir();
    let sql = tempfile::tempdir().unwrap();
    let good = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts VALUES (1);\n";
    std::fs::write(sql.path().join("1-schema.sql"), good).unwrap();
    std::fs::write(
        sql.path().join("2-seed.sql"),
        "INSERT INTO accounts VALUES (2);\n\nINSERT INTO acounts VALUES (3);\n",
    )
    .unwrap();
    let config = format!(
        "{{ database: bank, init: [{0}/1-schema.sql, {0}/2-seed.sql], startup_timeout: 60s }}",
        sql.path().display()
    );
    let orch = start(one_db(&config), data.path()).await;
    let status = orch.status().await;
    let db = tier(&status, "db");
    assert_eq!(db["state"], "failed", "{status}");
    let reason = db["reason"].as_str().unwrap_or_default();
    let file = format!("init file {}/2-seed.sql:3: ERROR: relation \"acounts\" does not exist", sql.path().display());
    assert!(reason.contains(&file), "{reason}");
    drop(orch);

    // Fixed, the next start runs them again, from nothing: the first
    // file's table was not left behind (it would exist twice).
    std::fs::write(sql.path().join("2-seed.sql"), "INSERT INTO accounts VALUES (2);\n").unwrap();
    let orch = start(one_db(&config), data.path()).await;
    let status = orch.status().await;
    assert_eq!(tier(&status, "db")["state"], "running", "{status}");
    let url = crate::tcp::printed(&orch, "URL");
    assert!(url.starts_with("postgresql://postgres:") && url.ends_with("/bank"), "{url}");
    assert_eq!(psql(&url, "SELECT string_agg(id::text, ',' ORDER BY id) FROM accounts").unwrap(), "1,2");
    // And never again after that.
    drop(orch);
    let orch = start(one_db(&config), data.path()).await;
    let url = crate::tcp::printed(&orch, "URL");
    assert_eq!(psql(&url, "SELECT count(*) FROM accounts").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_is_not_this_tier_s_is_refused_and_left_as_it_is() {
    let data = data_dir();
    let pgdata = data.path().join("db/pgdata");
    std::fs::create_dir_all(&pgdata).unwrap();
    std::fs::write(pgdata.join("notes.txt"), "someone's files\n").unwrap();
    // Made by the server's user, yet no data directory of PostgreSQL's.
    let server_user = |p: &Path| {
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().expect("Debian's postgres user");
            nix::unistd::chown(p, Some(user.uid), Some(user.gid)).unwrap();
        }
    };
    server_user(&pgdata);
    let orch = start(one_db("{}"), data.path()).await;
    let status = orch.status().await;
    let reason = tier(&status, "db")["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("is not a PostgreSQL data directory"), "{status}");
    drop(orch);

    // One of another major version.
    std::fs::write(pgdata.join("PG_VERSION"), "9\n").unwrap();
    let orch = start(one_db("{}"), data.path()).await;
    let status = orch.status().await;
    let reason = tier(&status, "db")["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("was made by PostgreSQL 9") && reason.contains("pg_upgrade"), "{status}");
    drop(orch);

    // One another user owns.
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&pgdata, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let orch = start(one_db("{}"), data.path()).await;
        let status = orch.status().await;
        let reason = tier(&status, "db")["reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains("belongs to uid 65534") && reason.contains("not this tier's"), "{status}");
        drop(orch);
    }
    // Nothing in it was touched.
    let mut names: Vec<String> =
        std::fs::read_dir(&pgdata).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["PG_VERSION", "notes.txt"]);
    assert_eq!(std::fs::read_to_string(pgdata.join("notes.txt")).unwrap(), "someone's files\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_server_is_named_with_its_package_at_validate_and_at_run() {
    let data = data_dir();
    let topology = one_db("{ bin_dir: /nonexistent/bin }");
    let out = integration_tests::orchestrator(&["validate", topology.path_str()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning") && said.contains("tiers.db.config.bin_dir") && said.contains("`postgresql` package"),
        "{said}"
    );
    let orch = start(topology, data.path()).await;
    let status = orch.status().await;
    let reason = tier(&status, "db")["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(tier(&status, "db")["state"], "failed", "{status}");
    assert!(reason.contains("/nonexistent/bin") && reason.contains("`postgresql` package"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_port_is_taken_says_so_and_serves_again_once_it_is_free() {
    let data = data_dir();
    let orch = start(one_db("{}"), data.path()).await;
    let url = crate::tcp::printed(&orch, "URL");
    psql(&url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')").unwrap();
    let status = orch.status().await;
    let port = tier(&status, "db")["instances"][0]["detail"]["port"].as_u64().unwrap() as u16;
    // Killed, and its port taken before it restarts (it waits its backoff,
    // 100 ms, first): if the restart wins the race, again.
    let mut taken = None;
    for _ in 0..5 {
        kill(postmaster(data.path()), "KILL");
        orch.wait_for_line("Replica exited");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while taken.is_none() && std::time::Instant::now() < deadline {
            taken = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        }
        if taken.is_some() {
            break;
        }
        orch.wait_for_line("Replica ready on port");
    }
    let taken = taken.expect("the port taken while the server restarts");
    // The server's own words, at their severity.
    let line = orch.wait_for_line("Address already in use");
    assert!(line.contains("tier=db") && line.contains("INFO"), "{line}");
    let line = orch.wait_for_line("could not create any TCP/IP sockets");
    assert!(line.contains("ERROR") && line.contains("FATAL"), "{line}");
    let status = orch.status().await;
    assert_ne!(tier(&status, "db")["instances"][0]["detail"]["ready"], true, "{status}");
    // Freed: it serves again, at the same link address, with its data.
    drop(taken);
    orch.wait_for_line("Replica ready on port");
    assert_eq!(psql(&url, "SELECT v FROM kept").unwrap(), "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_its_writes_on_request_and_asks_for_its_password() {
    let data = data_dir();
    let yaml = r#"
version: 1
name: cache
tiers:
  cache:
    plugin: redis
    config: { appendonly: true, maxmemory: 16mb, maxmemory_policy: allkeys-lru }
  caller:
    plugin: process
    config: { command: [sh, -c, 'echo "URL=$ORCH_LINK_CACHE_URL"; echo "ADDR=$ORCH_LINK_CACHE_ADDR"; exec sleep 3600'], readiness: { exec: ["true"] } }
links:
  - { from: caller, to: cache, kind: tcp }
"#;
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").arg("--no-auth-warning").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut orch = start(TopologyFile::new(yaml), data.path()).await;
    let url = crate::tcp::printed(&orch, "URL");
    let addr = crate::tcp::printed(&orch, "ADDR");
    assert!(url.starts_with("redis://default:") && url.ends_with(&format!("@{addr}/0")), "{url}");
    assert_eq!(redis_cli(&["-u", &url, "SET", "greeting", "hello"]), "OK");
    assert_eq!(redis_cli(&["-u", &url, "CONFIG", "GET", "maxmemory-policy"]), "maxmemory-policy\nallkeys-lru");
    // Without the password: refused.
    let (host, port) = addr.rsplit_once(':').unwrap();
    assert!(redis_cli(&["-h", host, "-p", port, "GET", "greeting"]).contains("NOAUTH"));
    // Every acknowledged write is in the append-only file: the server
    // killed, and then the orchestrator, nothing is lost.
    let status = orch.status().await;
    let pid = tier(&status, "cache")["instances"][0]["detail"]["pid"].as_u64().unwrap() as u32;
    let server = children(pid);
    assert_eq!(server.len(), 1, "{server:?}");
    kill(server[0], "KILL");
    orch.wait_for_line("Replica exited");
    orch.wait_for_line("Replica ready on port");
    assert_eq!(redis_cli(&["-u", &url, "GET", "greeting"]), "hello");
    orch.signal("KILL");
    orch.wait_exit();
    let orch = start(TopologyFile::new(yaml), data.path()).await;
    let url = crate::tcp::printed(&orch, "URL");
    assert_eq!(redis_cli(&["-u", &url, "GET", "greeting"]), "hello");
    assert!(data.path().join("cache/data/appendonlydir").is_dir());
}

#[test]
fn a_store_tier_runs_one_replica_and_serves_tcp_links_only() {
    for (tier, error) in [
        ("  db:\n    plugin: postgres\n    replicas: 2\n", "tiers.db.replicas"),
        ("  db:\n    plugin: redis\n    config: { maxmemory: lots }\n", "tiers.db.config.maxmemory"),
        ("  db:\n    plugin: postgres\n    config: { settings: { port: 5432 } }\n", "tiers.db.config.settings.port"),
    ] {
        let yaml = format!(
            "version: 1\nname: s\ntiers:\n{tier}  api:\n    plugin: process\n    config: {{ command: [true] }}\nlinks:\n  - {{ from: api, to: db, kind: tcp }}\n"
        );
        let file = TopologyFile::new(&yaml);
        let out = integration_tests::orchestrator(&["validate", file.path_str()]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(error), "{yaml}\n{said}");
    }
    let yaml = "version: 1\nname: s\ntiers:\n  db:\n    plugin: postgres\n  api:\n    plugin: process\n    config: { command: [true] }\nlinks:\n  - { from: api, to: db, kind: rest }\n";
    let file = TopologyFile::new(yaml);
    let out = integration_tests::orchestrator(&["validate", file.path_str()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("links[0]") && said.contains("tcp"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_is_restarted_by_a_reload_only_for_its_own_change_stop_first_and_a_bad_change_runs_it_as_before() {
    let data = data_dir();
    let orch = start(one_db("{ settings: { max_connections: 40 } }"), data.path()).await;
    let url = crate::tcp::printed(&orch, "URL");
    psql(&url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')").unwrap();
    let first = postmaster(data.path());

    // A change elsewhere leaves the server alone.
    orch.save(&one_db("{ settings: { max_connections: 40 } }").yaml.replace("exec sleep 3600", "exec sleep 3601"));
    orch.wait_attempts(1).await;
    assert_eq!(postmaster(data.path()), first);

    // Its own change: the server stops, then the new one starts on its data.
    orch.save(&one_db("{ settings: { max_connections: 50 } }").yaml.replace("exec sleep 3600", "exec sleep 3601"));
    orch.wait_attempts(2).await;
    orch.wait_for_line("Stopping the tier's server before its replacement starts");
    assert_ne!(postmaster(data.path()), first);
    assert_eq!(psql(&url, "SHOW max_connections").unwrap(), "50");
    assert_eq!(psql(&url, "SELECT v FROM kept").unwrap(), "before");

    // A change the server refuses: it runs as before, and the reload says so.
    orch.save(&one_db("{ settings: { shared_buffers: lots } }").yaml.replace("exec sleep 3600", "exec sleep 3601"));
    let status = orch.wait_attempts(3).await;
    let summary = status["last_reload"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("replacing `db` failed, its server as before runs again"), "{status}");
    orch.wait_for_line("invalid value for parameter \"shared_buffers\"");
    assert_eq!(psql(&url, "SHOW max_connections").unwrap(), "50");
    assert_eq!(psql(&url, "SELECT v FROM kept").unwrap(), "before");

    // `orchestrator restart db`: stop first, too; the link's address is the same.
    let before = postmaster(data.path());
    let out = integration_tests::orchestrator(&["restart", "db", "--admin", &orch.admin.to_string()]);
    if !out.status.success() {
        orch.fail(&format!("restart: {}", String::from_utf8_lossy(&out.stderr)));
    }
    assert_ne!(postmaster(data.path()), before);
    assert_eq!(psql(&url, "SELECT v FROM kept").unwrap(), "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_plugin_counts_in_redis_through_its_link_and_reconnects_after_a_restart() {
    let data = data_dir();
    let yaml = r#"
version: 1
name: visits
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: counter }] }
  counter:
    plugin: visits
  cache:
    plugin: redis
    config: { appendonly: true }
links:
  - { from: web, to: counter, kind: rest }
  - { from: counter, to: cache, kind: tcp }
"#;
    let orch = start(TopologyFile::new(yaml), data.path()).await;
    let web = orch.tier_addr("web").await;
    let visits = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap()["visits"].clone();
    for n in 1..=2 {
        let (code, body) = orch.get(web, "/shelf").await;
        assert_eq!((code, visits(body)), (200, n.into()));
    }
    // The server killed: restarted; the plugin's connection fails once, and
    // it opens a new one to the same address.
    let status = orch.status().await;
    let pid = tier(&status, "cache")["instances"][0]["detail"]["pid"].as_u64().unwrap() as u32;
    kill(children(pid)[0], "KILL");
    orch.wait_for_line("Replica exited");
    orch.wait_for_line("Replica ready on port");
    let (code, body) = orch.get(web, "/shelf").await;
    assert_eq!((code, visits(body.clone())), (200, 3.into()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_the_orchestrator_makes_lets_every_store_s_server_in() {
    // `--data-dir` does not exist yet; Redis, started first, makes it. As
    // root, PostgreSQL runs as `postgres`, which must pass through it.
    let parent = data_dir();
    let data = parent.path().join("state/app");
    let yaml = r#"
version: 1
name: both
tiers:
  cache:
    plugin: redis
  db:
    plugin: postgres
    after: [cache]
  caller:
    plugin: process
    config: { command: [sh, -c, 'echo "URL=$ORCH_LINK_DB_URL"; exec sleep 3600'], readiness: { exec: ["true"] } }
links:
  - { from: caller, to: db, kind: tcp }
  - { from: caller, to: cache, kind: tcp }
"#;
    let orch = start(TopologyFile::new(yaml), &data).await;
    let status = orch.status().await;
    for name in ["cache", "db", "caller"] {
        assert_eq!(tier(&status, name)["state"], "running", "{status}");
    }
    let url = crate::tcp::printed(&orch, "URL");
    assert_eq!(psql(&url, "SELECT 1").unwrap(), "1");
    // Each tier's own directory stays its user's.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("cache")), 0o700);
    assert_eq!(mode(&data), 0o711);
}
