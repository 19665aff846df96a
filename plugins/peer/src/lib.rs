//! The built-in `peer` plugin: a tier that runs on another host. Each
//! replica stands for one host that runs the tier; a request goes to that
//! host's orchestrator's peer listener (REST requests and queue messages
//! over pooled HTTP/1.1 connections, RPC calls as streams of one HTTP/2
//! connection per address), naming the tier
//! (`orch-peer-tier`) and carrying the peer token, and its answer comes
//! back as the tier's.
//!
//! A host's address may be a DNS name: every address it resolves to is
//! used, round robin, and resolved again every few seconds. An address that
//! refuses or times out, or whose host says the tier has no ready replica,
//! is ejected for a backoff (300 ms, doubling to 10 s) and probed before it
//! gets traffic again; every address is also probed every 300 ms (a probe
//! that fails within 500 ms ejects it: a host cut off is out of the
//! rotation within a second); while every address of a host is ejected, the
//! replica is not ready and links route to the other hosts. A request that
//! was not sent is answered as not delivered, so the link retries it on
//! another host.
//!
//! Configuration (written by the orchestrator, not by users): `tier`, and
//! `peers`, one `address:port` per replica. The token is the tier's
//! `ORCH_PEER_TOKEN`; with mutual TLS ([`tls`]), the files are its
//! `ORCH_PEER_TLS_CERT`, `ORCH_PEER_TLS_KEY` and `ORCH_PEER_TLS_CA`.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use plugin_api::prelude::*;
use plugin_api::serde_json::{self, json};

pub mod tls;

/// The header naming the tier a peer request is for.
pub const TIER_HEADER: &str = "orch-peer-tier";
/// The header of a probe's answer: how many replicas of the tier are ready there.
pub const READY_HEADER: &str = "orch-peer-ready";
/// The most ready replicas a host is weighted by.
pub const MAX_WEIGHT: u32 = 1024;
/// The header a peer listener sets when the tier has no ready replica there.
pub const STATUS_HEADER: &str = "orch-peer-status";
/// The path of a TCP tunnel's request on a peer listener: it upgrades to
/// [`TUNNEL_PROTOCOL`], and the connection then carries a `tcp` link's
/// bytes to a ready replica of the tier there.
pub const TUNNEL_PATH: &str = "/_orch/peer/tcp";
/// The protocol a TCP tunnel upgrades to (HTTP/1.1 `Upgrade`).
pub const TUNNEL_PROTOCOL: &str = "orchestrator-tcp";
/// The header of a probe's answer for a store tier: its connection string,
/// `{addr}` standing for the caller's link address. Peers are trusted with
/// it as they are with every call (the token, mutual TLS between hosts).
pub const CONNECTION_URL_HEADER: &str = "orch-peer-connection-url";
/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one attempt on a peer may wait for its answer's head.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from a peer.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// How often addresses are probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(300);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an address is ejected: doubling from the first to the last, as
/// failures follow each other; back to the first once it serves again.
const MIN_EJECTION: Duration = Duration::from_millis(300);
const MAX_EJECTION: Duration = Duration::from_secs(10);
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Configuration: see the module's doc.
#[derive(Debug, Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
pub struct Peer {
    pub tier: String,
    pub peers: Vec<String>,
    #[serde(skip)]
    state: std::sync::OnceLock<std::sync::Arc<Host>>,
}

/// One address of a host, and whether it takes traffic.
#[derive(Debug)]
struct Address {
    addr: SocketAddr,
    ejected_until: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
    /// Its ready replicas of the tier, as its last probe said.
    ready: u32,
}

/// A request with its whole body, in hyper's types.
pub type HttpRequest = http::Request<Bytes>;
/// An answer with its whole body.
pub type HttpResponse = http::Response<Bytes>;

/// Why a request got no answer from the host.
#[derive(Debug)]
pub enum Failure {
    /// It was not sent, or not taken there: safe to send elsewhere.
    NotDelivered(String),
    /// It was sent and no answer came: maybe handled.
    NoAnswer(String),
}

