//! A fixture for the integration tests. Paths:
//! - `/whoami` — `{"tier": ..., "replica": n, "tag": config.tag}`;
//! - `/env/<key>` — `{"value": the tier's env value or null}`;
//! - `/panic` — panics inside the handler;
//! - `/sleep/<ms>` — logs `Sleeping for <ms> ms.`, answers after `ms` milliseconds on the host's timer;
//! - `/call/<link>/<rest>` — forwards to outbound link `link` with path `/<rest>`;
//! - `/rpc/<link>/<package.Service>/<Method>[?deadline_ms=N]` — calls the
//!   method over RPC link `link` with the request's body and answers
//!   `{"code", "message", "body"}`;
//! - RPC `kit.Kit/Sleep` (message: milliseconds) and `kit.Kit/Panic`;
//! - anything else — echoes method, path and body.

#![forbid(unsafe_code)]

use std::time::Duration;

use plugin_api::prelude::*;
use plugin_api::serde_json::json;

#[derive(Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
struct Testkit {
    tag: String,
    /// Makes validation fail, to test how plugin config errors are located.
    reject: bool,
}

impl Plugin for Testkit {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Rpc];

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
        if path == "/whoami" {
            return Response::json(&json!({ "tier": cx.tier(), "replica": cx.replica(), "tag": self.tag }));
        }
        if let Some(key) = path.strip_prefix("/env/") {
            return Response::json(&json!({ "value": cx.env(key) }));
        }
        if path == "/panic" {
            panic!("asked to panic");
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
