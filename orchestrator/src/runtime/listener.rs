//! HTTP listeners for tiers with a `listen` address: every request goes to one
//! of the tier's replicas, round robin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::future::Future as _;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, Uri, header};
use http_body_util::Full;
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
use crate::metrics::{self, ListenerMetrics, Rejected, RequestRecord};
use crate::plugins::{BorrowedRequest, Instance};
use crate::runtime::admission::{Admitted, RateLimited};
use crate::runtime::drain::{Drain, Entered};
use crate::runtime::gate::WakeGated;
use crate::runtime::timeouts::{self, Deadline};
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
        let metrics = metrics::registry().listener(endpoint.tier.as_str());
        let serving = serve(self.listener, Target::Tier(endpoint, metrics), max_body.clone(), stop_rx, workers.clone());
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
    /// A tier's replicas (a tier's `listen` address), and its listener's metrics.
    Tier(Arc<Endpoint>, Arc<ListenerMetrics>),
    /// A tier's outbound link, by name (a process tier's `ORCH_LINK_<NAME>_URL`).
    Link(Weak<LinkTable>, Arc<str>),
    /// The tiers that run here, for other hosts (the peer listener).
    Peer(Arc<PeerInbound>),
}

/// What the peer listener serves: the tiers that run here, to the hosts
/// that present the token.
#[derive(Debug)]
pub struct PeerInbound {
    pub token: Option<String>,
    pub tiers: Arc<arc_swap::ArcSwap<std::collections::HashMap<String, Arc<Endpoint>>>>,
}

