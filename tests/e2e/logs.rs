//! `--log-format json`: one JSON object per line, with the tier and replica.

use integration_tests::{Running, TopologyFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_tier_and_replica() {
    let topology = TopologyFile::new(
        r#"
version: 1
name: logged
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit, replicas: 2 }
  printer:
    plugin: process
    config: { command: [sh, -c, 'echo "to stderr" >&2; exec python3 -m http.server --bind 127.0.0.1 "$PORT"'] }
links:
  - { from: web, to: kit, kind: rest }
"#,
    );
    let orch = Running::start_with(topology, &["--log-format", "json"]).await;
    let web = orch.tier_addr("web").await;
    assert_eq!(orch.get(web, "/sleep/1").await.0, 200);
    orch.wait_for_line("Sleeping for 1 ms.");
    let lines = orch.log();
    let parsed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for line in &parsed {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no `{key}` in {line}");
        }
    }
    // What a native tier's handler logged: its tier and replica.
    let slept = parsed.iter().find(|l| l["message"] == "Sleeping for 1 ms.").unwrap();
    assert_eq!(slept["tier"], "kit", "{slept}");
    assert!(slept["replica"].as_u64().is_some_and(|r| r < 2), "{slept}");
    // A program's stderr, at WARN, with its tier and replica.
    let printed = parsed.iter().find(|l| l["message"] == "to stderr").unwrap();
    assert_eq!((printed["tier"].as_str(), printed["replica"].as_u64()), (Some("printer"), Some(0)), "{printed}");
    assert_eq!((printed["level"].as_str(), printed["stream"].as_str()), (Some("WARN"), Some("stderr")), "{printed}");
}

/// A topology whose `filler` tier (8 replicas) fills the log ring: 1,000
/// lines of about 1 KiB of words each per replica, 8 MB in all.
fn filled() -> String {
    let python = integration_tests::venv_python();
    format!(
        r#"
version: 1
name: filled
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: kit }}] }}
  kit: {{ plugin: testkit }}
  filler:
    plugin: process
    replicas: 8
    config:
      command: [{}, -c, "import sys, time\nline = ('alpha bravo charlie delta echo foxtrot golf hotel ' * 20)[:1000]\nfor i in range(1000): print(line)\nprint('filled', flush=True)\ntime.sleep(3600)"]
      readiness: {{ exec: ["true"] }}
links:
  - {{ from: web, to: kit, kind: rest }}
"#,
        python.display()
    )
}

async fn wait_filled(orch: &Running) {
    let seen = orch.log().iter().filter(|l| l.contains("filled")).count();
    for _ in seen..8 {
        orch.wait_for_line("filled");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Searches with a pattern that forces the slow engine over 8 MB of kept
/// lines: they run off the serving threads and off the ring's lock, give
/// up at their budget (422), and at most two run at once (503): the rest
/// of the orchestrator answers as usual meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_log_searches_stall_nothing_and_are_bounded() {
    let orch = Running::start(&filled()).await;
    wait_filled(&orch).await;
    let slow = r"\b(?:\w+\s+){8}\w+\b(?:\s+\w+){8}zzz";
    let encoded: String = slow.bytes().map(|b| format!("%{b:02X}")).collect();
    let path = format!("/admin/logs?grep={encoded}");
    let admin = orch.admin;
    let searches: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                integration_tests::request(&integration_tests::client(), "GET", admin, &path, bytes::Bytes::new()).await
            })
        })
        .collect();
    // Meanwhile: the admin API and a tier answer at once.
    let web = orch.tier_addr("web").await;
    for (addr, path) in [(admin, "/admin/health"), (web, "/whoami"), (admin, "/admin/status")] {
        let asked = std::time::Instant::now();
        let (code, _) = orch.get(addr, path).await;
        assert_eq!(code, 200);
        assert!(asked.elapsed() < std::time::Duration::from_secs(2), "{path} took {:?}", asked.elapsed());
    }
    let mut codes = Vec::new();
    for search in searches {
        let (code, body) = search.await.unwrap().unwrap();
        match code {
            422 => assert!(body.contains("longer than its budget"), "{body}"),
            503 => assert!(body.contains("searches are running already"), "{body}"),
            200 => {}
            other => panic!("{other}: {body}"),
        }
        codes.push(code);
    }
    // Six at once, two at most run: the others were refused.
    assert!(codes.iter().filter(|c| **c == 503).count() >= 4, "{codes:?}");
}

/// Forty clients that ask for every kept line and never read: the replies
/// are streamed as they are read, so the orchestrator holds next to
/// nothing for them (it built each whole before: 50 MB a reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_replies_nobody_reads_cost_next_to_nothing() {
    use tokio::io::AsyncWriteExt as _;
    let orch = Running::start(&filled()).await;
    wait_filled(&orch).await;
    let before = rss_kib(orch.pid());
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(orch.admin).await.unwrap();
        tcp.write_all(b"GET /admin/logs?limit=10000 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
        stalled.push(tcp);
    }
    // Each reply has started (and stalled): the status answers after them.
    assert_eq!(orch.get(orch.admin, "/admin/health").await.0, 200);
    let (code, body) = orch.get(orch.admin, "/admin/logs?limit=10000&tiers=filler").await;
    assert_eq!(code, 200);
    assert!(body.len() > 7_000_000, "a reader gets the whole reply: {} bytes", body.len());
    let after = rss_kib(orch.pid());
    let grown = after.saturating_sub(before);
    // Socket buffers and a chunk each: a few MB, not 40 replies of 8 MB.
    assert!(grown < 80 * 1024, "RSS grew by {grown} KiB ({before} → {after})");
    drop(stalled);
}
