//! The built-in `queue` plugin: a queue tier is an embedded message broker.
//!
//! ```yaml
//! tiers:
//!   orders:
//!     plugin: queue
//!     config:
//!       capacity: 10000        # per topic; then publishers get backpressure
//!       on_full: block         # block (up to the link's timeout) | reject (503)
//!       max_attempts: 5        # then the message goes to `<topic>.dlq`
//!       durable: false         # true: stored in .orchestrator/<tier>.redb
//! links:
//!   - { from: api, to: orders, kind: queue }                          # publishes on topic `orders`
//!   - { from: orders, to: worker, kind: queue, mode: point-to-point } # worker replicas compete
//!   - { from: orders, to: audit, kind: queue }                        # audit gets every message too
//! ```
//!
//! A link into the tier publishes on its topic: every request on it is a
//! message (`202` with its id, `503` when the topic is full and rejects). A
//! link out of the tier subscribes its target: the broker POSTs each message
//! to it and takes a `2xx` (a native plugin's `on_message` returning `Ok`) as
//! the acknowledgement; anything else is redelivered with backoff.
//!
//! Layout: `config` (what the user writes), `broker` (topics, groups,
//! acknowledgements; shared by the tier's successive instances), `store`
//! (the durable database), and here the plugin and its delivery workers.

#![forbid(unsafe_code)]

mod broker;
mod config;
mod nats;
mod store;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use broker::{Broker, GroupRef, Job, Take};
pub use config::Queue;
use config::Settings;
use plugin_api::prelude::*;
use plugin_api::queue::{ATTEMPT, BATCH, BatchWriter, MESSAGE_ID, PUBLISH_BATCH, PUBLISHED_AT, TOPIC, batch_entries};
use plugin_api::serde_json;
use plugin_api::{LinkErrorKind, LinkInfo};
use tokio::sync::watch;

/// A running broker instance: its share of the tier's broker and its delivery workers.
struct Running {
    broker: Arc<Broker>,
    groups: Vec<GroupRef>,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for worker in self.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            worker.abort();
        }
        for group in &self.groups {
            self.broker.unsubscribe(group);
        }
    }
}

/// The plugin: its configuration, and the broker once the instance runs.
#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde", transparent)]
pub struct QueuePlugin {
    config: Queue,
    #[serde(skip)]
    running: OnceLock<Running>,
    /// `backend: nats`: the tier on JetStream instead.
    #[serde(skip)]
    nats: OnceLock<nats::Running>,
}

/// A subscription: one outbound queue link.
struct Subscription {
    link: String,
    topic: String,
    mode: &'static str,
    concurrency: u32,
    path: String,
}

impl Subscription {
    fn of(link: &LinkInfo) -> Option<Self> {
        let topic = link.param("topic")?.to_owned();
        let mode = if link.param("mode") == Some("point-to-point") { "point-to-point" } else { "pubsub" };
        Some(Self {
            link: link.name.clone(),
            mode,
            concurrency: link.param("concurrency").and_then(|c| c.parse().ok()).unwrap_or(1).max(1),
            path: link.param("path").map_or_else(|| format!("/messages/{topic}"), str::to_owned),
            topic,
        })
    }

    /// Pub/sub subscribers each get every message; point-to-point ones share.
    fn group_key(&self) -> String {
        if self.mode == "pubsub" { self.link.clone() } else { "point-to-point".to_owned() }
    }
}

