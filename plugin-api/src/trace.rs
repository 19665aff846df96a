//! W3C trace context (`traceparent`, `tracestate`) carried across links.
//!
//! While a handler runs, the trace context of the request it handles is the
//! "current" one; a request the handler sends on a link without trace
//! headers of its own gets them. So a trace crosses every tier, native or
//! not, without plugin code: programs in process tiers forward the headers as
//! any HTTP service does.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::Headers;

/// The trace headers of one request; boxed, as most requests have none and
/// this travels inside every handler's future.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Trace(Option<Box<Headers2>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Headers2 {
    traceparent: Option<Bytes>,
    tracestate: Option<Bytes>,
}

impl Trace {
    /// The trace headers of `headers`, read without decoding the others.
    pub(crate) fn of(headers: &Headers) -> Self {
        let mut found = Headers2::default();
        headers.for_each_raw(|name, value| {
            if name.eq_ignore_ascii_case(b"traceparent") {
                found.traceparent = Some(Bytes::copy_from_slice(value));
            } else if name.eq_ignore_ascii_case(b"tracestate") {
                found.tracestate = Some(Bytes::copy_from_slice(value));
            }
        });
        Trace(found.traceparent.is_some().then(|| Box::new(found)))
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn traceparent(&self) -> Option<&Bytes> {
        self.0.as_ref().and_then(|t| t.traceparent.as_ref())
    }

    fn tracestate(&self) -> Option<&Bytes> {
        self.0.as_ref().and_then(|t| t.tracestate.as_ref())
    }
}

thread_local! {
    static CURRENT: RefCell<Trace> = RefCell::new(Trace::default());
}

/// Adds the current trace headers to `headers` unless it has its own.
pub(crate) fn propagate(headers: &mut Headers) {
    CURRENT.with(|current| {
        let current = current.borrow();
        let Some(parent) = current.traceparent() else { return };
        if !Trace::of(headers).is_empty() {
            return;
        }
        headers.insert("traceparent", &String::from_utf8_lossy(parent));
        if let Some(state) = current.tracestate() {
            headers.insert("tracestate", &String::from_utf8_lossy(state));
        }
    });
}

/// `future`, run with `trace` as the current trace context.
pub(crate) struct WithTrace<F> {
    future: F,
    trace: Trace,
}

impl<F> WithTrace<F> {
    pub(crate) fn new(future: F, trace: Trace) -> Self {
        Self { future, trace }
    }
}

impl<F: Future> Future for WithTrace<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of
        // `self`, and `trace` is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if this.trace.is_empty() {
            // SAFETY: as above.
            return unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx);
        }
        let previous = CURRENT.with(|c| c.replace(this.trace.clone()));
        // SAFETY: as above.
        let result = unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx);
        CURRENT.with(|c| c.replace(previous));
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::prelude::*;
    use crate::testing::TestHost;

    /// Calls its link with a request of its own making.
    #[derive(Deserialize)]
    #[serde(crate = "crate::serde")]
    struct Caller {}

    impl Plugin for Caller {
        async fn handle(&self, req: Request, cx: Context) -> Response {
            let fresh = if req.path() == "/own" {
                Request::get("/x").with_header("traceparent", "00-own-01")
            } else {
                Request::get("/x")
            };
            match cx.call("next", fresh).await {
                Ok(resp) => resp,
                Err(e) => e.to_response(),
            }
        }
    }

    #[test]
    fn link_calls_carry_the_handled_requests_trace() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let host = TestHost::new().link("next", move |req| {
            let tp = req.headers.get("traceparent").map(str::to_owned);
            let ts = req.headers.get("tracestate").map(str::to_owned);
            record.lock().unwrap().push((tp, ts));
            Response::text("ok")
        });
        let caller = host.start::<Caller>(crate::serde_json::json!({})).unwrap();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        caller.call(Request::get("/").with_header("traceparent", parent).with_header("tracestate", "a=1"));
        caller.call(Request::get("/"));
        caller.call(Request::get("/own").with_header("traceparent", parent));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], (Some(parent.to_owned()), Some("a=1".to_owned())));
        assert_eq!(seen[1], (None, None), "no trace in, no trace out");
        assert_eq!(seen[2].0.as_deref(), Some("00-own-01"), "a request's own trace headers win");
    }
}
