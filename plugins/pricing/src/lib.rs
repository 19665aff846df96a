//! An RPC tier: `pricing.Pricing/Quote` answers the price of a quantity of an
//! item. Messages are JSON here; to the orchestrator they are opaque bytes.
//!
//! - request: `{"item": "widget", "quantity": 3}`
//! - answer: `{"item": "widget", "quantity": 3, "unit_price": 2.5, "total": 7.5, "replica": 0}`
//!   (and `"host"`, the `ORCH_HOST` of the replica that answered, on a
//!   placed topology)
//! - errors: `INVALID_ARGUMENT` (unreadable request), `NOT_FOUND` (unknown
//!   item), `UNIMPLEMENTED` (other methods).
//!
//! Configuration: `prices` (item → unit price; a small default list).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use plugin_api::prelude::*;
use plugin_api::rpc::Code;
use plugin_api::serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Pricing {
    pub prices: BTreeMap<String, f64>,
}

impl Default for Pricing {
    fn default() -> Self {
        let prices = [("widget", 2.5), ("gadget", 10.0), ("gizmo", 0.75)];
        Self { prices: prices.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }
    }
}

#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde")]
struct Quote {
    item: String,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

impl Plugin for Pricing {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rpc];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let bad: Vec<ConfigIssue> = self
            .prices
            .iter()
            .filter(|(_, p)| !p.is_finite() || **p < 0.0)
            .map(|(item, p)| ConfigIssue::new(format!("prices.{item}"), format!("{p} is not a price")))
            .collect();
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    async fn handle(&self, req: Request, cx: Context) -> Response {
        match req.rpc_method() {
            Some("pricing.Pricing/Quote") => {}
            Some(other) => return Response::rpc_error(Code::Unimplemented, &format!("no method {other}")),
            None => return Response::rpc_error(Code::Unimplemented, "this tier answers RPC calls only"),
        }
        let quote: Quote = match plugin_api::serde_json::from_slice(&req.body) {
            Ok(q) => q,
            Err(e) => {
                return Response::rpc_error(
                    Code::InvalidArgument,
                    &format!("expected {{\"item\", \"quantity\"}}: {e}"),
                );
            }
        };
        let Some(unit_price) = self.prices.get(&quote.item) else {
            return Response::rpc_error(Code::NotFound, &format!("no price for `{}`", quote.item));
        };
        let mut answer = json!({
            "item": quote.item,
            "quantity": quote.quantity,
            "unit_price": unit_price,
            "total": unit_price * f64::from(quote.quantity),
            "replica": cx.replica(),
        });
        // On a placed topology, which host answered too.
        if let Some(host) = cx.env("ORCH_HOST") {
            answer["host"] = host.into();
        }
        Response::rpc(answer.to_string())
    }
}

export_plugin!(Pricing);

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::Value;
    use plugin_api::testing::TestHost;

    use super::*;

    #[test]
    fn quotes_known_items() {
        let pricing = TestHost::new().start::<Pricing>(json!({})).unwrap();
        let resp = pricing.call(Request::rpc("pricing.Pricing/Quote", r#"{"item":"widget","quantity":3}"#));
        let answer: Value = plugin_api::serde_json::from_slice(&resp.into_rpc().unwrap()).unwrap();
        assert_eq!(answer["total"], 7.5);
    }

    #[test]
    fn errors_are_statuses() {
        let pricing = TestHost::new().start::<Pricing>(json!({ "prices": { "x": 1.0 } })).unwrap();
        let code = |req| pricing.call(req).rpc_status().code;
        assert_eq!(code(Request::rpc("pricing.Pricing/Quote", r#"{"item":"widget"}"#)), Code::NotFound);
        assert_eq!(code(Request::rpc("pricing.Pricing/Quote", "not json")), Code::InvalidArgument);
        assert_eq!(code(Request::rpc("pricing.Pricing/Other", "{}")), Code::Unimplemented);
        assert_eq!(code(Request::get("/")), Code::Unimplemented);
    }

    #[test]
    fn negative_prices_are_config_errors() {
        let issues = TestHost::new().validate::<Pricing>(json!({ "prices": { "x": -1.0 } }));
        assert_eq!(issues[0].path, "prices.x");
    }
}
