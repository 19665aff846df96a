//! What most plugins need beyond `hello`: a request's query and body (as
//! text or JSON), the tier's links (`get`, `post_json`, or any request with
//! `call`), their errors, the tier's environment and logs. Shown whole in
//! docs/plugin-guide.md; compiled and run by the test suite.

use plugin_api::Method;
use plugin_api::prelude::*;
use plugin_api::serde_json::{Value, json};
use plugin_api::testing::TestHost;

#[derive(Deserialize, Default)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
struct Notes {}

impl Plugin for Notes {
    async fn handle(&self, req: Request, cx: Context) -> Response {
        // The request: its query, and its body as text (or `req.json()`).
        let who = req.query().and_then(|q| q.strip_prefix("who=")).unwrap_or("someone").to_owned();
        let note = String::from_utf8_lossy(req.body.as_bytes()).into_owned();
        // A GET on link `users`; an error becomes the answer a client should get.
        let user: Value = match cx.link("users").get(&format!("/users/{who}")).await {
            Ok(resp) => resp.json_body().unwrap_or(Value::Null),
            Err(e) => return e.to_response(),
        };
        // A POST of JSON on link `store`, and any other request with `call`.
        let stored = cx.link("store").post_json("/notes", &json!({ "who": who, "note": note })).await;
        let cleared = cx.link("store").call(Request::new(Method::DELETE, "/notes/draft")).await;
        let region = cx.env("REGION").unwrap_or_default();
        cx.info(format_args!("Stored a note of {who} ({region})."));
        Response::json(&json!({
            "user": user,
            "stored": stored.map(|r| r.status.as_u16()).ok(),
            "cleared": cleared.is_ok(),
        }))
    }
}

#[test]
fn a_note_is_read_stored_and_logged() {
    let host = TestHost::new()
        .link("users", |req| Response::json(&json!({ "name": req.path().trim_start_matches("/users/") })))
        .link("store", |req| match req.method {
            Method::POST => Response::json(&req.json::<Value>().unwrap()).with_status(StatusCode::CREATED),
            _ => Response::text("gone"),
        });
    let notes = host.start::<Notes>(json!({})).unwrap();
    let resp = notes.call(Request::post("/notes?who=ada").with_body("buy milk"));
    let answer: Value = resp.json_body().unwrap();
    assert_eq!(answer, json!({ "user": { "name": "ada" }, "stored": 201, "cleared": true }));
    assert_eq!(notes.logs(), ["INFO Stored a note of ada ()."]);
}
