//! The commands that talk to a running orchestrator's admin API:
//! `status`, `logs` and `restart` (and the client they share with `reload`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use serde_json::Value;

/// An admin API to call: its address and token.
#[derive(Clone, Debug)]
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// Why a command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The orchestrator could not be reached, or answered nonsense.
    #[error("{0}")]
    Unreachable(String),
    /// It refused (an unknown tier, a bad pattern): the message is its.
    #[error("{0}")]
    Refused(String),
    /// It tried and failed (a replica that did not become ready).
    #[error("{0}")]
    Failed(String),
}

impl AdminClient {
    /// Sends `method path` and returns the status and the body as it streams.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
    ) -> Result<(http::StatusCode, hyper::body::Incoming), CliError> {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let mut req = http::Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).map_err(|e| CliError::Unreachable(e.to_string()))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| CliError::Unreachable(format!("cannot reach the admin API at {}: {e}", self.addr)))?;
        Ok((resp.status(), resp.into_body()))
    }

    /// `method path`, its answer as JSON.
    pub async fn json(&self, method: http::Method, path: &str) -> Result<(http::StatusCode, Value), CliError> {
        let (status, body) = self.send(method, path).await?;
        let body = body.collect().await.map_err(|e| CliError::Unreachable(e.to_string()))?.to_bytes();
        let value = serde_json::from_slice(&body)
            .map_err(|e| CliError::Unreachable(format!("unexpected answer from {} ({status}): {e}", self.addr)))?;
        if status == http::StatusCode::UNAUTHORIZED {
            return Err(CliError::Refused(format!(
                "the admin API at {} needs its token: pass --admin-token-file",
                self.addr
            )));
        }
        Ok((status, value))
    }
}

fn error_of(value: &Value) -> String {
    value["error"].as_str().unwrap_or("no reason given").to_owned()
}

/// A tier's row of `orchestrator status`.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct TierRow {
    pub name: String,
    pub plugin: String,
    pub replicas: u64,
    pub ready: u64,
    /// `running` (every replica ready), `degraded` (some), `failing` (a
    /// replica failed or is restarting, or none is ready), `starting`, or `stopping`.
    pub state: String,
    /// Program restarts, summed over replicas (process tiers).
    pub restarts: u64,
    pub listen: Option<String>,
    /// Requests per second into the tier (its listener's, or else its
    /// inbound links'), over the figures' window.
    pub rate: f64,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The rows of `orchestrator status` from an overview.
pub fn status_rows(overview: &Value) -> Vec<TierRow> {
    let status = &overview["status"];
    let figures = &overview["figures"];
    let f = |v: &Value| v.as_f64();
    let empty = Vec::new();
    status["tiers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|tier| {
            let name = tier["name"].as_str().unwrap_or_default().to_owned();
            let instances = tier["instances"].as_array().unwrap_or(&empty);
            let ready = instances.iter().filter(|i| i["ready"] == true).count() as u64;
            let replicas = tier["replicas"].as_u64().unwrap_or(0);
            let failing = instances.iter().any(|i| matches!(i["state"].as_str(), Some("failed" | "restarting")));
            let state = match tier["state"].as_str().unwrap_or_default() {
                "running" if failing || (ready == 0 && replicas > 0) => "failing",
                "running" if ready < replicas => "degraded",
                other => other,
            };
            let restarts = instances.iter().filter_map(|i| i["detail"]["restarts"].as_u64()).sum();
            // Into the tier: what its listener served, or else its inbound links.
            let (rate, error_rate, p99_ms) = match figures["listeners"].get(&name) {
                Some(l) => (f(&l["rate"]).unwrap_or(0.0), f(&l["error_rate"]), f(&l["p99_ms"])),
                None => {
                    let inbound: Vec<&Value> = figures["links"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .filter(|l| l["to"].as_str() == Some(name.as_str()))
                        .collect();
                    let rate = inbound.iter().filter_map(|l| f(&l["rate"])).fold(0.0, |a, b| a + b);
                    let errors = inbound
                        .iter()
                        .map(|l| f(&l["rate"]).unwrap_or(0.0) * f(&l["error_rate"]).unwrap_or(0.0))
                        .fold(0.0, |a, b| a + b);
                    let p99 = inbound
                        .iter()
                        .filter_map(|l| f(&l["p99_ms"]))
                        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                    (rate, (rate > 0.0).then(|| errors / rate), p99)
                }
            };
            TierRow {
                name,
                plugin: tier["plugin"].as_str().unwrap_or_default().to_owned(),
                replicas,
                ready,
                state: state.to_owned(),
                restarts,
                listen: tier["listen"].as_str().map(str::to_owned),
                rate,
                error_rate,
                p99_ms,
            }
        })
        .collect()
}

