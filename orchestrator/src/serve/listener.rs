//! HTTP listeners: an accept loop within the connection budget, each
//! connection served on a worker until it closes or the listener drains,
//! requests handed to a [`Handler`] that decides what they reach (a tier's
//! replicas, a link, the tiers of this host for the others).
//!
//! Also what every handler needs of a request on the way in: its body read
//! within a limit and a deadline ([`read_body`]), its path normalized
//! ([`normalize_path`]), and the JSON error answers ([`json_error`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::admission::{Admitted, RateLimited};
use super::drain::{Drain, Entered};
use super::idle::{Activity, Expired, Timeouts, Tracked, Watchdog};
use super::timeouts::{self, Deadline};
use super::workers::Workers;
use crate::metrics::{ListenerMetrics, Rejected};

/// An answer with its whole body.
pub type Response = hyper::Response<Full<Bytes>>;

/// What a listener does with the requests it reads. Every request reaches
/// it with one `Host` at most and its path normalized ([`normalize`]): the
/// listener refuses the others itself, whatever the handler.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The body of its answers.
    type Body: hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static;

    /// `resp` (an error the listener answers itself) in this handler's body.
    fn answer(resp: Response) -> hyper::Response<Self::Body>;

    /// Answers `req`, whose body may be read up to `max_body` bytes; `client`
    /// is the address it came from, as an `X-Forwarded-For` entry.
    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        max_body: u64,
        client: &HeaderValue,
    ) -> impl Future<Output = hyper::Response<Self::Body>> + Send + use<Self>;

    /// The listener's metrics, if it has any: connections and rejections
    /// are counted there.
    fn metrics(&self) -> Option<&Arc<ListenerMetrics>> {
        None
    }
}

/// The protocols a listener speaks.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// HTTP/1.1 (tier listeners, a program's REST link listener).
    Http1,
    /// Cleartext HTTP/2 (a program's gRPC link listener).
    Http2,
    /// HTTP/1.1 and HTTP/2, as each client opens with, over TLS when `tls`
    /// is set (the peer listener).
    Any { tls: Option<std::sync::Arc<rustls::ServerConfig>> },
}

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

    /// A listener already bound (a link listener's, bound synchronously).
    pub fn from_listener(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// Starts serving `handler` in `protocol` on `workers`, its requests'
    /// bodies up to `max_body` bytes, within `span`.
    pub fn serve<H: Handler>(
        self,
        handler: H,
        protocol: Protocol,
        max_body: u64,
        workers: &Workers,
        span: tracing::Span,
    ) -> Listener {
        let (stop, stop_rx) = watch::channel(false);
        let max_body = Arc::new(AtomicU64::new(max_body));
        let serving = serve(self.listener, handler, protocol, max_body.clone(), stop_rx, workers.clone());
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

    /// Stops accepting and closes the connections at once.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// How long a client may take to send a request's head, by default
/// (`--header-timeout`; see [`super::idle`] for the other timeouts).
pub const HEADER_TIMEOUT: Duration = super::idle::DEFAULT.header;

async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    protocol: Protocol,
    max_body: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    workers: Workers,
) {
    let drain = Drain::new();
    let accept_warnings = RateLimited::new();
    // This listener's connections, against its share of the budget.
    let mine = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over the budget: closed at once, before it costs more.
                    let Some(admitted) = workers.admission().admit(&mine) else {
                        if let Some(metrics) = handler.metrics() {
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
                    let (handler, protocol, max_body) = (handler.clone(), protocol.clone(), max_body.clone());
                    let entered = drain.enter();
                    let span = tracing::Span::current();
                    let conn = Conn { peer, entered, _admitted: admitted, timeouts: workers.timeouts() };
                    workers.spawn_connection(move || serve_connection(stream, handler, protocol, max_body, conn, span));
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
    timeouts: Timeouts,
}

/// The HTTP/1.1 server's settings.
fn http1(timeouts: &Timeouts) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(timeouts::HyperTimer).header_read_timeout(timeouts.header).keep_alive(true);
    // An answer's head and body in one buffer, one write: for the small
    // messages most are, one buffer costs the kernel less than a vectored
    // write of two, and copying the body into it costs little. (With the
    // process plugin's requests written the same way: about 0.7 µs of CPU
    // less per proxied request here, the program's side included.)
    http.writev(false);
    http
}

/// The server for both protocols (see [`http1`]); HTTP/2's streams per
/// connection are bounded.
fn any(timeouts: &Timeouts) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(timeouts::HyperTimer).header_read_timeout(timeouts.header).keep_alive(true).writev(false);
    http.http2().timer(timeouts::HyperTimer).max_concurrent_streams(MAX_STREAMS);
    http
}

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_STREAMS: u32 = 256;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection closed with an error.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Expired(#[from] Expired),
}

impl ConnError {
    fn is_timeout(&self) -> bool {
        match self {
            Self::Http(e) => e.is_timeout(),
            Self::Other(e) => e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout),
            Self::Tls(_) => false,
            Self::Expired(_) => true,
        }
    }
}

