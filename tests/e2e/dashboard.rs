//! `orchestrator status`, `logs` and `restart`, and the admin API the
//! dashboard reads: the overview, the event stream, the logs, the restart,
//! and their guards.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use integration_tests::{
    DEADLINE, Running, TopologyFile, Traffic, bin, client, orchestrator, program_pids, python_server, request, tier,
};

/// A gateway in front of a Python program (two replicas) that prints a line
/// to stdout for each request, and one to stderr for `/err…`.
fn printer(replicas: u32) -> String {
    let program = python_server(
        "import sys",
        r#"    def do_GET(self):
        print("served " + self.path, flush=True)
        if self.path.startswith("/err"):
            print("complaint about " + self.path, file=sys.stderr, flush=True)
        self.reply(200, {}, b"ok")
"#,
    );
    let indented: String = program.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        r#"
version: 1
name: printing
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: {{ routes: [{{ path: /, link: printer }}] }}
  printer:
    plugin: process
    replicas: {replicas}
    config:
      readiness: {{ http: /ready }}
      command:
        - python3
        - -c
        - |
{indented}
links:
  - {{ from: web, to: printer, kind: rest, timeout: 5s }}
"#
    )
}

/// A command's stdout, line by line, as it prints them.
struct Lines {
    child: Child,
    lines: Receiver<String>,
}

