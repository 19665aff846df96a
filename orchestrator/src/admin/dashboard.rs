//! The dashboard and what it (and `orchestrator status`, `logs`, `restart`)
//! reads and does:
//! - `GET /` and `GET /assets/…` — the page, embedded in the binary;
//! - `GET /admin/overview` — the status with the figures ([`super::figures`]);
//! - `GET /admin/events` — the overview again, as Server-Sent Events: once
//!   at once, then whenever the status changes, and at least every second
//!   for the figures;
//! - `GET /admin/logs` — the recent log lines ([`crate::logging::ring`]) as
//!   JSON lines, or with `follow=true` those and every new one, as JSON lines
//!   or (`Accept: text/event-stream`) as Server-Sent Events. Query: `tiers`
//!   (comma-separated; `orchestrator` for its own lines), `replica`, `since`
//!   (`5m`), `grep` (a regular expression), `limit` (default and at most
//!   [`MAX_LIMIT`]). A read returns at most [`ring::MAX_READ_BYTES`] of
//!   messages (the newest), streamed as the client reads it; a search runs
//!   off the serving threads and off the ring's lock, within
//!   [`ring::SEARCH_BUDGET`] (then 422), at most [`MAX_SEARCHES`] at once
//!   (then 503);
//! - `POST /admin/restart?tier=T[&replica=N]` — a rolling restart;
//! - `POST /admin/login` — `{"token": …}`: opens a session and sets its
//!   cookie, which a browser's page uses instead of an `Authorization`
//!   header; `POST /admin/logout` closes it (see [`super::access`]).
//!
//! At most [`MAX_STREAMS`] event and log streams are open at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, broadcast, oneshot, watch};

use super::{Shared, error};
use crate::logging::ring::{self, Line};
use crate::runtime::Command;
use crate::runtime::supervisor::RestartError;

/// Event and log streams open at once.
pub const MAX_STREAMS: usize = 32;
/// The most lines one log request returns before following.
pub const MAX_LIMIT: usize = 10_000;
/// The longest `grep` pattern.
pub const MAX_PATTERN: usize = 1024;
/// Searches (`grep`) running at once.
pub const MAX_SEARCHES: usize = 2;
/// Lines of a read's reply serialized at a time, as the client reads.
const CHUNK_LINES: usize = 64;
/// How long a restart may take before the request stops waiting.
const RESTART_WAIT: Duration = Duration::from_secs(300);

struct Asset {
    path: &'static str,
    kind: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        kind: "text/html; charset=utf-8",
        body: include_str!("../../assets/dashboard/index.html"),
    },
    Asset {
        path: "app.js",
        kind: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/dashboard/app.js"),
    },
    Asset { path: "app.css", kind: "text/css; charset=utf-8", body: include_str!("../../assets/dashboard/app.css") },
    Asset {
        path: "dagre.min.js",
        kind: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/dashboard/vendor/dagre.min.js"),
    },
];

fn asset(path: &str) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => {
            let mut resp = (StatusCode::OK, a.body).into_response();
            let headers = resp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.kind));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            // Nothing but this origin: no external script, style, font or connection.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            resp
        }
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

pub async fn index() -> Response {
    asset("index.html")
}

pub async fn assets(Path(path): Path<String>) -> Response {
    asset(&path)
}

/// The status, its figures, and what the log ring keeps.
/// The overview; `session`: the page reads it in a session (and may sign out).
fn overview(shared: &Shared, status: crate::runtime::Status, session: bool) -> serde_json::Value {
    let limits = ring::global().limits();
    serde_json::json!({
        "status": status,
        "figures": shared.figures.figures(),
        "logs": { "lines_per_replica": limits.lines, "bytes_per_replica": limits.bytes },
        "session": session,
    })
}

/// Whether a request (let in by the guard) came in a session.
fn in_session(shared: &Shared, headers: &HeaderMap) -> bool {
    shared.access.token.is_some() && super::access::session_cookie(headers).is_some()
}

pub async fn overview_handler(Extract(shared): Extract<Shared>, headers: HeaderMap) -> impl IntoResponse {
    let status = shared.status.borrow().live();
    let session = in_session(&shared, &headers);
    Json(overview(&shared, status, session))
}

fn busy() -> Response {
    let why = format!("{MAX_STREAMS} streams are open already; close one and try again");
    error(StatusCode::SERVICE_UNAVAILABLE, &why)
}

fn stream_permit(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    shared.streams.clone().try_acquire_owned().ok()
}

/// How often an event stream looks at the replicas' states, to push a
/// change (a replica failing, restarting, ready again) without waiting for
/// the next tick.
const STATE_POLL: Duration = Duration::from_millis(100);