impl Plugin for QueuePlugin {
    /// Links into a queue tier publish; links out of it deliver.
    const SERVES: &'static [LinkKind] = &[LinkKind::Queue];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        Settings::new(self.config.clone()).map(drop)
    }

    /// A publish: `POST /<topic>` (the host sets the path from the link).
    async fn handle(&self, mut req: Request, _cx: Context) -> Response {
        let (running, on_nats) = (self.running.get(), self.nats.get());
        if running.is_none() && on_nats.is_none() {
            return Response::not_delivered("the broker is starting");
        }
        if req.method != plugin_api::Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "publish a message with POST")
                .with_header("allow", "POST");
        }
        let body = std::mem::take(&mut req.body);
        let topic = req.path().trim_start_matches('/');
        if topic.is_empty() || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Response::error(StatusCode::NOT_FOUND, "no such topic: publish through a queue link");
        }
        let batch = req.headers.find_raw(PUBLISH_BATCH).is_some();
        let single;
        let mut many = Vec::new();
        // A publisher's own ids (`orch-message-id`): JetStream stores a
        // message published twice with one id once.
        let mut given = Vec::new();
        let given_id =
            |h: &plugin_api::Headers| h.find_raw(MESSAGE_ID).map(|v| String::from_utf8_lossy(v).into_owned());
        let messages = if batch {
            let body = body.into_bytes();
            for entry in batch_entries(&body) {
                match entry {
                    Ok((headers, message)) => {
                        given.push(given_id(&headers));
                        many.push((carried(&headers), message));
                    }
                    Err(why) => return Response::error(StatusCode::BAD_REQUEST, &why),
                }
            }
            &many[..]
        } else {
            given.push(given_id(&req.headers));
            single = (carried(&req.headers), body.into_bytes());
            std::slice::from_ref(&single)
        };
        // Each message on its own: a batch may be larger than one message may.
        let limit = self.config.max_message_size;
        if let Some((_, big)) = messages.iter().find(|(_, m)| m.len() as u64 > limit) {
            return Response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a message is {} bytes; this broker takes at most {limit}", big.len()),
            );
        }
        // A given id goes out in a header and is what consumers deduplicate
        // on: short, and printable.
        if let Some(bad) = given.iter().flatten().find(|id| !valid_given_id(id)) {
            return Response::error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "`orch-message-id` `{}` is not a message id: 1 to {MAX_GIVEN_ID} printable ASCII characters, without spaces",
                    bad.chars().take(MAX_GIVEN_ID).collect::<String>()
                ),
            );
        }
        let Some(running) = running else {
            let Some(on_nats) = on_nats else { return Response::not_delivered("the broker is starting") };
            let messages: Vec<_> =
                messages.iter().zip(given).map(|((carried, body), id)| (id, carried.clone(), body.clone())).collect();
            return match on_nats.publish(topic, &messages).await {
                Ok(ids) => accepted_ids(&ids, batch, topic),
                Err(nats::PublishError::Full(why)) => {
                    Response::error(StatusCode::SERVICE_UNAVAILABLE, &why).with_header("retry-after", "1")
                }
                Err(nats::PublishError::Failed(why)) => Response::error(StatusCode::SERVICE_UNAVAILABLE, &why),
            };
        };
        let any_given = given.iter().any(Option::is_some);
        match running.broker.publish_given(topic, messages, if any_given { &given } else { &[] }).await {
            Ok(first) if any_given => {
                let ids: Vec<String> = given
                    .into_iter()
                    .enumerate()
                    .map(|(i, id)| id.unwrap_or_else(|| first.after(i as u64).to_string()))
                    .collect();
                accepted_ids(&ids, batch, topic)
            }
            Ok(first) => accepted(&first, messages.len(), batch, topic),
            Err(broker::PublishError::Full(why)) => {
                Response::error(StatusCode::SERVICE_UNAVAILABLE, &why).with_header("retry-after", "1")
            }
            Err(broker::PublishError::TooMany(why)) => Response::error(StatusCode::PAYLOAD_TOO_LARGE, &why),
            // The store cannot write now (a full disk): it tries again by itself.
            Err(broker::PublishError::Store(why)) => {
                Response::error(StatusCode::SERVICE_UNAVAILABLE, &why).with_header("retry-after", "1")
            }
        }
    }

    /// Started, and (durable) able to write what it accepts.
    fn is_ready(&self) -> bool {
        self.running.get().is_some_and(|r| r.broker.writes()) || self.nats.get().is_some()
    }

    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        if self.running.get().is_some() || self.nats.get().is_some() {
            return Ok(());
        }
        let settings = Settings::new(self.config.clone()).map_err(|issues| {
            issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; ")
        })?;
        let tier = cx.tier();
        if let Some(on_nats) = settings.nats(&cx.base_dir())? {
            let subscriptions: Vec<Subscription> =
                cx.link_infos().iter().filter(|l| l.kind == LinkKind::Queue).filter_map(Subscription::of).collect();
            let running = nats::start(&tier, settings, on_nats, subscriptions, cx.clone()).await?;
            if self.nats.set(running).is_err() {
                return Err("the broker was started twice".to_owned());
            }
            return Ok(());
        }
        // `ORCH_DATA_DIR` (`run --data-dir`, as in a Kubernetes pod) stands
        // in for the topology file's directory, which may be read-only.
        let base = cx.env("ORCH_DATA_DIR").map_or_else(|| cx.base_dir(), std::path::PathBuf::from);
        let data_file = settings.data_file(&base, &tier);
        let (broker, warning) = Broker::attach(&tier, settings, &data_file)?;
        if let Some(warning) = warning {
            cx.warn(format_args!("`durable`/`data_dir` changed: {warning}."));
        }
        let subscriptions: Vec<Subscription> =
            cx.link_infos().iter().filter(|l| l.kind == LinkKind::Queue).filter_map(Subscription::of).collect();
        let (stop, stopped) = watch::channel(false);
        let mut groups = Vec::new();
        let mut workers = Vec::new();
        // Every group joins before any delivers: a message recovered from
        // disk goes to each of them, and must not be acknowledged by one
        // (and removed) before another has joined.
        let mut joined = Vec::new();
        for sub in subscriptions {
            match broker.subscribe_as(&sub.topic, &sub.group_key(), sub.mode, &sub.link) {
                Ok(group) => {
                    groups.push(group.clone());
                    joined.push((group, Arc::new(sub)));
                }
                Err(e) => {
                    // Leave the groups joined so far before giving up.
                    drop(Running { broker, groups, stop, workers: Mutex::new(workers) });
                    return Err(e);
                }
            }
        }
        for (group, sub) in joined {
            for _ in 0..sub.concurrency {
                let worker = deliver(broker.clone(), group.clone(), sub.clone(), cx.clone(), stopped.clone());
                workers.push(delivery_runtime().spawn(worker));
            }
        }
        if self.running.set(Running { broker, groups, stop, workers: Mutex::new(workers) }).is_err() {
            return Err("the broker was started twice".to_owned());
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        if let Some(on_nats) = self.nats.get() {
            return on_nats.status();
        }
        self.running.get().map_or(serde_json::Value::Null, |r| r.broker.status())
    }

    /// Finishes the deliveries in flight; the queued messages stay with the
    /// tier's broker for the next instance.
    async fn stop(&self, _cx: Context) {
        if let Some(on_nats) = self.nats.get() {
            on_nats.stop().await;
        }
        let Some(running) = self.running.get() else { return };
        let _ = running.stop.send(true);
        let workers: Vec<_> = running.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for worker in workers {
            let _ = worker.await;
        }
    }
}

