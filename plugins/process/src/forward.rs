//! Requests to a replica's program, over HTTP/1.1 on loopback, on a small
//! pool of keep-alive connections.
//!
//! Each connection is driven by a task of its own, spawned on the runtime of
//! the thread that opened it. The host serves each incoming connection on one
//! worker thread with a single-threaded runtime, so a request, its
//! connection's task and the answer stay on one thread; idle connections are
//! kept per thread so that it stays so. (Driving the connection from the
//! request's own future instead polled the whole chain of handlers above it
//! once more per request.)

use std::cell::RefCell;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper_util::rt::TokioIo;
use plugin_api::{Headers, Request, Response, StatusCode};
use thread_local::ThreadLocal;

/// `keep-alive`, which `http` has no constant for.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Idle connections kept per replica and thread.
const MAX_IDLE: usize = 256;

/// Hop-by-hop headers: they describe one connection, not the request.
fn hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
        b"content-length",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// One keep-alive connection: the handle to send on. Its task ends when
/// this is dropped (and nothing is in flight), closing the connection.
type Conn = SendRequest<Full<Bytes>>;

/// Keep-alive connections to one program.
pub struct Forwarder {
    port: u16,
    host: HeaderValue,
    /// Idle connections, kept by the thread that used them last.
    idle: ThreadLocal<RefCell<Vec<Conn>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("port", &self.port).finish_non_exhaustive()
    }
}

/// A request on its way to the program.
type Outbound = hyper::Request<Full<Bytes>>;

/// A request as hyper's types carry it, for [`crate::Http`].
pub type HttpRequest = hyper::Request<Bytes>;

/// The program's answer, without the headers that framed it on its connection.
pub type HttpResponse = hyper::Response<Bytes>;

/// Why a request got no answer from the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not sent: nothing reached the program, so it is safe to send again.
    NotDelivered(String),
    /// Sent, maybe processed, and no answer came back.
    NoAnswer(String),
}

/// Why one attempt on one connection got no answer.
enum Failed {
    /// Not sent at all: safe to send again; here is the request back.
    NotSent(String, Box<Outbound>),
    /// Sent, maybe processed.
    NoAnswer(String),
}

