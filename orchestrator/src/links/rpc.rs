//! gRPC over HTTP/2 at the edges of RPC links.
//!
//! Between native tiers an RPC is an in-process call whose body is the bare
//! message (see `plugin_api::rpc`). Programs outside the process speak gRPC:
//! a local cleartext HTTP/2 listener per RPC link (`ORCH_LINK_<NAME>_ADDR`)
//! takes their calls, unframes the message, routes each call — one by one,
//! so that calls on one long-lived connection still spread over the target's
//! replicas — and answers with the message framed and the status in trailers.

use std::convert::Infallible;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use plugin_api::abi::{NO_ANSWER, NOT_DELIVERED, encode_headers};
use plugin_api::rpc::{CONTENT_TYPE, Code, Status, frame, unframe};

use super::LinkTable;
use crate::plugins::BorrowedRequest;
use crate::serve::listener::Handler;

/// Largest message a link listener accepts (its HTTP/2 streams are bounded
/// too: [`crate::serve::listener::MAX_STREAMS`]).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

fn grpc_headers(map: &mut HeaderMap) {
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
}

fn status_headers(status: &Status, map: &mut HeaderMap) {
    map.insert("grpc-status", HeaderValue::from(status.code as u32));
    let message: String = status.message.chars().filter(|c| !c.is_control()).collect();
    if let Ok(value) = HeaderValue::from_str(&message.replace('%', "%25")) {
        map.insert("grpc-message", value);
    }
}

/// A response that is only a status ("Trailers-Only" in gRPC's terms).
fn trailers_only(status: &Status) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(Full::new(Bytes::new()).boxed());
    grpc_headers(resp.headers_mut());
    status_headers(status, resp.headers_mut());
    resp
}

/// A program's gRPC listener for RPC link `name` of its tier's, while the
/// link table lives.
#[derive(Clone)]
pub struct RpcHandler {
    pub table: Weak<LinkTable>,
    pub name: Arc<str>,
}

impl Handler for RpcHandler {
    type Body = Body;

    fn answer(resp: crate::serve::listener::Response) -> hyper::Response<Body> {
        resp.map(http_body_util::BodyExt::boxed)
    }

    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        _max_body: u64,
        _client: &HeaderValue,
    ) -> impl Future<Output = hyper::Response<Body>> + Send + use<> {
        handle(req, self.table.clone(), self.name.clone())
    }
}

async fn handle(req: hyper::Request<Incoming>, table: Weak<LinkTable>, name: Arc<str>) -> hyper::Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_MESSAGE + 5).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return trailers_only(&Status::new(Code::ResourceExhausted, format!("cannot read the call: {e}")));
        }
    };
    let message = match unframe(&body) {
        Ok(m) => m,
        Err(status) => return trailers_only(&status),
    };
    let Some(route) = table.upgrade().and_then(|t| t.get(&name)) else {
        return trailers_only(&Status::new(Code::Unavailable, format!("link `{name}` no longer exists")));
    };
    // Metadata passes through as headers; the message goes bare.
    let mut headers = Vec::with_capacity(256);
    encode_headers(
        parts
            .headers
            .iter()
            .filter(|(n, _)| *n != header::CONTENT_LENGTH && *n != header::TE)
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        &mut headers,
    );
    let call = super::call(&route, &BorrowedRequest::new(b"POST", parts.uri.path().as_bytes(), &headers, message));
    let answer = match call.await {
        Err(e) => return trailers_only(&Status::from(e)),
        Ok(raw) if raw.status == NO_ANSWER || raw.status == NOT_DELIVERED => {
            let why = String::from_utf8_lossy(raw.body.as_bytes()).into_owned();
            return trailers_only(&Status::new(Code::Unavailable, why));
        }
        Ok(raw) => plugin_api::Response::from_raw(raw),
    };
    let status = answer.rpc_status();
    if status.code != Code::Ok {
        return trailers_only(&status);
    }
    let mut trailers = HeaderMap::new();
    status_headers(&status, &mut trailers);
    let body = Full::new(frame(&answer.body)).with_trailers(async move { Some(Ok(trailers)) }).boxed();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    // The answer's own metadata, less what gRPC puts elsewhere.
    for (name, value) in answer.headers.map() {
        let n = name.as_str();
        if !matches!(
            n,
            "grpc-status" | "grpc-message" | "content-length" | "content-type" | "transfer-encoding" | "connection"
        ) {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    grpc_headers(resp.headers_mut());
    resp
}