/// The host a replica stands for.
#[derive(Debug)]
struct Host {
    peer: String,
    tier: String,
    tier_value: http::HeaderValue,
    /// `Bearer <the peer token>`, if there is one.
    bearer: Option<http::HeaderValue>,
    addresses: Mutex<Vec<Address>>,
    next: AtomicUsize,
    /// `http`, or `https` with mutual TLS.
    scheme: &'static str,
    /// REST requests and queue messages: pooled HTTP/1.1 connections.
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// RPC calls: HTTP/2, every call a stream of one connection per address.
    rpc: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// TCP tunnels: a connection of their own each.
    connector: HttpsConnector<HttpConnector>,
    /// A store tier's connection string there, `{addr}` for the address.
    connection_url: Mutex<Option<String>>,
}

impl Host {
    fn pick(&self) -> Option<SocketAddr> {
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let n = addresses.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &addresses[(start + i) % n]).find(|a| a.ejected_until.is_none()).map(|a| a.addr)
    }

    fn ready(&self) -> bool {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|a| a.ejected_until.is_none())
    }

    /// The ready replicas of the addresses in the rotation (at least 1).
    fn weight(&self) -> u32 {
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let sum: u32 = addresses.iter().filter(|a| a.ejected_until.is_none()).map(|a| a.ready).sum();
        sum.clamp(1, MAX_WEIGHT)
    }

    fn eject(&self, addr: SocketAddr, why: &str) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = addresses.iter_mut().find(|a| a.addr == addr) {
            if a.ejected_until.is_none() {
                a.backoff = (a.backoff * 2).clamp(MIN_EJECTION, MAX_EJECTION);
            }
            a.ejected_until = Some(Instant::now() + a.backoff);
            a.last_error = Some(why.to_owned());
        }
    }

    fn restore(&self, addr: SocketAddr, ready: u32) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = addresses.iter_mut().find(|a| a.addr == addr) {
            a.ejected_until = None;
            a.backoff = MIN_EJECTION / 2;
            a.ready = ready;
        }
    }

    fn request(&self, addr: SocketAddr, req: &Request) -> hyper::Request<Full<Bytes>> {
        let mut builder =
            hyper::Request::builder().method(req.method.clone()).uri(format!("{}://{addr}{}", self.scheme, req.uri));
        for (name, value) in req.headers.map() {
            builder = builder.header(name, value);
        }
        builder = builder.header(TIER_HEADER, &self.tier);
        if let Some(bearer) = &self.bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, bearer);
        }
        builder.body(Full::new(Bytes::copy_from_slice(req.body.as_bytes()))).unwrap_or_default()
    }

    async fn forward(&self, req: &Request) -> Response {
        let Some(addr) = self.pick() else {
            return Response::not_delivered(&format!("every address of host {} is ejected", self.peer));
        };
        let rpc = req.headers.raw_starts_with("content-type", plugin_api::rpc::CONTENT_TYPE);
        match self.exchange(addr, self.request(addr, req), rpc).await {
            Ok(answer) => {
                let (parts, body) = answer.into_parts();
                let mut resp = Response::new(parts.status).with_body(body);
                for (name, value) in &parts.headers {
                    if let Ok(v) = value.to_str() {
                        resp.headers.append(name.as_str(), v);
                    }
                }
                resp
            }
            Err(Failure::NotDelivered(why)) => Response::not_delivered(&why),
            Err(Failure::NoAnswer(why)) => Response::no_answer(&why),
        }
    }

    /// Sends `req` (a request for the tier, in hyper's types) to one of the
    /// host's addresses, as [`Plugin::handle`] does a plugin request.
    async fn send(&self, mut req: HttpRequest) -> Result<HttpResponse, Failure> {
        let Some(addr) = self.pick() else {
            return Err(Failure::NotDelivered(format!("every address of host {} is ejected", self.peer)));
        };
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() =
            format!("{}://{addr}{path}", self.scheme).parse().map_err(|_| Failure::NotDelivered("a bad URI".into()))?;
        let headers = req.headers_mut();
        headers.insert(TIER_HEADER, self.tier_value.clone());
        if let Some(token) = &self.bearer {
            headers.insert(hyper::header::AUTHORIZATION, token.clone());
        }
        let grpc = plugin_api::rpc::CONTENT_TYPE.as_bytes();
        let rpc = req.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(grpc));
        let (parts, body) = req.into_parts();
        self.exchange(addr, hyper::Request::from_parts(parts, Full::new(body)), rpc).await
    }

    /// One request to `addr` (over HTTP/2 if `rpc`), and its whole answer;
    /// an answer that says the request was not taken there is not
    /// delivered, and what fails ejects `addr`.
    async fn exchange(
        &self,
        addr: SocketAddr,
        req: hyper::Request<Full<Bytes>>,
        rpc: bool,
    ) -> Result<HttpResponse, Failure> {
        let client = if rpc { &self.rpc } else { &self.client };
        let answer = match tokio::time::timeout(TRY_TIMEOUT, client.request(req)).await {
            Err(_) => {
                self.eject(addr, "no answer in time");
                let why = format!("peer {addr} did not answer within {}s", TRY_TIMEOUT.as_secs());
                return Err(Failure::NoAnswer(why));
            }
            Ok(Err(e)) if e.is_connect() => {
                self.eject(addr, &format!("cannot connect: {e}"));
                return Err(Failure::NotDelivered(format!("peer {addr}: cannot connect")));
            }
            Ok(Err(e)) => {
                self.eject(addr, &e.to_string());
                return Err(Failure::NoAnswer(format!("peer {addr}: {e}")));
            }
            Ok(Ok(answer)) => answer,
        };
        match answer.headers().get(STATUS_HEADER).map(|v| v.as_bytes()) {
            Some(b"no-ready-replica") => {
                self.eject(addr, "its tier has no ready replica");
                let why = format!("peer {addr}: tier `{}` has no ready replica there", self.tier);
                return Err(Failure::NotDelivered(why));
            }
            Some(b"not-here") => {
                self.eject(addr, "the tier does not run there");
                return Err(Failure::NotDelivered(format!("peer {addr}: tier `{}` does not run there", self.tier)));
            }
            Some(b"not-delivered") => {
                return Err(Failure::NotDelivered(format!("peer {addr}: its replica did not take the request")));
            }
            _ => {}
        }
        let (mut parts, body) = answer.into_parts();
        let body = match Limited::new(body, MAX_ANSWER).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return Err(Failure::NoAnswer(format!("peer {addr}: the answer broke off: {e}"))),
        };
        for framing in [hyper::header::CONTENT_LENGTH, hyper::header::TRANSFER_ENCODING, hyper::header::CONNECTION] {
            parts.headers.remove(framing);
        }
        Ok(http::Response::from_parts(parts, body))
    }

    /// A TCP tunnel to a ready replica of the tier on the host: an HTTP/1.1
    /// connection of its own to the peer listener, upgraded.
    async fn tunnel(&self) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, Failure> {
        let Some(addr) = self.pick() else {
            return Err(Failure::NotDelivered(format!("every address of host {} is ejected", self.peer)));
        };
        let uri: http::Uri = format!("{}://{addr}{TUNNEL_PATH}", self.scheme)
            .parse()
            .map_err(|_| Failure::NotDelivered("a bad URI".into()))?;
        let mut connector = self.connector.clone();
        let io =
            match tokio::time::timeout(CONNECT_TIMEOUT * 4, tower_service::Service::call(&mut connector, uri)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    self.eject(addr, &format!("cannot connect: {e}"));
                    return Err(Failure::NotDelivered(format!("peer {addr}: cannot connect: {e}")));
                }
                Err(_) => {
                    self.eject(addr, "no connection in time");
                    return Err(Failure::NotDelivered(format!("peer {addr}: no connection in time")));
                }
            };
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(|e| Failure::NotDelivered(format!("peer {addr}: {e}")))?;
        tokio::spawn(conn.with_upgrades());
        let mut builder = hyper::Request::get(TUNNEL_PATH)
            .header(hyper::header::HOST, addr.to_string())
            .header(TIER_HEADER, &self.tier)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, TUNNEL_PROTOCOL);
        if let Some(bearer) = &self.bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, bearer);
        }
        let req = builder.body(Full::new(Bytes::new())).map_err(|e| Failure::NotDelivered(e.to_string()))?;
        let answer = match tokio::time::timeout(TRY_TIMEOUT, sender.send_request(req)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Failure::NotDelivered(format!("peer {addr}: {e}"))),
            Err(_) => return Err(Failure::NotDelivered(format!("peer {addr}: no answer in time"))),
        };
        if answer.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            if answer.headers().get(STATUS_HEADER).is_some_and(|v| v.as_bytes() == b"no-ready-replica") {
                self.eject(addr, "its tier has no ready replica");
            }
            return Err(Failure::NotDelivered(format!("peer {addr}: the tunnel was answered {}", answer.status())));
        }
        let upgraded =
            hyper::upgrade::on(answer).await.map_err(|e| Failure::NotDelivered(format!("peer {addr}: {e}")))?;
        Ok(hyper_util::rt::TokioIo::new(upgraded))
    }

    /// Probes ejected addresses, and resolves the host's name again, until
    /// the replica goes away.
    async fn watch(self: std::sync::Arc<Self>) {
        let mut resolved = Instant::now();
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if std::sync::Arc::strong_count(&self) == 1 {
                return;
            }
            let none = self.addresses.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if none || resolved.elapsed() >= RESOLVE_EVERY {
                resolved = Instant::now();
                if let Ok(found) = tokio::net::lookup_host(&self.peer).await {
                    let found: Vec<SocketAddr> = found.collect();
                    let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
                    addresses.retain(|a| found.contains(&a.addr));
                    for addr in found {
                        if !addresses.iter().any(|a| a.addr == addr) {
                            addresses.push(Address::new(addr));
                        }
                    }
                }
            }
            // Every address in the rotation, and the ejected ones whose backoff is over.
            let due: Vec<SocketAddr> = {
                let now = Instant::now();
                let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
                addresses.iter().filter(|a| a.ejected_until.is_none_or(|t| t <= now)).map(|a| a.addr).collect()
            };
            let host: &Host = &self;
            let probes = due.iter().map(|addr| async move { (*addr, host.probe(*addr).await) });
            for (addr, result) in futures_util::future::join_all(probes).await {
                match result {
                    Ok(ready) => self.restore(addr, ready),
                    Err(why) => self.eject(addr, &why),
                }
            }
        }
    }

    /// Asks the peer how many replicas of its tier are ready (1 if it does
    /// not say); an error if none is.
    async fn probe(&self, addr: SocketAddr) -> Result<u32, String> {
        let mut builder = hyper::Request::builder()
            .uri(format!("{}://{addr}/_orch/peer/ready", self.scheme))
            .header(TIER_HEADER, &self.tier);
        if let Some(bearer) = &self.bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, bearer);
        }
        let req = builder.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(answer)) if answer.status().is_success() => {
                if let Some(url) = answer.headers().get(CONNECTION_URL_HEADER).and_then(|v| v.to_str().ok()) {
                    *self.connection_url.lock().unwrap_or_else(|e| e.into_inner()) = Some(url.to_owned());
                }
                let ready = answer.headers().get(READY_HEADER).and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
                Ok(ready.unwrap_or(1).clamp(1, MAX_WEIGHT))
            }
            Ok(Ok(answer)) => Err(format!("its probe answered {}", answer.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("its probe got no answer in time".to_owned()),
        }
    }
}

