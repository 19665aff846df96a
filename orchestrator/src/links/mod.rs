//! Links: how a call from one tier reaches another.
//!
//! Each tier has a [`LinkTable`] of its outbound links by name; each link is a
//! [`Route`] to the target tier's [`Endpoint`] (its ready replicas). Native →
//! native calls are in-process: the caller's request goes straight to a target
//! instance's handler, without a socket or a copy on the host side.

pub mod balance;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use arc_swap::ArcSwap;
pub use balance::Endpoint;
use plugin_api::abi::RawResponse;
use plugin_api::{LinkError, LinkErrorKind};

use crate::plugins::{BorrowedRequest, Panicked};
use crate::topology::LinkSpec;

/// One outbound link of a tier.
#[derive(Debug)]
pub struct Route {
    pub spec: LinkSpec,
    pub target: Arc<Endpoint>,
}

/// A tier's outbound links by name. Swapped atomically when links change.
#[derive(Debug, Default)]
pub struct LinkTable {
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
}

impl LinkTable {
    pub fn new(routes: HashMap<String, Arc<Route>>) -> Self {
        Self { routes: ArcSwap::from_pointee(routes) }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.load().get(name).cloned()
    }

    pub fn replace(&self, routes: HashMap<String, Arc<Route>>) {
        self.routes.store(Arc::new(routes));
    }

    pub fn names(&self) -> Vec<String> {
        self.routes.load().keys().cloned().collect()
    }
}

/// Runs `fut` until the deadline: `timeout` after the first time any attempt
/// of this call had to wait (set in `deadline`). The clock is read and the
/// timer armed only then: most in-process calls complete on their first poll,
/// and a timer would cost more than the call.
async fn within<F: Future>(
    deadline: &mut Option<tokio::time::Instant>,
    timeout: std::time::Duration,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
        let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A call's deadline passed.
#[derive(Debug)]
struct Elapsed;

fn idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

/// Calls `route` with `req`. The target copies the request before this
/// returns; the returned future applies the link's timeout and retries.
///
/// Retries (idempotent methods only, up to `retries` more attempts, within the
/// same deadline) happen when no replica answered: none was ready, or the
/// handler failed without a response.
pub fn call(
    route: &Arc<Route>,
    req: &BorrowedRequest<'_>,
) -> impl Future<Output = Result<RawResponse, LinkError>> + Send + 'static {
    let retry_copy = (route.spec.retries > 0 && idempotent(req.method())).then(|| req.to_owned());
    let first = route.target.pick().map(|instance| instance.call(req));
    let route = route.clone();
    async move {
        // The deadline is fixed when a call first has to wait (see `within`).
        let mut deadline = None;
        let mut attempt = first;
        let mut retries_left = if retry_copy.is_some() { route.spec.retries } else { 0 };
        loop {
            let error = match attempt.take() {
                None => LinkError::new(
                    LinkErrorKind::Unavailable,
                    format!("link `{}`: tier `{}` has no ready replica", route.spec.name, route.spec.to),
                ),
                Some(call) => match within(&mut deadline, route.spec.timeout, call).await {
                    Ok(Ok(response)) => return Ok(response),
                    Ok(Err(Panicked)) => LinkError::new(
                        LinkErrorKind::Upstream,
                        format!("link `{}`: tier `{}` failed without answering", route.spec.name, route.spec.to),
                    ),
                    Err(_) => {
                        return Err(LinkError::new(
                            LinkErrorKind::Timeout,
                            format!(
                                "link `{}`: tier `{}` did not answer within {}",
                                route.spec.name,
                                route.spec.to,
                                humantime::format_duration(route.spec.timeout)
                            ),
                        ));
                    }
                },
            };
            if retries_left == 0 {
                return Err(error);
            }
            retries_left -= 1;
            let copy = retry_copy.as_ref().expect("retries_left > 0 only with a copy");
            attempt = route.target.pick().map(|instance| instance.call(&copy.borrow()));
        }
    }
}