impl Lines {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn orchestrator");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line that contains `needle`, and those before it.
    fn wait_for(&self, needle: &str) -> (String, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return (line, before),
                Ok(line) => before.push(line),
                Err(e) => panic!("no line with `{needle}` ({e:?}); before it: {before:?}"),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // Stop what this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn requests_into(overview: &serde_json::Value, to: &str) -> u64 {
    overview["figures"]["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["to"] == to)
        .filter_map(|l| l["requests"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_each_tier_with_its_replicas_and_traffic_as_a_table_and_as_json() {
    let orch = Running::start(&printer(2)).await;
    let web = orch.tier_addr("web").await;
    for i in 0..20 {
        assert_eq!(orch.get(web, &format!("/n{i}")).await.0, 200);
    }
    // The figures are sampled each second: wait for a sample with the requests.
    orch.wait_overview(|o| {
        requests_into(o, "printer") >= 20 && o["figures"]["listeners"]["web"]["rate"].as_f64() > Some(0.0)
    })
    .await;
    let admin = orch.admin.to_string();

    let out = orchestrator(&["status", "--admin", &admin]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("topology `printing`"), "{table}");
    let header = lines.iter().position(|l| l.starts_with("TIER")).expect("a header");
    for column in ["PLUGIN", "READY", "STATE", "RESTARTS", "LISTEN", "REQ/S", "ERRORS"] {
        assert!(lines[header].contains(column), "{table}");
    }
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
    };
    let web_row: Vec<&str> = row("web").split_whitespace().collect();
    assert_eq!(&web_row[1..4], ["gateway", "1/1", "running"], "{table}");
    assert_eq!(web_row[5], web.to_string(), "{table}");
    let printer_row: Vec<&str> = row("printer").split_whitespace().collect();
    assert_eq!(&printer_row[1..4], ["process", "2/2", "running"], "{table}");
    assert_eq!(printer_row[4], "0", "no restart yet: {table}");

    // The same as JSON, found by the topology file rather than the address.
    let out = orchestrator(&["status", orch.topology.path_str(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["topology"].as_str(), json["generation"].as_u64()), (Some("printing"), Some(1)));
    let web_json = json["tiers"].as_array().unwrap().iter().find(|t| t["name"] == "web").unwrap();
    assert!(web_json["rate"].as_f64().unwrap() > 0.0, "{web_json}");
    assert_eq!(web_json["error_rate"], 0.0, "{web_json}");
    let printer_json = json["tiers"].as_array().unwrap().iter().find(|t| t["name"] == "printer").unwrap();
    assert_eq!((printer_json["ready"].as_u64(), printer_json["replicas"].as_u64()), (Some(2), Some(2)));

    // Nothing listens where it is pointed: a clear error, exit 1.
    let out = orchestrator(&["status", "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API at 127.0.0.1:1"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_each_line_as_the_program_prints_it() {
    let orch = Running::start(&printer(1)).await;
    let web = orch.tier_addr("web").await;
    let admin = orch.admin.to_string();
    let follow = Lines::spawn(&["logs", "-f", "printer", "--admin", &admin]);
    // Following: each request's line arrives while the command runs.
    for i in 0..3 {
        assert_eq!(orch.get(web, &format!("/first-{i}")).await.0, 200);
        let (line, _) = follow.wait_for(&format!("served /first-{i}"));
        assert!(line.starts_with("printer.0"), "{line}");
    }
    // A program's stderr is marked.
    assert_eq!(orch.get(web, "/err-1").await.0, 200);
    let (line, _) = follow.wait_for("complaint about /err-1");
    assert!(line.contains(" !| complaint about /err-1"), "{line}");
    drop(follow);

    // Not following: the kept lines, filtered by pattern; the orchestrator's own.
    let out = orchestrator(&["logs", "printer", "--grep", r"^served /first-[02]$", "--admin", &admin]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let served: Vec<&str> = text.lines().collect();
    assert_eq!(served, ["printer.0     | served /first-0", "printer.0     | served /first-2"], "{text}");
    let out = orchestrator(&["logs", "orchestrator", "--grep", "Topology running", "--json", "--admin", &admin]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!((line["tier"].clone(), line["level"].as_str()), (serde_json::Value::Null, Some("INFO")));
    // Lines from the future: none.
    let out = orchestrator(&["logs", "--since", "0s", "--grep", "served", "--admin", &admin]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // Mistakes are refused with the reason, exit 64.
    for (args, why) in [
        (vec!["logs", "nosuch"], "no tier `nosuch`; the tiers are: web, printer"),
        (vec!["logs", "--grep", "(unclosed"], "grep: not a regular expression"),
        (vec!["logs", "--since", "a while"], "since: `a while`"),
    ] {
        let out = orchestrator(&[args.as_slice(), &["--admin", &admin]].concat());
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_keeps_its_last_lines_up_to_the_limit() {
    let orch = Running::start_with(TopologyFile::new(&printer(1)), &["--log-lines", "3"]).await;
    let web = orch.tier_addr("web").await;
    for i in 0..5 {
        assert_eq!(orch.get(web, &format!("/kept-{i}")).await.0, 200);
    }
    let admin = orch.admin.to_string();
    let follow = Lines::spawn(&["logs", "-f", "printer", "--admin", &admin, "--grep", "kept-4"]);
    follow.wait_for("served /kept-4");
    drop(follow);
    let out = orchestrator(&["logs", "printer", "--admin", &admin]);
    let text = String::from_utf8(out.stdout).unwrap();
    // The program's last three lines, and only those: the limit at its edge.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].ends_with("served /kept-2") && lines[2].ends_with("served /kept-4"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replaces_every_replica_under_load_and_no_request_fails() {
    let orch = Running::start(&printer(2)).await;
    let web = orch.tier_addr("web").await;
    let before = program_pids(&orch.status().await, "printer");
    let traffic = Traffic::start(web, "/load", 32, Traffic::ok);
    let admin = orch.admin.to_string();
    let out =
        tokio::task::spawn_blocking(move || orchestrator(&["restart", "printer", "--admin", &admin])).await.unwrap();
    let (ok, failures) = traffic.stop().await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restarted `printer`: replicas 0, 1\n");
    assert!(failures.is_empty(), "{} failed requests, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok > 50, "only {ok} requests completed during the restart");
    let status = orch.status().await;
    let after = program_pids(&status, "printer");
    assert_eq!(after.len(), 2, "{status}");
    assert!(after.iter().all(|p| !before.contains(p)), "every program is new: {before:?} → {after:?}");
    assert_eq!(status["generation"], 1, "a restart is not a reload");

    // One replica; then what cannot be done, with the reason.
    let admin = orch.admin.to_string();
    let out = orchestrator(&["restart", "printer", "--replica", "1", "--admin", &admin]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restarted `printer`: replica 1\n", "{out:?}");
    let status = orch.status().await;
    assert_eq!(program_pids(&status, "printer")[0], after[0], "replica 0 kept its program");
    for (args, why) in [
        (vec!["restart", "nosuch"], "no tier `nosuch` runs here; its tiers are: web, printer"),
        (vec!["restart", "printer", "--replica", "2"], "tier `printer` has 2 replica(s): 0 to 1; there is no 2"),
    ] {
        let out = orchestrator(&[args.as_slice(), &["--admin", &admin]].concat());
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_and_what_changes_things_refuses_other_sites() {
    let orch = Running::start(&printer(1)).await;
    let admin = orch.admin;
    let http = client();
    let (code, page) = request(&http, "GET", admin, "/", Default::default()).await.unwrap();
    assert_eq!(code, 200);
    assert!(page.contains(r#"<script src="/assets/app.js""#), "{page}");
    for asset in ["app.js", "app.css", "dagre.min.js"] {
        let (code, body) = request(&http, "GET", admin, &format!("/assets/{asset}"), Default::default()).await.unwrap();
        assert!(code == 200 && body.len() > 1000, "{asset}: {code}");
    }
    let overview: serde_json::Value =
        serde_json::from_str(&request(&http, "GET", admin, "/admin/overview", Default::default()).await.unwrap().1)
            .unwrap();
    assert_eq!(tier(&overview["status"], "printer")["instances"][0]["ready"], true);

    // A restart another site asks for is refused, as a reload is.
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        async move {
            let mut req = hyper::Request::post(format!("http://{admin}/admin/restart?tier=printer"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = http.request(req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(send(&[("origin", "http://evil.example")]).await, 403);
    assert_eq!(send(&[("sec-fetch-site", "cross-site")]).await, 403);
    assert_eq!(send(&[("content-type", "text/plain")]).await, 403);
    let pids = program_pids(&orch.status().await, "printer");
    assert_eq!(send(&[("sec-fetch-site", "same-origin")]).await, 200, "the page's own request");
    assert_ne!(program_pids(&orch.status().await, "printer"), pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_loads_and_its_data_needs_the_token_or_its_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    integration_tests::write_secret(&token_file, "a-dashboard-token-0123456789\n");
    let orch =
        Running::start_with(TopologyFile::new(&printer(1)), &["--admin-token-file", token_file.to_str().unwrap()])
            .await;
    let admin = orch.admin;
    let http = client();
    let get = |path: &'static str, cookie: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = hyper::Request::get(format!("http://{admin}{path}"));
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            http.request(req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/", None).await, 200, "the page holds no data: it loads, and asks for the token");
    assert_eq!(get("/assets/app.js", None).await, 200);
    for path in ["/admin/overview", "/admin/events", "/admin/logs"] {
        assert_eq!(get(path, None).await, 401, "{path}");
    }
    let login = |token: &'static str| {
        let http = http.clone();
        async move {
            let req = hyper::Request::post(format!("http://{admin}/admin/login"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(r#"{{"token":"{token}"}}"#))))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let cookie = resp.headers().get("set-cookie").map(|c| c.to_str().unwrap().to_owned());
            (resp.status().as_u16(), cookie)
        }
    };
    assert_eq!(login("a-dashboard-token-012345678X").await, (401, None));
    let (code, cookie) = login("a-dashboard-token-0123456789").await;
    let cookie = cookie.unwrap_or_else(|| panic!("no cookie ({code})"));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    // A session of its own: what every tier of this host may be sent (a
    // cookie ignores ports) is not the token.
    assert!(!cookie.contains("a-dashboard-token-0123456789"), "{cookie}");
    assert!(cookie.contains("Max-Age="), "it expires: {cookie}");
    assert_eq!(get("/admin/overview", Some(pair.clone())).await, 200);
    assert_eq!(get("/admin/overview", Some("orchestrator_session=a-dashboard-token-0123456789".into())).await, 401);
    // Signed out: the session is gone, whoever kept its cookie.
    let req = hyper::Request::post(format!("http://{admin}/admin/logout"))
        .header("cookie", pair.clone())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(get("/admin/overview", Some(pair)).await, 401);
    // The CLI carries the token in its header.
    let admin_s = admin.to_string();
    let out = orchestrator(&["status", "--admin", &admin_s]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs its token"), "{out:?}");
    let out = orchestrator(&["status", "--admin", &admin_s, "--admin-token-file", token_file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// Wrong tokens: refused, logged, and throttled per client after ten in a
/// row (it answered 27,385 guesses a second); the scheme in any case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_logged_and_throttled_and_the_scheme_is_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    integration_tests::write_secret(&token_file, "a-dashboard-token-0123456789\n");
    let orch =
        Running::start_with(TopologyFile::new(&printer(1)), &["--admin-token-file", token_file.to_str().unwrap()])
            .await;
    let admin = orch.admin;
    let http = client();
    let get = |authorization: &'static str| {
        let http = http.clone();
        async move {
            let req = hyper::Request::get(format!("http://{admin}/admin/status"))
                .header("authorization", authorization)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            (resp.status().as_u16(), resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }
    };
    assert_eq!(get("bearer a-dashboard-token-0123456789").await.0, 200, "the scheme in lower case");
    assert_eq!(get("BEARER a-dashboard-token-0123456789").await.0, 200);
    for _ in 0..10 {
        assert_eq!(get("Bearer a-wrong-token-000000000000").await.0, 401);
    }
    orch.wait_for_line("Admin API: refused a request with a wrong token or session.");
    // The eleventh is not even looked at; nor is the right token, from this client, for now.
    let (code, retry) = get("Bearer a-wrong-token-000000000000").await;
    assert_eq!((code, retry.as_deref()), (429, Some("1")));
    assert_eq!(get("Bearer a-dashboard-token-0123456789").await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_log_streams_are_capped_at_32() {
    use http_body_util::BodyExt as _;
    let orch = Running::start(&printer(1)).await;
    let admin = orch.admin;
    let http = client();
    let open = |path: &'static str| {
        let http = http.clone();
        async move {
            let req = hyper::Request::get(format!("http://{admin}{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            http.request(req).await.unwrap()
        }
    };
    let mut streams = Vec::new();
    for i in 0..32 {
        let resp = open(if i % 2 == 0 { "/admin/events" } else { "/admin/logs?follow=true" }).await;
        assert_eq!(resp.status(), 200, "stream {i}");
        streams.push(resp);
    }
    assert_eq!(open("/admin/events").await.status(), 503, "the 33rd");
    assert_eq!(open("/admin/logs?follow=true").await.status(), 503, "the 33rd");
    // What does not stream is still served.
    assert_eq!(open("/admin/overview").await.status(), 200);
    // An event stream closes: its place is freed when the server next
    // writes to it (within a second), and one more may open.
    drop(streams.remove(30));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = open("/admin/events").await;
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream's place was not freed");
        // Wait for the next event of a stream still open: the server wrote meanwhile.
        let frame = tokio::time::timeout(DEADLINE, streams[0].body_mut().frame()).await;
        assert!(matches!(frame, Ok(Some(Ok(_)))), "the open stream broke: {frame:?}");
    }
}
