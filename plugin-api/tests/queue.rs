//! Deliveries and publishes through the ABI, as the broker and the host
//! exchange them.

use plugin_api::prelude::*;
use plugin_api::queue::{ATTEMPT, BATCH, BatchWriter, MESSAGE_ID, PUBLISH_BATCH, TOPIC, batch_entries};
use plugin_api::serde_json::{Value, json};
use plugin_api::testing::TestHost;

/// Acknowledges messages, except `bad` (an error) and `boom` (a panic).
#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde")]
struct Consumer {}

impl Plugin for Consumer {
    const SERVES: &'static [LinkKind] = &[LinkKind::Queue];

    async fn handle(&self, _req: Request, _cx: Context) -> Response {
        Response::text("a request, not a delivery")
    }

    async fn on_message(&self, msg: Message, _cx: Context) -> Result<(), String> {
        match &*msg.text() {
            "bad" => Err(format!("{} on attempt {} of topic {}", msg.id, msg.attempt, msg.topic)),
            "boom" => panic!("exploded"),
            _ => Ok(()),
        }
    }
}

fn delivery(id: &str, body: &str) -> Request {
    Request::post("/messages/t")
        .with_header(MESSAGE_ID, id)
        .with_header(ATTEMPT, "2")
        .with_header(TOPIC, "t")
        .with_body(body.to_owned())
}

#[test]
fn one_delivery_is_acknowledged_or_refused() {
    let consumer = TestHost::new().start::<Consumer>(json!({})).unwrap();
    assert_eq!(consumer.call(delivery("m-1", "fine")).status, StatusCode::NO_CONTENT);
    let refused = consumer.call(delivery("m-2", "bad"));
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused.json_body::<Value>().unwrap()["error"], "m-2 on attempt 2 of topic t");
    // Without a message id it is an ordinary request.
    assert_eq!(consumer.call(Request::post("/messages/t")).body, "a request, not a delivery");
}

#[test]
fn a_batch_reaches_on_message_one_by_one_and_reports_each_failure() {
    let consumer = TestHost::new().start::<Consumer>(json!({})).unwrap();
    let mut batch = BatchWriter::new();
    for (id, body) in [("m-1", "fine"), ("m-2", "bad"), ("m-3", "boom"), ("m-4", "fine")] {
        batch.push([(MESSAGE_ID.as_bytes(), id.as_bytes()), (ATTEMPT.as_bytes(), &b"1"[..])], body.as_bytes());
    }
    let (count, body) = batch.finish();
    let req =
        Request::post("/messages/t").with_header(TOPIC, "t").with_header(BATCH, &count.to_string()).with_body(body);
    let answer = consumer.call(req);
    assert_eq!(answer.status, StatusCode::OK);
    let failed = answer.json_body::<Value>().unwrap()["failed"].clone();
    assert_eq!(failed[0], json!([1, "m-2 on attempt 1 of topic t"]));
    assert_eq!(failed[1][0], 2);
    assert!(failed[1][1].as_str().unwrap().contains("panicked: exploded"), "{failed}");
    assert_eq!(failed.as_array().unwrap().len(), 2);
}

/// Publishes what it is POSTed, one message per line, on link `q`.
#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde")]
struct Publisher {}

impl Plugin for Publisher {
    async fn handle(&self, req: Request, cx: Context) -> Response {
        let text = String::from_utf8_lossy(&req.body).into_owned();
        match cx.publish_batch("q", text.lines()).await {
            Ok(ids) => Response::json(&ids.iter().map(|p| p.id.as_str()).collect::<Vec<_>>()),
            Err(e) => e.to_response(),
        }
    }
}

#[test]
fn a_batch_of_publishes_is_one_call_with_every_message_in_order() {
    let host = TestHost::new().link("q", |req| {
        assert_eq!(req.headers.get(PUBLISH_BATCH), Some("3"));
        let body = req.body.clone().into_bytes();
        let bodies: Vec<String> =
            batch_entries(&body).map(|e| String::from_utf8_lossy(&e.unwrap().1).into_owned()).collect();
        assert_eq!(bodies, ["a", "b", "c"]);
        Response::json(&json!({ "ids": ["x-1", "x-2", "x-3"], "topic": "q" })).with_status(StatusCode::ACCEPTED)
    });
    let publisher = host.start::<Publisher>(json!({})).unwrap();
    let answer = publisher.call(Request::post("/").with_body("a\nb\nc"));
    assert_eq!(answer.json_body::<Value>().unwrap(), json!(["x-1", "x-2", "x-3"]));
}
