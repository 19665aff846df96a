//! The admin HTTP API (loopback by default):
//! - `GET /admin/status` — the topology, its generation, tiers, instances,
//!   links and the last reload attempt (JSON). With `?min_generation=N` (or
//!   `?min_attempts=N`, counting reload attempts) it waits until the status
//!   reaches it, at most `wait` (default `10s`), then answers whatever it is:
//!   scripts and tests wait on events instead of sleeping;
//! - `GET /admin/ready` — 200 once the topology runs, 503 before and while stopping;
//! - `GET /admin/health` — 200 while the process serves;
//! - `GET /admin/metrics` — generation, reloads, replicas and ready replicas
//!   per tier, process restarts, connections per connection worker, in the
//!   Prometheus text format;
//! - `POST /admin/reload` — reread the topology and apply what changed; answers
//!   the attempt's record: 200 when applied or unchanged, 422 when it failed;
//! - `/`, `/assets/…`, `GET /admin/overview`, `GET /admin/events`,
//!   `GET /admin/logs`, `POST /admin/restart`, `POST /admin/login`,
//!   `POST /admin/logout` — the dashboard and what it reads and does
//!   ([`dashboard`]).
//!
//! Who may use it (see `docs/security.md`, and [`access`]): every request
//! but `/admin/health`, `/admin/ready`, `/admin/login`, `/admin/logout` and
//! the dashboard's page and assets (which hold no data) carries
//! `Authorization: Bearer <token>`, or the session cookie `POST
//! /admin/login` sets, when a token is
//! set (`--admin-token-file`), which binding an address other than loopback
//! requires. Without a token, a request whose `Host` is a name other than
//! `localhost` is refused (a web page that rebinds its own name to 127.0.0.1
//! cannot read the status). A `POST` that a web page could send cross-site
//! (an `Origin` of another host, `Sec-Fetch-Site: cross-site`, or a form's
//! content type) is refused. Connections are capped, their heads must arrive
//! within [`HEADER_TIMEOUT`], and at most [`MAX_WAITS`] status requests wait at once.

pub mod access;
mod dashboard;
pub mod figures;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::runtime::status::{State, Trigger};
use crate::runtime::{Command, Status};
use crate::serve::admission::{Admission, RateLimited};
use crate::serve::workers::Workers;

/// How long a request's head may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the admin API serves at once (apart from the tiers' budget,
/// so that a flood of a tier's clients does not lock its operator out).
pub const MAX_CONNECTIONS: usize = 256;
/// Status requests waiting for a generation at once.
pub const MAX_WAITS: usize = 64;
/// The longest `?wait=` a status request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub use access::Access;

/// The running admin server.
#[derive(Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    status: watch::Receiver<Status>,
    commands: mpsc::Sender<Command>,
    workers: Workers,
    waits: Arc<Semaphore>,
    /// Event and log streams open.
    streams: Arc<Semaphore>,
    /// Log searches running.
    searches: Arc<Semaphore>,
    figures: figures::Sampler,
    access: Access,
    /// True once the admin API stops: streams end.
    closing: watch::Receiver<bool>,
}

