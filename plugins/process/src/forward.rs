//! Requests to a replica's program, over HTTP on loopback.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use plugin_api::{Request, Response, StatusCode};

/// Hop-by-hop headers: they describe one connection, not the request.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Keep-alive connections to one program.
pub struct Forwarder {
    port: u16,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { port, client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// Sends `req` to the program. A request that could not be sent is
    /// `not_delivered` (safe to retry elsewhere); one sent without an answer
    /// back is `no_answer`.
    pub async fn forward(&self, req: Request) -> Response {
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(format!("http://127.0.0.1:{}{}", self.port, req.uri));
        for (name, value) in req.headers.map() {
            if !hop_by_hop(name.as_str()) {
                builder = builder.header(name, value);
            }
        }
        let outbound = match builder.body(Full::new(req.body.into_bytes())) {
            Ok(r) => r,
            Err(e) => return Response::error(StatusCode::BAD_REQUEST, &format!("cannot forward the request: {e}")),
        };
        let resp = match self.client.request(outbound).await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Response::not_delivered(&format!("cannot connect to the replica: {e}")),
            Err(e) => return Response::no_answer(&format!("the replica did not answer: {e}")),
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Response::no_answer(&format!("the replica's answer broke off: {e}")),
        };
        let mut out = Response::new(parts.status).with_body(body);
        let headers = out.headers.map_mut();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        out
    }
}

/// The status of `GET path` on the program (for probes).
pub async fn get_status(port: u16, path: &str) -> Result<u16, String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("GET {path}: {e}"))?;
    Ok(resp.status().as_u16())
}
