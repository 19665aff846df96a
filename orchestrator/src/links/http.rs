//! REST calls on a link in hyper's own types, for the host's HTTP listeners.
//!
//! A request that arrives over HTTP and leaves over HTTP to a process tier
//! need not become a plugin request on the way: [`forward`] hands hyper's
//! request to the process plugin's connection pool as it is, and its answer
//! back. To any other tier, it goes through the plugin's handler in the
//! ABI's wire form, as [`super::call`] sends it. Either way the link's
//! timeout, retries and errors are [`super::call`]'s.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use plugin_api::LinkError;
use plugin_api::abi::{RawResponse, decode_headers, encode_headers};

use super::{Outcome, Route, answer_of, attempts, idempotent};
use crate::plugins::{BorrowedRequest, Instance};
use crate::topology::LinkKind;

/// A request with its whole body.
pub type HttpRequest = http::Request<Bytes>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `X-Forwarded-For` with `client` appended to what the request had.
fn forwarded_for(headers: &HeaderMap, client: &HeaderValue) -> Option<HeaderValue> {
    match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(before) if !before.trim().is_empty() => {
            HeaderValue::from_str(&format!("{before}, {}", client.to_str().unwrap_or_default())).ok()
        }
        _ => Some(client.clone()),
    }
}

/// Sets the headers a reverse proxy sets (as nginx and Traefik do): `client`
/// appended to `X-Forwarded-For`, `X-Forwarded-Proto: http`, and
/// `X-Forwarded-Host` from the request's `Host`.
pub fn insert_forwarded(headers: &mut HeaderMap, client: &HeaderValue) {
    headers.reserve(3);
    if let Some(v) = forwarded_for(headers, client) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(http::header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// `headers` in the ABI's wire form, but for those `skip` names, with the
/// headers [`insert_forwarded`] sets written in (replacing the request's own)
/// when `client` is given.
pub fn wire_headers_with(
    headers: &HeaderMap,
    client: Option<&HeaderValue>,
    skip: impl Fn(&HeaderName) -> bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let Some(client) = client else {
        encode_headers(
            headers.iter().filter(|(n, _)| !skip(n)).map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            &mut out,
        );
        return out;
    };
    let chain = forwarded_for(headers, client);
    let host = headers.get(http::header::HOST);
    let theirs = headers
        .iter()
        .filter(|(n, _)| !skip(n) && **n != X_FORWARDED_FOR && **n != X_FORWARDED_PROTO && **n != X_FORWARDED_HOST)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let ours = [
        chain.as_ref().map(|v| (&b"x-forwarded-for"[..], v.as_bytes())),
        Some((&b"x-forwarded-proto"[..], &b"http"[..])),
        host.map(|v| (&b"x-forwarded-host"[..], v.as_bytes())),
    ];
    encode_headers(theirs.chain(ours.into_iter().flatten()), &mut out);
    out
}

/// An answer with its whole body.
pub type HttpResponse = http::Response<Bytes>;

impl super::Answer for HttpResponse {
    fn outcome(&self, route: &Route) -> crate::metrics::Outcome {
        route.outcome_of(self.status().as_u16(), || {
            self.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok())
        })
    }
}

impl Route {
    /// Whether [`forward`] takes requests on this link: REST links do; RPC
    /// links and links into a queue tier rewrite their requests, and take
    /// them in the plugins' form only ([`super::call`]).
    pub fn carries_http(&self) -> bool {
        self.spec.kind == LinkKind::Rest && self.publish_uri.is_none()
    }
}

/// Calls REST link `route` (one that [`Route::carries_http`]) with `req`, as
/// [`super::call`] does.
///
/// `client`, for a request from the gateway, is the client's address as an
/// `X-Forwarded-For` entry: the `X-Forwarded-*` headers are written when the
/// request is handed on — into the header map for a program, into the
/// plugin's copy for a native tier — since adding them to the map up front
/// would grow and rehash it for every request.
pub fn forward(
    route: &Arc<Route>,
    req: HttpRequest,
    client: Option<HeaderValue>,
) -> impl Future<Output = Result<HttpResponse, LinkError>> + Send {
    debug_assert!(route.carries_http());
    let idempotent = idempotent(req.method().as_str().as_bytes());
    if crate::traces::enabled() {
        // Boxed: the traced call's future is large, and this one is in every request's.
        return Either::Right(Box::pin(super::traced::forward(route.clone(), req, client, idempotent)));
    }
    let copy = (route.spec.retries > 0).then(|| (copy_of(&req), client.clone()));
    let first = move |route: &Route| {
        let replica = route.target.pick();
        let first = replica.as_ref().map(|instance| attempt(instance, req, client));
        (replica, first)
    };
    let again =
        copy.map(|(copy, client)| move |instance: &Arc<Instance>| attempt(instance, copy_of(&copy), client.clone()));
    Either::Left(attempts(route.clone(), route.spec.timeout, idempotent, first, again))
}

/// One attempt on `instance`: straight to its program for a process tier's
/// REST request, else through its handler.
pub(super) fn attempt(
    instance: &Arc<Instance>,
    mut req: HttpRequest,
    client: Option<HeaderValue>,
) -> impl Future<Output = Outcome<HttpResponse>> + Send + use<> {
    // A tier on another host: straight to its peer listener, in hyper's types.
    if instance.as_peer().is_some() {
        if let Some(client) = &client {
            insert_forwarded(req.headers_mut(), client);
        }
        let (instance, in_flight) = (instance.clone(), instance.enter());
        return Either::Right(Either::Left(Box::pin(async move {
            let Some(peer) = instance.as_peer() else { return Outcome::NotDelivered("not a peer replica".into()) };
            let outcome = match peer.send(req).await {
                Ok(response) => Outcome::Answered(response),
                Err(peer::Failure::NotDelivered(why)) => Outcome::NotDelivered(why),
                Err(peer::Failure::NoAnswer(why)) => Outcome::NoAnswer(why),
            };
            drop(in_flight);
            outcome
        })));
    }
    let program = instance.as_process().filter(|_| !is_grpc(req.headers())).map(process::Process::http);
    match program {
        Some(Some(program)) => {
            if let Some(client) = &client {
                insert_forwarded(req.headers_mut(), client);
            }
            let in_flight = instance.enter();
            Either::Left(Either::Left(async move {
                let outcome = match program.send(req).await {
                    Ok(response) => Outcome::Answered(response),
                    Err(process::Failure::NotDelivered(why)) => Outcome::NotDelivered(why),
                    Err(process::Failure::NoAnswer(why)) => Outcome::NoAnswer(why),
                };
                drop(in_flight);
                outcome
            }))
        }
        Some(None) => Either::Left(Either::Right(std::future::ready(Outcome::NotDelivered(
            "the replica has not started".to_owned(),
        )))),
        None => {
            let (parts, body) = req.into_parts();
            let headers = wire_headers_with(&parts.headers, client.as_ref(), |_| false);
            let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            // The plugin copies the request before `call` returns.
            let call =
                instance.call(&BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
            Either::Right(Either::Right(async move {
                match answer_of(call).await {
                    Outcome::Answered(raw) => Outcome::Answered(from_raw(raw)),
                    Outcome::NotDelivered(why) => Outcome::NotDelivered(why),
                    Outcome::NoAnswer(why) => Outcome::NoAnswer(why),
                    Outcome::Panicked => Outcome::Panicked,
                }
            }))
        }
    }
}

/// Whether a request is a gRPC call (which a process tier sends over HTTP/2).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(plugin_api::rpc::CONTENT_TYPE.as_bytes()))
}

pub(super) fn copy_of(req: &HttpRequest) -> HttpRequest {
    let mut copy = http::Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Headers a handler must not set: the connection's framing is the listener's.
fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"connection")
}