impl Admin {
    /// Binds `addr` and serves the admin API from `status` snapshots, sending
    /// reload requests to `commands`, to those `access` lets in; its metrics
    /// include `workers`' load.
    pub async fn bind(
        addr: SocketAddr,
        access: Access,
        status: watch::Receiver<Status>,
        commands: mpsc::Sender<Command>,
        workers: Workers,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // The idle and send timeouts of every listener (`--idle-timeout`,
        // `--send-timeout`); the admin API's header timeout is its own.
        let workers_timeouts = workers.timeouts();
        let waits = Arc::new(Semaphore::new(MAX_WAITS));
        let streams = Arc::new(Semaphore::new(dashboard::MAX_STREAMS));
        let figures = figures::Sampler::start(status.clone());
        let (stop, stop_rx) = watch::channel(false);
        let closing = stop_rx.clone();
        let searches = Arc::new(Semaphore::new(dashboard::MAX_SEARCHES));
        let shared =
            Shared { status, commands, workers, waits, streams, searches, figures, access: access.clone(), closing };
        let app = Router::new()
            .route("/", get(dashboard::index))
            .route("/assets/{file}", get(dashboard::assets))
            .route("/admin/status", get(status_handler))
            .route("/admin/overview", get(dashboard::overview_handler))
            .route("/admin/events", get(dashboard::events_handler))
            .route("/admin/logs", get(dashboard::logs_handler))
            .route("/admin/ready", get(ready_handler))
            .route("/admin/health", get(|| async { "ok\n" }))
            .route("/admin/reload", post(reload_handler))
            .route("/admin/restart", post(dashboard::restart_handler))
            .route("/admin/login", post(dashboard::login_handler))
            .route("/admin/logout", post(dashboard::logout_handler))
            .route("/admin/metrics", get(metrics_handler))
            .with_state(shared)
            .layer(axum::middleware::from_fn_with_state(access, guard));
        let task = tokio::spawn(serve(listener, app, stop_rx, workers_timeouts));
        Ok(Self { addr, stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct StatusQuery {
    min_generation: Option<u64>,
    min_attempts: Option<u64>,
    wait: Option<String>,
}

async fn status_handler(Extract(shared): Extract<Shared>, Query(q): Query<StatusQuery>) -> impl IntoResponse {
    let wait = match q.wait.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &format!("wait: {e}"));
        }
    };
    if q.min_generation.is_some() || q.min_attempts.is_some() {
        let Ok(_waiting) = shared.waits.clone().try_acquire_owned() else {
            let why = format!("{MAX_WAITS} requests are waiting already; try again");
            return error(StatusCode::SERVICE_UNAVAILABLE, &why);
        };
        let mut status = shared.status.clone();
        let reached = |s: &Status| {
            q.min_generation.is_none_or(|g| s.generation >= g) && q.min_attempts.is_none_or(|a| s.reloads.attempts >= a)
        };
        let _ = tokio::time::timeout(wait, status.wait_for(reached)).await;
    }
    let live = shared.status.borrow().live();
    Json(live).into_response()
}

async fn metrics_handler(Extract(shared): Extract<Shared>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let status = shared.status.borrow().live();
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::from_accept(accept);
    let body = metrics::render(&status, &shared.workers.report(), format);
    let agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::debug!(user_agent = agent, bytes = body.len(), "Metrics scraped.");
    ([(axum::http::header::CONTENT_TYPE, format.content_type())], body)
}

async fn ready_handler(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    let s = shared.status.borrow();
    let body = serde_json::json!({ "ready": s.state == State::Running, "generation": s.generation, "state": s.state });
    let code = if s.state == State::Running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn reload_handler(Extract(shared): Extract<Shared>) -> impl IntoResponse {
    let (reply, answer) = oneshot::channel();
    let unavailable = |why: &str| error(StatusCode::SERVICE_UNAVAILABLE, why);
    if shared
        .commands
        .send(Command::Reload { trigger: Trigger::Admin, reply: Some(reply), since: std::time::Instant::now() })
        .await
        .is_err()
    {
        return unavailable("the orchestrator is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(120), answer).await {
        Ok(Ok(record)) => {
            let code = if record.outcome == "failed" { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
            (code, Json(record)).into_response()
        }
        _ => unavailable("the reload did not complete"),
    }
}

/// The send buffer of an admin connection (the kernel doubles it): what a
/// client that stops reading can leave queued before its writes wait.
pub const SEND_BUFFER: usize = 32 * 1024;

/// Serves `app` on `listener` until `stop`: heads within [`HEADER_TIMEOUT`],
/// at most [`MAX_CONNECTIONS`] at once, a client that stops reading (an
/// event stream it no longer reads, say) dropped after `--send-timeout`, a
/// connection idle past `--idle-timeout` closed, open connections closed
/// gracefully at the end.
async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    timeouts: crate::serve::idle::Timeouts,
) {
    use crate::serve::idle::{Activity, Timeouts, Tracked, Watchdog};
    let admission = Admission::single(MAX_CONNECTIONS);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accept_warnings = RateLimited::new();
    let drain = crate::serve::drain::Drain::new();
    let timeouts = Timeouts { header: HEADER_TIMEOUT, ..timeouts };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = accept_warnings.ready() {
                        tracing::warn!(error = %e, failed_since_last_warning = suppressed + 1, "The admin API could not accept a connection.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(admitted) = admission.admit(&connections) else { continue };
        // A small send buffer: a client that stops reading (an event stream,
        // a log follower) fills it soon, and the send timeout counts from then.
        let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        let activity = Activity::new();
        let io = hyper_util::rt::TokioIo::new(Tracked::new(stream, activity.clone()));
        let tower = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(access::Client(peer.ip().to_canonical()));
                let in_flight = activity.enter();
                let answer = hyper::service::Service::call(&tower, req);
                // In flight until its body is sent: an event stream or a log
                // follower is never idle, only slow to read.
                async move { answer.await.map(|resp| resp.map(|body| InFlightBody { body, _in_flight: in_flight })) }
            })
        };
        let conn = drain.enter().watch(Watchdog::new(http.serve_connection(io, service), activity, timeouts));
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Admin connection closed.");
            }
        });
    }
    drop(listener);
    // In-flight answers finish; waiting status requests are bounded by their wait.
    let _ = tokio::time::timeout(MAX_WAIT, drain.shutdown()).await;
}

