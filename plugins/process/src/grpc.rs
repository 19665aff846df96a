//! RPC calls to a replica's program: gRPC over cleartext HTTP/2.
//!
//! One HTTP/2 connection per replica carries every call (HTTP/2 multiplexes
//! them); it is made on first use and again after it breaks.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plugin_api::rpc::{CONTENT_TYPE, Code, Status, frame, unframe};
use plugin_api::{Headers, Request, Response};

type Sender = SendRequest<Full<Bytes>>;

/// The HTTP/2 connection to one program.
#[derive(Default)]
pub struct GrpcForwarder {
    port: u16,
    sender: Mutex<Option<Sender>>,
}

impl std::fmt::Debug for GrpcForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcForwarder").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Headers that belong to HTTP/2 or to the message, not to the call's metadata.
fn not_metadata(name: &[u8]) -> bool {
    const SKIP: [&[u8]; 6] = [b"content-length", b"content-type", b"te", b"host", b"connection", b"transfer-encoding"];
    SKIP.iter().any(|s| s.eq_ignore_ascii_case(name))
}

impl GrpcForwarder {
    pub fn new(port: u16) -> Self {
        Self { port, sender: Mutex::new(None) }
    }

    async fn sender(&self) -> Result<Sender, String> {
        if let Some(sender) = self.sender.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && !sender.is_closed()
        {
            return Ok(sender);
        }
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| format!("cannot connect to the replica on port {}: {e}", self.port))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk HTTP/2 to the replica: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Sends RPC call `req` (method in its path, message in its body) to the
    /// program and turns its answer back into an RPC response.
    pub async fn forward(&self, req: Request) -> Response {
        let mut sender = match self.sender().await {
            Ok(s) => s,
            Err(e) => return Response::not_delivered(&e),
        };
        let mut outbound = hyper::Request::new(Full::new(frame(&req.body)));
        *outbound.method_mut() = hyper::Method::POST;
        *outbound.uri_mut() = match format!("http://127.0.0.1:{}{}", self.port, req.path()).parse() {
            Ok(uri) => uri,
            Err(e) => return Response::rpc_error(Code::Internal, &format!("bad method: {e}")),
        };
        let headers = outbound.headers_mut();
        headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
        req.headers.for_each_raw(|name, value| {
            if !not_metadata(name)
                && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(n, v);
            }
        });
        if sender.ready().await.is_err() {
            return Response::not_delivered("the HTTP/2 connection to the replica closed");
        }
        let resp = match sender.send_request(outbound).await {
            Ok(resp) => resp,
            Err(e) if e.is_canceled() => return Response::not_delivered(&format!("the call was not sent: {e}")),
            Err(e) => return Response::no_answer(&format!("the replica did not answer: {e}")),
        };
        let (parts, body) = resp.into_parts();
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return Response::no_answer(&format!("the replica's answer broke off: {e}")),
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        // The status is in the trailers, or in the headers of a Trailers-Only answer.
        let status_of = |map: &hyper::HeaderMap| -> Option<Status> {
            let code = map.get("grpc-status")?.to_str().ok()?.parse::<u32>().ok()?;
            let message = map.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
            Some(Status::new(Code::from_u32(code), message))
        };
        let status = match status_of(&trailers).or_else(|| status_of(&parts.headers)) {
            Some(status) => status,
            None if parts.status != hyper::StatusCode::OK => {
                let mut plain = Response::new(parts.status).with_body(data);
                plain.headers = Headers::from(parts.headers);
                return Response::rpc_error(plain.rpc_status().code, &plain.rpc_status().message);
            }
            None => Status::new(Code::Internal, "the replica's answer has no grpc-status"),
        };
        if status.code != Code::Ok {
            return Response::rpc_error(status.code, &status.message);
        }
        match unframe(&data) {
            Ok(message) => {
                let mut answer = Response::rpc(Bytes::copy_from_slice(message));
                for (name, value) in &parts.headers {
                    if !not_metadata(name.as_str().as_bytes()) {
                        answer.headers.map_mut().append(name.clone(), value.clone());
                    }
                }
                answer
            }
            Err(status) => Response::rpc_error(status.code, &status.message),
        }
    }
}
