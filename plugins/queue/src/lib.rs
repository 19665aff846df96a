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
mod store;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use broker::{Broker, GroupRef, Job, Take};
pub use config::Queue;
use config::Settings;
use plugin_api::prelude::*;
use plugin_api::queue::{ATTEMPT, MESSAGE_ID, PUBLISHED_AT, TOPIC};
use plugin_api::serde_json::{self, json};
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
}

/// A subscription: one outbound queue link.
#[derive(Clone)]
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
    async fn handle(&self, req: Request, _cx: Context) -> Response {
        let Some(running) = self.running.get() else {
            return Response::not_delivered("the broker is starting");
        };
        if req.method != plugin_api::Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "publish a message with POST")
                .with_header("allow", "POST");
        }
        let topic = req.path().trim_start_matches('/').to_owned();
        let topic = topic.as_str();
        if topic.is_empty() {
            return Response::error(StatusCode::NOT_FOUND, "no topic: publish through a queue link");
        }
        let limit = self.config.max_message_size;
        if req.body.len() as u64 > limit {
            return Response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the message is {} bytes; this broker takes at most {limit}", req.body.len()),
            );
        }
        let mut headers = Vec::new();
        for name in ["content-type", "traceparent", "tracestate"] {
            if let Some(value) = req.headers.get(name) {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        match running.broker.publish(topic, headers, req.body.into_bytes()).await {
            Ok((id, _)) => Response::json(&json!({ "id": id, "topic": topic }))
                .with_status(StatusCode::ACCEPTED)
                .with_header(MESSAGE_ID, &id),
            Err(broker::PublishError::Full(why)) => {
                Response::error(StatusCode::SERVICE_UNAVAILABLE, &why).with_header("retry-after", "1")
            }
            Err(broker::PublishError::Store(why)) => Response::error(StatusCode::INTERNAL_SERVER_ERROR, &why),
        }
    }

    fn is_ready(&self) -> bool {
        self.running.get().is_some()
    }

    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        if self.running.get().is_some() {
            return Ok(());
        }
        let settings = Settings::new(self.config.clone()).map_err(|issues| {
            issues.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; ")
        })?;
        let tier = cx.tier();
        let data_file = settings.data_file(&cx.base_dir(), &tier);
        let (broker, warning) = Broker::attach(&tier, settings, &data_file)?;
        if let Some(warning) = warning {
            cx.warn(format_args!("`durable`/`data_dir` changed: {warning}."));
        }
        let subscriptions: Vec<Subscription> =
            cx.link_infos().iter().filter(|l| l.kind == LinkKind::Queue).filter_map(Subscription::of).collect();
        let (stop, stopped) = watch::channel(false);
        let mut groups = Vec::new();
        let mut workers = Vec::new();
        for sub in &subscriptions {
            let group = match broker.subscribe(&sub.topic, &sub.group_key(), sub.mode) {
                Ok(group) => group,
                Err(e) => {
                    // Leave the groups joined so far before giving up.
                    drop(Running { broker, groups, stop, workers: Mutex::new(workers) });
                    return Err(e);
                }
            };
            let sub = Arc::new(sub.clone());
            for _ in 0..sub.concurrency {
                let worker = deliver(broker.clone(), group.clone(), sub.clone(), cx.clone(), stopped.clone());
                workers.push(tokio::spawn(worker));
            }
            groups.push(group);
        }
        if self.running.set(Running { broker, groups, stop, workers: Mutex::new(workers) }).is_err() {
            return Err("the broker was started twice".to_owned());
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        self.running.get().map_or(serde_json::Value::Null, |r| r.broker.status())
    }

    /// Finishes the deliveries in flight; the queued messages stay with the
    /// tier's broker for the next instance.
    async fn stop(&self, _cx: Context) {
        let Some(running) = self.running.get() else { return };
        let _ = running.stop.send(true);
        let workers: Vec<_> = running.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for worker in workers {
            let _ = worker.await;
        }
    }
}

plugin_api::declare_plugin!(QueuePlugin, name = "queue");

/// One delivery worker of a subscription: takes a message, POSTs it to the
/// subscriber, settles it; one at a time, so a subscription with
/// `concurrency: 1` sees messages in publish order.
async fn deliver(
    broker: Arc<Broker>,
    group: GroupRef,
    sub: Arc<Subscription>,
    cx: Context,
    mut stop: watch::Receiver<bool>,
) {
    let mut not_delivered = 0;
    loop {
        let job = loop {
            if *stop.borrow() {
                return;
            }
            let notified = group.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match broker.take(&group) {
                Take::Job(job) => break job,
                Take::Gone => return,
                Take::Wait(due) => {
                    let due = due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(due) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        };
        let mut guard = Settle { broker: &broker, job: Some(job) };
        let outcome = match &guard.job {
            Some(job) => cx.call(&sub.link, request(job, &sub.path)).await,
            None => continue,
        };
        let Some(job) = guard.job.take() else { continue };
        match outcome {
            Ok(resp) if resp.status.is_success() => {
                not_delivered = 0;
                broker.ack(&job);
            }
            Ok(resp) => {
                not_delivered = 0;
                let body = String::from_utf8_lossy(&resp.body);
                let body: String = body.chars().take(200).collect();
                broker.fail(&job, format!("the subscriber answered {}: {body}", resp.status));
            }
            Err(e) if matches!(e.kind, LinkErrorKind::Unavailable | LinkErrorKind::UnknownLink) => {
                broker.requeue(&job, e.message);
                not_delivered += 1;
                tokio::select! {
                    () = tokio::time::sleep(broker::pause_after(not_delivered)) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                not_delivered = 0;
                broker.fail(&job, e.message);
            }
        }
    }
}

/// Puts a job back in line if its worker is cancelled mid-delivery.
struct Settle<'a> {
    broker: &'a Broker,
    job: Option<Job>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.broker.requeue(&job, "the delivery was interrupted".to_owned());
        }
    }
}

/// The HTTP-shaped delivery of `job`.
fn request(job: &Job, path: &str) -> Request {
    let mut req = Request::post(path)
        .with_header(MESSAGE_ID, &job.id)
        .with_header(ATTEMPT, &job.attempt.to_string())
        .with_header(TOPIC, &job.topic)
        .with_header(PUBLISHED_AT, &job.published_us.to_string())
        .with_body(job.body.clone());
    for (name, value) in job.headers.iter() {
        req.headers.append(name, value);
    }
    req
}
