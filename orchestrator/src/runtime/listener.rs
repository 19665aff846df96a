//! HTTP listeners for tiers with a `listen` address: every request goes to one
//! of the tier's replicas, round robin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use plugin_api::abi::{RawResponse, encode_headers};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use futures_util::future::Either;

use crate::links::http::HttpRequest;
use crate::links::{self, Endpoint, LinkTable};
use crate::plugins::{BorrowedRequest, Instance};
use crate::runtime::drain::{Drain, Entered};
use crate::runtime::gate::WakeGated;
use crate::runtime::timeouts;
use crate::runtime::workers::Workers;

type Response = hyper::Response<Full<Bytes>>;

/// An address bound but not yet served: what a reload prepares before it
/// commits, so that a bind failure changes nothing.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Bound {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// Starts serving `endpoint`: each request goes to one of its replicas.
    /// Connections are served on `workers`.
    pub fn serve(self, endpoint: Arc<Endpoint>, max_body: u64, workers: &Workers) -> Listener {
        let (stop, stop_rx) = watch::channel(false);
        let max_body = Arc::new(AtomicU64::new(max_body));
        let span = tracing::info_span!("listener", tier = %endpoint.tier, addr = %self.addr);
        let serving = serve(self.listener, Target::Tier(endpoint), max_body.clone(), stop_rx, workers.clone());
        let task = tokio::spawn(serving.instrument(span));
        Listener { addr: self.addr, max_body, stop, task }
    }
}

/// A listener and the task serving it. The listener and every connection
/// outlive reloads of the tier behind it: only the replicas it routes to change.
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    max_body: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Changes the request body limit for requests from now on.
    pub fn set_max_body(&self, max_body: u64) {
        self.max_body.store(max_body, Ordering::Relaxed);
    }

    /// Stops accepting, lets in-flight requests finish (at most `drain`), and
    /// closes the connections.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(drain + Duration::from_secs(1), &mut task).await.is_err() {
            tracing::warn!(addr = %self.addr, "Drain timeout: closing the remaining connections.");
            task.abort();
        }
    }
}

/// What a listener routes to.
#[derive(Clone)]
enum Target {
    /// A tier's replicas (a tier's `listen` address).
    Tier(Arc<Endpoint>),
    /// A tier's outbound link, by name (a process tier's `ORCH_LINK_<NAME>_URL`).
    Link(Weak<LinkTable>, Arc<str>),
}

/// Serves link `name` of `table` on `listener`, until the table goes away.
pub fn serve_link(listener: TcpListener, table: Weak<LinkTable>, name: String, workers: Workers) -> JoinHandle<()> {
    let (_stop, stop_rx) = watch::channel(false);
    let span = tracing::info_span!("link", link = %name);
    let target = Target::Link(table, Arc::from(name));
    tokio::spawn(
        async move {
            // The sender lives in this task: the listener stops when it is aborted.
            let _stop = _stop;
            serve(listener, target, Arc::new(AtomicU64::new(LINK_MAX_BODY)), stop_rx, workers).await;
        }
        .instrument(span),
    )
}

/// Largest request body a link listener accepts.
const LINK_MAX_BODY: u64 = 64 * 1024 * 1024;

async fn serve(
    listener: TcpListener,
    target: Target,
    max_body: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    workers: Workers,
) {
    let drain = Drain::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(timeouts::HyperTimer).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
    // An answer's head and body in one buffer, one write: for the small
    // messages most are, one buffer costs the kernel less than a vectored
    // write of two, and copying the body into it costs little. (With the
    // process plugin's requests written the same way: about 0.7 µs of CPU
    // less per proxied request here, the program's side included.)
    http.writev(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    // Handed over as a plain socket: the worker registers it with its own runtime.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "Handing a connection to a worker failed.");
                            continue;
                        }
                    };
                    let (target, max_body, http) = (target.clone(), max_body.clone(), http.clone());
                    let entered = drain.enter();
                    let span = tracing::Span::current();
                    workers.spawn_connection(move || serve_connection(stream, target, max_body, http, entered, span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tracing::info!("Stopped accepting; draining connections.");
    // The caller bounds how long this may take.
    drain.shutdown().await;
}

/// Serves one connection, on the worker that runs this. The listener's span
/// is the parent of what is logged, but is not entered on every poll: that
/// would cost more than the rest of a small request's bookkeeping.
async fn serve_connection(
    stream: std::net::TcpStream,
    target: Target,
    max_body: Arc<AtomicU64>,
    http: hyper::server::conn::http1::Builder,
    entered: Entered,
    span: tracing::Span,
) {
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(parent: &span, error = %e, "A worker could not take a connection."),
    };
    let service = service_fn(move |req| {
        let limit = max_body.load(Ordering::Relaxed);
        match &target {
            Target::Tier(endpoint) => Either::Left(handle(req, endpoint.clone(), limit)),
            Target::Link(table, name) => Either::Right(handle_link(req, table.clone(), name.clone(), limit)),
        }
    });
    if let Err(e) = entered.watch(http.serve_connection(TokioIo::new(stream), service)).await {
        tracing::debug!(parent: &span, error = %e, "Connection closed with an error.");
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The request's body, within `max_body`, or the error response.
async fn read_body(body: Incoming, max_body: u64) -> Result<Bytes, Response> {
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than this tier's limit of {max_body} bytes"),
        )),
        Err(e) => Err(json_error(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}"))),
    }
}

