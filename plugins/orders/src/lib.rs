//! Example tier for `topologies/orders.yaml`: the orders service.
//!
//! - As the `api` tier: `POST /api/orders` with `{"item": "...", "quantity": n}`
//!   checks the order and publishes it on the outbound queue link `orders`;
//!   the answer is `202 {"id": ..., "status": "accepted"}`.
//! - As a `worker` tier: each order the queue tier delivers is processed
//!   (logged and counted); `/admin/status` shows the count per replica.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use plugin_api::prelude::*;
use plugin_api::serde_json::json;

#[derive(Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
struct Orders {
    /// The outbound queue link orders are published on.
    link: Option<String>,
    #[serde(skip)]
    processed: AtomicU64,
}

#[derive(Serialize, Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
struct Order {
    item: String,
    quantity: u32,
}

impl Orders {
    fn link(&self) -> &str {
        self.link.as_deref().unwrap_or("orders")
    }
}

impl Plugin for Orders {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Queue];

    async fn handle(&self, req: Request, cx: Context) -> Response {
        if req.method != plugin_api::Method::POST || req.path() != "/api/orders" {
            return Response::error(StatusCode::NOT_FOUND, "POST an order to /api/orders");
        }
        let order: Order = match req.json() {
            Ok(order) => order,
            Err(e) => {
                let why = format!("an order is {{\"item\": string, \"quantity\": positive integer}}: {e}");
                return Response::error(StatusCode::BAD_REQUEST, &why);
            }
        };
        if order.item.trim().is_empty() || order.quantity == 0 {
            return Response::error(StatusCode::BAD_REQUEST, "an order needs an item and a quantity of at least 1");
        }
        match cx.publish_json(self.link(), &order).await {
            Ok(published) => {
                Response::json(&json!({ "id": published.id, "status": "accepted" })).with_status(StatusCode::ACCEPTED)
            }
            Err(e) => e.to_response(),
        }
    }

    async fn on_message(&self, msg: Message, cx: Context) -> Result<(), String> {
        let order: Order = msg.json().map_err(|e| format!("order {} is unreadable: {e}", msg.id))?;
        let n = self.processed.fetch_add(1, Ordering::Relaxed) + 1;
        cx.info(format_args!(
            "Processed order {} (attempt {}): {} x {} ({n} so far).",
            msg.id, msg.attempt, order.quantity, order.item
        ));
        Ok(())
    }

    fn status(&self) -> plugin_api::serde_json::Value {
        json!({ "processed": self.processed.load(Ordering::Relaxed) })
    }
}

export_plugin!(Orders);

#[cfg(test)]
mod tests {
    use plugin_api::queue::{MESSAGE_ID, TOPIC};
    use plugin_api::serde_json::{Value, json};
    use plugin_api::testing::TestHost;

    use super::*;

    #[test]
    fn an_order_is_checked_then_published() {
        let host = TestHost::new().link("orders", |req| {
            assert_eq!(req.json::<Value>().unwrap(), json!({ "item": "widget", "quantity": 3 }));
            Response::new(StatusCode::ACCEPTED).with_header(MESSAGE_ID, "b-1")
        });
        let api = host.start::<Orders>(json!({})).unwrap();
        let ok = api.call(Request::post("/api/orders").with_json(&json!({ "item": "widget", "quantity": 3 })));
        assert_eq!(ok.status, StatusCode::ACCEPTED);
        assert_eq!(ok.json_body::<Value>().unwrap(), json!({ "id": "b-1", "status": "accepted" }));
        let bad = api.call(Request::post("/api/orders").with_json(&json!({ "item": "widget", "quantity": 0 })));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let junk = api.call(Request::post("/api/orders").with_body("{"));
        assert_eq!(junk.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_full_queue_is_a_503() {
        let host = TestHost::new().link("orders", |_| Response::error(StatusCode::SERVICE_UNAVAILABLE, "full"));
        let api = host.start::<Orders>(json!({})).unwrap();
        let resp = api.call(Request::post("/api/orders").with_json(&json!({ "item": "w", "quantity": 1 })));
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn delivered_orders_are_acknowledged_and_counted() {
        let worker = TestHost::new().start::<Orders>(json!({})).unwrap();
        let delivery = |body: &str| {
            Request::post("/messages/orders")
                .with_header(MESSAGE_ID, "b-1")
                .with_header(TOPIC, "orders")
                .with_body(body.to_owned())
        };
        assert_eq!(worker.call(delivery(r#"{"item":"w","quantity":2}"#)).status, StatusCode::NO_CONTENT);
        // An unreadable order is refused, so the broker retries then dead-letters it.
        assert_eq!(worker.call(delivery("junk")).status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(worker.status()["processed"], 1);
    }
}
