//! Link calls while traces are recorded ([`crate::traces`]): a client span
//! for the call (a producer span for a publish into a queue tier), and for
//! each attempt a span of the target tier's handling of it (a consumer span
//! for a queue delivery), whose context the request handed to the target
//! carries. Taken only when tracing is on: the request is copied for each
//! attempt, to carry that attempt's `traceparent`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};
use plugin_api::LinkError;
use plugin_api::abi::RawResponse;

use super::http::{HttpRequest, HttpResponse};
use super::{Answer, Outcome, Route, answer_of, attempts};
use crate::plugins::{Instance, OwnedRequest};
use crate::topology::QueueRole;
use crate::traces::{self, Parent, Span};

/// The client span of a call on `route`, child of the trace headers
/// `parent`; `links` are the contexts of the messages a batch delivery carries.
fn client_span(route: &Route, parent: Parent<'_>, links: Vec<SpanContext>) -> Option<Span> {
    let spec = &route.spec;
    let topic = spec.topic.as_deref().unwrap_or_default();
    let (kind, name) = match spec.queue_role {
        Some(QueueRole::Publish) => (SpanKind::Producer, format!("{} publish {topic}", spec.from)),
        Some(QueueRole::Deliver) => (SpanKind::Client, format!("{} deliver to {}", spec.from, spec.to)),
        None => (SpanKind::Client, format!("{} → {}", spec.from, spec.to)),
    };
    let mut attributes = vec![
        KeyValue::new("orchestrator.from", spec.from.to_string()),
        KeyValue::new("orchestrator.to", spec.to.to_string()),
        KeyValue::new("orchestrator.link", spec.name.clone()),
        KeyValue::new("orchestrator.link.kind", spec.kind.as_str()),
    ];
    if spec.queue_role.is_some() {
        attributes.push(KeyValue::new("messaging.system", "orchestrator"));
        if !topic.is_empty() {
            attributes.push(KeyValue::new("messaging.destination.name", topic.to_owned()));
        }
    }
    Span::start(name, kind, parent, attributes, links)
}

/// The span of attempt `attempt` that `instance` handles, child of `client`.
fn handled_span(
    route: &Route,
    instance: &Instance,
    client: Option<&SpanContext>,
    attempt: u32,
    what: &str,
) -> Option<Span> {
    let client = client?;
    let kind = if route.spec.queue_role == Some(QueueRole::Deliver) { SpanKind::Consumer } else { SpanKind::Server };
    Span::start(
        format!("{} {what}", instance.tier()),
        kind,
        Parent::Context(client.clone()),
        vec![
            KeyValue::new("orchestrator.tier", instance.tier().to_string()),
            KeyValue::new("orchestrator.replica", i64::from(instance.replica())),
            KeyValue::new("orchestrator.attempt", i64::from(attempt)),
        ],
        Vec::new(),
    )
}

/// Records how an attempt ended on its span.
fn finish_attempt<T: Answer>(span: Option<Span>, route: &Route, outcome: &Outcome<T>) {
    let Some(mut span) = span else { return };
    match outcome {
        Outcome::Answered(answer) => {
            let label = answer.outcome(route).label();
            span.set(KeyValue::new("orchestrator.outcome", label));
            if matches!(label, "5xx" | "nack") || (route.spec.kind == crate::topology::LinkKind::Rpc && label != "OK") {
                span.fail(format!("answered {label}"));
            }
        }
        Outcome::NotDelivered(why) => span.fail(format!("not taken: {why}")),
        Outcome::NoAnswer(why) => span.fail(format!("no answer: {why}")),
        Outcome::Panicked => span.fail("failed without answering"),
    }
}

/// Records how the call ended on its span.
fn finish_call<T: Answer>(span: Option<Span>, route: &Route, result: &Result<T, LinkError>, attempts: u32) {
    let Some(mut span) = span else { return };
    span.set(KeyValue::new("orchestrator.attempts", i64::from(attempts)));
    match result {
        Ok(answer) => {
            let label = answer.outcome(route).label();
            span.set(KeyValue::new("orchestrator.outcome", label));
            if matches!(label, "5xx" | "nack") {
                span.fail(format!("answered {label}"));
            }
        }
        Err(e) => span.fail(e.message.clone()),
    }
}

/// The name of what a request asks for, for the handling span: the RPC
/// method, the queue operation, or the HTTP method.
fn what(route: &Route, method: &str, uri: &str) -> String {
    match (route.spec.kind, route.spec.queue_role) {
        (crate::topology::LinkKind::Rpc, _) => uri.trim_start_matches('/').to_owned(),
        (_, Some(QueueRole::Publish)) => format!("receive publish {}", route.spec.topic.as_deref().unwrap_or_default()),
        (_, Some(QueueRole::Deliver)) => "process delivery".to_owned(),
        _ => method.to_owned(),
    }
}

