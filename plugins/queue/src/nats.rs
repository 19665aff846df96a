//! `backend: nats`: the queue tier's topics on a NATS JetStream stream
//! (decision 0012), through the maintained `async-nats` client.
//!
//! - One stream per queue tier (`stream.name`, default `orch-<tier>`),
//!   subjects `<stream>.<topic>`, interest retention: a message stays until
//!   every subscribing group has acknowledged it.
//! - One durable pull consumer per subscribing group: per subscribing tier
//!   for pub/sub (`<tier>`), one shared by the tiers of a point-to-point
//!   topic (`p2p-<topic>`), so that orchestrators on several hosts that run
//!   the same tier compete for its messages.
//! - Publishes answer the publisher only once JetStream has acknowledged
//!   them (`PubAck`); a message's id is `Nats-Msg-Id`, so a publish retried
//!   with the same `orch-message-id` is stored once (the stream's duplicate
//!   window).
//! - While a call to the subscriber takes long, the message is kept in
//!   progress (`+WPI`); after such a call the ack is a double ack (the
//!   server confirms it: one arriving after `ack_wait` would be lost), after
//!   a quick one a plain ack.
//!   A failed attempt is a `-NAK` with the tier's backoff; after the last
//!   one, the message is published to the dead-letter topic (its id
//!   `<id>.dlq`: deduplicated if this happens twice), then terminated. The
//!   consumer allows one delivery more than `max_attempts`, so that a
//!   message whose orchestrator died between the two is dead-lettered on
//!   that last delivery instead of being stranded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{HeaderMap, HeaderValue};
use futures_util::StreamExt as _;
use plugin_api::LinkErrorKind;
use plugin_api::prelude::*;
use plugin_api::queue::{ATTEMPT, MESSAGE_ID, PUBLISHED_AT, TOPIC};
use plugin_api::serde_json::{self, Value, json};
use tokio::sync::watch;

use crate::Subscription;
use crate::config::{NatsStorage, OnFull, Settings};

/// How long one publish, or one request to JetStream's API, may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `block`ing publish waits for room before it is refused.
pub const BLOCK_FOR: Duration = Duration::from_secs(5);
/// How often a blocked publish looks for room.
const BLOCK_RETRY: Duration = Duration::from_millis(50);
/// How often the status is read from JetStream.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Most messages a subscription's workers pull ahead of their deliveries.
const MAX_PULL: usize = 64;
/// The wait before a subscriber that could not be reached is tried again.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);

/// A queue tier on JetStream: the connection, the stream, and the workers
/// delivering to the subscribing tiers.
pub struct Running {
    js: jetstream::Context,
    client: async_nats::Client,
    prefix: String,
    settings: Settings,
    ids: Ids,
    published: Mutex<BTreeMap<String, u64>>,
    status: Arc<Mutex<Value>>,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for worker in self.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            worker.abort();
        }
    }
}