impl Forwarder {
    pub fn new(port: u16) -> Self {
        let host = HeaderValue::from_str(&format!("127.0.0.1:{port}")).unwrap_or(HeaderValue::from_static("127.0.0.1"));
        Self { port, host, idle: ThreadLocal::new() }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| format!("cannot connect to the replica on port {}: {e}", self.port))?;
        let _ = stream.set_nodelay(true);
        // A request's head and body in one write (see the listener's `writev`).
        let (sender, io) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk HTTP to the replica: {e}"))?;
        // Its errors reach the request in flight, if any.
        tokio::spawn(async move {
            let _ = io.await;
        });
        Ok(sender)
    }

    fn pooled(&self) -> Option<Conn> {
        let mut conns = self.idle.get()?.borrow_mut();
        std::iter::from_fn(|| conns.pop()).find(|conn| !conn.is_closed())
    }

    fn release(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut conns = self.idle.get_or_default().borrow_mut();
        if conns.len() < MAX_IDLE {
            conns.push(conn);
        }
    }

    fn outbound(&self, req: Request) -> Result<Outbound, String> {
        let uri = req.uri.parse().map_err(|e| format!("bad request URI: {e}"))?;
        let mut out = hyper::Request::new(Full::new(req.body.into_bytes()));
        *out.method_mut() = req.method;
        *out.uri_mut() = uri;
        let headers = out.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        req.headers.for_each_raw(|name, value| {
            if !hop_by_hop(name)
                && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(n, v);
            }
        });
        Ok(out)
    }

    /// `req` made ready to go to the program: its hop-by-hop headers
    /// dropped, and addressed to the program's port. Its `content-length`
    /// (if any) stays: it is the length of the body that goes.
    fn outbound_http(&self, req: HttpRequest) -> Outbound {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        let hop = |n: &HeaderName| hop_by_hop(n.as_str().as_bytes()) && n != HOST && n != CONTENT_LENGTH;
        // Most requests carry none: looked for before anything is removed.
        if headers.keys().any(hop) {
            let names: Vec<HeaderName> = headers.keys().filter(|n| hop(n)).cloned().collect();
            for name in names {
                headers.remove(name);
            }
        }
        headers.insert(HOST, self.host.clone());
        let mut out = hyper::Request::new(Full::new(body));
        *out.method_mut() = parts.method;
        *out.uri_mut() = parts.uri;
        *out.headers_mut() = parts.headers;
        out
    }

    async fn send(&self, mut conn: Conn, req: Outbound) -> Result<HttpResponse, Failed> {
        if let Err(e) = conn.ready().await {
            return Err(Failed::NotSent(e.to_string(), Box::new(req)));
        }
        let resp = conn.try_send_request(req).await.map_err(|mut e| match e.take_message() {
            Some(req) => Failed::NotSent(e.error().to_string(), Box::new(req)),
            None => Failed::NoAnswer(format!("the replica did not answer: {}", e.error())),
        })?;
        let (parts, body) = resp.into_parts();
        let body =
            body.collect().await.map_err(|e| Failed::NoAnswer(format!("the replica's answer broke off: {e}")))?;
        self.release(conn);
        let mut out = hyper::Response::new(body.to_bytes());
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        // Its `content-length` stays: it is the length of the body collected.
        let headers = out.headers_mut();
        let framing = |n: &HeaderName| n == CONNECTION || n == KEEP_ALIVE || n == TRANSFER_ENCODING;
        if headers.keys().any(framing) {
            for name in [CONNECTION, KEEP_ALIVE, TRANSFER_ENCODING] {
                headers.remove(name);
            }
        }
        Ok(out)
    }

    /// Sends `req` to the program. A pooled connection may have been closed
    /// by the program meanwhile: a request it never sent comes back, and goes
    /// again on a fresh one.
    async fn exchange(&self, mut outbound: Outbound) -> Result<HttpResponse, Failure> {
        if let Some(conn) = self.pooled() {
            match self.send(conn, outbound).await {
                Ok(resp) => return Ok(resp),
                Err(Failed::NoAnswer(e)) => return Err(Failure::NoAnswer(e)),
                Err(Failed::NotSent(_, req)) => outbound = *req,
            }
        }
        // Boxed: opening a connection is rare, and its future would make
        // every request's as big.
        Box::pin(self.fresh(outbound)).await
    }

    async fn fresh(&self, req: Outbound) -> Result<HttpResponse, Failure> {
        let conn = self.connect().await.map_err(Failure::NotDelivered)?;
        self.send(conn, req).await.map_err(|failed| match failed {
            Failed::NotSent(e, _) => Failure::NotDelivered(e),
            Failed::NoAnswer(e) => Failure::NoAnswer(e),
        })
    }

    /// Sends `req` to the program. A request that could not be sent is
    /// `not_delivered` (safe to retry elsewhere); one sent without an answer
    /// back is `no_answer`.
    pub async fn forward(&self, req: Request) -> Response {
        let outbound = match self.outbound(req) {
            Ok(r) => r,
            Err(e) => return Response::error(StatusCode::BAD_REQUEST, &e),
        };
        match self.exchange(outbound).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let mut out = Response::new(parts.status).with_body(body);
                out.headers = Headers::from(parts.headers);
                out
            }
            Err(Failure::NotDelivered(e)) => Response::not_delivered(&e),
            Err(Failure::NoAnswer(e)) => Response::no_answer(&e),
        }
    }

    /// [`Forwarder::forward`] for a request and an answer in hyper's types.
    pub async fn forward_http(&self, req: HttpRequest) -> Result<HttpResponse, Failure> {
        self.exchange(self.outbound_http(req)).await
    }
}

/// The status of `GET path` on the program (for probes).
pub async fn get_status(port: u16, path: &str) -> Result<u16, String> {
    let resp = Forwarder::new(port).forward(Request::get(path)).await;
    match resp.failure() {
        Some(_) => Err(format!("GET {path}: {}", String::from_utf8_lossy(&resp.body))),
        None => Ok(resp.status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_to_the_program_without_its_hop_by_hop_headers() {
        let forwarder = Forwarder::new(4321);
        let req = hyper::Request::post("/orders?x=1")
            .header("host", "example.test")
            .header("content-length", "3")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-request-id", "r-1")
            .header("accept", "a")
            .header("accept", "b")
            .body(Bytes::from_static(b"abc"))
            .unwrap();
        let out = forwarder.outbound_http(req);
        assert_eq!((out.method().as_str(), out.uri().to_string().as_str()), ("POST", "/orders?x=1"));
        let mut headers: Vec<_> = out.headers().iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        headers.sort();
        let expected = [
            ("accept", "a"),
            ("accept", "b"),
            ("content-length", "3"),
            ("host", "127.0.0.1:4321"),
            ("x-request-id", "r-1"),
        ];
        assert_eq!(headers, expected);
        assert_eq!(hyper::body::Body::size_hint(out.body()).exact(), Some(3));
    }
}
