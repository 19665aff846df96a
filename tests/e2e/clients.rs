//! Hostile clients of the gateway and the admin API: slow bodies, floods of
//! connections, forged hosts and cross-site requests. Memory is read from
//! `/proc/<pid>/status`; every wait is bounded.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::{Running, TopologyFile, orchestrator, repo_root};

fn hello() -> String {
    std::fs::read_to_string(repo_root().join("topologies/hello.yaml")).unwrap().replace("127.0.0.1:8080", "127.0.0.1:0")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(45))).unwrap();
    s
}

/// Reads until the peer closes or `deadline`; what was read.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_costs_what_was_received_not_a_buffer_per_byte() {
    let orch = Running::start(&hello()).await;
    let web = orch.tier_addr("web").await;
    let before = rss_kib(orch.pid());
    // Ten connections each announce a 1 MB body (under the 1 MiB limit) and
    // send 20,000 bytes of it, one byte per segment: 200 KB in all.
    let handles: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(web);
                s.write_all(b"POST /api HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n").unwrap();
                for _ in 0..20_000 {
                    s.write_all(b"x").unwrap();
                }
                s
            })
        })
        .collect();
    let open: Vec<TcpStream> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Every byte sent has been read once the kernel's queue towards it is empty.
    let grown = rss_kib(orch.pid()).saturating_sub(before);
    drop(open);
    // Before: 3-4 KB per segment, about 700 MB here. Now the bytes, and slack.
    assert!(grown < 40 * 1024, "resident memory grew by {grown} KiB for 200 KB of bodies");
    assert_eq!(orch.get(web, "/api").await.0, 200);
}

#[test]
fn a_body_that_never_finishes_is_cut_after_thirty_seconds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orch = rt.block_on(Running::start(&hello()));
    let web = rt.block_on(orch.tier_addr("web"));
    let mut s = connect(web);
    let sent = Instant::now();
    s.write_all(b"POST /api HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly some").unwrap();
    let answer = read_to_close(&mut s);
    let waited = sent.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("the request body did not arrive within 30s"), "{answer}");
    assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(41), "{waited:?}");
}

#[test]
fn the_admin_api_closes_a_connection_whose_head_never_finishes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orch = rt.block_on(Running::start(&hello()));
    let mut s = connect(orch.admin);
    let sent = Instant::now();
    s.write_all(b"GET /admin/status HTTP/1.1\r\nhost: 127.0.0.1\r\n").unwrap();
    // Before: still open after 120 s.
    let _ = read_to_close(&mut s);
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(21), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_are_closed_and_it_is_said_once() {
    // 20 in all; one listener holds three quarters of them at most: 15.
    let orch = Running::start_with(TopologyFile::new(&hello()), &["--max-connections", "20"]).await;
    let web = orch.tier_addr("web").await;
    let held: Vec<TcpStream> = (0..15).map(|_| connect(web)).collect();
    // Each of them is served.
    for s in &held {
        (&*s).write_all(b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 12];
        (&*s).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    // The limit's edge: the 16th and later are closed at once, unanswered.
    for _ in 0..50 {
        let mut s = connect(web);
        let _ = s.write_all(b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(read_to_close(&mut s), "");
    }
    let warnings = orch.log().iter().filter(|l| l.contains("Connection limit reached")).count();
    assert_eq!(warnings, 1, "{:?}", orch.log());
    // They close; once the orchestrator has seen a close, a new one is served.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = raw(web, "GET /api HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.is_empty() && Instant::now() < deadline, "{answer}");
    }
    // The admin API has a budget of its own.
    assert_eq!(orch.get(orch.admin, "/admin/health").await.0, 200);
}

fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    read_to_close(&mut s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_other_hosts_and_cross_site_posts() {
    let orch = Running::start(&hello()).await;
    let admin = orch.admin;
    // DNS rebinding: a page on attacker.example reading the status.
    let r = raw(admin, "GET /admin/status HTTP/1.1\r\nhost: attacker.example\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // CSRF: a form posted from another site, or a simple cross-origin fetch.
    for extra in ["origin: http://evil.example\r\n", "content-type: text/plain\r\n", "sec-fetch-site: cross-site\r\n"] {
        let r = raw(
            admin,
            &format!(
                "POST /admin/reload HTTP/1.1\r\nhost: {admin}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
            ),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{extra}: {r}");
    }
    assert_eq!(orch.status().await["reloads"]["attempts"], 0, "none of them reloaded");
    // What curl and `orchestrator reload` send still works.
    let r = raw(
        admin,
        &format!("POST /admin/reload HTTP/1.1\r\nhost: {admin}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw(admin, "GET /admin/status HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_on_the_status_are_bounded() {
    let orch = Running::start(&hello()).await;
    let admin = orch.admin;
    // 65 wait for a generation that does not come: 64 are parked until their
    // wait ends, one is refused at once. Before, every one held a descriptor.
    let answers: Vec<_> = (0..65)
        .map(|_| {
            std::thread::spawn(move || {
                raw(admin, "GET /admin/status?min_generation=99&wait=3s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            })
        })
        .collect();
    let answers: Vec<String> = answers.into_iter().map(|a| a.join().unwrap()).collect();
    let refused: Vec<&String> = answers.iter().filter(|a| a.starts_with("HTTP/1.1 503")).collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert!(refused[0].contains("64 requests are waiting already"), "{}", refused[0]);
    assert_eq!(answers.iter().filter(|a| a.starts_with("HTTP/1.1 200")).count(), 64);
}

#[test]
fn the_admin_api_beyond_loopback_needs_a_token() {
    let topology = TopologyFile::new(&hello());
    let out = orchestrator(&["run", topology.path_str(), "--admin", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("give it a token with --admin-token-file, or pass --admin-no-auth"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_request_but_health_and_readiness_must_carry_it() {
    let topology = TopologyFile::new(&hello());
    let token_file = topology.dir.path().join("admin.token");
    integration_tests::write_secret(&token_file, "s3cret-token-0123456789\n");
    let orch = Running::start_with(topology, &["--admin-token-file", token_file.to_str().unwrap()]).await;
    let admin = orch.admin;
    let r = raw(admin, "GET /admin/status HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = raw(
        admin,
        "GET /admin/status HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer wrong-token-0123456789\r\nconnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = raw(
        admin,
        "GET /admin/status HTTP/1.1\r\nhost: any.name\r\nauthorization: Bearer s3cret-token-0123456789\r\nconnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw(admin, "GET /admin/ready HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let out =
        orchestrator(&["reload", "--admin", &admin.to_string(), "--admin-token-file", token_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = orchestrator(&["reload", "--admin", &admin.to_string()]);
    assert_ne!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_tier_behind_the_gateway_gets_the_forwarded_headers() {
    let orch = Running::start(
        "version: 1\nname: xff\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config: { routes: [{ path: /, link: kit }] }\n  kit: { plugin: testkit }\nlinks:\n  - { from: web, to: kit, kind: rest }\n",
    )
    .await;
    let web = orch.tier_addr("web").await;
    let header = |name: &str| {
        let answer = raw(
            web,
            &format!(
                "GET /header/{name} HTTP/1.1\r\nhost: shop.example\r\nx-forwarded-for: 203.0.113.9\r\nconnection: close\r\n\r\n"
            ),
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {answer}"))["value"].clone()
    };
    assert_eq!(header("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(header("x-forwarded-proto"), "http");
    assert_eq!(header("x-forwarded-host"), "shop.example");
}