/// Message ids: a random prefix per instance, then a counter. The prefix
/// must differ between hosts (every container's orchestrator may be pid 1):
/// an id seen twice within the duplicate window is stored once.
struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        use std::io::Read as _;
        let mut bytes = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        let seed = match random {
            Ok(()) => u64::from_ne_bytes(bytes),
            // No randomness to be had: the clock and the process, mixed.
            Err(_) => {
                let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
            }
        };
        Self { prefix: format!("{seed:016x}"), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Connects, makes (or updates) the stream and the subscribing groups'
/// consumers, and starts the delivery workers.
pub async fn start(
    tier: &str,
    settings: Settings,
    nats: crate::config::NatsSettings,
    subs: Vec<Subscription>,
    cx: Context,
) -> Result<Running, String> {
    let servers = nats.servers.join(", ");
    let mut options = async_nats::ConnectOptions::new().name(format!("orchestrator queue tier {tier}"));
    if let Some(token) = &nats.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(creds) = &nats.creds_file {
        options = options.credentials_file(creds).await.map_err(|e| format!("{}: {e}", creds.display()))?;
    }
    if let Some(seed) = &nats.nkey {
        options = options.nkey(seed.clone());
    }
    let client = tokio::time::timeout(API_TIMEOUT, options.connect(nats.servers.clone()))
        .await
        .map_err(|_| format!("cannot connect to NATS at {servers}: no answer within {API_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to NATS at {servers}: {e}"))?;
    let js = jetstream::new(client.clone());
    let name = nats.stream.clone().unwrap_or_else(|| format!("orch-{tier}"));
    let prefix = name.clone();
    let mut config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        retention: stream::RetentionPolicy::Interest,
        storage: match nats.storage {
            NatsStorage::File => stream::StorageType::File,
            NatsStorage::Memory => stream::StorageType::Memory,
        },
        num_replicas: nats.replicas,
        discard: stream::DiscardPolicy::New,
        max_messages_per_subject: i64::try_from(settings.config.capacity).unwrap_or(i64::MAX),
        discard_new_per_subject: true,
        // Checked on publish (`max_message_size`); the server's own limit (`max_payload`) still applies.
        max_message_size: -1,
        duplicate_window: nats.duplicate_window,
        ..Default::default()
    };
    if let Some(age) = nats.max_age {
        config.max_age = age;
    }
    if let Some(bytes) = nats.max_bytes {
        config.max_bytes = bytes;
    }
    if let Some(messages) = nats.max_messages {
        config.max_messages = messages;
    }
    let api = |what: &str, e: &dyn std::fmt::Display| format!("NATS at {servers}: {what}: {e}");
    let stream = match tokio::time::timeout(API_TIMEOUT, js.get_stream(&name)).await {
        Ok(Ok(_)) => tokio::time::timeout(API_TIMEOUT, js.update_stream(config.clone()))
            .await
            .map_err(|_| api("updating the stream", &"no answer"))?
            .map_err(|e| api(&format!("updating stream {name}"), &e))
            .map(drop),
        _ => tokio::time::timeout(API_TIMEOUT, js.create_stream(config.clone()))
            .await
            .map_err(|_| api("creating the stream", &"no answer"))?
            .map_err(|e| api(&format!("creating stream {name}"), &e))
            .map(drop),
    };
    stream?;
    let stream = js.get_stream(&name).await.map_err(|e| api(&format!("stream {name}"), &e))?;

    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    let mut consumers = Vec::new();
    for sub in subs {
        let topic = settings.topic(&sub.topic);
        let durable = if sub.mode == "pubsub" { sub.link.clone() } else { format!("p2p-{}", sub.topic) };
        let durable: String =
            durable.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        let backoff: Vec<Duration> = (1..=topic.max_attempts).map(|a| topic_backoff(&topic, a)).collect();
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: format!("{prefix}.{}", sub.topic),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: nats.ack_wait,
            // One more than the attempts: the last only dead-letters (see the module's docs).
            max_deliver: i64::from(topic.max_attempts) + 1,
            backoff,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            tokio::time::timeout(API_TIMEOUT, stream.get_or_create_consumer(&durable, config))
                .await
                .map_err(|_| api("creating a consumer", &"no answer"))?
                .map_err(|e| api(&format!("consumer {durable}"), &e))?;
        let sub = Arc::new(sub);
        for _ in 0..sub.concurrency {
            let worker = Worker {
                js: js.clone(),
                prefix: prefix.clone(),
                sub: sub.clone(),
                max_attempts: topic.max_attempts,
                dead_letter: topic.dead_letter.clone(),
                topic: topic.clone(),
                ack_wait: nats.ack_wait,
                cx: cx.clone(),
            };
            workers.push(tokio::spawn(worker.run(consumer.clone(), stopped.clone())));
        }
        consumers.push((sub.clone(), durable, consumer));
    }
    // A subscription the topology no longer has leaves its consumer behind,
    // which would keep its messages in the stream for ever: removed. (What
    // it had not acknowledged stays for the groups that still want it.)
    let wanted: std::collections::HashSet<&str> = consumers.iter().map(|(_, d, _)| d.as_str()).collect();
    let mut names = stream.consumer_names();
    let mut stale = Vec::new();
    while let Ok(Some(Ok(consumer))) = tokio::time::timeout(API_TIMEOUT, names.next()).await {
        if !wanted.contains(consumer.as_str()) {
            stale.push(consumer);
        }
    }
    for consumer in stale {
        match tokio::time::timeout(API_TIMEOUT, stream.delete_consumer(&consumer)).await {
            Ok(Ok(_)) => {
                cx.info(format_args!("Removed consumer {consumer} of stream {name}: no subscription uses it now."))
            }
            _ => {
                cx.warn(format_args!("Cannot remove consumer {consumer} of stream {name}, which no subscription uses."))
            }
        }
    }
    let status = Arc::new(Mutex::new(json!({ "backend": "nats", "servers": servers, "stream": name, "topics": {} })));
    workers.push(tokio::spawn(watch_status(stream, consumers, status.clone(), servers, stopped)));
    Ok(Running {
        js,
        client,
        prefix,
        settings,
        ids: Ids::new(),
        published: Mutex::default(),
        status,
        stop,
        workers: Mutex::new(workers),
    })
}

