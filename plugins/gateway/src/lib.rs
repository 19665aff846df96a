//! The built-in `gateway` plugin: the frontend tier of a topology. Give its
//! tier a `listen` address; it routes each request by longest path prefix to
//! one of its outbound REST links, which load-balance over the target's replicas.
//!
//! ```yaml
//! web:
//!   plugin: gateway
//!   listen: 127.0.0.1:8080
//!   config:
//!     routes:
//!       - { path: /api, link: frontend }
//! ```

#![forbid(unsafe_code)]

use std::borrow::Cow;

use plugin_api::prelude::*;

/// One route: requests whose path is `path` or starts with `path/` go to `link`.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
pub struct Route {
    pub path: String,
    pub link: String,
    /// Remove `path` from the request path before forwarding (default false).
    #[serde(default)]
    pub strip_prefix: bool,
}

/// Configuration: `routes`, tried longest path first.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
pub struct Gateway {
    pub routes: Vec<Route>,
}

impl Gateway {
    /// The route for `path`: the longest matching prefix.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().filter(|r| matches(&r.path, path)).max_by_key(|r| r.path.len())
    }

    /// Where a request for `uri` (a path and query) goes: its route, and the
    /// URI to send on the route's link (`uri` itself unless the route strips
    /// its prefix).
    pub fn target<'a>(&self, uri: &'a str) -> Option<(&Route, Cow<'a, str>)> {
        let path = uri.split_once('?').map_or(uri, |(p, _)| p);
        let route = self.route(path)?;
        if !route.strip_prefix {
            return Some((route, Cow::Borrowed(uri)));
        }
        let rest = &uri[route.path.trim_end_matches('/').len()..];
        let uri = if rest.is_empty() || rest.starts_with('?') { Cow::Owned(format!("/{rest}")) } else { rest.into() };
        Some((route, uri))
    }
}

fn matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

impl Plugin for Gateway {
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if !route.path.starts_with('/') {
                issues.push(
                    ConfigIssue::new(
                        format!("routes[{i}].path"),
                        format!("route path `{}` does not start with `/`", route.path),
                    )
                    .with_hint(format!("write `/{}`", route.path)),
                );
            }
            if !cx.has_link(&route.link) {
                let hint = match cx.links() {
                    [] => "this tier has no outbound links: add one under `links:` with `from:` this tier".to_owned(),
                    links => format!("this tier's links are: {}", links.join(", ")),
                };
                issues.push(
                    ConfigIssue::new(
                        format!("routes[{i}].link"),
                        format!("this tier has no outbound link named `{}`", route.link),
                    )
                    .with_hint(hint),
                );
            }
        }
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }

    async fn handle(&self, mut req: Request, cx: Context) -> Response {
        let Some((route, uri)) = self.target(&req.uri) else {
            return Response::error(StatusCode::NOT_FOUND, &format!("no route for {}", req.path()));
        };
        if route.strip_prefix {
            req.uri = uri.into_owned();
        }
        match cx.call(&route.link, req).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(),
        }
    }
}

plugin_api::declare_plugin!(Gateway);

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::{Value, json};
    use plugin_api::testing::TestHost;
    use plugin_api::{LinkError, LinkErrorKind};

    use super::*;

    fn host() -> TestHost {
        TestHost::new()
            .link("api", |req| Response::text(format!("api {}", req.uri)))
            .link("root", |req| Response::text(format!("root {}", req.uri)))
            .link_result("down", |_| Err(LinkError::new(LinkErrorKind::Unavailable, "no ready replica")))
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let gw = host()
            .start::<Gateway>(json!({ "routes": [
                { "path": "/", "link": "root" },
                { "path": "/api", "link": "api" },
                { "path": "/down", "link": "down" },
            ]}))
            .unwrap();
        assert_eq!(gw.call(Request::get("/api")).body, "api /api");
        assert_eq!(gw.call(Request::get("/api/x?y=1")).body, "api /api/x?y=1");
        assert_eq!(gw.call(Request::get("/apix")).body, "root /apix");
        let down = gw.call(Request::get("/down"));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.json_body::<Value>().unwrap(), json!({ "error": "no ready replica" }));
    }

    #[test]
    fn strip_prefix_rewrites_the_path() {
        let gw = host()
            .start::<Gateway>(json!({ "routes": [{ "path": "/api/", "link": "api", "strip_prefix": true }] }))
            .unwrap();
        assert_eq!(gw.call(Request::get("/api/items?x=1")).body, "api /items?x=1");
        assert_eq!(gw.call(Request::get("/api")).body, "api /");
    }

    #[test]
    fn target_is_the_route_and_the_uri_to_send() {
        let gw: Gateway = plugin_api::serde_json::from_value(json!({ "routes": [
            { "path": "/", "link": "root" },
            { "path": "/api/", "link": "api", "strip_prefix": true },
        ]}))
        .unwrap();
        let target = |uri| gw.target(uri).map(|(route, uri)| (route.link.clone(), uri.into_owned()));
        assert_eq!(target("/api/items?x=1"), Some(("api".to_owned(), "/items?x=1".to_owned())));
        assert_eq!(target("/api?x=1"), Some(("api".to_owned(), "/?x=1".to_owned())));
        assert_eq!(target("/apix/y"), Some(("root".to_owned(), "/apix/y".to_owned())));
        let empty: Gateway = plugin_api::serde_json::from_value(json!({ "routes": [] })).unwrap();
        assert!(empty.target("/api").is_none());
    }

    #[test]
    fn unmatched_path_is_a_json_404() {
        let gw = host().start::<Gateway>(json!({ "routes": [{ "path": "/api", "link": "api" }] })).unwrap();
        let resp = gw.call(Request::get("/other"));
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        assert!(resp.json_body::<Value>().unwrap()["error"].is_string());
    }

    #[test]
    fn unknown_link_and_bad_path_are_located_issues() {
        let issues = host().validate::<Gateway>(json!({ "routes": [{ "path": "api", "link": "apy" }] }));
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["routes[0].path", "routes[0].link"]);
    }
}
