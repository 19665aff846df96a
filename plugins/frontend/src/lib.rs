//! The frontend tier of the hello topology: on `GET /api` it POSTs
//! `{"message": "Hello Go!"}` to its outbound REST link and returns the answer.

#![forbid(unsafe_code)]

use plugin_api::prelude::*;
use plugin_api::serde_json::json;

/// Configuration: `link` (default `backend`), the outbound link to call;
/// `path` (default `/backend`), the path to POST to; `message` (default
/// `Hello Go!`).
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Frontend {
    pub link: String,
    pub path: String,
    pub message: String,
}

impl Default for Frontend {
    fn default() -> Self {
        Self { link: "backend".to_owned(), path: "/backend".to_owned(), message: "Hello Go!".to_owned() }
    }
}

impl Plugin for Frontend {
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if !cx.has_link(&self.link) {
            let hint = match cx.links() {
                [] => {
                    format!("add a link `{{ from: <this tier>, to: <backend tier>, kind: rest, name: {} }}`", self.link)
                }
                links => format!("this tier's links are: {}", links.join(", ")),
            };
            return Err(vec![
                ConfigIssue::new("link", format!("this tier has no outbound link named `{}`", self.link))
                    .with_hint(hint),
            ]);
        }
        Ok(())
    }

    async fn handle(&self, req: Request, cx: Context) -> Response {
        if req.method != plugin_api::Method::GET {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        match cx.link(&self.link).post_json(&self.path, &json!({ "message": self.message })).await {
            Ok(resp) => resp,
            Err(e) => {
                cx.warn(format_args!("Backend call failed: {e}."));
                e.to_response()
            }
        }
    }
}

export_plugin!(Frontend);

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::Value;
    use plugin_api::testing::TestHost;
    use plugin_api::{LinkError, LinkErrorKind};

    use super::*;

    #[test]
    fn posts_message_and_returns_backend_answer() {
        let host = TestHost::new().link("backend", |req| {
            assert_eq!(req.path(), "/backend");
            let body: Value = req.json().unwrap();
            Response::json(&json!({ "message": "Hello Python!", "data": body["message"] }))
        });
        let frontend = host.start::<Frontend>(json!({})).unwrap();
        let resp = frontend.call(Request::get("/api"));
        assert_eq!(resp.json_body::<Value>().unwrap(), json!({ "message": "Hello Python!", "data": "Hello Go!" }));
    }

    #[test]
    fn link_failure_becomes_gateway_error() {
        let host = TestHost::new()
            .link_result("backend", |_| Err(LinkError::new(LinkErrorKind::Timeout, "backend timed out after 2s")));
        let frontend = host.start::<Frontend>(json!({})).unwrap();
        let resp = frontend.call(Request::get("/api"));
        assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(frontend.logs()[0].starts_with("WARN Backend call failed"));
    }

    #[test]
    fn missing_link_is_a_config_issue() {
        let issues = TestHost::new().validate::<Frontend>(json!({ "link": "api" }));
        assert_eq!(issues[0].path, "link");
    }
}