/// The first attempt of a call: `send` on the next ready replica.
fn first_on_next<A>(send: impl Fn(&Arc<Instance>) -> A) -> impl FnOnce(&Route) -> (Option<Arc<Instance>>, Option<A>) {
    move |route| {
        let replica = route.target.pick();
        let first = replica.as_ref().map(&send);
        (replica, first)
    }
}

/// [`super::call`], traced. `req` is the request as the link sends it.
pub(super) async fn call(
    route: Arc<Route>,
    req: OwnedRequest,
    timeout: Duration,
    idempotent: bool,
) -> Result<RawResponse, LinkError> {
    let borrowed = req.borrow();
    let text = |v: &'_ [u8]| std::str::from_utf8(v).ok().map(str::to_owned);
    let method = text(borrowed.method()).unwrap_or_default();
    let what = what(&route, &method, &text(borrowed.uri()).unwrap_or_default());
    // A batch delivery: the messages' own contexts, the first one the parent.
    let mut carried: Vec<SpanContext> = Vec::new();
    if borrowed.header(plugin_api::queue::BATCH.as_bytes()).is_some() {
        let body = Bytes::copy_from_slice(borrowed.body());
        for (headers, _) in plugin_api::queue::batch_entries(&body).flatten() {
            if let Some(sc) =
                headers.find_raw("traceparent").and_then(|v| traces::context_of(std::str::from_utf8(v).ok()?))
            {
                carried.push(sc);
            }
        }
    }
    let (traceparent, tracestate) = match carried.first() {
        Some(sc) => (Some(traces::traceparent_of(sc)), None),
        None => (borrowed.header(b"traceparent").and_then(text), borrowed.header(b"tracestate").and_then(text)),
    };
    let parent = Parent::Headers { traceparent: traceparent.as_deref(), tracestate: tracestate.as_deref() };
    let client = client_span(&route, parent, carried);
    let parent = client.as_ref().map(Span::context);
    let count = Arc::new(AtomicU32::new(0));
    let send = {
        let (route, count) = (route.clone(), count.clone());
        move |instance: &Arc<Instance>| {
            let attempt = count.fetch_add(1, Ordering::Relaxed) + 1;
            let handled = handled_span(&route, instance, parent.as_ref(), attempt, &what);
            let mut copy = req.clone();
            let trace = handled.as_ref().map(|h| {
                let carrier = h.carrier();
                copy.set_trace(carrier.traceparent.as_deref().unwrap_or_default(), carrier.tracestate.as_deref());
                h.context().trace_id()
            });
            // The target copies the request before `call` returns.
            let call = instance.call(&copy.borrow());
            let route = route.clone();
            async move {
                let outcome = traces::in_trace(trace, answer_of(call)).await;
                finish_attempt(handled, &route, &outcome);
                outcome
            }
        }
    };
    let first = first_on_next(send.clone());
    let result = attempts(route.clone(), timeout, idempotent, first, Some(send)).await;
    finish_call(client, &route, &result, count.load(Ordering::Relaxed));
    result
}

/// [`super::http::forward`], traced.
pub(super) async fn forward(
    route: Arc<Route>,
    req: HttpRequest,
    client_addr: Option<HeaderValue>,
    idempotent: bool,
) -> Result<HttpResponse, LinkError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let parent = Parent::Headers { traceparent: header("traceparent"), tracestate: header("tracestate") };
    let client = client_span(&route, parent, Vec::new());
    let req = Arc::new(req);
    let parent = client.as_ref().map(Span::context);
    let what = req.method().as_str().to_owned();
    let count = Arc::new(AtomicU32::new(0));
    let send = {
        let (route, count) = (route.clone(), count.clone());
        move |instance: &Arc<Instance>| {
            let attempt = count.fetch_add(1, Ordering::Relaxed) + 1;
            let handled = handled_span(&route, instance, parent.as_ref(), attempt, &what);
            let mut copy = super::http::copy_of(&req);
            let trace = handled.as_ref().map(|h| {
                h.carrier().write_into(copy.headers_mut());
                h.context().trace_id()
            });
            let sent = super::http::attempt(instance, copy, client_addr.clone());
            let route = route.clone();
            async move {
                let outcome = traces::in_trace(trace, sent).await;
                finish_attempt(handled, &route, &outcome);
                outcome
            }
        }
    };
    let first = first_on_next(send.clone());
    let timeout = route.spec.timeout;
    let result = attempts(route.clone(), timeout, idempotent, first, Some(send)).await;
    finish_call(client, &route, &result, count.load(Ordering::Relaxed));
    result
}