/// A handler's answer in hyper's types; framing headers, and headers that
/// are not valid HTTP, dropped.
pub fn from_raw(raw: RawResponse) -> HttpResponse {
    let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if raw.body.is_empty() { Bytes::new() } else { Bytes::from_owner(raw.body) };
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for (name, value) in decode_headers(raw.headers.as_bytes()) {
        if is_framing(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use plugin_api::abi::RBuf;

    use super::*;

    #[test]
    fn a_handlers_answer_keeps_its_headers_but_not_its_framing() {
        let mut headers = Vec::new();
        let sent: [(&[u8], &[u8]); 5] = [
            (b"content-type", b"application/json"),
            (b"Content-Length", b"999"),
            (b"transfer-encoding", b"chunked"),
            (b"x-trace", b"t-1"),
            (b"bad header", b"dropped"),
        ];
        encode_headers(sent, &mut headers);
        let raw = RawResponse { status: 201, headers: RBuf::from_vec(headers), body: RBuf::from_vec(b"{}".to_vec()) };
        let resp = from_raw(raw);
        assert_eq!(resp.status(), StatusCode::CREATED);
        let kept: Vec<_> = resp.headers().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(kept, [("content-type", "application/json"), ("x-trace", "t-1")]);
        assert_eq!(resp.body().as_ref(), b"{}");
    }

    #[test]
    fn grpc_is_told_by_the_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert!(is_grpc(&headers));
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }
}