/// Serves the peer listener on `listener` until `stop` is set.
pub fn serve_peer(self_: Bound, inbound: PeerInbound, workers: &Workers) -> Listener {
    let (stop, stop_rx) = watch::channel(false);
    let max_body = Arc::new(AtomicU64::new(LINK_MAX_BODY));
    let span = tracing::info_span!("peer", addr = %self_.addr);
    let serving = serve(self_.listener, Target::Peer(Arc::new(inbound)), max_body.clone(), stop_rx, workers.clone());
    let task = tokio::spawn(serving.instrument(span));
    Listener { addr: self_.addr, max_body, stop, task }
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
    let accept_warnings = RateLimited::new();
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
                Ok((stream, peer)) => {
                    // Over the budget: closed at once, before it costs more.
                    let Some(admitted) = workers.admission().admit() else {
                        if let Target::Tier(_, metrics) = &target {
                            metrics.rejected(Rejected::ConnectionLimit);
                        }
                        continue;
                    };
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
                    let conn = Conn { peer, entered, _admitted: admitted };
                    workers.spawn_connection(move || serve_connection(stream, target, max_body, http, conn, span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning, and say so now and then, not every time.
                    if let Some(suppressed) = accept_warnings.ready() {
                        tracing::warn!(error = %e, failed_since_last_warning = suppressed + 1, "Accepting a connection failed.");
                    }
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

/// What a connection holds while it is open.
struct Conn {
    peer: SocketAddr,
    entered: Entered,
    _admitted: Admitted,
}

/// Serves one connection, on the worker that runs this. The listener's span
/// is the parent of what is logged, but is not entered on every poll: that
/// would cost more than the rest of a small request's bookkeeping.
async fn serve_connection(
    stream: std::net::TcpStream,
    target: Target,
    max_body: Arc<AtomicU64>,
    http: hyper::server::conn::http1::Builder,
    conn: Conn,
    span: tracing::Span,
) {
    let Conn { peer, entered, _admitted } = conn;
    let client = client_value(peer);
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(parent: &span, error = %e, "A worker could not take a connection."),
    };
    let metrics = match &target {
        Target::Tier(_, metrics) => Some(metrics.clone()),
        Target::Link(..) | Target::Peer(_) => None,
    };
    if let Some(m) = &metrics {
        m.connection(true);
    }
    let service = service_fn(move |req| {
        let limit = max_body.load(Ordering::Relaxed);
        match &target {
            Target::Tier(endpoint, metrics) => {
                Either::Left(recorded(metrics.start(), req, endpoint.clone(), limit, client.clone()))
            }
            Target::Link(table, name) => {
                Either::Right(Either::Left(handle_link(req, table.clone(), name.clone(), limit)))
            }
            Target::Peer(inbound) => Either::Right(Either::Right(Box::pin(handle_peer(req, inbound.clone(), limit)))),
        }
    });
    if let Err(e) = entered.watch(http.serve_connection(TokioIo::new(stream), service)).await {
        if let Some(m) = &metrics
            && e.is_timeout()
        {
            m.rejected(Rejected::HeaderTimeout);
        }
        tracing::debug!(parent: &span, error = %e, "Connection closed with an error.");
    }
    if let Some(m) = &metrics {
        m.connection(false);
    }
}

/// The span of a request tier `tier`'s listener serves, child of the trace
/// the request came with; the request carries the span's context from now on.
fn server_span(tier: &crate::topology::TierId, req: &mut hyper::Request<Incoming>) -> Option<crate::traces::Span> {
    use opentelemetry::KeyValue;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let parent =
        crate::traces::Parent::Headers { traceparent: header("traceparent"), tracestate: header("tracestate") };
    let span = crate::traces::Span::start(
        format!("{tier} {}", req.method()),
        opentelemetry::trace::SpanKind::Server,
        parent,
        vec![
            KeyValue::new("orchestrator.tier", tier.to_string()),
            KeyValue::new("http.request.method", req.method().to_string()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
        ],
        Vec::new(),
    )?;
    span.carrier().write_into(req.headers_mut());
    Some(span)
}

/// [`handle`]s a request on a tier listener, and records it in the
/// listener's metrics (`record`, when recording is on).
async fn recorded(
    mut record: Option<RequestRecord>,
    mut req: hyper::Request<Incoming>,
    endpoint: Arc<Endpoint>,
    max_body: u64,
    client: HeaderValue,
) -> Result<Response, Infallible> {
    let resp = match crate::traces::enabled().then(|| server_span(&endpoint.tier, &mut req)).flatten() {
        None => handle(req, endpoint, max_body, client, &mut record).await,
        Some(mut span) => {
            let trace = Some(span.context().trace_id());
            // Boxed: kept out of the untraced request's future.
            let handling =
                Box::pin(crate::traces::in_trace(trace, handle(req, endpoint, max_body, client, &mut record)));
            let resp = handling.await;
            span.set(opentelemetry::KeyValue::new("http.response.status_code", i64::from(resp.status().as_u16())));
            if resp.status().is_server_error() {
                span.fail(format!("answered {}", resp.status()));
            }
            resp
        }
    };
    if let Some(record) = record {
        let bytes_out = hyper::body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        record.finish(resp.status().as_u16(), bytes_out);
    }
    Ok(resp)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// How long a request's body may take to arrive, from when its head did.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The request's body, within `max_body` and [`BODY_TIMEOUT`], or the error
/// response.
///
/// A body that comes in one piece is kept as it came. One in many pieces is
/// copied into one buffer as it arrives: each piece hyper hands over holds on
/// to the whole read buffer it was cut from, so keeping thousands of
/// one-byte pieces would hold megabytes. What is kept grows with what was
/// received, never with what a `content-length` announced.
async fn read_body(mut body: Incoming, max_body: u64) -> Result<Bytes, Response> {
    use hyper::body::Body as _;
    let due = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut timer: Option<Deadline> = None;
    let (mut first, mut joined): (Option<Bytes>, Option<BytesMut>) = (None, None);
    let mut total = 0u64;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            // Armed only once the body keeps us waiting.
            Pin::new(timer.get_or_insert_with(|| Deadline::at(due))).poll(cx).map(|()| None)
        })
        .await;
        let frame = match next {
            None => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("the request body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
                ));
            }
            Some(None) => break,
            Some(Some(Err(e))) => {
                return Err(json_error(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}")));
            }
            Some(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > max_body {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than this tier's limit of {max_body} bytes"),
            ));
        }
        match (&mut joined, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(before)) => {
                let mut buf = BytesMut::with_capacity(before.len() + data.len());
                buf.extend_from_slice(&before);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// `path` with its dot segments (`.`, `..`, and `%2e` spelt ones) removed as
/// RFC 3986 §5.2.4 says, so that what is routed is what a program will
/// resolve (Envoy's `normalize_path`); `None` when unchanged. A path with an
/// encoded `/` or `\\` is refused: tiers disagree on what it means.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    if !path.contains("/.") && !path.contains('%') {
        return Ok(None);
    }
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        decoded.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        match escape.to_ascii_lowercase().as_str() {
            "%2e" => decoded.push('.'),
            "%2f" | "%5c" => return Err("the path has an encoded `/` or `\\`"),
            _ => decoded.push_str(escape),
        }
        rest = &rest[at + escape.len()..];
    }
    decoded.push_str(rest);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let normal = format!("/{}", out.join("/"));
    Ok((normal != path).then_some(normal))
}

/// Normalizes the request's path ([`normalize_path`]); the 400 that
/// refuses it, if it is refused.
fn normalize(parts: &mut http::request::Parts) -> Option<Response> {
    let path = match normalize_path(parts.uri.path()) {
        Ok(None) => return None,
        Ok(Some(path)) => path,
        Err(why) => return Some(json_error(StatusCode::BAD_REQUEST, why)),
    };
    let uri = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    match uri.parse() {
        Ok(uri) => {
            parts.uri = uri;
            None
        }
        Err(_) => Some(json_error(StatusCode::BAD_REQUEST, "the path is not a valid URI")),
    }
}

/// A plugin's copy of the headers, with the `X-Forwarded-*` a reverse proxy
/// sets ([`links::http::insert_forwarded`]) written in, and without the
/// orchestrator's own (see [`encoded_headers`]).
fn encoded_headers_forwarded(headers: &http::HeaderMap, client: &HeaderValue) -> Vec<u8> {
    links::http::wire_headers_with(headers, Some(client), is_own)
}

/// The client's address as an `X-Forwarded-For` entry.
fn client_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_canonical().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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
/// `client` as in [`links::http::forward`].
async fn forward(route: &Arc<links::Route>, req: HttpRequest, client: Option<HeaderValue>) -> Response {
    match WakeGated::new(std::pin::pin!(links::http::forward(route, req, client))).await {
        Ok(resp) => resp.map(Full::new),
        Err(e) => json_error(e.status(), &e.message),
    }
}

/// The built-in gateway's handling of a request, done here in hyper's types:
/// the route the gateway picks, and its link. `None` for requests the
/// gateway answers itself or sends on a link in the plugins' form.
///
/// The route's path is given to `record`, for the listener's metrics.
fn gateway_route(
    instance: &Instance,
    uri: &Uri,
    record: &mut Option<RequestRecord>,
) -> Option<(Arc<links::Route>, Option<Uri>)> {
    let gateway = instance.as_gateway()?;
    let (route, target) = gateway.target(uri.path_and_query().map_or("/", |pq| pq.as_str()))?;
    if let Some(record) = record {
        record.route(&route.path);
    }
    let link = instance.links().get(&route.link).filter(|link| link.carries_http())?;
    // A URI that does not parse once rewritten goes the plugin's way, which answers it.
    let target = if route.strip_prefix { Some(target.parse().ok()?) } else { None };
    Some((link, target))
}

async fn handle(
    req: hyper::Request<Incoming>,
    endpoint: Arc<Endpoint>,
    max_body: u64,
    client: HeaderValue,
    record: &mut Option<RequestRecord>,
) -> Response {
    let refused = |record: &mut Option<RequestRecord>, why: Rejected, resp: Response| {
        if let Some(record) = record {
            record.rejected(why);
        }
        resp
    };
    let (mut parts, body) = req.into_parts();
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        let resp = json_error(StatusCode::BAD_REQUEST, "the request has more than one `Host` header");
        return refused(record, Rejected::BadRequest, resp);
    }
    if let Some(resp) = normalize(&mut parts) {
        return refused(record, Rejected::BadRequest, resp);
    }
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(resp) => {
            let why = match resp.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Rejected::BodyTooLarge,
                StatusCode::REQUEST_TIMEOUT => Rejected::BodyTimeout,
                _ => Rejected::BadRequest,
            };
            return refused(record, why, resp);
        }
    };
    if let Some(record) = record {
        record.body(body.len() as u64);
    }
    let Some(instance) = endpoint.pick() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("tier `{}` has no ready replica", endpoint.tier));
    };
    let gateway = instance.as_gateway().is_some();
    if let Some((link, uri)) = gateway_route(&instance, &parts.uri, record) {
        // The gateway's instance counts the call, as if it had handled it.
        let in_flight = instance.enter();
        drop(instance);
        let resp = forward(&link, link_request(parts, body, uri), Some(client)).await;
        drop(in_flight);
        return resp;
    }
    let headers =
        if gateway { encoded_headers_forwarded(&parts.headers, &client) } else { encoded_headers(&parts.headers) };
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // The plugin copies the request before `call` returns.
    let call = instance.call(&BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
    let call = WakeGated::new(call);
    drop((headers, body));
    match call.await {
        Ok(resp) => into_hyper(resp),
        Err(_) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("tier `{}` failed without answering", endpoint.tier))
        }
    }
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
        return Ok(forward(&route, link_request(parts, body, None), None).await);
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

