//! Traces in OpenTelemetry, exported over OTLP/HTTP (protobuf) when an
//! endpoint is set (`--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! Spans: one per request a tier listener serves (server), one per call on
//! a link (client; producer for a publish into a queue tier), and one per
//! attempt a target tier handles (server; consumer for a queue delivery).
//! The request handed to a tier carries the `traceparent` of the span that
//! handles it, so what the tier calls on its links (native plugins propagate
//! it; programs forward it as any HTTP service does) is its child: one user
//! request through every tier, and through a queue, is one trace.
//!
//! Sampling is parent-based, with a ratio for new traces (`--trace-sample`).
//! Spans go into a bounded queue and are exported in batches by a task of
//! their own, off the request path; a full queue or a failed export drops
//! spans and counts them (`orchestrator_trace_spans_dropped_total`), and
//! never slows or fails a request. With no endpoint, nothing is recorded and
//! the request path only reads one flag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::mpsc;

/// Spans waiting to be exported, at most; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Spans sent in one export, at most.
pub const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one export may take (retries included) before it is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to export where.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// The fraction of new traces recorded (a request that comes with a
    /// sampled `traceparent` is recorded whatever this is).
    pub sample: f64,
    /// `service.name` of the spans.
    pub service: String,
}

impl TraceOptions {
    /// The traces URL for `endpoint`: a base URL (`http://collector:4318`,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` is) gets `/v1/traces`; a URL with a
    /// path is taken as it is.
    pub fn traces_url(endpoint: &str) -> String {
        let trimmed = endpoint.trim_end_matches('/');
        let path = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
        if path.contains('/') { trimmed.to_owned() } else { format!("{trimmed}/v1/traces") }
    }
}

/// Spans exported, and dropped by reason.
#[derive(Debug, Default)]
pub struct Counts {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
}

struct Tracing {
    tracer: opentelemetry_sdk::trace::SdkTracer,
    provider: SdkTracerProvider,
    queue: Mutex<Option<mpsc::Sender<SpanData>>>,
    exporting: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();
static COUNTS: Counts = Counts {
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
};

/// The export counts, for the metrics.
pub fn counts() -> &'static Counts {
    &COUNTS
}

/// Whether spans are recorded at all.
#[inline]
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// The span processor: hands each ended span to the export task's queue.
#[derive(Debug)]
struct Queue(mpsc::Sender<SpanData>);

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.0.try_send(span).is_err() {
            COUNTS.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The HTTP client the exporter sends with: hyper, on the orchestrator's
/// runtime (the exporter's future may be polled anywhere).
#[derive(Debug)]
struct Client {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    runtime: tokio::runtime::Handle,
}

/// Largest answer read from a collector.
const MAX_ANSWER: usize = 1024 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
            let answer = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await??;
            let (parts, body) = answer.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        });
        sent.await?
    }
}

/// Starts recording and exporting spans, on the current runtime.
pub fn start(options: &TraceOptions) -> Result<(), String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let client = Client {
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        runtime: tokio::runtime::Handle::current(),
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(options.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .with_retry_policy(
            opentelemetry_otlp::RetryPolicy::recommended().with_max_retries(2).with_max_delay(Duration::from_secs(1)),
        )
        .build()
        .map_err(|e| format!("cannot export traces to {}: {e}", options.endpoint))?;
    let resource = Resource::builder_empty().with_service_name(options.service.clone()).build();
    exporter.set_resource(&resource);
    let (tx, mut rx) = mpsc::channel::<SpanData>(QUEUE);
    let exporting = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            let due = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(due, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => COUNTS.exported.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    // Counted before it is said: a reader of the line finds the count.
                    let before = COUNTS.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(error = %e, spans = n, "Exporting spans failed; they are dropped.");
                    before
                }
            };
        }
    });
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(options.sample.clamp(0.0, 1.0))));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queue(tx.clone()))
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("orchestrator");
    let tracing = Tracing { tracer, provider, queue: Mutex::new(Some(tx)), exporting: Mutex::new(Some(exporting)) };
    TRACING.set(tracing).map_err(|_| "tracing was started twice".to_owned())
}

