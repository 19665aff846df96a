//! The handlers of the listeners a topology opens: a tier's `listen`
//! address, where every request goes to one of the tier's replicas, round
//! robin (through the gateway's routes when the tier is one); and the peer
//! listener, where other hosts reach the tiers that run on this one.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use plugin_api::abi::encode_headers;

use crate::links::inbound::{encoded_headers, forward, into_hyper, is_own, link_request};
use crate::links::{self, Endpoint};
use crate::metrics::{self, ListenerMetrics, Rejected, RequestRecord};
use crate::plugins::{BorrowedRequest, Instance};
use crate::serve::gate::WakeGated;
use crate::serve::listener::{Bound, Handler, Listener, Protocol, Response, json_error, read_body};
use crate::serve::workers::Workers;
use crate::topology::model::limits;

/// Starts serving tier `endpoint` on `bound`: each request goes to one of its
/// replicas. Connections are served on `workers`.
pub fn serve_tier(bound: Bound, endpoint: Arc<Endpoint>, max_body: u64, workers: &Workers) -> Listener {
    let span = tracing::info_span!("listener", tier = %endpoint.tier, addr = %bound.addr);
    let metrics = metrics::registry().listener(endpoint.tier.as_str());
    bound.serve(TierHandler { endpoint, metrics }, Protocol::Http1, max_body, workers, span)
}

/// A tier's listener: its replicas, and the listener's metrics.
#[derive(Clone)]
struct TierHandler {
    endpoint: Arc<Endpoint>,
    metrics: Arc<ListenerMetrics>,
}

impl Handler for TierHandler {
    type Body = Full<Bytes>;

    fn answer(resp: Response) -> Response {
        resp
    }

    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        max_body: u64,
        client: &HeaderValue,
    ) -> impl Future<Output = Response> + Send + use<> {
        recorded(self.metrics.start(), req, self.endpoint.clone(), max_body, client.clone())
    }

    fn metrics(&self) -> Option<&Arc<ListenerMetrics>> {
        Some(&self.metrics)
    }
}

/// What the peer listener serves: the tiers that run here, to the hosts
/// that present the token.
#[derive(Debug)]
pub struct PeerInbound {
    pub token: Option<String>,
    pub tiers: Arc<arc_swap::ArcSwap<std::collections::HashMap<String, Arc<Endpoint>>>>,
}

#[derive(Clone)]
struct PeerHandler(Arc<PeerInbound>);

impl Handler for PeerHandler {
    type Body = Full<Bytes>;

    fn answer(resp: Response) -> Response {
        resp
    }

    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        max_body: u64,
        _client: &HeaderValue,
    ) -> impl Future<Output = Response> + Send + use<> {
        handle_peer(req, self.0.clone(), max_body)
    }
}

