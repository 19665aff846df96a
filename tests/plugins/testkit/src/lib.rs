//! A fixture for the integration tests. Paths:
//! - `/whoami` — `{"tier": ..., "replica": n, "tag": config.tag}`;
//! - `/env/<key>` — `{"value": the tier's env value or null}`;
//! - `/header/<name>` — `{"value": the request's header or null}`;
//! - `/panic` — panics inside the handler;
//! - `/status/<code>` — answers with that status;
//! - `/refuse` — does not take the request (as a replica that is going away);
//! - `/sleep/<ms>` — logs `Sleeping for <ms> ms.`, answers after `ms` milliseconds on the host's timer;
//! - `/call/<link>/<rest>` — forwards to outbound link `link` with path `/<rest>`;
//! - `/rpc/<link>/<package.Service>/<Method>[?deadline_ms=N]` — calls the
//!   method over RPC link `link` with the request's body and answers
//!   `{"code", "message", "body"}`;
//! - RPC `kit.Kit/Sleep` (message: milliseconds) and `kit.Kit/Panic`;
//! - `/publish/<link>?n=N&batch=B` — publishes N messages `<body>-<i>` (i from
//!   0) on queue link `link`, B per call (`publish_batch`; default 1: `publish`),
//!   one call after the other; answers `{"published": [ids], "error"}`;
//! - `/received/<tier>?min=N&unique=U&wait_ms=T` — the messages tier `tier`
//!   received (`[{"id", "attempt", "body", "replica"}]`, in arrival order),
//!   once there are at least N deliveries of at least U distinct messages, or
//!   T ms have passed;
//! - `/release` — lets the held deliveries of `hold: true` tiers complete;
//! - anything else — echoes method, path and body.
//!
//! Messages (all tiers of this plugin record theirs in one list): a body
//! containing `fail-always` fails every attempt, `fail-first` fails the first;
//! with `hold: true` a delivery completes only after `/release`; `delay_ms: N`
//! makes each take N ms.

#![forbid(unsafe_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_listener::Event;
use futures_util::future::{Either, select};
use plugin_api::prelude::*;
use plugin_api::serde_json::json;

#[derive(Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
struct Testkit {
    tag: String,
    /// Makes validation fail, to test how plugin config errors are located.
    reject: bool,
    /// Holds every delivery until `/release`.
    hold: bool,
    /// Takes this long over each delivery.
    delay_ms: u64,
}

/// A message as a tier of this plugin received it: (tier, replica, id, attempt, body).
type Received = (String, u32, String, u32, String);

/// Every message the tiers of this plugin received.
static RECEIVED: Mutex<Vec<Received>> = Mutex::new(Vec::new());
static RELEASED: AtomicBool = AtomicBool::new(false);
/// Notified when a message is received or held deliveries are released.
static CHANGED: Event = Event::new();

/// Completes once `done()` holds (checked again on every change), or after
/// `limit` on the host's timer, whichever comes first.
async fn wait_for(cx: &Context, limit: Option<Duration>, done: impl Fn() -> bool) {
    let mut timeout = std::pin::pin!(async move {
        match limit {
            Some(limit) => cx.sleep(limit).await,
            None => std::future::pending().await,
        }
    });
    loop {
        // Listening before looking, so that no change is missed.
        let listener = CHANGED.listen();
        if done() {
            return;
        }
        if let Either::Right(_) = select(listener, timeout.as_mut()).await {
            return;
        }
    }
}

fn received(tier: &str) -> Vec<plugin_api::serde_json::Value> {
    let all = RECEIVED.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .filter(|r| r.0 == tier)
        .map(
            |(_, replica, id, attempt, body)| json!({ "id": id, "attempt": attempt, "body": body, "replica": replica }),
        )
        .collect()
}

