//! Links: how a call from one tier reaches another.
//!
//! Each tier has a [`LinkTable`] of its outbound links by name; each link is a
//! [`Route`] to the target tier's [`Endpoint`] (its ready replicas). Native →
//! native calls are in-process: the caller's request goes straight to a target
//! instance's handler, without a socket or a copy on the host side.

pub mod balance;
pub mod http;
pub mod inbound;
pub mod rpc;
pub mod tcp;
mod traced;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Poll;

use arc_swap::ArcSwap;
pub use balance::Endpoint;
use plugin_api::abi::{NO_ANSWER, NOT_DELIVERED, RawResponse};
use plugin_api::{LinkError, LinkErrorKind};

use crate::metrics::{self, LinkKey, LinkMetrics};
use crate::plugins::{BorrowedRequest, Instance, InstanceCall, Panicked};
use crate::serve::listener::{Bound, Listener, Protocol};
use crate::serve::timeouts::Deadline;
use crate::serve::workers::Workers;
use crate::topology::{LinkKind, LinkSpec, QueueRole};

/// One outbound link of a tier.
#[derive(Debug)]
pub struct Route {
    pub spec: LinkSpec,
    pub target: Arc<Endpoint>,
    /// For a link that publishes into a queue tier: the URI every request
    /// on it is sent with, `/<topic>`, which the broker reads the topic from.
    publish_uri: Option<String>,
    /// The link's series: the same for a link a reload keeps.
    pub metrics: Arc<LinkMetrics>,
    /// A TCP link's series.
    pub tcp: Arc<metrics::TcpMetrics>,
}

impl Route {
    pub fn new(spec: LinkSpec, target: Arc<Endpoint>) -> Self {
        let publish_uri = match (spec.queue_role, &spec.topic) {
            (Some(QueueRole::Publish), Some(topic)) => Some(format!("/{topic}")),
            _ => None,
        };
        let key = LinkKey {
            from: spec.from.to_string(),
            to: spec.to.to_string(),
            link: spec.name.clone(),
            kind: spec.kind.as_str(),
        };
        // A TCP link's series are its own; it makes no calls.
        let tcp = metrics::registry().tcp_link(key.clone());
        let metrics = metrics::registry().link(key);
        Self { spec, target, publish_uri, metrics, tcp }
    }

    /// The outcome an answer of HTTP status `status` is counted as: its
    /// gRPC status on an RPC link (`grpc` reads it), acknowledged or not on a
    /// queue link, else its status class.
    fn outcome_of(&self, status: u16, grpc: impl FnOnce() -> Option<u32>) -> metrics::Outcome {
        match (self.spec.kind, self.spec.queue_role) {
            (LinkKind::Rpc, _) => metrics::Outcome::grpc(grpc().unwrap_or(2)),
            (_, Some(_)) if (200..300).contains(&status) => metrics::Outcome::ACK,
            (_, Some(_)) => metrics::Outcome::NACK,
            _ => metrics::Outcome::http(status),
        }
    }
}

/// An answer a link call gives back, as its outcome for the metrics.
pub trait Answer {
    fn outcome(&self, route: &Route) -> metrics::Outcome;
}

impl Answer for RawResponse {
    fn outcome(&self, route: &Route) -> metrics::Outcome {
        route.outcome_of(self.status, || {
            plugin_api::abi::decode_headers(self.headers.as_bytes())
                .find(|(n, _)| n.eq_ignore_ascii_case(b"grpc-status"))
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        })
    }
}

/// A tier's outbound links by name. Swapped atomically when links change.
#[derive(Debug)]
pub struct LinkTable {
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    /// Local HTTP listeners forwarding to a link, for programs outside the
    /// process (process tiers). Closed when the table (the tier) goes away.
    proxies: Mutex<HashMap<String, Proxy>>,
    /// Link name → the loopback port its local listener must have (a
    /// program in another container was told it); others take a free one.
    ports: HashMap<String, u16>,
    /// Where the connections to those listeners are served.
    workers: Workers,
}

#[derive(Debug)]
struct Proxy {
    url: String,
    listener: ProxyListener,
}