/// What watches a connection: its listener's drain and its watchdog.
struct Watch {
    entered: Entered,
    activity: Arc<Activity>,
    timeouts: Timeouts,
}

impl Watch {
    fn over<C: super::drain::Graceful>(self, conn: C) -> super::drain::Watched<Watchdog<C>> {
        self.entered.watch(Watchdog::new(conn, self.activity, self.timeouts))
    }
}

/// Whether `path` has a dot segment or an escape: one pass over its bytes
/// (a substring search sets up more than most paths are long).
fn may_need_normalizing(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in path {
        if b == b'%' || (b == b'.' && previous == b'/') {
            return true;
        }
        previous = b;
    }
    false
}

/// A connection's end, as the watchdog and hyper tell it.
fn ended<E: Into<ConnError>>(out: Result<Result<(), E>, Expired>) -> Result<(), ConnError> {
    // (The `Any` server's errors are boxed, mapped before.)
    match out {
        Ok(served) => served.map_err(Into::into),
        Err(expired) => Err(expired.into()),
    }
}

/// The request, or the answer that refuses it: more than one `Host`, or a
/// path that does not normalize ([`normalize`]).
fn checked(req: hyper::Request<Incoming>) -> Result<hyper::Request<Incoming>, Box<Response>> {
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Box::new(json_error(StatusCode::BAD_REQUEST, "the request has more than one `Host` header")));
    }
    if !may_need_normalizing(req.uri().path().as_bytes()) {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    match normalize(&mut parts) {
        None => Ok(hyper::Request::from_parts(parts, body)),
        Some(refused) => Err(Box::new(refused)),
    }
}

/// Serves one connection, on the worker that runs this. The listener's span
/// is the parent of what is logged, but is not entered on every poll: that
/// would cost more than the rest of a small request's bookkeeping.
async fn serve_connection<H: Handler>(
    stream: std::net::TcpStream,
    handler: H,
    protocol: Protocol,
    max_body: Arc<AtomicU64>,
    conn: Conn,
    span: tracing::Span,
) {
    let Conn { peer, entered, _admitted, timeouts } = conn;
    let client = client_value(peer);
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(parent: &span, error = %e, "A worker could not take a connection."),
    };
    let metrics = handler.metrics().cloned();
    if let Some(m) = &metrics {
        m.connection(true);
    }
    let activity = Activity::new();
    let stream = Tracked::new(stream, activity.clone());
    let service = {
        let (metrics, activity) = (metrics.clone(), activity.clone());
        // The handler's future is built in place, in hyper's box: wrapping it
        // in an `async` block moved it (10 KB on the native path) once more
        // for every request.
        service_fn(move |req| {
            use futures_util::FutureExt as _;
            use futures_util::future::Either;
            let in_flight = activity.enter();
            match checked(req) {
                Ok(req) => {
                    Either::Left(handler.handle(req, max_body.load(Ordering::Relaxed), &client).map(move |resp| {
                        drop(in_flight);
                        Ok::<_, std::convert::Infallible>(resp)
                    }))
                }
                Err(refused) => {
                    if let Some(m) = &metrics {
                        m.rejected(Rejected::BadRequest);
                    }
                    Either::Right(std::future::ready(Ok(H::answer(*refused))))
                }
            }
        })
    };
    let watch = Watch { entered, activity, timeouts };
    let served: Result<(), ConnError> = match protocol {
        Protocol::Http1 => ended(watch.over(http1(&timeouts).serve_connection(TokioIo::new(stream), service)).await),
        Protocol::Http2 => {
            let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http.timer(timeouts::HyperTimer).max_concurrent_streams(MAX_STREAMS);
            ended(watch.over(http.serve_connection(TokioIo::new(stream), service)).await)
        }
        Protocol::Any { tls: None } => {
            let http = any(&timeouts);
            let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
            ended(watch.over(conn).await.map(|r| r.map_err(ConnError::Other)))
        }
        Protocol::Any { tls: Some(tls) } => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(tls).accept(stream)).await {
                Ok(Ok(stream)) => {
                    let http = any(&timeouts);
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    ended(watch.over(conn).await.map(|r| r.map_err(ConnError::Other)))
                }
                Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
                Err(_) => Err(ConnError::Tls("the handshake took too long".to_owned())),
            }
        }
    };
    if let Err(e) = served {
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

/// An answer of `status` whose body is `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// How long a request's body may take to arrive, from when its head did.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of request bodies the process holds at once, by default
/// (`--max-body-memory`): past it a request whose body would cross it is
/// answered 503 (with `Retry-After`) as soon as it would, whatever each
/// tier's own `max_body`.
pub const DEFAULT_BODY_MEMORY: u64 = 256 * 1024 * 1024;

/// The process's budget for request bodies (see [`DEFAULT_BODY_MEMORY`]):
/// every listener's bodies count against it while they are read and until
/// the request they came with is answered.
#[derive(Debug)]
pub struct BodyBudget {
    max: AtomicU64,
    held: AtomicU64,
}

static BODIES: BodyBudget = BodyBudget { max: AtomicU64::new(DEFAULT_BODY_MEMORY), held: AtomicU64::new(0) };

impl BodyBudget {
    /// The process's budget.
    pub fn global() -> &'static BodyBudget {
        &BODIES
    }

    /// Sets the budget (`--max-body-memory`), at start.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Bytes of bodies held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more for `held`, if the budget has them.
    fn take(&'static self, held: &mut Held, bytes: u64) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > max {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        held.0 += bytes;
        true
    }
}