impl Address {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, ejected_until: None, backoff: MIN_EJECTION / 2, last_error: None, ready: 1 }
    }
}

impl Peer {
    /// What links weight this replica by: the ready replicas of the tier on
    /// its host, as the host's probes last said (1 until a probe has).
    pub fn weight(&self) -> u32 {
        self.state.get().map_or(1, |h| h.weight())
    }

    /// A TCP tunnel to a ready replica of the tier on the host (a `tcp`
    /// link's connection): its bytes travel through the host's peer
    /// listener, authenticated as every call is.
    pub async fn tunnel(&self) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, Failure> {
        match self.state.get() {
            Some(host) => host.tunnel().await,
            None => Err(Failure::NotDelivered("the peer replica has not started".to_owned())),
        }
    }

    /// The tier's connection string at `addr`, if it is a store tier whose
    /// host said it.
    pub fn connection_url(&self, addr: &str) -> Option<String> {
        let host = self.state.get()?;
        let template = host.connection_url.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(template.replace("{addr}", addr))
    }

    /// Sends a REST request for the tier in hyper's types, as `handle` does
    /// a plugin request: for a host this plugin is linked into, which would
    /// otherwise copy it into the plugin API's types and the answer back.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, Failure> {
        match self.state.get() {
            Some(host) => host.send(req).await,
            None => Err(Failure::NotDelivered("the peer replica has not started".to_owned())),
        }
    }
}