fn topic_backoff(topic: &crate::config::TopicSettings, attempt: u32) -> Duration {
    topic.backoff(attempt)
}

/// Why a publish was not taken.
pub enum PublishError {
    /// The topic holds `capacity` messages (JetStream discards the new one).
    Full(String),
    Failed(String),
}

impl Running {
    /// Publishes `messages` (headers the publisher's message carries, and
    /// its body) on `topic`; their ids once JetStream has stored each.
    pub async fn publish(
        &self,
        topic: &str,
        messages: &[(Option<String>, crate::broker::MessageHeaders, bytes::Bytes)],
    ) -> Result<Vec<String>, PublishError> {
        let subject = format!("{}.{topic}", self.prefix);
        let on_full = self.settings.topic(topic).on_full;
        let mut ids = Vec::with_capacity(messages.len());
        let mut acks = Vec::with_capacity(messages.len());
        for (given, carried, body) in messages {
            let id = given.clone().unwrap_or_else(|| self.ids.next());
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(PUBLISHED_AT, now_us().to_string().as_str());
            for (name, value) in carried.iter().flat_map(|h| h.iter()) {
                headers.insert(name.as_str(), HeaderValue::from(value.as_str()));
            }
            acks.push(self.publish_one(topic, subject.clone(), headers, body.clone(), on_full));
            ids.push(id);
        }
        for ack in futures_util::future::join_all(acks).await {
            ack?;
        }
        *self.published.lock().unwrap_or_else(|e| e.into_inner()).entry(topic.to_owned()).or_default() +=
            messages.len() as u64;
        Ok(ids)
    }

    async fn publish_one(
        &self,
        topic: &str,
        subject: String,
        headers: HeaderMap,
        body: bytes::Bytes,
        on_full: OnFull,
    ) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + BLOCK_FOR;
        loop {
            let sent = self.js.publish_with_headers(subject.clone(), headers.clone(), body.clone()).await;
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(API_TIMEOUT, ack)
                    .await
                    .map_err(|_| "JetStream did not acknowledge it in time".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.contains("maximum messages per subject exceeded")
                        || e.contains("maximum messages exceeded") =>
                {
                    if on_full == OnFull::Block && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(BLOCK_RETRY).await;
                        continue;
                    }
                    let cap = self.settings.config.capacity;
                    return Err(PublishError::Full(format!("topic `{topic}` is full (capacity {cap})")));
                }
                Err(e) => return Err(PublishError::Failed(format!("JetStream did not store the message: {e}"))),
            }
        }
    }

    pub fn status(&self) -> Value {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(topics) = status.get_mut("topics").and_then(Value::as_object_mut) {
            for (topic, n) in published {
                let entry = topics.entry(topic).or_insert_with(|| json!({}));
                // Published through this orchestrator (others may publish on the stream too).
                entry["published"] = json!(n);
            }
        }
        status
    }

    /// Finishes the deliveries in flight; what is not delivered stays in the stream.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let workers: Vec<_> = self.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for worker in workers {
            let _ = worker.await;
        }
        let _ = self.client.flush().await;
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One delivery worker of a subscription: one message at a time, so that
/// `concurrency: 1` keeps publish order.
struct Worker {
    js: jetstream::Context,
    prefix: String,
    sub: Arc<Subscription>,
    max_attempts: u32,
    dead_letter: String,
    topic: crate::config::TopicSettings,
    ack_wait: Duration,
    cx: Context,
}