/// What a change of makes an event stream push at once: the generation,
/// the reloads, and each replica's state.
fn fingerprint(status: &crate::runtime::Status) -> (u64, u64, Vec<(u64, &'static str)>) {
    let states = status.tiers.iter().flat_map(|t| &t.instances).map(|i| (i.id, i.state)).collect();
    (status.generation, status.reloads.attempts, states)
}

pub async fn events_handler(Extract(shared): Extract<Shared>, headers: HeaderMap) -> Response {
    let Some(permit) = stream_permit(&shared) else { return busy() };
    let session = in_session(&shared, &headers);
    let mut status = shared.status.clone();
    status.mark_changed();
    let closing = shared.closing.clone();
    let state = (shared, status, closing, permit, None);
    let events = stream::unfold(state, move |(shared, mut status, mut closing, permit, mut seen)| async move {
        // A change of the status, a replica's new state, or the next tick for the figures.
        let deadline = tokio::time::Instant::now() + super::figures::TICK;
        loop {
            if *closing.borrow() {
                // The admin API is stopping: the stream ends; the page reconnects.
                return None;
            }
            let wait = STATE_POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                changed = status.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return None,
                },
                _ = closing.changed() => continue,
                _ = tokio::time::sleep(wait) => {}
            }
            if seen.is_none() || tokio::time::Instant::now() >= deadline {
                break;
            }
            if seen.as_ref() != Some(&fingerprint(&status.borrow().live())) {
                break;
            }
        }
        let live = status.borrow_and_update().live();
        seen = Some(fingerprint(&live));
        let data = overview(&shared, live, session);
        let event = Event::default().event("overview").data(data.to_string()).retry(Duration::from_secs(1));
        Some((Ok::<_, Infallible>(event), (shared, status, closing, permit, seen)))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    tiers: Option<String>,
    replica: Option<u32>,
    since: Option<String>,
    grep: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

fn logs_query(q: &LogsQuery) -> Result<ring::Query, String> {
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => {
            let ago = humantime::parse_duration(s).map_err(|e| format!("since: `{s}`: {e} (e.g. `30s`, `5m`)"))?;
            Some(SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))
        }
    };
    let grep = match q.grep.as_deref() {
        None | Some("") => None,
        Some(p) if p.len() > MAX_PATTERN => {
            return Err(format!("grep: the pattern is longer than {MAX_PATTERN} bytes"));
        }
        Some(p) => Some(
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("grep: not a regular expression: {e}"))?,
        ),
    };
    let tiers = q
        .tiers
        .as_deref()
        .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(ring::Query { tiers, replica: q.replica, since, grep, after: None })
}