/// An answer's body, and the request it answers counted in flight until
/// the body is done (or dropped).
struct InFlightBody<B> {
    body: B,
    _in_flight: crate::serve::idle::InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer `{"error": why}` with `code`.
fn error(code: StatusCode, why: &str) -> Response {
    (code, Json(serde_json::json!({ "error": why }))).into_response()
}

/// Refuses what the module's documentation says is refused.
async fn guard(Extract(access): Extract<Access>, req: Request, next: Next) -> Response {
    let refuse = error;
    let path = req.uri().path();
    // The page itself holds no data: it loads, and asks for the token.
    let open = matches!(path, "/admin/health" | "/admin/ready" | "/admin/login" | "/admin/logout" | "/")
        || path.starts_with("/assets/");
    let client = req.extensions().get::<access::Client>().map(|c| c.0);
    match &access.token {
        Some(_) if !open => match access.check(req.headers(), client) {
            access::Verdict::Allowed => {}
            access::Verdict::Throttled(wait) => return too_many_guesses(wait),
            access::Verdict::Missing | access::Verdict::Wrong => {
                let mut resp = refuse(StatusCode::UNAUTHORIZED, "this admin API needs `Authorization: Bearer <token>`");
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return resp;
            }
        },
        Some(_) => {}
        None => {
            if !local_host(req.headers()) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "the Host is not this machine's: use an IP address or localhost, or set --admin-token-file",
                );
            }
        }
    }
    if req.method() == axum::http::Method::POST
        && let Some(why) = cross_site(req.headers())
    {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    next.run(req).await
}

/// `429` to a client with no try left, and when to try again.
fn too_many_guesses(wait: u64) -> Response {
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "too many wrong tokens from this client: wait, then try again");
    if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Whether the request names this machine: an IP address, or `localhost`.
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Why a `POST` looks like one a web page sent from another site, if it does.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return Some("a cross-site request may not change the orchestrator");
    }
    if let Some(origin) = text("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if Some(origin_host) != text("host") {
            return Some("a request from another origin may not change the orchestrator");
        }
    }
    let kind = text("content-type").map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    if kind.is_some_and(|k| {
        matches!(k.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
    }) {
        return Some("a form's content type may not change the orchestrator: send no body, or application/json");
    }
    None
}

/// Reads the admin token from `file`: its first line, at least 16
/// characters; the file readable by its owner only.
pub fn read_token(file: &std::path::Path) -> Result<Arc<str>, String> {
    let text = crate::topology::read_secret(file, 4096).map_err(|e| e.to_string())?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.len() < 16 {
        return Err(format!("the admin token in {} is shorter than 16 characters", file.display()));
    }
    Ok(Arc::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), header::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_addresses_and_localhost_are_this_machines_hosts() {
        for ok in ["127.0.0.1:9900", "localhost:9900", "LOCALHOST", "[::1]:9900", "10.0.0.7:9900", "127.0.0.1"] {
            assert!(local_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in ["attacker.example", "attacker.example:9900", "localhost.attacker.example:9900", "[evil]:1"] {
            assert!(!local_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn what_a_web_page_can_send_cross_site_is_refused() {
        let host = ("host", "127.0.0.1:9900");
        assert!(cross_site(&headers(&[host])).is_none());
        assert!(cross_site(&headers(&[host, ("content-type", "application/json")])).is_none());
        assert!(cross_site(&headers(&[host, ("origin", "http://127.0.0.1:9900")])).is_none());
        assert!(cross_site(&headers(&[host, ("origin", "http://evil.example")])).is_some());
        assert!(cross_site(&headers(&[host, ("content-type", "text/plain;charset=UTF-8")])).is_some());
        assert!(cross_site(&headers(&[host, ("sec-fetch-site", "cross-site")])).is_some());
    }
}