/// A request body's share of the [`BodyBudget`], given back when dropped:
/// keep it as long as the body is held.
#[derive(Debug, Default)]
pub struct Held(u64);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0 > 0 {
            BODIES.held.fetch_sub(self.0, Ordering::Relaxed);
        }
    }
}

/// The request's body, within `max_body`, [`BODY_TIMEOUT`] and the
/// process's [`BodyBudget`] (its share held by the [`Held`] returned with
/// it), or the error response.
///
/// A body that comes in one piece is kept as it came. One in many pieces is
/// copied into one buffer as it arrives: each piece hyper hands over holds on
/// to the whole read buffer it was cut from, so keeping thousands of
/// one-byte pieces would hold megabytes. What is kept grows with what was
/// received, never with what a `content-length` announced.
pub async fn read_body(mut body: Incoming, max_body: u64) -> Result<(Bytes, Held), Response> {
    use hyper::body::Body as _;
    let due = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut timer: Option<Deadline> = None;
    let (mut first, mut joined): (Option<Bytes>, Option<BytesMut>) = (None, None);
    let mut total = 0u64;
    let mut held = Held::default();
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
        if !BODIES.take(&mut held, data.len() as u64) {
            let mut resp = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the orchestrator holds as many request bodies as it may (--max-body-memory): try again",
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(resp);
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
    Ok((joined.map(BytesMut::freeze).or(first).unwrap_or_default(), held))
}

/// `path` with its dot segments (`.`, `..`, and `%2e` spelt ones) removed as
/// RFC 3986 §5.2.4 says, so that what is routed is what a program will
/// resolve (Envoy's `normalize_path`); `None` when unchanged. A path with an
/// encoded `/` or `\\` is refused: tiers disagree on what it means.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    if !may_need_normalizing(path.as_bytes()) {
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
pub fn normalize(parts: &mut http::request::Parts) -> Option<Response> {
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

/// The client's address as an `X-Forwarded-For` entry.
pub fn client_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_canonical().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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
        for plain in ["/", "/api/users", "/a.b/c.d", "/v1.2/x"] {
            assert!(!may_need_normalizing(plain.as_bytes()), "{plain}");
        }
        for odd in ["/./", "/x/..", "/%2e", "/a%20b", "/."] {
            assert!(may_need_normalizing(odd.as_bytes()), "{odd}");
        }
        assert!(normalize_path("/api/..%5Cadmin").is_err());
    }
}