plugin_api::declare_plugin!(QueuePlugin, name = "queue");

/// Most deliveries a worker takes, and sends in one call, at once (shared
/// out when a subscription has several workers).
const MAX_BATCH: usize = 64;

/// Times a worker with nothing to deliver looks again before it sleeps.
const SPINS: usize = 16;

/// One delivery worker of a subscription: takes messages, sends them to the
/// subscriber and settles them, one call at a time; so a subscription with
/// `concurrency: 1` sees messages in publish order.
///
/// A call carries a batch of messages (the subscriber's plugin hands them to
/// `on_message` one by one) while the subscriber answers at once, as native
/// tiers do; as soon as a call has to wait (a program behind HTTP, a slow
/// handler), calls go back to one message each.
async fn deliver(
    broker: Arc<Broker>,
    group: GroupRef,
    sub: Arc<Subscription>,
    cx: Context,
    mut stop: watch::Receiver<bool>,
) {
    let max_batch = (MAX_BATCH / sub.concurrency as usize).max(1);
    let mut size = 1;
    let mut jobs = VecDeque::with_capacity(max_batch);
    let mut acked = Vec::with_capacity(max_batch);
    let mut taken = Vec::with_capacity(max_batch);
    let mut not_delivered = 0;
    let mut scratch = String::new();
    let mut failure_log = FailureLog::default();
    loop {
        if *stop.borrow() {
            return;
        }
        let mut first = broker.take(&group, size, &mut taken);
        // Under a steady stream, look again a few times before going to sleep:
        // waking a sleeping worker costs the publisher more than this.
        for _ in 0..SPINS {
            if !matches!(first, Take::Wait(_)) {
                break;
            }
            tokio::task::yield_now().await;
            first = broker.take(&group, size, &mut taken);
        }
        match first {
            Take::Jobs => {}
            Take::Gone => return,
            Take::Wait(_) => {
                // Registered before looking again, so that no wake-up is missed.
                let notified = group.notify.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                match broker.take(&group, size, &mut taken) {
                    Take::Jobs => {}
                    Take::Gone => return,
                    Take::Wait(due) => {
                        let due = due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                        tokio::select! {
                            () = &mut notified => {}
                            () = tokio::time::sleep_until(due) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
        }
        jobs.extend(taken.drain(..));
        let mut settle = Settle { broker: &broker, jobs };
        let req = if settle.jobs.len() == 1 {
            request(&settle.jobs[0], &sub.path, &mut scratch)
        } else {
            batch_request(&settle.jobs, &sub.path, &group.topic, &mut scratch)
        };
        let mut call = std::pin::pin!(cx.call(&sub.link, req));
        let mut waited = false;
        let outcome = std::future::poll_fn(|c| {
            let polled = call.as_mut().poll(c);
            waited |= polled.is_pending();
            polled
        })
        .await;
        let mut pause = false;
        match outcome {
            Ok(resp) if resp.status.is_success() => {
                not_delivered = 0;
                let failed = if settle.jobs.len() > 1 { failures(&resp) } else { Vec::new() };
                for (i, job) in settle.jobs.drain(..).enumerate() {
                    match failed.iter().find(|(at, _)| *at == i) {
                        Some((_, reason)) => {
                            let failed = broker.fail(&job, reason.clone());
                            failure_log.log(&cx, &sub, &job, reason, failed);
                        }
                        None => acked.push(job),
                    }
                }
                broker.ack(&acked);
                acked.clear();
            }
            Ok(resp) => {
                not_delivered = 0;
                let reason = refusal(resp.status.as_u16(), &resp.body);
                for job in settle.jobs.drain(..) {
                    let failed = broker.fail(&job, reason.clone());
                    failure_log.log(&cx, &sub, &job, &reason, failed);
                }
            }
            Err(e) if matches!(e.kind, LinkErrorKind::Unavailable | LinkErrorKind::UnknownLink) => {
                // Not delivered at all: back in line, no attempt counted.
                for job in settle.jobs.drain(..) {
                    broker.requeue(&job, e.message.clone());
                }
                not_delivered += 1;
                pause = true;
            }
            Err(e) => {
                not_delivered = 0;
                for job in settle.jobs.drain(..) {
                    let failed = broker.fail(&job, e.message.clone());
                    failure_log.log(&cx, &sub, &job, &e.message, failed);
                }
            }
        }
        jobs = settle.into_jobs();
        size = if waited { 1 } else { (size * 2).min(max_batch) };
        if pause {
            tokio::select! {
                () = tokio::time::sleep(broker::pause_after(not_delivered)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The failed messages a subscriber listed in its answer to a batch.
fn failures(resp: &Response) -> Vec<(usize, String)> {
    if resp.body.as_ref() == br#"{"failed":[]}"# {
        return Vec::new();
    }
    let answer: serde_json::Value = resp.json_body().unwrap_or_default();
    let listed = answer.get("failed").and_then(|f| f.as_array()).map(Vec::as_slice).unwrap_or_default();
    listed
        .iter()
        .filter_map(|f| Some((f.get(0)?.as_u64()? as usize, f.get(1)?.as_str().unwrap_or_default().to_owned())))
        .collect()
}

/// A worker's batch while it is being delivered: if the worker is cancelled
/// midway, what it still holds goes back in line.
struct Settle<'a> {
    broker: &'a Broker,
    jobs: VecDeque<Job>,
}

impl Settle<'_> {
    /// The (emptied) batch, to be reused.
    fn into_jobs(mut self) -> VecDeque<Job> {
        std::mem::take(&mut self.jobs)
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        for job in self.jobs.drain(..) {
            self.broker.requeue(&job, "the delivery was interrupted".to_owned());
        }
    }
}

/// The longest id a publisher may give its message.
const MAX_GIVEN_ID: usize = 200;

/// A publisher's own message id: 1 to [`MAX_GIVEN_ID`] visible ASCII characters.
fn valid_given_id(id: &str) -> bool {
    (1..=MAX_GIVEN_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The answer to an accepted publish: `202`, the first id in `orch-message-id`,
/// and `{"id": …, "topic": …}` (`{"ids": […], "topic": …}` for a batch).
fn accepted(first: &broker::MessageId, count: usize, batch: bool, topic: &str) -> Response {
    let mut body = String::with_capacity(32 + topic.len() + count * 24);
    body.push_str(if batch { r#"{"ids":["# } else { r#"{"id":"# });
    let id_at = body.len() + 1;
    for i in 0..count as u64 {
        let _ = write!(body, "{}\"{}\"", if i > 0 { "," } else { "" }, first.after(i));
    }
    let id_end = body[id_at..].find('"').map_or(id_at, |end| id_at + end);
    let _ = write!(body, "{}\"topic\":\"{topic}\"}}", if batch { "]," } else { "," });
    let headers =
        plugin_api::Headers::from_pairs([(MESSAGE_ID, &body[id_at..id_end]), ("content-type", "application/json")]);
    let mut resp = Response::new(StatusCode::ACCEPTED);
    resp.headers = headers;
    resp.with_body(body)
}

/// `accepted` for the ids JetStream stored.
fn accepted_ids(ids: &[String], batch: bool, topic: &str) -> Response {
    let body = if batch {
        serde_json::json!({ "ids": ids, "topic": topic })
    } else {
        serde_json::json!({ "id": ids.first(), "topic": topic })
    };
    let first = ids.first().map_or("", String::as_str);
    let mut resp = Response::new(StatusCode::ACCEPTED);
    resp.headers = plugin_api::Headers::from_pairs([(MESSAGE_ID, first), ("content-type", "application/json")]);
    resp.with_body(body.to_string())
}

/// The publisher's headers a message carries to its subscribers.
fn carried(headers: &plugin_api::Headers) -> broker::MessageHeaders {
    let mut kept = Vec::new();
    for name in ["content-type", "traceparent", "tracestate"] {
        if let Some(value) = headers.find_raw(name) {
            kept.push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    (!kept.is_empty()).then(|| kept.into())
}

/// The HTTP-shaped delivery of `job`; `scratch` is reused for its numbers.
fn request(job: &Job, path: &str, scratch: &mut String) -> Request {
    let mut req = Request::post(path).with_body(job.body.clone());
    req.headers = plugin_api::Headers::from_pairs(delivery_headers(job, scratch));
    req
}

/// One call delivering all of `jobs`, in order.
fn batch_request(jobs: &VecDeque<Job>, path: &str, topic: &str, scratch: &mut String) -> Request {
    let mut writer = BatchWriter::new();
    for job in jobs {
        writer.push(delivery_headers(job, scratch).map(|(n, v)| (n.as_bytes(), v.as_bytes())), &job.body);
    }
    let (count, buf) = writer.finish();
    let count = count.to_string();
    let mut req = Request::post(path).with_body(buf);
    req.headers = plugin_api::Headers::from_pairs([(TOPIC, topic), (BATCH, count.as_str())]);
    req
}

/// A delivery's headers: its id, attempt, topic and publish time, then what
/// the publisher's message carries.
/// Why a subscriber's answer is a refusal, in one sentence: the error it
/// gave (`{"error": "…"}`, as the orchestrator's own errors are), or its
/// status and the start of its body.
fn refusal(status: u16, body: &[u8]) -> String {
    if let Ok(plugin_api::serde_json::Value::Object(o)) =
        plugin_api::serde_json::from_slice::<plugin_api::serde_json::Value>(body)
        && let Some(plugin_api::serde_json::Value::String(error)) = o.get("error")
    {
        return error.trim_end_matches([':', ' ']).chars().take(200).collect();
    }
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    if body.is_empty() {
        format!("the subscriber answered {status}")
    } else {
        format!("the subscriber answered {status}: {}", body.chars().take(200).collect::<String>())
    }
}

/// Logs failed deliveries: every dead-lettering, and failed attempts at most
/// once per [`FailureLog::EVERY`] per subscription, saying how many were not logged.
#[derive(Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(1);

    fn log(&mut self, cx: &Context, sub: &Subscription, job: &Job, reason: &str, failed: broker::Failed) {
        let (topic, subscriber) = (&*job.topic, &sub.link);
        match failed {
            broker::Failed::DeadLettered { attempts, to } => cx.warn(format_args!(
                "Message dead-lettered: topic={topic} subscriber={subscriber} attempts={attempts} dead_letter_topic={to} reason={reason}"
            )),
            broker::Failed::Retry { attempt, of, after } => {
                if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
                    self.unlogged += 1;
                    return;
                }
                let unlogged = std::mem::take(&mut self.unlogged);
                self.last = Some(std::time::Instant::now());
                let more = if unlogged > 0 { format!(" ({unlogged} more failed attempts not logged)") } else { String::new() };
                cx.warn(format_args!(
                    "Delivery failed; retrying in {}: topic={topic} subscriber={subscriber} attempt={attempt}/{of} reason={reason}{more}",
                    humantime::format_duration(after)
                ));
            }
            broker::Failed::Gone => {}
        }
    }
}

fn delivery_headers<'a>(job: &'a Job, scratch: &'a mut String) -> impl Iterator<Item = (&'a str, &'a str)> {
    scratch.clear();
    let _ = write!(scratch, "{}", job.id);
    let id_end = scratch.len();
    let _ = write!(scratch, "{}", job.attempt);
    let attempt_end = scratch.len();
    let _ = write!(scratch, "{}", job.published_us);
    let scratch: &'a str = scratch;
    let own = [
        (MESSAGE_ID, &scratch[..id_end]),
        (ATTEMPT, &scratch[id_end..attempt_end]),
        (TOPIC, &*job.topic),
        (PUBLISHED_AT, &scratch[attempt_end..]),
    ];
    let carried = job.headers.iter().flat_map(|h| h.iter()).map(|(n, v)| (n.as_str(), v.as_str()));
    own.into_iter().chain(carried)
}

/// The threads deliveries run on: a runtime of their own, one thread per
/// core, so that delivering runs in parallel with the tiers that publish
/// (a publisher on the main runtime would otherwise wake its subscriber's
/// worker onto its own thread, and the two would take turns).
fn delivery_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("queue-deliver")
            .enable_all()
            .build()
            .expect("the delivery runtime starts");
        let handle = runtime.handle().clone();
        // Kept running for the life of the process: connections and timers
        // that deliveries open stay usable by everyone.
        std::thread::Builder::new()
            .name("queue-deliver-driver".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the delivery runtime's thread starts");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_s_own_id_is_short_and_printable() {
        assert!(valid_given_id("42") && valid_given_id(&"x".repeat(MAX_GIVEN_ID)));
        for bad in ["", "a b", "tab\there", "é", &"x".repeat(MAX_GIVEN_ID + 1)] {
            assert!(!valid_given_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_refusal_is_one_sentence() {
        // A process tier's program that answered 500 with nothing: before,
        // `the subscriber answered 500 …: {"error":"the program answered 500 Internal Server Error: "}`.
        let body = br#"{"error":"the program answered 500 Internal Server Error: "}"#;
        assert_eq!(refusal(500, body), "the program answered 500 Internal Server Error");
        assert_eq!(refusal(503, b""), "the subscriber answered 503");
        assert_eq!(refusal(400, b" bad input\n"), "the subscriber answered 400: bad input");
    }
}
