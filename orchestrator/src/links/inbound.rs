//! Requests that come in through a listener and go on a link: a program's
//! link listeners (`ORCH_LINK_<NAME>_URL`), and the conversions from a
//! listener's request to a link's and from a handler's answer to a
//! listener's, which tier listeners share.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use plugin_api::abi::{RawResponse, encode_headers};

use super::http::HttpRequest;
use super::{LinkTable, Route};
use crate::plugins::BorrowedRequest;
use crate::serve::gate::WakeGated;
use crate::serve::listener::{Handler, Response, json_error, read_body};

/// Largest request body a link listener accepts.
pub const LINK_MAX_BODY: u64 = 64 * 1024 * 1024;

/// A program's listener for one link of its tier's (by name), while the
/// link table lives.
#[derive(Clone)]
pub struct LinkHandler {
    pub table: Weak<LinkTable>,
    pub name: Arc<str>,
}

impl Handler for LinkHandler {
    type Body = Full<Bytes>;

    fn answer(resp: Response) -> Response {
        resp
    }

    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        max_body: u64,
        _client: &HeaderValue,
    ) -> impl Future<Output = Response> + Send + use<> {
        handle_link(req, self.table.clone(), self.name.clone(), max_body)
    }
}

/// The request's headers for a handler. Headers named `orch-…` are the
/// orchestrator's own (a queue delivery's id and attempt): a request from
/// outside cannot pass for a delivery, so they are dropped.
pub fn encoded_headers(headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let theirs = headers.iter().filter(|(n, _)| !is_own(n));
    encode_headers(theirs.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())), &mut out);
    out
}

pub fn is_own(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("orch-")
}

/// `req` as a link takes it ([`super::http::forward`]): the orchestrator's
/// own headers dropped (see [`encoded_headers`]), and its URI `uri` (a path
/// and query), or the request's own in origin form.
pub fn link_request(parts: http::request::Parts, body: Bytes, uri: Option<Uri>) -> HttpRequest {
    let mut headers = parts.headers;
    if headers.keys().any(is_own) {
        let own: Vec<_> = headers.keys().filter(|n| is_own(n)).cloned().collect();
        for name in own {
            headers.remove(name);
        }
    }
    let uri = match uri {
        Some(uri) => uri,
        None if parts.uri.scheme().is_none() => parts.uri,
        None => parts.uri.path_and_query().cloned().map_or(Uri::from_static("/"), Uri::from),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// Sends `req` on REST link `route`, and its answer or error back.
/// `client` as in [`super::http::forward`].
pub async fn forward(route: &Arc<Route>, req: HttpRequest, client: Option<HeaderValue>) -> Response {
    match WakeGated::new(std::pin::pin!(super::http::forward(route, req, client))).await {
        Ok(resp) => resp.map(Full::new),
        Err(e) => json_error(e.status(), &e.message),
    }
}

async fn handle_link(req: hyper::Request<Incoming>, table: Weak<LinkTable>, name: Arc<str>, max_body: u64) -> Response {
    let (parts, body) = req.into_parts();
    // The body's share of the process's budget, held until this answers.
    let (body, _held) = match read_body(body, max_body).await {
        Ok(read) => read,
        Err(resp) => return resp,
    };
    let Some(route) = table.upgrade().and_then(|t| t.get(&name)) else {
        return json_error(StatusCode::BAD_GATEWAY, &format!("link `{name}` no longer exists"));
    };
    if route.carries_http() {
        return forward(&route, link_request(parts, body, None), None).await;
    }
    let headers = encoded_headers(&parts.headers);
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let call =
        super::call(&route, &BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
    drop((headers, body));
    match WakeGated::new(std::pin::pin!(call)).await {
        Ok(resp) => into_hyper(resp),
        Err(e) => json_error(e.status(), &e.message),
    }
}

/// A handler's answer as a listener's.
pub fn into_hyper(raw: RawResponse) -> Response {
    if raw.status == plugin_api::abi::NO_ANSWER || raw.status == plugin_api::abi::NOT_DELIVERED {
        return json_error(StatusCode::BAD_GATEWAY, &String::from_utf8_lossy(raw.body.as_bytes()));
    }
    super::http::from_raw(raw).map(Full::new)
}
