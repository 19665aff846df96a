//! A native tier that calls an RPC tier: a REST front for the pricing
//! service. `GET /quote?item=widget&quantity=3` calls `pricing.Pricing/Quote`
//! on its outbound `rpc` link and answers the quote as JSON; the call's gRPC
//! status becomes an HTTP status (`NOT_FOUND` → 404, `INVALID_ARGUMENT` →
//! 400, `DEADLINE_EXCEEDED` → 504, `UNAVAILABLE` → 503, others → 502).
//!
//! Configuration: `link` (default `pricing`), the outbound RPC link to call.

#![forbid(unsafe_code)]

use plugin_api::prelude::*;
use plugin_api::rpc::{Code, Status};
use plugin_api::serde_json::{Value, json};

/// The method called on the link.
pub const METHOD: &str = "pricing.Pricing/Quote";

#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Shop {
    pub link: String,
}

impl Default for Shop {
    fn default() -> Self {
        Self { link: "pricing".to_owned() }
    }
}

impl Plugin for Shop {
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if cx.has_link(&self.link) {
            return Ok(());
        }
        let hint = match cx.links() {
            [] => format!("add a link `{{ from: <this tier>, to: <pricing tier>, kind: rpc, name: {} }}`", self.link),
            links => format!("this tier's links are: {}", links.join(", ")),
        };
        Err(vec![
            ConfigIssue::new("link", format!("this tier has no outbound link named `{}`", self.link)).with_hint(hint),
        ])
    }

    async fn handle(&self, req: Request, cx: Context) -> Response {
        if req.method != plugin_api::Method::GET || req.path() != "/quote" {
            return Response::error(StatusCode::NOT_FOUND, "try GET /quote?item=widget&quantity=3");
        }
        let message = match query_message(req.query().unwrap_or_default()) {
            Ok(message) => message,
            Err(why) => return Response::error(StatusCode::BAD_REQUEST, &why),
        };
        match cx.rpc(&self.link, METHOD, message.to_string()).await {
            Ok(reply) => match plugin_api::serde_json::from_slice::<Value>(reply.as_bytes()) {
                Ok(quote) => Response::json(&quote),
                Err(e) => {
                    Response::error(StatusCode::BAD_GATEWAY, &format!("the pricing tier's answer is not JSON: {e}"))
                }
            },
            Err(status) => {
                cx.warn(format_args!("Quote failed: {status}."));
                Response::error(http_status(&status), &status.to_string())
            }
        }
    }
}

/// The RPC message for a query `item=…&quantity=…`.
fn query_message(query: &str) -> Result<Value, String> {
    let (mut item, mut quantity) = (None, None);
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        match key {
            "item" => item = Some(value.to_owned()),
            "quantity" => {
                quantity = Some(value.parse::<u32>().map_err(|_| format!("quantity `{value}` is not a whole number"))?)
            }
            _ => {}
        }
    }
    let item = item.filter(|i| !i.is_empty()).ok_or("give an item: /quote?item=widget")?;
    Ok(json!({ "item": item, "quantity": quantity.unwrap_or(1) }))
}

/// The HTTP status for a failed call's gRPC status.
fn http_status(status: &Status) -> StatusCode {
    match status.code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

export_plugin!(Shop);

#[cfg(test)]
mod tests {
    use plugin_api::testing::TestHost;
    use plugin_api::{LinkError, LinkErrorKind};

    use super::*;

    fn pricing(req: Request) -> Response {
        assert_eq!(req.rpc_method(), Some(METHOD));
        let asked: Value = plugin_api::serde_json::from_slice(req.body.as_bytes()).unwrap();
        match asked["item"].as_str() {
            Some("widget") => {
                let quantity = asked["quantity"].as_u64().unwrap();
                Response::rpc(
                    json!({ "item": "widget", "quantity": quantity, "total": 2.5 * quantity as f64 }).to_string(),
                )
            }
            _ => Response::rpc_error(Code::NotFound, "no price for that item"),
        }
    }

    #[test]
    fn a_quote_is_asked_over_rpc_and_answered_as_json() {
        let quote = TestHost::new().link("pricing", pricing).start::<Shop>(json!({})).unwrap();
        let answer = quote.call(Request::get("/quote?item=widget&quantity=3"));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json_body::<Value>().unwrap(), json!({ "item": "widget", "quantity": 3, "total": 7.5 }));
        // The quantity defaults to 1.
        assert_eq!(quote.call(Request::get("/quote?item=widget")).json_body::<Value>().unwrap()["quantity"], 1);
    }

    #[test]
    fn rpc_statuses_become_http_statuses() {
        let quote = TestHost::new().link("pricing", pricing).start::<Shop>(json!({})).unwrap();
        let unknown = quote.call(Request::get("/quote?item=sprocket"));
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json_body::<Value>().unwrap()["error"], "NOT_FOUND: no price for that item");
        assert_eq!(quote.call(Request::get("/quote?quantity=2")).status, StatusCode::BAD_REQUEST);
        assert_eq!(quote.call(Request::get("/quote?item=widget&quantity=lots")).status, StatusCode::BAD_REQUEST);

        let slow = TestHost::new()
            .link_result("pricing", |_| Err(LinkError::new(LinkErrorKind::Timeout, "no answer within 2s")))
            .start::<Shop>(json!({}))
            .unwrap();
        assert_eq!(slow.call(Request::get("/quote?item=widget")).status, StatusCode::GATEWAY_TIMEOUT);
        assert!(slow.logs()[0].starts_with("WARN Quote failed: DEADLINE_EXCEEDED"), "{:?}", slow.logs());
    }

    #[test]
    fn a_missing_link_is_a_config_issue() {
        let issues = TestHost::new().validate::<Shop>(json!({ "link": "prices" }));
        assert_eq!(
            (issues[0].path.as_str(), issues[0].message.as_str()),
            ("link", "this tier has no outbound link named `prices`")
        );
    }
}