/// Whether `given` (an `authorization` header) presents `token`, compared in
/// constant time.
fn presents(given: Option<&HeaderValue>, token: &str) -> bool {
    let expected = format!("Bearer {token}");
    let Some(given) = given else { return false };
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request from another host for a tier that runs here.
async fn handle_peer(
    req: hyper::Request<Incoming>,
    inbound: Arc<PeerInbound>,
    max_body: u64,
) -> Result<Response, Infallible> {
    if let Some(token) = &inbound.token
        && !presents(req.headers().get(header::AUTHORIZATION), token)
    {
        return Ok(json_error(StatusCode::UNAUTHORIZED, "the peer listener takes requests with the peer token only"));
    }
    let tier = req.headers().get(peer::TIER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let Some(endpoint) = inbound.tiers.load().get(&tier).cloned() else {
        // Refused, not forwarded; a peer takes it as not delivered (a host
        // that has just stopped running the tier, in a move, is not an error).
        let mut resp = json_error(StatusCode::NOT_FOUND, &format!("tier `{tier}` does not run on this host"));
        resp.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("not-here"));
        return Ok(resp);
    };
    if req.uri().path() == "/_orch/peer/ready" {
        return Ok(match endpoint.pick() {
            Some(_) => json_error(StatusCode::OK, "ready"),
            None => json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("tier `{tier}` has no ready replica")),
        });
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(resp) => return Ok(resp),
    };
    let Some(instance) = endpoint.pick() else {
        let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("tier `{tier}` has no ready replica"));
        resp.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("no-ready-replica"));
        return Ok(resp);
    };
    // The caller's headers, a delivery's own among them (peers are trusted),
    // but for what addressed the request here.
    let mut headers = Vec::with_capacity(256);
    let kept = parts
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() != peer::TIER_HEADER && *n != header::AUTHORIZATION)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    encode_headers(kept, &mut headers);
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let call = instance.call(&BorrowedRequest::new(parts.method.as_str().as_bytes(), uri.as_bytes(), &headers, &body));
    drop((headers, body));
    Ok(match call.await {
        // The replica did not take it: the caller may send it elsewhere.
        Ok(resp) if resp.status == plugin_api::abi::NOT_DELIVERED => {
            let mut refused = into_hyper(resp);
            refused.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("not-delivered"));
            refused
        }
        Ok(resp) => into_hyper(resp),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("tier `{tier}` failed without answering")),
    })
}