impl Plugin for Peer {
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Rpc, LinkKind::Queue, LinkKind::Tcp];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        if self.peers.is_empty() {
            return Err(vec![ConfigIssue::new("peers", "no peer to reach the tier on")]);
        }
        Ok(())
    }

    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        let replica = cx.replica() as usize;
        let peer = self.peers.get(replica).or(self.peers.first()).cloned().unwrap_or_default();
        // A name that does not resolve yet (a host still starting, a
        // Service without endpoints) is resolved again until it does.
        let found: Vec<SocketAddr> = match tokio::net::lookup_host(&peer).await {
            Ok(found) => found.collect(),
            Err(e) => {
                cx.warn(format_args!("Cannot resolve peer {peer} yet ({e}); trying again until it resolves."));
                Vec::new()
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // The names TLS files are given by: all three or none.
        let files = match (cx.env(tls::CERT_ENV), cx.env(tls::KEY_ENV), cx.env(tls::CA_ENV)) {
            (Some(cert), Some(key), Some(ca)) => Some(tls::Files { cert: cert.into(), key: key.into(), ca: ca.into() }),
            _ => None,
        };
        let (config, scheme) = match &files {
            Some(files) => (tls::client_config(files)?, "https"),
            None => (tls::plain_config(), "http"),
        };
        // The host's certificate is checked for the name (or address) the topology gives it.
        let name = peer.rsplit_once(':').map_or(peer.as_str(), |(host, _)| host);
        let name = rustls_pki_types::ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| format!("peer {peer}: not a name a certificate can be checked for: {e}"))?
            .to_owned();
        connector.enforce_http(false);
        let https = |alpn_h2: bool| {
            let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config.clone()).https_or_http();
            let builder = builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name.clone()));
            if alpn_h2 {
                builder.enable_http2().wrap_connector(connector.clone())
            } else {
                builder.enable_http1().wrap_connector(connector.clone())
            }
        };
        let connector = https(false);
        let client = Client::builder(TokioExecutor::new()).build(connector.clone());
        let rpc = Client::builder(TokioExecutor::new()).http2_only(true).build(https(true));
        let token = cx.env("ORCH_PEER_TOKEN");
        let host = std::sync::Arc::new(Host {
            peer,
            tier: self.tier.clone(),
            tier_value: http::HeaderValue::from_str(&self.tier).map_err(|_| "a tier name that is no header value")?,
            bearer: token
                .map(|t| http::HeaderValue::from_str(&format!("Bearer {t}")))
                .transpose()
                .map_err(|_| "the peer token is not a header value")?,
            addresses: Mutex::new(found.into_iter().map(Address::new).collect()),
            next: AtomicUsize::new(0),
            scheme,
            client,
            rpc,
            connector,
            connection_url: Mutex::new(None),
        });
        // A first probe now: the host's readiness, and a store's connection
        // string, known before the tiers that call it start.
        let first = host.addresses.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|a| a.addr).collect::<Vec<_>>();
        for addr in first {
            if let Ok(ready) = host.probe(addr).await {
                host.restore(addr, ready);
            }
        }
        tokio::spawn(host.clone().watch());
        let _ = self.state.set(host);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.state.get().is_some_and(|h| h.ready())
    }

    async fn handle(&self, req: Request, _cx: Context) -> Response {
        match self.state.get() {
            Some(host) => host.forward(&req).await,
            None => Response::not_delivered("the peer replica has not started"),
        }
    }

    async fn on_message(&self, msg: Message, _cx: Context) -> Result<(), String> {
        let Some(host) = self.state.get() else { return Err("the peer replica has not started".to_owned()) };
        let resp = host.forward(&msg.into_request()).await;
        if resp.status.is_success() { Ok(()) } else { Err(format!("the peer answered {}", resp.status)) }
    }

    fn status(&self) -> serde_json::Value {
        let Some(host) = self.state.get() else { return serde_json::Value::Null };
        // Before the lock below: it takes the same one.
        let weight = host.weight();
        let addresses = host.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let peers: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| {
                json!({
                    "address": a.addr.to_string(),
                    "state": if a.ejected_until.is_some() { "ejected" } else { "ready" },
                    "ready_replicas": a.ready,
                    "last_error": a.last_error,
                })
            })
            .collect();
        json!({ "remote": true, "host": host.peer, "weight": weight, "peers": peers })
    }
}

plugin_api::declare_plugin!(Peer, name = "peer");
