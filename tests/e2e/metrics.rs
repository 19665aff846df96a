//! `/admin/metrics`: per-link and per-listener series, exact under
//! concurrency and across reloads.

use integration_tests::Running;

/// The value of the series `name` whose labels include every one of
/// `labels`, in a Prometheus text exposition; `None` if there is none.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, v) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let all = labels.iter().all(|(k, want)| rest.contains(&format!("{k}=\"{want}\"")));
        all.then(|| v.parse().ok()).flatten()
    })
}

pub async fn scrape(orch: &Running) -> String {
    let (code, text) = orch.get(orch.admin, "/admin/metrics").await;
    assert_eq!(code, 200, "{text}");
    text
}

const TOPOLOGY: &str = r#"
version: 1
name: metered
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /kit, link: kit, strip_prefix: true }, { path: /flaky, link: flaky, strip_prefix: true }] }
  kit: { plugin: testkit, replicas: 2, config: { tag: one } }
  flaky: { plugin: testkit, replicas: 2 }
  inner: { plugin: testkit }
links:
  - { from: web, to: kit, kind: rest }
  - { from: web, to: flaky, kind: rest, retries: 1 }
  - { from: kit, to: inner, kind: rest }
"#;

/// Sends `n` GETs of `path` to `addr` at once; the status of each.
async fn burst(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let client = integration_tests::client();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                integration_tests::request(&client, "GET", addr, &path, Default::default()).await.map(|(code, _)| code)
            })
        })
        .collect();
    let mut codes = Vec::with_capacity(n);
    for call in calls {
        codes.push(call.await.expect("the task ran").expect("the request was answered"));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_and_listener_counts_are_exact_under_a_thousand_concurrent_requests() {
    let orch = Running::start(TOPOLOGY).await;
    let web = orch.tier_addr("web").await;
    let (ok, failing, nested) = tokio::join!(
        burst(web, "/kit/whoami", 500),
        burst(web, "/kit/status/503", 300),
        burst(web, "/kit/call/inner/status/404", 200),
    );
    assert!(ok.iter().all(|c| *c == 200) && failing.iter().all(|c| *c == 503) && nested.iter().all(|c| *c == 404));
    let text = scrape(&orch).await;
    let link = |from: &str, to: &str, outcome: &str| {
        value(&text, "orchestrator_link_requests_total", &[("from", from), ("to", to), ("outcome", outcome)])
    };
    assert_eq!(link("web", "kit", "2xx"), Some(500.0), "{text}");
    assert_eq!(link("web", "kit", "5xx"), Some(300.0), "{text}");
    assert_eq!(link("web", "kit", "4xx"), Some(200.0), "{text}");
    assert_eq!(link("kit", "inner", "4xx"), Some(200.0), "{text}");
    let count = value(&text, "orchestrator_link_request_duration_seconds_count", &[("from", "web"), ("to", "kit")]);
    assert_eq!(count, Some(1000.0));
    assert_eq!(value(&text, "orchestrator_link_in_flight", &[("from", "web"), ("to", "kit")]), Some(0.0));
    let route = |class: &str| {
        value(
            &text,
            "orchestrator_listener_requests_total",
            &[("tier", "web"), ("route", "/kit"), ("status_class", class)],
        )
    };
    assert_eq!((route("2xx"), route("5xx"), route("4xx")), (Some(500.0), Some(300.0), Some(200.0)), "{text}");
    assert_eq!(value(&text, "orchestrator_listener_in_flight", &[("tier", "web")]), Some(0.0));
    // In-process calls resolve below a millisecond: most fall in the first buckets.
    let fast = value(
        &text,
        "orchestrator_link_request_duration_seconds_bucket",
        &[("from", "kit"), ("to", "inner"), ("le", "0.001")],
    );
    assert!(fast.is_some_and(|n| n > 0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_calls_count_once_as_effective_and_per_attempt() {
    let orch = Running::start(TOPOLOGY).await;
    let web = orch.tier_addr("web").await;
    // A request a replica does not take is retried once, on the other replica.
    for _ in 0..3 {
        assert_eq!(orch.get(web, "/flaky/refuse").await.0, 503);
    }
    let text = scrape(&orch).await;
    let flaky = [("from", "web"), ("to", "flaky")];
    let with = |outcome: &'static str| [flaky[0], flaky[1], ("outcome", outcome)];
    assert_eq!(value(&text, "orchestrator_link_requests_total", &with("unavailable")), Some(3.0), "{text}");
    assert_eq!(value(&text, "orchestrator_link_attempts_total", &with("unavailable")), Some(6.0), "{text}");
    assert_eq!(value(&text, "orchestrator_link_retries_total", &flaky), Some(3.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_go_on_across_a_reload_that_replaces_a_tier_and_retargets_a_link() {
    let orch = Running::start(TOPOLOGY).await;
    let web = orch.tier_addr("web").await;
    assert!(burst(web, "/kit/whoami", 40).await.iter().all(|c| *c == 200));
    assert!(burst(web, "/flaky/whoami", 10).await.iter().all(|c| *c == 200));
    // `kit` is replaced (its config changed); web's `flaky` link now goes to `inner`.
    orch.save(&TOPOLOGY.replace("config: { tag: one }", "config: { tag: two }").replace(
        "{ from: web, to: flaky, kind: rest, retries: 1 }",
        "{ from: web, to: inner, kind: rest, name: flaky }",
    ));
    let status = orch.wait_generation(2).await;
    assert_eq!(status["last_reload"]["outcome"], "applied", "{status}");
    assert!(burst(web, "/kit/whoami", 25).await.iter().all(|c| *c == 200));
    assert!(burst(web, "/flaky/whoami", 5).await.iter().all(|c| *c == 200));
    let text = scrape(&orch).await;
    let ok = |to: &str, link: &str| {
        value(
            &text,
            "orchestrator_link_requests_total",
            &[("from", "web"), ("to", to), ("link", link), ("outcome", "2xx")],
        )
    };
    // Neither reset (25) nor doubled (80 + 25) by the replaced tier.
    assert_eq!(ok("kit", "kit"), Some(65.0), "{text}");
    // The retargeted link: its old series kept, its new one counting from zero.
    assert_eq!((ok("flaky", "flaky"), ok("inner", "flaky")), (Some(10.0), Some(5.0)), "{text}");
    let route = value(
        &text,
        "orchestrator_listener_requests_total",
        &[("tier", "web"), ("route", "/kit"), ("status_class", "2xx")],
    );
    assert_eq!(route, Some(65.0), "the listener outlives the reload: {text}");
    assert_eq!(value(&text, "orchestrator_reload_duration_seconds_count", &[]), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recording_the_series_stay_at_zero() {
    let topology = integration_tests::TopologyFile::new(TOPOLOGY);
    let orch = Running::start_with(topology, &["--no-metrics"]).await;
    let web = orch.tier_addr("web").await;
    assert!(burst(web, "/kit/whoami", 20).await.iter().all(|c| *c == 200));
    let text = scrape(&orch).await;
    assert_eq!(value(&text, "orchestrator_link_requests_total", &[("from", "web")]), None, "{text}");
    assert_eq!(value(&text, "orchestrator_link_request_duration_seconds_count", &[("from", "web")]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_is_served_when_asked_for() {
    let orch = Running::start(TOPOLOGY).await;
    let client = integration_tests::client();
    let req = hyper::Request::builder()
        .uri(format!("http://{}/admin/metrics", orch.admin))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Each histogram ends with its `+Inf` bucket (before: missing, and Prometheus's quantiles were NaN).
    assert!(text.contains(r#"orchestrator_link_request_duration_seconds_bucket{le="+Inf",from="web""#), "{text}");
    assert!(text.contains("# TYPE orchestrator_link_requests counter"), "{text}");
}

/// A real Prometheus server scraping `target`'s metrics every second, in a
/// directory of its own; stopped (by its PID) when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 900ms }}\nscrape_configs:\n  - job_name: orchestrator\n    metrics_path: /admin/metrics\n    static_configs: [{{ targets: ['{target}'] }}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // Prometheus cannot report a port it picked: take a free one from the kernel.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed by scripts/test (Debian's `prometheus` package)");
        Self { child, addr, _dir: dir }
    }

    /// The result of an instant query: each series' labels and value.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let client = integration_tests::client();
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let (code, body) =
            integration_tests::request(&client, "GET", self.addr, &path, Default::default()).await.unwrap();
        assert_eq!(code, 200, "{promql}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_exact_counts_and_a_sensible_latency() {
    let topology = integration_tests::TopologyFile::new(TOPOLOGY);
    // The admin API says when it is scraped: the test waits on that.
    let orch = Running::start_with_env(topology, &[("ORCH_LOG", "info,orchestrator::admin=debug")]).await;
    let web = orch.tier_addr("web").await;
    assert!(burst(web, "/kit/whoami", 300).await.iter().all(|c| *c == 200));
    assert!(burst(web, "/kit/status/500", 100).await.iter().all(|c| *c == 500));

    // The exposition passes Prometheus's own checks.
    let text = scrape(&orch).await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool comes with Debian's `prometheus` package");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let prometheus = Prometheus::start(orch.admin);
    // Two scrapes: the first one's samples are stored before the second starts.
    orch.wait_for_line("Metrics scraped. user_agent=\"Prometheus/");
    orch.wait_for_line("Metrics scraped. user_agent=\"Prometheus/");
    let sent = prometheus
        .query(r#"sum by (outcome) (orchestrator_link_requests_total{from="web",to="kit"})"#)
        .await
        .into_iter()
        .map(|(labels, v)| (labels["outcome"].as_str().unwrap().to_owned(), v))
        .collect::<std::collections::BTreeMap<_, _>>();
    assert_eq!(sent, [("2xx".to_owned(), 300.0), ("5xx".to_owned(), 100.0)].into(), "N requests sent, N counted");
    let p99 = prometheus
        .query(r#"histogram_quantile(0.99, sum by (le) (orchestrator_link_request_duration_seconds_bucket{from="web",to="kit"}))"#)
        .await;
    let p99 = p99.first().map(|(_, v)| *v).unwrap_or(f64::NAN);
    // In-process calls on loopback: well under a second, and not zero.
    assert!(p99 > 0.0 && p99 < 1.0, "p99 {p99}");
    let up = prometheus.query(r#"up{job="orchestrator"}"#).await;
    assert_eq!(up.first().map(|(_, v)| *v), Some(1.0));

    // The dashboard shipped in docs/ asks valid questions of metrics that exist.
    let dashboard =
        std::fs::read_to_string(integration_tests::repo_root().join("docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for target in dashboard["panels"].as_array().unwrap().iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m");
        prometheus.query(&expr).await;
        for name in
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("orchestrator_"))
        {
            let family = name.trim_end_matches("_bucket");
            assert!(text.contains(&format!("# TYPE {family} ")), "the dashboard's `{name}` is not exposed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_topics_subscribers_and_their_links_are_measured() {
    let orch = Running::start(
        r#"
version: 1
name: queued
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: pub }] }
  pub: { plugin: testkit }
  q: { plugin: queue, config: { max_attempts: 2, retry_backoff: 10ms, durable: true } }
  sub: { plugin: testkit }
links:
  - { from: web, to: pub, kind: rest }
  - { from: pub, to: q, kind: queue, topic: jobs }
  - { from: q, to: sub, kind: queue, topic: jobs }
"#,
    )
    .await;
    let web = orch.tier_addr("web").await;
    let (code, body) = orch.post(web, "/publish/q?n=5", "job").await;
    assert_eq!(code, 200, "{body}");
    // One that fails every attempt: tried twice, then dead-lettered.
    let (code, body) = orch.post(web, "/publish/q?n=1", "fail-always").await;
    assert_eq!(code, 200, "{body}");
    orch.wait_for_line("dead-lettered");
    let (code, _) = orch.get(web, "/received/sub?min=7&wait_ms=10000").await;
    assert_eq!(code, 200);
    // The last delivery is counted once the broker has its answer: when
    // none is in flight any more.
    orch.wait_overview(|o| {
        let q = integration_tests::tier(&o["status"], "q");
        let topic = &q["instances"][0]["detail"]["topics"]["jobs"];
        topic["delivered"] == 5 && topic["dead_lettered"] == 1 && topic["in_flight"] == 0
    })
    .await;
    let text = scrape(&orch).await;
    let topic = [("tier", "q"), ("topic", "jobs")];
    let sub = [("tier", "q"), ("topic", "jobs"), ("subscriber", "sub")];
    assert_eq!(value(&text, "orchestrator_queue_published_total", &topic), Some(6.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_acknowledged_total", &sub), Some(5.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_deliveries_total", &sub), Some(7.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_redelivered_total", &sub), Some(1.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_dead_lettered_total", &sub), Some(1.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_lag", &sub), Some(0.0), "{text}");
    assert_eq!(value(&text, "orchestrator_queue_depth", &topic), Some(0.0), "{text}");
    // Durable: the database's size, and its commits timed (one at least per publish).
    assert!(value(&text, "orchestrator_queue_store_bytes", &[("tier", "q")]).is_some_and(|b| b > 0.0), "{text}");
    let commits = value(&text, "orchestrator_queue_store_commit_duration_seconds_count", &[("tier", "q")]);
    assert!(commits.is_some_and(|n| n >= 2.0), "{text}");
    // The links: publishes the broker accepted, deliveries acknowledged or not.
    let link = |from: &str, outcome: &str| {
        value(&text, "orchestrator_link_requests_total", &[("from", from), ("kind", "queue"), ("outcome", outcome)])
    };
    assert_eq!(link("pub", "ack"), Some(6.0), "{text}");
    assert_eq!((link("q", "ack"), link("q", "nack")), (Some(5.0), Some(2.0)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programs_cpu_memory_and_exits_are_measured() {
    let orch = Running::start(
        "version: 1\nname: measured\ntiers:\n  app:\n    plugin: process\n    config: { command: [sh, -c, 'exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"'] }\n",
    )
    .await;
    let text = scrape(&orch).await;
    let app = [("tier", "app"), ("replica", "0")];
    let rss = value(&text, "orchestrator_replica_resident_memory_bytes", &app).unwrap_or(0.0);
    // A Python interpreter: megabytes, not nothing.
    assert!(rss > 1e6, "{text}");
    assert!(value(&text, "orchestrator_replica_cpu_seconds_total", &app).is_some(), "{text}");
    assert_eq!(value(&text, "orchestrator_replica_restarts_total", &app), Some(0.0));
    assert_eq!(value(&text, "orchestrator_replica_last_exit_code", &app), None, "it has not exited");
    // Killed: restarted, and its exit recorded as a shell would (128 + 9).
    let pid = integration_tests::program_pids(&orch.status().await, "app")[0];
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    orch.wait_for_line("Replica exited (killed by SIGKILL); restart 1 in");
    let text = scrape(&orch).await;
    assert_eq!(value(&text, "orchestrator_replica_last_exit_code", &app), Some(137.0), "{text}");
    assert_eq!(value(&text, "orchestrator_replica_restarts_total", &app), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_counted_as_rejected() {
    let orch = Running::start(
        "version: 1\nname: limited\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    max_body: 1KiB\n    config: { routes: [{ path: /, link: kit }] }\n  kit: { plugin: testkit }\nlinks:\n  - { from: web, to: kit, kind: rest }\n",
    )
    .await;
    let web = orch.tier_addr("web").await;
    // At the limit it is taken; one byte over, refused.
    assert_eq!(orch.post(web, "/echo", vec![b'x'; 1024]).await.0, 200);
    assert_eq!(orch.post(web, "/echo", vec![b'x'; 1025]).await.0, 413);
    let text = scrape(&orch).await;
    let rejected =
        value(&text, "orchestrator_listener_rejected_total", &[("tier", "web"), ("reason", "body_too_large")]);
    assert_eq!(rejected, Some(1.0), "{text}");
    assert_eq!(value(&text, "orchestrator_listener_received_bytes_total", &[("tier", "web")]), Some(1024.0));
}