fn json_line(line: &Line) -> Bytes {
    let mut text = serde_json::to_vec(line).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// What a follower is told when it fell `missed` lines behind.
fn skipped(missed: u64) -> serde_json::Value {
    serde_json::json!({ "skipped": missed })
}

pub async fn logs_handler(
    Extract(shared): Extract<Shared>,
    headers: HeaderMap,
    Query(q): Query<LogsQuery>,
) -> Response {
    let query = match logs_query(&q) {
        Ok(query) => query,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let limit = q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let sse =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let searching = match &query.grep {
        None => None,
        Some(_) => match shared.searches.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let why = format!("{MAX_SEARCHES} searches are running already; try again");
                let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, &why);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
        },
    };
    let following = if q.follow {
        match stream_permit(&shared) {
            Some(permit) => Some((permit, ring::global().follow())),
            None => return busy(),
        }
    } else {
        None
    };
    // Off the serving threads, and off the ring's lock but for a copy of handles.
    let selected = query.clone();
    let found = tokio::task::spawn_blocking(move || {
        let lines = ring::global().snapshot(&selected);
        let deadline = std::time::Instant::now() + ring::SEARCH_BUDGET;
        ring::search(lines, selected.grep.as_ref(), limit, ring::MAX_READ_BYTES, Some(deadline))
    })
    .await;
    drop(searching);
    let recent = match found {
        Ok(Ok(lines)) => lines,
        Ok(Err(over)) => return error(StatusCode::UNPROCESSABLE_ENTITY, &over.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the search failed"),
    };
    let Some((permit, live)) = following else {
        let body = stream::iter(recent).chunks(CHUNK_LINES).map(|chunk| {
            let mut text = Vec::new();
            for line in &chunk {
                text.extend_from_slice(&json_line(line));
            }
            Ok::<_, Infallible>(Bytes::from(text))
        });
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response();
    };
    let last = recent.last().map_or(0, |l| l.seq);
    let follow = Follow {
        live,
        query: ring::Query { after: Some(last), ..query },
        closing: shared.closing.clone(),
        _permit: permit,
    };
    if sse {
        let past = stream::iter(recent).map(|l| Ok::<_, Infallible>(line_event(&l)));
        let events = past.chain(follow.lines().map(|item| {
            Ok(match item {
                Ok(line) => line_event(&line),
                Err(missed) => Event::default().event("skipped").data(skipped(missed).to_string()),
            })
        }));
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    let past = stream::iter(recent).map(|l| Ok::<_, Infallible>(json_line(&l)));
    let body = past.chain(follow.lines().map(|item| {
        Ok(match item {
            Ok(line) => json_line(&line),
            Err(missed) => Bytes::from(format!("{}\n", skipped(missed))),
        })
    }));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

fn line_event(line: &Line) -> Event {
    Event::default().event("line").id(line.seq.to_string()).data(serde_json::to_string(line).unwrap_or_default())
}

/// New lines that match, or how many a follower missed.
struct Follow {
    live: broadcast::Receiver<std::sync::Weak<Line>>,
    query: ring::Query,
    /// The admin API is stopping: the stream ends.
    closing: watch::Receiver<bool>,
    /// Held while the follower follows.
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    fn lines(self) -> impl Stream<Item = Result<Arc<Line>, u64>> + Send {
        stream::unfold(self, |mut f| async move {
            loop {
                if *f.closing.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    next = f.live.recv() => next,
                    _ = f.closing.changed() => continue,
                };
                match next {
                    // The ring dropped it before this follower read it.
                    Ok(line) => match line.upgrade() {
                        Some(line) if f.query.matches(&line) => return Some((Ok(line), f)),
                        Some(_) => {}
                        None => return Some((Err(1), f)),
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => return Some((Err(missed), f)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct RestartQuery {
    tier: String,
    replica: Option<u32>,
}

pub async fn restart_handler(Extract(shared): Extract<Shared>, Query(q): Query<RestartQuery>) -> Response {
    let (reply, answer) = oneshot::channel();
    let command = Command::Restart { tier: q.tier.clone(), replica: q.replica, reply };
    if shared.commands.send(command).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is shutting down");
    }
    match tokio::time::timeout(RESTART_WAIT, answer).await {
        Ok(Ok(Ok(restarted))) => Json(serde_json::json!({ "tier": q.tier, "restarted": restarted })).into_response(),
        Ok(Ok(Err(e))) => {
            let code = match e {
                RestartError::NoSuch(_) => StatusCode::NOT_FOUND,
                RestartError::Failed(_) => StatusCode::CONFLICT,
            };
            (code, Json(serde_json::json!({ "tier": q.tier, "error": e.to_string() }))).into_response()
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the restart did not complete"),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

/// Opens a session if the token is right, and sets its cookie (see
/// [`super::access`]); 401 otherwise, 429 to a client with no try left.
pub async fn login_handler(
    Extract(shared): Extract<Shared>,
    client: Option<axum::Extension<super::access::Client>>,
    Json(login): Json<Login>,
) -> Response {
    use super::access::{COOKIE, SESSION_TTL, Verdict};
    match shared.access.login(&login.token, client.map(|c| c.0.0)) {
        Ok(None) => Json(serde_json::json!({ "ok": true, "needed": false })).into_response(),
        Ok(Some(session)) => {
            let cookie =
                format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs());
            let mut resp = Json(serde_json::json!({ "ok": true })).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(Verdict::Throttled(wait)) => super::too_many_guesses(wait),
        Err(_) => error(StatusCode::UNAUTHORIZED, "wrong token"),
    }
}

/// Closes the session the cookie names, and clears the cookie.
pub async fn logout_handler(Extract(shared): Extract<Shared>, headers: HeaderMap) -> Response {
    shared.access.logout(&headers);
    let mut resp = Json(serde_json::json!({ "ok": true })).into_response();
    let cleared = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", super::access::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&cleared) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_query_is_checked_and_bounded() {
        let q = |grep: &str, since: &str| LogsQuery {
            grep: Some(grep.into()),
            since: Some(since.into()),
            tiers: Some("web, api,,".into()),
            ..LogsQuery::default()
        };
        let query = logs_query(&q("GET /\\d+", "5m")).unwrap();
        assert_eq!(query.tiers, ["web", "api"]);
        assert!(query.since.unwrap() < SystemTime::now());
        assert!(logs_query(&q("(unclosed", "")).unwrap_err().starts_with("grep: not a regular expression"));
        assert!(logs_query(&q("", "yesterday")).unwrap_err().starts_with("since:"));
        assert!(logs_query(&q(&"a".repeat(MAX_PATTERN), "")).is_ok(), "at the limit");
        assert!(logs_query(&q(&"a".repeat(MAX_PATTERN + 1), "")).unwrap_err().contains("longer than"));
        // A pattern whose automaton would be huge is refused, not built.
        assert!(logs_query(&q("\\w{1000}\\w{1000}\\w{1000}", "")).is_err());
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_the_rest_is_not_found() {
        for a in ASSETS {
            let resp = asset(a.path);
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], a.kind);
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
