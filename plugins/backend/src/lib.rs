//! The backend tier of the hello topology: for a POSTed JSON `{"message": M}`
//! it answers `{"message": G, "data": M}`, where G is the configured greeting.

#![forbid(unsafe_code)]

use plugin_api::prelude::*;

/// Configuration: `greeting` (default `Hello Python!`).
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Backend {
    pub greeting: String,
}

impl Default for Backend {
    fn default() -> Self {
        Self { greeting: "Hello Python!".to_owned() }
    }
}

#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde")]
struct Incoming {
    message: plugin_api::serde_json::Value,
}

#[derive(Serialize)]
#[serde(crate = "plugin_api::serde")]
struct Outgoing<'a> {
    message: &'a str,
    data: plugin_api::serde_json::Value,
}

impl Plugin for Backend {
    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if self.greeting.trim().is_empty() {
            return Err(vec![
                ConfigIssue::new("greeting", "the greeting is empty")
                    .with_hint("set a non-empty `greeting`, e.g. \"Hello Python!\""),
            ]);
        }
        Ok(())
    }

    async fn handle(&self, req: Request, _cx: Context) -> Response {
        if req.method != plugin_api::Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "POST a JSON object {\"message\": ...}");
        }
        match req.json::<Incoming>() {
            Ok(incoming) => Response::json(&Outgoing { message: &self.greeting, data: incoming.message }),
            Err(e) => Response::error(StatusCode::BAD_REQUEST, &format!("expected a JSON object with `message`: {e}")),
        }
    }
}

export_plugin!(Backend);

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::{Value, json};
    use plugin_api::testing::TestHost;

    use super::*;

    #[test]
    fn answers_with_greeting_and_data() {
        let backend = TestHost::new().start::<Backend>(json!({ "greeting": "Hi!" })).unwrap();
        let resp = backend.call(Request::post("/backend").with_json(&json!({ "message": "Hello Go!" })));
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json_body::<Value>().unwrap(), json!({ "message": "Hi!", "data": "Hello Go!" }));
    }

    #[test]
    fn greeting_defaults_to_hello_python() {
        let backend = TestHost::new().start::<Backend>(json!({})).unwrap();
        let resp = backend.call(Request::post("/").with_json(&json!({ "message": 1 })));
        assert_eq!(resp.json_body::<Value>().unwrap(), json!({ "message": "Hello Python!", "data": 1 }));
    }

    #[test]
    fn bad_json_is_a_400() {
        let backend = TestHost::new().start::<Backend>(json!({})).unwrap();
        let resp = backend.call(Request::post("/").with_body("not json"));
        assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn config_errors_are_located() {
        let host = TestHost::new();
        let issues = host.validate::<Backend>(json!({ "greting": "x" }));
        assert_eq!(issues.len(), 1);
        assert!(issues[0].message.contains("unknown field `greting`"), "{issues:?}");
        let issues = host.validate::<Backend>(json!({ "greeting": " " }));
        assert_eq!(issues[0].path, "greeting");
    }
}