/// Serves the peer listener on `bound`, in HTTP/1.1 or HTTP/2 as each
/// peer opens with, over mutual TLS when `tls` is set.
pub fn serve_peer(
    bound: Bound,
    inbound: PeerInbound,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    workers: &Workers,
) -> Listener {
    let span = tracing::info_span!("peer", addr = %bound.addr);
    let protocol = Protocol::Any { tls };
    bound.serve(PeerHandler(Arc::new(inbound)), protocol, links::inbound::LINK_MAX_BODY, workers, span)
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

/// Records on a listener's span what it answered: the status, and a
/// failure for a 5xx.
fn answered(span: &mut crate::traces::Span, resp: &Response) {
    span.set(opentelemetry::KeyValue::new("http.response.status_code", i64::from(resp.status().as_u16())));
    if resp.status().is_server_error() {
        span.fail(format!("answered {}", resp.status()));
    }
}

/// [`handle`]s a request on a tier listener, and records it in the
/// listener's metrics (`record`, when recording is on).
async fn recorded(
    mut record: Option<RequestRecord>,
    mut req: hyper::Request<Incoming>,
    endpoint: Arc<Endpoint>,
    max_body: u64,
    client: HeaderValue,
) -> Response {
    let resp = match crate::traces::enabled().then(|| server_span(&endpoint.tier, &mut req)).flatten() {
        None => handle(req, endpoint, max_body, client, &mut record).await,
        Some(mut span) => {
            let trace = Some(span.context().trace_id());
            // Boxed: kept out of the untraced request's future.
            let handling =
                Box::pin(crate::traces::in_trace(trace, handle(req, endpoint, max_body, client, &mut record)));
            let resp = handling.await;
            answered(&mut span, &resp);
            resp
        }
    };
    if let Some(record) = record {
        let bytes_out = hyper::body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        record.finish(resp.status().as_u16(), bytes_out);
    }
    resp
}

/// A plugin's copy of the headers, with the `X-Forwarded-*` a reverse proxy
/// sets ([`links::http::insert_forwarded`]) written in, and without the
/// orchestrator's own (see [`encoded_headers`]).
fn encoded_headers_forwarded(headers: &http::HeaderMap, client: &HeaderValue) -> Vec<u8> {
    links::http::wire_headers_with(headers, Some(client), is_own)
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
    // One `Host` at most and a normal path: the listener saw to both.
    let (parts, body) = req.into_parts();
    // The body's share of the process's budget, held until this answers.
    let (body, _held) = match read_body(body, max_body).await {
        Ok(read) => read,
        Err(resp) => {
            let why = match resp.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Rejected::BodyTooLarge,
                StatusCode::REQUEST_TIMEOUT => Rejected::BodyTimeout,
                StatusCode::SERVICE_UNAVAILABLE => Rejected::BodyMemory,
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

/// Whether `given` (an `authorization` header) presents `token` as a
/// bearer token (the scheme in any case, RFC 9110), compared in constant time.
fn presents(given: Option<&HeaderValue>, token: &str) -> bool {
    let Some((scheme, presented)) = given.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && crate::admin::access::same_secret(presented.trim().as_bytes(), token.as_bytes())
}

/// A request from another host for a tier that runs here.
async fn handle_peer(mut req: hyper::Request<Incoming>, inbound: Arc<PeerInbound>, max_body: u64) -> Response {
    if let Some(token) = &inbound.token
        && !presents(req.headers().get(header::AUTHORIZATION), token)
    {
        return json_error(StatusCode::UNAUTHORIZED, "the peer listener takes requests with the peer token only");
    }
    let tier = req.headers().get(peer::TIER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let Some(endpoint) = inbound.tiers.load().get(&tier).cloned() else {
        // Refused, not forwarded; a peer takes it as not delivered (a host
        // that has just stopped running the tier, in a move, is not an error).
        let mut resp = json_error(StatusCode::NOT_FOUND, &format!("tier `{tier}` does not run on this host"));
        resp.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("not-here"));
        return resp;
    };
    if req.uri().path() == "/_orch/peer/ready" {
        // How many replicas are ready here: what callers weight this host by.
        let ready = endpoint.ready_count();
        let mut resp = match ready {
            0 => json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("tier `{tier}` has no ready replica")),
            n => json_error(StatusCode::OK, &format!("{n} ready")),
        };
        resp.headers_mut().insert(peer::READY_HEADER, HeaderValue::from(ready));
        // A store's connection string, for its callers' links on other hosts.
        let url = endpoint.replicas().iter().find_map(|i| i.as_server()?.connection_url("{addr}"));
        if let Some(url) = url.and_then(|u| HeaderValue::from_str(&u).ok()) {
            resp.headers_mut().insert(peer::CONNECTION_URL_HEADER, url);
        }
        return resp;
    }
    if req.uri().path() == peer::TUNNEL_PATH {
        return tunnel(req, endpoint, tier).await;
    }
    // Traced as a tier listener's request is: the span of the caller's
    // attempt (on the calling host) is its parent.
    let Some(mut span) = crate::traces::enabled().then(|| server_span(&endpoint.tier, &mut req)).flatten() else {
        return handle_peer_call(req, endpoint, tier, max_body).await;
    };
    let trace = Some(span.context().trace_id());
    let resp = Box::pin(crate::traces::in_trace(trace, handle_peer_call(req, endpoint, tier, max_body))).await;
    answered(&mut span, &resp);
    resp
}

/// A peer's TCP tunnel for `tier` (a `tcp` link's connection from another
/// host): connected to a ready replica here, then upgraded, and the bytes
/// relayed both ways until either side closes or nothing moves for an hour.
async fn tunnel(mut req: hyper::Request<Incoming>, endpoint: Arc<Endpoint>, tier: String) -> Response {
    let wanted = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(peer::TUNNEL_PROTOCOL.as_bytes()));
    if !wanted {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("a tunnel asks to upgrade to `{}`", peer::TUNNEL_PROTOCOL),
        );
    }
    let mut connected = None;
    for instance in endpoint.replicas().iter().filter(|i| i.is_ready()) {
        let Some(addr) = instance.tcp_addr() else { continue };
        if let Ok(Ok(server)) =
            tokio::time::timeout(limits::TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        {
            let _ = server.set_nodelay(true);
            connected = Some((server, instance.clone()));
            break;
        }
    }
    let Some((server, instance)) = connected else {
        let mut resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("tier `{tier}` has no ready replica that takes TCP here"),
        );
        resp.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("no-ready-replica"));
        return resp;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        // Counted in flight while it lasts: a replica being replaced drains it.
        let _in_flight = instance.enter();
        let counted = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
        links::tcp::relay(
            hyper_util::rt::TokioIo::new(upgraded),
            server,
            limits::TCP_IDLE_TIMEOUT,
            &counted.0,
            &counted.1,
        )
        .await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(peer::TUNNEL_PROTOCOL));
    resp
}

/// Hands a peer's request for `tier` to one of its replicas here.
async fn handle_peer_call(
    req: hyper::Request<Incoming>,
    endpoint: Arc<Endpoint>,
    tier: String,
    max_body: u64,
) -> Response {
    let (parts, body) = req.into_parts();
    // The body's share of the process's budget, held until this answers.
    let (body, _held) = match read_body(body, max_body).await {
        Ok(read) => read,
        Err(resp) => return resp,
    };
    let Some(instance) = endpoint.pick() else {
        let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, &format!("tier `{tier}` has no ready replica"));
        resp.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("no-ready-replica"));
        return resp;
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
    match call.await {
        // The replica did not take it: the caller may send it elsewhere.
        Ok(resp) if resp.status == plugin_api::abi::NOT_DELIVERED => {
            let mut refused = into_hyper(resp);
            refused.headers_mut().insert(peer::STATUS_HEADER, HeaderValue::from_static("not-delivered"));
            refused
        }
        Ok(resp) => into_hyper(resp),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("tier `{tier}` failed without answering")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peer_token_is_presented_with_the_bearer_scheme_in_any_case() {
        let token = "a-peer-token-0123456789";
        for given in
            ["Bearer a-peer-token-0123456789", "bearer a-peer-token-0123456789", "BEARER  a-peer-token-0123456789"]
        {
            assert!(super::presents(Some(&HeaderValue::from_static(given)), token), "{given}");
        }
        for wrong in ["Bearer a-peer-token-012345678", "Basic a-peer-token-0123456789", "a-peer-token-0123456789"] {
            assert!(!super::presents(Some(&HeaderValue::from_static(wrong)), token), "{wrong}");
        }
        assert!(!super::presents(None, token));
    }

    use super::*;
    use crate::serve::listener::client_value;

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