impl Worker {
    async fn run(self, consumer: consumer::PullConsumer, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            // Pulled ahead in batches (shared out among a subscription's
            // workers), handled one at a time in order.
            let batch = (MAX_PULL / self.sub.concurrency as usize).max(1);
            let messages = consumer.stream().max_messages_per_batch(batch).messages().await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    self.cx.warn(format_args!("Cannot read from JetStream ({e}); trying again."));
                    tokio::select! {
                        () = tokio::time::sleep(UNAVAILABLE_PAUSE * 5) => continue,
                        () = stopped(&mut stop) => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = stopped(&mut stop) => return,
                };
                match next {
                    Some(Ok(message)) => self.handle(message, &mut stop).await,
                    Some(Err(e)) => {
                        self.cx.warn(format_args!("Reading from JetStream failed ({e}); trying again."));
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    async fn handle(&self, message: jetstream::Message, stop: &mut watch::Receiver<bool>) {
        let attempt = message.info().map_or(1, |i| i.delivered).max(1);
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        if attempt > self.max_attempts {
            // Its last attempt failed, and its dead-lettering did not finish.
            self.dead_letter(&message, attempt - 1, "its last attempt failed before it was dead-lettered").await;
            return;
        }
        let id = header(&message, "Nats-Msg-Id").unwrap_or_default();
        let mut req = Request::post(&self.sub.path).with_body(message.payload.clone());
        let attempt_text = attempt.to_string();
        let mut pairs: Vec<(String, String)> = vec![
            (MESSAGE_ID.to_owned(), id.clone()),
            (ATTEMPT.to_owned(), attempt_text),
            (TOPIC.to_owned(), self.sub.topic.clone()),
            (PUBLISHED_AT.to_owned(), header(&message, PUBLISHED_AT).unwrap_or_default()),
        ];
        for name in ["content-type", "traceparent", "tracestate"] {
            if let Some(v) = header(&message, name) {
                pairs.push((name.to_owned(), v));
            }
        }
        req.headers = plugin_api::Headers::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        loop {
            // In progress while the call runs: the server does not hand the
            // message to another consumer meanwhile.
            let started = tokio::time::Instant::now();
            let mut call = std::pin::pin!(self.cx.call(&self.sub.link, req.clone()));
            let outcome = loop {
                tokio::select! {
                    outcome = &mut call => break outcome,
                    () = tokio::time::sleep(self.ack_wait / 2) => { let _ = message.ack_with(AckKind::Progress).await; }
                }
            };
            match outcome {
                Ok(resp) if resp.status.is_success() => {
                    // A call that took half of `ack_wait` or more: the ack is
                    // confirmed by the server (one arriving late would be
                    // dropped, and the message delivered again). A quick one:
                    // sent, without waiting for the round trip.
                    let acked = if started.elapsed() >= self.ack_wait / 2 {
                        message.double_ack().await
                    } else {
                        message.ack().await
                    };
                    if let Err(e) = acked {
                        // Delivered, but the server did not take the ack: it will be delivered again.
                        self.cx.warn(format_args!(
                            "Delivered, but JetStream did not take the ack ({e}): message {id} may be delivered again."
                        ));
                    }
                    return;
                }
                Ok(resp) => {
                    let reason = crate::refusal(resp.status.as_u16(), &resp.body);
                    return self.failed(&message, &id, attempt, &reason).await;
                }
                Err(e) if matches!(e.kind, LinkErrorKind::Unavailable | LinkErrorKind::UnknownLink) => {
                    // Not delivered at all: no attempt counted; held (in progress) and tried again.
                    let _ = message.ack_with(AckKind::Progress).await;
                    tokio::select! {
                        () = tokio::time::sleep(UNAVAILABLE_PAUSE) => {}
                        () = stopped(stop) => {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            return;
                        }
                    }
                }
                Err(e) => return self.failed(&message, &id, attempt, &e.message).await,
            }
        }
    }

    async fn failed(&self, message: &jetstream::Message, id: &str, attempt: u32, reason: &str) {
        if attempt >= self.max_attempts {
            return self.dead_letter(message, attempt, reason).await;
        }
        let after = self.topic.backoff(attempt);
        self.cx.warn(format_args!(
            "Delivery failed; retrying in {}: topic={} subscriber={} attempt={attempt}/{} id={id} reason={reason}",
            humantime::format_duration(after),
            self.sub.topic,
            self.sub.link,
            self.max_attempts
        ));
        let _ = message.ack_with(AckKind::Nak(Some(after))).await;
    }

    /// Publishes the message to the dead-letter topic (stored once, however
    /// often this runs for it), then ends its deliveries.
    async fn dead_letter(&self, message: &jetstream::Message, attempts: u32, reason: &str) {
        let id = header(message, "Nats-Msg-Id").unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{id}.dlq").as_str());
        headers.insert(PUBLISHED_AT, header(message, PUBLISHED_AT).unwrap_or_default().as_str());
        headers.insert("orch-dead-letter-reason", reason.chars().take(200).collect::<String>().as_str());
        headers.insert("orch-dead-letter-from", self.sub.topic.as_str());
        let subject = format!("{}.{}", self.prefix, self.dead_letter);
        let stored = match self.js.publish_with_headers(subject, headers, message.payload.clone()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                self.cx.warn(format_args!(
                    "Message dead-lettered: topic={} subscriber={} attempts={attempts} dead_letter_topic={} reason={reason}",
                    self.sub.topic, self.sub.link, self.dead_letter
                ));
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                // Not stored: it stays, and is dead-lettered on its next delivery.
                self.cx.warn(format_args!("Cannot dead-letter message {id} ({e}); it will be tried again."));
                let _ = message.ack_with(AckKind::Nak(Some(self.topic.backoff(attempts)))).await;
            }
        }
    }
}

fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

/// Reads the stream's and the consumers' state every second, in the shape
/// of the embedded broker's status.
async fn watch_status(
    mut stream: stream::Stream,
    mut consumers: Vec<(Arc<Subscription>, String, consumer::PullConsumer)>,
    status: Arc<Mutex<Value>>,
    servers: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut topics = serde_json::Map::new();
        let stream_state = tokio::time::timeout(API_TIMEOUT, stream.info()).await;
        let mut error = None;
        match stream_state {
            Ok(Ok(info)) => {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s["messages"] = json!(info.state.messages);
                s["bytes"] = json!(info.state.bytes);
            }
            Ok(Err(e)) => error = Some(e.to_string()),
            Err(_) => error = Some("no answer".to_owned()),
        }
        for (sub, durable, consumer) in &mut consumers {
            let Ok(Ok(info)) = tokio::time::timeout(API_TIMEOUT, consumer.info()).await else { continue };
            let entry = topics.entry(sub.topic.clone()).or_insert_with(|| json!({ "subscribers": {} }));
            entry["subscribers"][sub.link.as_str()] = json!({
                "mode": sub.mode,
                "consumer": durable,
                "lag": info.num_pending,
                "in_flight": info.num_ack_pending,
                "pending_redelivered": info.num_redelivered,
                "deliveries": info.delivered.consumer_sequence,
            });
        }
        // A topic's totals, as the embedded broker gives them: what is in
        // flight, and what the stream still holds for it (interest
        // retention: until every group has acknowledged it).
        for t in topics.values_mut() {
            let groups: Vec<(u64, u64)> = t["subscribers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, g)| (g["lag"].as_u64().unwrap_or(0), g["in_flight"].as_u64().unwrap_or(0)))
                .collect();
            t["in_flight"] = json!(groups.iter().map(|(_, f)| f).sum::<u64>());
            t["depth"] = json!(groups.iter().map(|(l, f)| l + f).max().unwrap_or(0));
        }
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s["topics"] = Value::Object(topics);
            s["servers"] = json!(servers);
            s["last_error"] = json!(error);
        }
        tokio::select! {
            () = tokio::time::sleep(STATUS_EVERY) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Completes once `stop` says so, whether it said so before this was
/// called or after (a `changed()` seen once would not fire again).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[cfg(test)]
mod tests {
    use super::Ids;

    #[test]
    fn ids_of_two_instances_differ_and_count_up() {
        let (a, b) = (Ids::new(), Ids::new());
        assert_ne!(a.prefix, b.prefix);
        assert_eq!(a.next(), format!("{}-1", a.prefix));
        assert_eq!(a.next(), format!("{}-2", a.prefix));
    }
}