fn into_hyper(raw: RawResponse) -> Response {
    if raw.status == plugin_api::abi::NO_ANSWER || raw.status == plugin_api::abi::NOT_DELIVERED {
        return json_error(StatusCode::BAD_GATEWAY, &String::from_utf8_lossy(raw.body.as_bytes()));
    }
    links::http::from_raw(raw).map(Full::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_encoded_or_not() {
        let n = |p: &str| normalize_path(p).map(|c| c.unwrap_or_else(|| p.to_owned()));
        assert_eq!(n("/api/users"), Ok("/api/users".into()));
        assert_eq!(normalize_path("/api/users"), Ok(None));
        assert_eq!(n("/api/../admin"), Ok("/admin".into()));
        assert_eq!(n("/api/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/api/%2E%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/static/../admin"), Ok("/admin".into()));
        assert_eq!(n("/a/./b/../c"), Ok("/a/c".into()));
        assert_eq!(n("/../../etc/passwd"), Ok("/etc/passwd".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/b/."), Ok("/a/b/".into()));
        assert_eq!(n("/a/.hidden/x"), Ok("/a/.hidden/x".into()));
        assert_eq!(n("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(n("/a%2"), Ok("/a%2".into()));
        assert!(normalize_path("/api/..%2fadmin").is_err());
        assert!(normalize_path("/api/..%5Cadmin").is_err());
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        links::http::insert_forwarded(&mut headers, &client_value("10.1.2.3:5555".parse().unwrap()));
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        links::http::insert_forwarded(&mut headers, &client_value("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    }

    #[test]
    fn a_plugin_gets_the_forwarded_headers_once_in_its_copy() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let encoded = encoded_headers_forwarded(&headers, &client_value("10.1.2.3:5555".parse().unwrap()));
        let decoded: Vec<(String, String)> = plugin_api::abi::decode_headers(&encoded)
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            decoded,
            [
                pair("host", "shop.example"),
                pair("x-forwarded-for", "203.0.113.9, 10.1.2.3"),
                pair("x-forwarded-proto", "http"),
                pair("x-forwarded-host", "shop.example"),
            ]
        );
        // The request's own map is left as it came.
        assert_eq!(headers.len(), 3);
    }
}