/// Exports what is queued (within `limit`), then stops.
pub async fn shutdown(limit: Duration) {
    let Some(tracing) = TRACING.get() else { return };
    let _ = tracing.provider.shutdown();
    drop(tracing.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
    let task = tracing.exporting.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task {
        let _ = tokio::time::timeout(limit, task).await;
    }
}

/// A request's trace headers, for the propagator to read.
struct Headers<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The trace headers of a span, to hand on.
#[derive(Debug, Default)]
pub struct Carrier {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Carrier {
    /// Writes these trace headers into `headers`, in place of theirs.
    pub fn write_into(self, headers: &mut http::HeaderMap) {
        headers.remove("tracestate");
        if let Some(v) = self.traceparent.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            headers.insert("traceparent", v);
        }
        if let Some(v) = self.tracestate.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            headers.insert("tracestate", v);
        }
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value.clone()).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

/// A span of the orchestrator's, ended (with the status set) when dropped.
#[derive(Debug)]
pub struct Span {
    span: opentelemetry_sdk::trace::Span,
}

impl Span {
    /// A new span named `name`, child of the context `get` reads from a
    /// request's headers (`traceparent`), or of `parent`; `None` when
    /// tracing is off.
    pub fn start<'a>(
        name: String,
        kind: SpanKind,
        parent: Parent<'a>,
        attributes: Vec<KeyValue>,
        links: Vec<SpanContext>,
    ) -> Option<Span> {
        let tracing = TRACING.get()?;
        let cx = match parent {
            Parent::Headers { traceparent, tracestate } => {
                TraceContextPropagator::new().extract(&Headers { traceparent, tracestate })
            }
            Parent::Context(sc) => Context::new().with_remote_span_context(sc),
            Parent::None => Context::new(),
        };
        let links = links.into_iter().map(Link::with_context).collect();
        let span = tracing
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(&tracing.tracer, &cx);
        Some(Span { span })
    }

    pub fn context(&self) -> SpanContext {
        self.span.span_context().clone()
    }

    /// The headers that make what this span's request leads to its children.
    pub fn carrier(&self) -> Carrier {
        let mut carrier = Carrier::default();
        let cx = Context::new().with_remote_span_context(self.context());
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier
    }

    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// The span's outcome was an error: `description`.
    pub fn fail(&mut self, description: impl Into<String>) {
        self.span.set_status(Status::error(description.into()));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.span.end();
    }
}

/// Where a new span's parent comes from.
pub enum Parent<'a> {
    /// A request's trace headers.
    Headers { traceparent: Option<&'a str>, tracestate: Option<&'a str> },
    /// A span of ours, by its context.
    Context(SpanContext),
    /// A new trace.
    None,
}

/// The `traceparent` that names `sc`.
pub fn traceparent_of(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<TraceId>> = const { std::cell::Cell::new(None) };
}

/// The trace of the call being handled on this thread, for the logs.
pub fn current() -> Option<TraceId> {
    CURRENT.with(std::cell::Cell::get)
}

/// `future`, with `trace` as [`current`] while it is polled: what a tier
/// logs while handling a traced call names the trace.
pub async fn in_trace<F: std::future::Future>(trace: Option<TraceId>, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let before = CURRENT.with(|c| c.replace(trace));
        let polled = future.as_mut().poll(cx);
        CURRENT.with(|c| c.set(before));
        polled
    })
    .await
}

/// The span context a `traceparent` value names, if it is a valid one.
pub fn context_of(traceparent: &str) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Headers { traceparent: Some(traceparent), tracestate: None });
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(TraceOptions::traces_url("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(TraceOptions::traces_url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(TraceOptions::traces_url("http://c:4318/otlp/v1/traces"), "http://c:4318/otlp/v1/traces");
    }

    #[test]
    fn a_traceparent_names_its_span() {
        let sc = context_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(context_of("garbage").is_none());
    }
}