/// The rows as a table, like `docker compose ps`.
pub fn status_table(rows: &[TierRow]) -> String {
    let heads = ["TIER", "PLUGIN", "READY", "STATE", "RESTARTS", "LISTEN", "REQ/S", "ERRORS", "P99"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.plugin.clone(),
                format!("{}/{}", r.ready, r.replicas),
                r.state.clone(),
                r.restarts.to_string(),
                r.listen.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1}", r.rate),
                r.error_rate.map_or_else(|| "-".into(), |e| format!("{:.1}%", e * 100.0)),
                r.p99_ms.map_or_else(|| "-".into(), |p| format!("{p:.1}ms")),
            ]
        })
        .collect();
    let mut widths = heads.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let mut text = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(c);
            } else {
                let _ = write!(text, "{c:<w$}   ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&heads);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// `orchestrator status`: prints the table (or JSON).
pub async fn status(admin: &AdminClient, json: bool) -> Result<(), CliError> {
    let (code, overview) = admin.json(http::Method::GET, "/admin/overview").await?;
    if !code.is_success() {
        return Err(CliError::Refused(error_of(&overview)));
    }
    let rows = status_rows(&overview);
    let s = &overview["status"];
    let last = &s["last_reload"];
    if json {
        let out = serde_json::json!({
            "topology": s["name"],
            "file": s["file"],
            "generation": s["generation"],
            "state": s["state"],
            "admin": admin.addr.to_string(),
            "last_reload": last,
            "tiers": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "topology `{}` ({}), generation {}, {}, admin {}",
            s["name"].as_str().unwrap_or_default(),
            s["file"].as_str().unwrap_or_default(),
            s["generation"],
            s["state"].as_str().unwrap_or_default(),
            admin.addr
        );
        print!("{}", last_reload(last));
        println!();
        print!("{}", status_table(&rows));
    }
    Ok(())
}

/// The last reload, as `status` prints it: when and how it went; a failed
/// one with its located errors, so that a rejected save is seen at once.
fn last_reload(last: &serde_json::Value) -> String {
    let Some(outcome) = last["outcome"].as_str() else { return String::new() };
    let at = last["at"].as_str().unwrap_or_default();
    let trigger = last["trigger"].as_str().unwrap_or_default();
    let mut out = format!("last reload: {outcome} ({trigger}, {at})");
    match outcome {
        "failed" => {
            out.push_str(": the running topology is unchanged\n");
            let errors: Vec<&serde_json::Value> =
                last["errors"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
            if errors.is_empty() {
                for line in last["error"].as_str().unwrap_or_default().lines() {
                    out.push_str(&format!("  {}\n", crate::logging::terminal::sanitize(line, false)));
                }
            }
            for e in errors {
                let at = [&e["file"], &e["line"], &e["column"]]
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(":");
                let path = e["path"].as_str().filter(|p| !p.is_empty()).map(|p| format!("{p}: ")).unwrap_or_default();
                let message = e["message"].as_str().unwrap_or_default();
                out.push_str(&format!(
                    "  {}\n",
                    crate::logging::terminal::sanitize(&format!("{at}: {path}{message}"), false)
                ));
                if let Some(hint) = e["hint"].as_str() {
                    out.push_str(&format!("    help: {}\n", crate::logging::terminal::sanitize(hint, false)));
                }
            }
        }
        _ => {
            if let Some(summary) = last["summary"].as_str().filter(|s| !s.is_empty()) {
                out.push_str(&format!(": {}", crate::logging::terminal::sanitize(summary, false)));
            }
            out.push('\n');
        }
    }
    out
}

/// What `orchestrator logs` asks for.
#[derive(Clone, Debug, Default)]
pub struct LogsRequest {
    pub tiers: Vec<String>,
    pub follow: bool,
    pub since: Option<String>,
    pub grep: Option<String>,
    pub tail: Option<usize>,
    pub color: bool,
    pub json: bool,
}

/// Compose's palette: cyan, yellow, green, magenta, blue, red.
const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];

/// How lines are prefixed: `tier.replica |`, padded, coloured per tier.
struct Prefixes {
    order: HashMap<String, usize>,
    width: usize,
    color: bool,
}

impl Prefixes {
    fn format(&self, line: &Value) -> String {
        let tier = line["tier"].as_str();
        let who = match (tier, line["replica"].as_u64()) {
            (Some(t), Some(r)) => format!("{t}.{r}"),
            (Some(t), None) => t.to_owned(),
            (None, _) => crate::logging::ring::ORCHESTRATOR.to_owned(),
        };
        let stderr = if line["stream"] == "stderr" { " !" } else { "  " };
        // Safe for a terminal: a program's `\r` or cursor moves rewrite nothing.
        let message = crate::logging::terminal::sanitize(line["message"].as_str().unwrap_or_default(), false);
        let prefix = format!("{who:<w$}{stderr}|", w = self.width);
        match tier.and_then(|t| self.order.get(t)).filter(|_| self.color) {
            Some(i) => format!("\x1b[{}m{prefix}\x1b[0m {message}", PALETTE[i % PALETTE.len()]),
            None => format!("{prefix} {message}"),
        }
    }
}

fn query_string(pairs: &[(&str, String)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        q.push(if q.is_empty() { '?' } else { '&' });
        let _ = write!(q, "{k}={}", percent(v));
    }
    q
}

/// `s`, percent-encoded for a query value.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `orchestrator logs`: prints the kept lines, then (`follow`) each new one
/// as it is logged, until the orchestrator stops.
pub async fn logs(admin: &AdminClient, req: &LogsRequest) -> Result<(), CliError> {
    // The tiers, in the topology's order: each keeps its colour.
    let (code, status) = admin.json(http::Method::GET, "/admin/status").await?;
    if !code.is_success() {
        return Err(CliError::Refused(error_of(&status)));
    }
    let names: Vec<String> = status["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    for tier in &req.tiers {
        if tier != crate::logging::ring::ORCHESTRATOR && !names.contains(tier) {
            return Err(CliError::Refused(format!("no tier `{tier}`; the tiers are: {}", names.join(", "))));
        }
    }
    let width = names.iter().map(|n| n.len() + 3).chain([crate::logging::ring::ORCHESTRATOR.len()]).max().unwrap_or(12);
    let prefixes =
        Prefixes { order: names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect(), width, color: req.color };
    let mut pairs = vec![("follow", req.follow.to_string())];
    if !req.tiers.is_empty() {
        pairs.push(("tiers", req.tiers.join(",")));
    }
    if let Some(since) = &req.since {
        pairs.push(("since", since.clone()));
    }
    if let Some(grep) = &req.grep {
        pairs.push(("grep", grep.clone()));
    }
    if let Some(tail) = req.tail {
        pairs.push(("limit", tail.to_string()));
    }
    let (code, mut body) = admin.send(http::Method::GET, &format!("/admin/logs{}", query_string(&pairs))).await?;
    if !code.is_success() {
        let bytes = body.collect().await.map_err(|e| CliError::Unreachable(e.to_string()))?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(CliError::Refused(error_of(&value)));
    }
    let mut pending: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CliError::Unreachable(format!("the log stream broke: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        let mut out = stdout.lock();
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
            let text = if req.json {
                String::from_utf8_lossy(&line).trim_end().to_owned()
            } else if let Some(missed) = value["skipped"].as_u64() {
                format!("… {missed} lines skipped (this reader fell behind)")
            } else {
                prefixes.format(&value)
            };
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `orchestrator restart`: the replicas restarted.
pub async fn restart(admin: &AdminClient, tier: &str, replica: Option<u32>) -> Result<Vec<u64>, CliError> {
    let mut pairs = vec![("tier", tier.to_owned())];
    if let Some(r) = replica {
        pairs.push(("replica", r.to_string()));
    }
    let (code, answer) = admin.json(http::Method::POST, &format!("/admin/restart{}", query_string(&pairs))).await?;
    match code {
        c if c.is_success() => {
            Ok(answer["restarted"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect())
        }
        http::StatusCode::NOT_FOUND => Err(CliError::Refused(error_of(&answer))),
        _ => Err(CliError::Failed(error_of(&answer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_save_shows_in_the_status_with_where_and_why() {
        let failed = serde_json::json!({
            "outcome": "failed", "at": "2026-12-07T20:00:00.000Z", "trigger": "file",
            "error": "…", "errors": [{ "file": "t.yaml", "line": 19, "column": 27, "path": "links[1].to",
                "message": "unknown tier `bakend`", "hint": "did you mean `backend`?" }]
        });
        assert_eq!(
            last_reload(&failed),
            "last reload: failed (file, 2026-12-07T20:00:00.000Z): the running topology is unchanged\n  t.yaml:19:27: links[1].to: unknown tier `bakend`\n    help: did you mean `backend`?\n"
        );
        let applied =
            serde_json::json!({ "outcome": "applied", "at": "x", "trigger": "admin", "summary": "added cache" });
        assert_eq!(last_reload(&applied), "last reload: applied (admin, x): added cache\n");
        assert_eq!(last_reload(&serde_json::Value::Null), "");
    }

    fn overview() -> Value {
        serde_json::json!({
            "status": {
                "name": "shop", "file": "/x/shop.yaml", "generation": 3, "state": "running",
                "tiers": [
                    { "name": "web", "plugin": "gateway", "replicas": 1, "state": "running", "listen": "127.0.0.1:8080",
                      "instances": [{ "ready": true, "state": "ready" }] },
                    { "name": "backend", "plugin": "process", "replicas": 2, "state": "running", "listen": null,
                      "instances": [
                        { "ready": true, "state": "ready", "detail": { "restarts": 1 } },
                        { "ready": false, "state": "restarting", "detail": { "restarts": 2 } }] },
                    { "name": "cache", "plugin": "kv", "replicas": 2, "state": "running", "listen": null,
                      "instances": [{ "ready": true, "state": "ready" }, { "ready": false, "state": "starting" }] },
                ],
            },
            "figures": {
                "listeners": { "web": { "rate": 12.5, "error_rate": 0.02, "p99_ms": 4.0 } },
                "links": [
                    { "from": "web", "to": "backend", "link": "backend", "rate": 10.0, "error_rate": 0.1, "p99_ms": 3.0 },
                    { "from": "web", "to": "backend", "link": "b2", "rate": 10.0, "error_rate": 0.0, "p99_ms": 7.0 },
                ],
            },
        })
    }

    #[test]
    fn a_row_per_tier_with_its_replicas_state_and_traffic_in() {
        let rows = status_rows(&overview());
        let web = &rows[0];
        assert_eq!((web.ready, web.replicas, web.state.as_str(), web.rate), (1, 1, "running", 12.5));
        let backend = &rows[1];
        assert_eq!((backend.ready, backend.state.as_str(), backend.restarts), (1, "failing", 3));
        // Two inbound links: their rates add up, errors weighted, the worse p99.
        assert_eq!((backend.rate, backend.error_rate, backend.p99_ms), (20.0, Some(0.05), Some(7.0)));
        assert_eq!((rows[2].state.as_str(), rows[2].rate, rows[2].error_rate), ("degraded", 0.0, None));
    }

    #[test]
    fn the_table_lines_up_its_columns() {
        let table = status_table(&status_rows(&overview()));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TIER      PLUGIN    READY   STATE"), "{table}");
        assert!(lines[2].starts_with("backend   process   1/2     failing "), "{table}");
        let col = lines[0].find("REQ/S").unwrap();
        assert_eq!(&lines[1][col..col + 4], "12.5", "{table}");
    }

    #[test]
    fn a_line_is_prefixed_with_its_tier_and_replica_and_stderr_marked() {
        let p = Prefixes { order: HashMap::from([("web".into(), 0)]), width: 12, color: false };
        let line = serde_json::json!({ "tier": "web", "replica": 0, "message": "GET /" });
        assert_eq!(p.format(&line), "web.0         | GET /");
        let err = serde_json::json!({ "tier": "web", "replica": 1, "stream": "stderr", "message": "oops" });
        assert_eq!(p.format(&err), "web.1        !| oops");
        let own = serde_json::json!({ "tier": null, "message": "Reload applied." });
        assert_eq!(p.format(&own), "orchestrator  | Reload applied.");
        let coloured = Prefixes { color: true, ..p };
        assert!(coloured.format(&line).starts_with("\x1b[36mweb.0"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_string(&[("grep", "GET /a+b&c".into()), ("tiers", "web,api".into())]),
            "?grep=GET%20%2Fa%2Bb%26c&tiers=web%2Capi"
        );
    }
}