fn query_param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl Plugin for Testkit {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Rpc, LinkKind::Queue];

    async fn on_message(&self, msg: Message, cx: Context) -> Result<(), String> {
        let body = msg.text().into_owned();
        RECEIVED.lock().unwrap_or_else(|e| e.into_inner()).push((
            cx.tier(),
            cx.replica(),
            msg.id.clone(),
            msg.attempt,
            body.clone(),
        ));
        CHANGED.notify(usize::MAX);
        if self.delay_ms > 0 {
            cx.sleep(Duration::from_millis(self.delay_ms)).await;
        }
        if self.hold {
            wait_for(&cx, None, || RELEASED.load(Ordering::Acquire)).await;
        }
        if body.contains("fail-always") || (body.contains("fail-first") && msg.attempt == 1) {
            return Err(format!("refused {} on attempt {}", msg.id, msg.attempt));
        }
        Ok(())
    }

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if self.reject {
            return Err(vec![ConfigIssue::new("reject", "rejected on request").with_hint("set `reject: false`")]);
        }
        Ok(())
    }

    async fn handle(&self, req: Request, cx: Context) -> Response {
        match req.rpc_method() {
            Some("kit.Kit/Sleep") => {
                let ms: u64 = String::from_utf8_lossy(&req.body).trim().parse().unwrap_or(0);
                cx.sleep(Duration::from_millis(ms)).await;
                return Response::rpc(format!("slept {ms}"));
            }
            Some("kit.Kit/Panic") => panic!("asked to panic"),
            Some(other) => {
                return Response::rpc_error(plugin_api::rpc::Code::Unimplemented, &format!("no method {other}"));
            }
            None => {}
        }
        let path = req.path().to_owned();
        if let Some(rest) = path.strip_prefix("/rpc/") {
            let (link, method) = rest.split_once('/').unwrap_or((rest, ""));
            let mut call = Request::rpc(method, req.body.clone());
            if let Some(ms) = req.query().and_then(|q| q.strip_prefix("deadline_ms=")).and_then(|v| v.parse().ok()) {
                call = call.with_deadline(Duration::from_millis(ms));
            }
            let answer = match cx.call(link, call).await {
                Ok(resp) => resp.into_rpc(),
                Err(e) => Err(plugin_api::rpc::Status::from(e)),
            };
            return match answer {
                Ok(body) => Response::json(&json!({ "code": "OK", "body": String::from_utf8_lossy(&body) })),
                Err(status) => Response::json(&json!({ "code": status.code.name(), "message": status.message })),
            };
        }
        if let Some(link) = path.strip_prefix("/publish/") {
            let n: u32 = query_param(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(1);
            let batch: u32 = query_param(&req, "batch").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
            let prefix = String::from_utf8_lossy(&req.body).into_owned();
            let mut ids = Vec::new();
            let mut i = 0;
            while i < n {
                let count = batch.min(n - i);
                let result = if batch == 1 {
                    cx.publish(link, format!("{prefix}-{i}")).await.map(|p| vec![p])
                } else {
                    cx.publish_batch(link, (i..i + count).map(|j| format!("{prefix}-{j}"))).await
                };
                match result {
                    Ok(published) => ids.extend(published.into_iter().map(|p| p.id)),
                    Err(e) => {
                        let body = json!({ "published": ids, "error": e.to_string() });
                        return Response::json(&body).with_status(e.status());
                    }
                }
                i += count;
            }
            return Response::json(&json!({ "published": ids, "error": null }));
        }
        if let Some(tier) = path.strip_prefix("/received/") {
            let number = |key| query_param(&req, key).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            let (min, unique, wait_ms) = (number("min"), number("unique"), number("wait_ms"));
            let enough = || {
                let got = received(tier);
                let distinct: std::collections::HashSet<_> = got.iter().map(|m| m["id"].to_string()).collect();
                got.len() >= min && distinct.len() >= unique
            };
            wait_for(&cx, Some(Duration::from_millis(wait_ms as u64)), enough).await;
            return Response::json(&received(tier));
        }
        if path == "/release" {
            RELEASED.store(true, Ordering::Release);
            CHANGED.notify(usize::MAX);
            return Response::json(&json!({ "released": true }));
        }
        if path == "/whoami" {
            return Response::json(&json!({ "tier": cx.tier(), "replica": cx.replica(), "tag": self.tag }));
        }
        if let Some(key) = path.strip_prefix("/env/") {
            return Response::json(&json!({ "value": cx.env(key) }));
        }
        if let Some(name) = path.strip_prefix("/header/") {
            return Response::json(&json!({ "value": req.headers.get(name) }));
        }
        if path == "/panic" {
            panic!("asked to panic");
        }
        if path == "/refuse" {
            return Response::not_delivered("asked to refuse");
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let status =
                code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            return Response::json(&json!({ "status": status.as_u16() })).with_status(status);
        }
        if let Some(ms) = path.strip_prefix("/sleep/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            cx.info(format_args!("Sleeping for {ms} ms."));
            cx.sleep(Duration::from_millis(ms)).await;
            return Response::json(&json!({ "slept_ms": ms, "replica": cx.replica() }));
        }
        if let Some(rest) = path.strip_prefix("/call/") {
            let (link, uri) = rest.split_once('/').unwrap_or((rest, ""));
            let mut forwarded = req.clone();
            forwarded.uri = format!("/{uri}");
            return match cx.call(link, forwarded).await {
                Ok(resp) => resp,
                Err(e) => e.to_response(),
            };
        }
        Response::json(&json!({
            "method": req.method.as_str(),
            "path": path,
            "body": String::from_utf8_lossy(&req.body),
            "replica": cx.replica(),
        }))
    }
}

export_plugin!(Testkit);