#[derive(Debug)]
enum ProxyListener {
    Http(Listener),
    Tcp(#[allow(dead_code)] tcp::TcpListenerTask),
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let ProxyListener::Http(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl LinkTable {
    pub fn new(routes: HashMap<String, Arc<Route>>, workers: Workers) -> Self {
        Self { routes: ArcSwap::from_pointee(routes), proxies: Mutex::default(), ports: HashMap::new(), workers }
    }

    /// Opens the local listeners of the links `ports` names on those ports.
    pub fn with_ports(mut self, ports: HashMap<String, u16>) -> Self {
        self.ports = ports;
        self
    }

    /// The URL of this tier's local listener for link `name`, opened on first
    /// use. The listener resolves the link by name on every request, so its
    /// address survives any reload (and it answers 502 while no such link exists).
    pub fn proxy_url(self: &Arc<Self>, name: &str, kind: LinkKind) -> std::io::Result<Option<String>> {
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(proxy) = proxies.get(name) {
            return Ok(Some(proxy.url.clone()));
        }
        let port = self.ports.get(name).copied().unwrap_or(0);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (table, name_) = (Arc::downgrade(self), Arc::<str>::from(name));
        let span = tracing::info_span!("link", link = %name);
        let (listener, url) = match kind {
            LinkKind::Tcp => {
                let task = tcp::serve(listener, table, name_, &self.workers);
                (ProxyListener::Tcp(task), format!("tcp://{addr}"))
            }
            LinkKind::Rpc => {
                let handler = rpc::RpcHandler { table, name: name_ };
                let bound = Bound::from_listener(listener)?;
                let served = bound.serve(handler, Protocol::Http2, 0, &self.workers, span);
                (ProxyListener::Http(served), format!("h2c://{addr}"))
            }
            _ => {
                let handler = inbound::LinkHandler { table, name: name_ };
                let max = inbound::LINK_MAX_BODY;
                let bound = Bound::from_listener(listener)?;
                let served = bound.serve(handler, Protocol::Http1, max, &self.workers, span);
                (ProxyListener::Http(served), format!("http://{addr}"))
            }
        };
        tracing::debug!(link = name, %url, "Link listener open.");
        proxies.insert(name.to_owned(), Proxy { url: url.clone(), listener });
        Ok(Some(url))
    }

    /// For TCP link `name`, whose local listener is `url` (`tcp://HOST:PORT`):
    /// the connection string its target gives callers (a store's, with its
    /// credentials), at that address. `None` when the target has none.
    pub fn connection_url(&self, name: &str, url: &str) -> Option<String> {
        let addr = url.strip_prefix("tcp://")?;
        let route = self.get(name)?;
        route.target.replicas().iter().find_map(|i| match i.as_peer() {
            // A store on another host: the connection string its host said.
            Some(peer) => peer.connection_url(addr),
            None => i.as_server()?.connection_url(addr),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.load().get(name).cloned()
    }

    pub fn replace(&self, routes: HashMap<String, Arc<Route>>) {
        self.routes.store(Arc::new(routes));
    }
}

/// Runs `fut` until the deadline: `timeout` after the first time any attempt
/// of this call had to wait (set in `deadline`). The clock is read and the
/// timer armed only then: most in-process calls complete on their first poll,
/// and a timer would cost more than the call.
fn within<'a, F: Future>(
    deadline: &'a mut Option<tokio::time::Instant>,
    timeout: std::time::Duration,
    mut fut: Pin<&'a mut F>,
) -> impl Future<Output = Result<F::Output, Elapsed>> + 'a {
    let mut timer: Option<Deadline> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
        let sleep = timer.get_or_insert_with(|| Deadline::at(at));
        match Pin::new(sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// A call's deadline passed.
#[derive(Debug)]
struct Elapsed;

fn idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

/// How one attempt on one replica ended.
enum Outcome<T> {
    Answered(T),
    /// The replica did not take the request: safe to send again, whatever its method.
    NotDelivered(String),
    /// The replica took the request and gave no answer: maybe processed.
    NoAnswer(String),
    /// The handler failed without answering.
    Panicked,
}

/// A plugin instance's answer, as an attempt's outcome.
async fn answer_of(call: InstanceCall) -> Outcome<RawResponse> {
    match call.await {
        Ok(response) if response.status == NOT_DELIVERED => {
            Outcome::NotDelivered(String::from_utf8_lossy(response.body.as_bytes()).into_owned())
        }
        Ok(response) if response.status == NO_ANSWER => {
            Outcome::NoAnswer(String::from_utf8_lossy(response.body.as_bytes()).into_owned())
        }
        Ok(response) => Outcome::Answered(response),
        Err(Panicked) => Outcome::Panicked,
    }
}

/// Calls `route` with `req`. The target copies the request before this
/// returns; the returned future applies the link's timeout and retries.
///
/// With `retries: N`, up to N more attempts are made, each on the next ready
/// replica and all within the one timeout, when no replica answered:
/// - a request that was not delivered (no ready replica; the replica refused
///   it) is retried whatever its method;
/// - a request that may have been delivered (the handler failed without an
///   answer) is retried only if its method is idempotent.
pub fn call(
    route: &Arc<Route>,
    req: &BorrowedRequest<'_>,
) -> impl Future<Output = Result<RawResponse, LinkError>> + Send + 'static {
    let published;
    let req = match &route.publish_uri {
        Some(uri) => {
            published = req.with_uri(uri.as_bytes());
            &published
        }
        None => req,
    };
    // An RPC caller's own deadline (`grpc-timeout`) applies, capped by the link's timeout.
    let timeout = match route.spec.kind {
        LinkKind::Rpc => req
            .header(b"grpc-timeout")
            .and_then(plugin_api::rpc::decode_timeout)
            .map_or(route.spec.timeout, |d| d.min(route.spec.timeout)),
        _ => route.spec.timeout,
    };
    let idempotent = idempotent(req.method());
    if crate::traces::enabled() {
        // Boxed: the traced call's future is large, and this one is in every call's.
        let traced = Box::pin(traced::call(route.clone(), req.to_owned(), timeout, idempotent));
        return futures_util::future::Either::Right(traced);
    }
    let retry_copy = (route.spec.retries > 0).then(|| req.to_owned());
    let replica = route.target.pick();
    let first = replica.as_ref().map(|instance| answer_of(instance.call(req)));
    let again = retry_copy.map(|copy| move |instance: &Arc<Instance>| answer_of(instance.call(&copy.borrow())));
    futures_util::future::Either::Left(attempts(
        route.clone(),
        timeout,
        idempotent,
        move |_: &Route| (replica, first),
        again,
    ))
}

/// Runs the attempts of one call on `route`: the one `first` starts (on the
/// replica it names), then, while no replica answered and the link's
/// `retries` allow, `again` on another ready replica each time (see
/// [`call`]). All within `timeout`.
///
/// An attempt's future is large, and it is kept in one place: `first` is
/// called here rather than passed in started, which would keep a second copy.
async fn attempts<T, A>(
    route: Arc<Route>,
    timeout: std::time::Duration,
    idempotent: bool,
    first: impl FnOnce(&Route) -> (Option<Arc<Instance>>, Option<A>),
    mut again: Option<impl FnMut(&Arc<Instance>) -> A>,
) -> Result<T, LinkError>
where
    A: Future<Output = Outcome<T>>,
    T: Answer,
{
    // Counted once however many attempts it takes, and each attempt apart.
    let record = route.metrics.start();
    // The deadline is fixed when a call first has to wait (see `within`).
    let mut deadline = None;
    let (mut last, first) = first(&route);
    let mut attempt = std::pin::pin!(first);
    let mut retries_left = route.spec.retries;
    loop {
        let (error, delivered, outcome) = match attempt.as_mut().as_pin_mut() {
            None => {
                if let Some(r) = &record {
                    r.no_replica();
                }
                let error = route.error(LinkErrorKind::Unavailable, "has no ready replica".to_owned());
                (error, false, metrics::Outcome::UNAVAILABLE)
            }
            Some(running) => {
                let (error, delivered, outcome) = match within(&mut deadline, timeout, running).await {
                    Ok(Outcome::Answered(response)) => {
                        if let Some(r) = record {
                            r.finish_attempt(response.outcome(&route));
                        }
                        return Ok(response);
                    }
                    Ok(Outcome::NotDelivered(why)) => {
                        let error =
                            route.error(LinkErrorKind::Unavailable, format!("could not take the request: {why}"));
                        (error, false, metrics::Outcome::UNAVAILABLE)
                    }
                    Ok(Outcome::NoAnswer(why)) => (
                        route.error(LinkErrorKind::Upstream, format!("gave no answer: {why}")),
                        true,
                        metrics::Outcome::ERROR,
                    ),
                    Ok(Outcome::Panicked) => {
                        let error = route.error(LinkErrorKind::Upstream, "failed without answering".to_owned());
                        (error, true, metrics::Outcome::ERROR)
                    }
                    Err(Elapsed) => {
                        if let Some(r) = record {
                            r.finish_attempt(metrics::Outcome::TIMEOUT);
                        }
                        let limit = humantime::format_duration(timeout);
                        return Err(route.error(LinkErrorKind::Timeout, format!("did not answer within {limit}")));
                    }
                };
                if let Some(r) = &record {
                    r.attempt(outcome);
                }
                (error, delivered, outcome)
            }
        };
        let Some(again) = again.as_mut().filter(|_| retries_left > 0 && (!delivered || idempotent)) else {
            if let Some(r) = record {
                r.finish(outcome);
            }
            return Err(error);
        };
        if let Some(r) = &record {
            r.retry();
        }
        retries_left -= 1;
        // Another replica than the one that just failed, when there is one.
        last = route.target.pick_other(last.as_ref());
        attempt.set(last.as_ref().map(&mut *again));
    }
}

impl Route {
    fn error(&self, kind: LinkErrorKind, what: String) -> LinkError {
        LinkError::new(kind, format!("link `{}`: tier `{}` {what}", self.spec.name, self.spec.to))
    }
}