/// The request's headers for a handler. Headers named `orch-…` are the
/// orchestrator's own (a queue delivery's id and attempt): a request from
/// outside cannot pass for a delivery, so they are dropped.
fn encoded_headers(headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let theirs = headers.iter().filter(|(n, _)| !is_own(n));
    encode_headers(theirs.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())), &mut out);
    out
}

fn is_own(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("orch-")
}

/// `req` as a link takes it ([`links::http::forward`]): the orchestrator's
/// own headers dropped (see [`encoded_headers`]), and its URI `uri` (a path
/// and query), or the request's own in origin form.
fn link_request(parts: http::request::Parts, body: Bytes, uri: Option<Uri>) -> HttpRequest {
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
async fn forward(route: &Arc<links::Route>, req: HttpRequest) -> Response {
    match WakeGated::new(std::pin::pin!(links::http::forward(route, req))).await {
        Ok(resp) => resp.map(Full::new),
        Err(e) => json_error(e.status(), &e.message),
    }
}

/// The built-in gateway's handling of a request, done here in hyper's types:
/// the route the gateway picks, and its link. `None` for requests the
/// gateway answers itself or sends on a link in the plugins' form.
fn gateway_route(instance: &Instance, uri: &Uri) -> Option<(Arc<links::Route>, Option<Uri>)> {
    let gateway = instance.as_gateway()?;
    let (route, target) = gateway.target(uri.path_and_query().map_or("/", |pq| pq.as_str()))?;
    let link = instance.links().get(&route.link).filter(|link| link.carries_http())?;
    // A URI that does not parse once rewritten goes the plugin's way, which answers it.
    let target = if route.strip_prefix { Some(target.parse().ok()?) } else { None };
    Some((link, target))
}

async fn handle(req: hyper::Request<Incoming>, endpoint: Arc<Endpoint>, max_body: u64) -> Result<Response, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(resp) => return Ok(resp),
    };
    let Some(instance) = endpoint.pick() else {
        return Ok(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("tier `{}` has no ready replica", endpoint.tier),
        ));
    };
    if let Some((link, uri)) = gateway_route(&instance, &parts.uri) {
        // The gateway's instance counts the call, as if it had handled it.
        let in_flight = instance.enter();
        drop(instance);
        let resp = forward(&link, link_request(parts, body, uri)).await;
        drop(in_flight);
        return Ok(resp);
    }
    let headers = encoded_headers(&parts.headers);
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // The plugin copies the request before `call` returns.
    let call = instance.call(&BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
    let call = WakeGated::new(call);
    drop((headers, body));
    Ok(match call.await {
        Ok(resp) => into_hyper(resp),
        Err(_) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("tier `{}` failed without answering", endpoint.tier))
        }
    })
}

async fn handle_link(
    req: hyper::Request<Incoming>,
    table: Weak<LinkTable>,
    name: Arc<str>,
    max_body: u64,
) -> Result<Response, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(resp) => return Ok(resp),
    };
    let Some(route) = table.upgrade().and_then(|t| t.get(&name)) else {
        return Ok(json_error(StatusCode::BAD_GATEWAY, &format!("link `{name}` no longer exists")));
    };
    if route.carries_http() {
        return Ok(forward(&route, link_request(parts, body, None)).await);
    }
    let headers = encoded_headers(&parts.headers);
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let call =
        links::call(&route, &BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
    drop((headers, body));
    Ok(match WakeGated::new(std::pin::pin!(call)).await {
        Ok(resp) => into_hyper(resp),
        Err(e) => json_error(e.status(), &e.message),
    })
}

fn into_hyper(raw: RawResponse) -> Response {
    if raw.status == plugin_api::abi::NO_ANSWER || raw.status == plugin_api::abi::NOT_DELIVERED {
        return json_error(StatusCode::BAD_GATEWAY, &String::from_utf8_lossy(raw.body.as_bytes()));
    }
    links::http::from_raw(raw).map(Full::new)
}
