//! The broker's state: topics, their messages, and the subscriber groups
//! that consume them.
//!
//! A topic keeps each message until every group it was published for has
//! acknowledged it (or dead-lettered it). A group is one subscribing tier in
//! `pubsub` mode, or all the `point-to-point` subscribers of the topic, which
//! compete for its messages. Each group has a slot (a bit in every message's
//! `pending` mask), a cursor over the messages it has not yet been offered,
//! and the messages waiting for a redelivery.
//!
//! The state belongs to the tier, not to an instance: a reload that replaces
//! the broker's instance (new settings, new subscriptions) hands the same
//! state to the new instance, so nothing queued or in flight is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use plugin_api::serde_json::{self, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{OnFull, Settings, TopicSettings};
use crate::store::{Record, Store};

/// At most this many groups per topic (one bit each in a message's mask).
pub const MAX_GROUPS: usize = 64;

/// The brokers of the running topology, by tier.
static BROKERS: Mutex<Vec<(String, Weak<Broker>)>> = Mutex::new(Vec::new());

pub struct Broker {
    tier: String,
    /// Prefix of the ids this broker gives, different on every start.
    boot: u32,
    state: Mutex<State>,
    store: Option<Store>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("tier", &self.tier).finish_non_exhaustive()
    }
}

struct State {
    settings: Settings,
    topics: BTreeMap<String, Topic>,
    next_id: u64,
    next_group: u64,
    /// Counts the instances that attached to the broker: a reload that
    /// replaces the broker's instance makes a new generation.
    generation: u64,
}

struct Topic {
    settings: TopicSettings,
    next_seq: u64,
    messages: BTreeMap<u64, Stored>,
    groups: Vec<Option<Group>>,
    /// Woken when a message leaves, for publishers waiting for room.
    space: Arc<Notify>,
    /// Publishers that found the topic full and wait on `space`.
    blocked: usize,
    published: u64,
}

/// A message's id: `<boot>-<n>` for the ones this run of the broker took,
/// kept as a number until it is written out; as read back from disk otherwise.
#[derive(Clone, Debug)]
pub enum MessageId {
    Counter(u32, u64),
    Text(Arc<str>),
}

impl MessageId {
    /// The id of the message published `i` places after this one in the same call.
    pub fn after(&self, i: u64) -> MessageId {
        match self {
            MessageId::Counter(boot, n) => MessageId::Counter(*boot, n + i),
            MessageId::Text(text) => MessageId::Text(text.clone()),
        }
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageId::Counter(boot, n) => write!(f, "{boot:08x}-{n}"),
            MessageId::Text(text) => f.write_str(text),
        }
    }
}

/// What became of a message its subscriber failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// It is offered again `after` a backoff: that was attempt `attempt` of `of`.
    Retry { attempt: u32, of: u32, after: Duration },
    /// Its last attempt failed: it went to the dead-letter topic `to`.
    DeadLettered { attempts: u32, to: String },
    /// Its topic or subscriber is gone.
    Gone,
}

/// Headers a message carries (`content-type`, trace context, dead-letter reasons); most carry none.
pub type MessageHeaders = Option<Arc<[(String, String)]>>;

struct Stored {
    id: MessageId,
    published_us: u64,
    headers: MessageHeaders,
    body: Bytes,
    /// One bit per group that has yet to acknowledge it.
    pending: u64,
    /// Its groups went away before acknowledging it: it waits for the next
    /// group to subscribe to the topic.
    unclaimed: bool,
    /// It came back from disk: which groups had acknowledged it is not
    /// stored, so every group the broker starts with gets it.
    recovered: bool,
}

struct Group {
    id: u64,
    key: String,
    mode: &'static str,
    /// Broker instances delivering for this group.
    owners: usize,
    /// The subscribing tiers (their links' names), and how many deliverers
    /// each has: several for a point-to-point group's competing tiers.
    members: BTreeMap<Arc<str>, usize>,
    /// The broker generation that created the group.
    generation: u64,
    /// The next sequence number not yet offered to the group.
    cursor: u64,
    /// Messages to offer again, by when.
    retries: BTreeSet<(Instant, u64)>,
    /// The attempt number of each message offered and not yet settled.
    attempts: HashMap<u64, u32>,
    in_flight: usize,
    /// Messages the group has yet to acknowledge (its lag).
    pending: u64,
    notify: Arc<Notify>,
    /// Workers that found nothing to deliver and wait on `notify`.
    sleepers: usize,
    delivered: u64,
    redelivered: u64,
    /// Every delivery attempt handed to the subscriber.
    deliveries: u64,
    dead_lettered: u64,
    last_error: Option<String>,
    /// The last [`LAST_DEAD_LETTERS`] messages dead-lettered: id, when (µs
    /// since the epoch), attempts, and the reason of the last.
    dead_letters: std::collections::VecDeque<(String, u64, u32, String)>,
}

/// Dead-lettered messages each subscriber group remembers, for the status.
pub const LAST_DEAD_LETTERS: usize = 5;

/// A group of a topic, as a delivery worker holds it.
#[derive(Clone, Debug)]
pub struct GroupRef {
    pub topic: Arc<str>,
    slot: usize,
    id: u64,
    pub notify: Arc<Notify>,
    /// The subscribing tier (its link's name) this reference delivers for.
    member: Arc<str>,
}

/// One delivery to make.
#[derive(Clone, Debug)]
pub struct Job {
    pub topic: Arc<str>,
    seq: u64,
    slot: usize,
    group: u64,
    pub id: MessageId,
    pub attempt: u32,
    pub published_us: u64,
    pub headers: MessageHeaders,
    pub body: Bytes,
}

/// What a worker gets when it asks for deliveries.
pub enum Take {
    /// Some were added to the caller's list.
    Jobs,
    /// Nothing to deliver now; a redelivery falls due at the instant, if any.
    Wait(Option<Instant>),
    /// The group no longer exists.
    Gone,
}

/// Completes when a stored message is on disk.
type Persisted = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Messages just added: the first one's id and (durable) when they are on disk.
type Inserted = (MessageId, Option<Persisted>);

/// Why a publish was refused.
#[derive(Debug)]
pub enum PublishError {
    Full(String),
    /// More messages at once than the topic can ever hold.
    TooMany(String),
    Store(String),
}

/// A topic's last dead letters, across its groups.
fn last_dead_letters(t: &Topic) -> Value {
    let mut all: Vec<&(String, u64, u32, String)> =
        t.groups.iter().flatten().flat_map(|g| g.dead_letters.iter()).collect();
    all.sort_by_key(|d| d.1);
    let skip = all.len().saturating_sub(LAST_DEAD_LETTERS);
    dead_letters(all.into_iter().skip(skip))
}

/// Dead letters as the status shows them, oldest first.
fn dead_letters<'a>(letters: impl Iterator<Item = &'a (String, u64, u32, String)>) -> Value {
    letters
        .map(
            |(id, at_us, attempts, reason)| json!({ "id": id, "at_us": at_us, "attempts": attempts, "reason": reason }),
        )
        .collect()
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Broker {
    /// The broker of tier `tier`: the running one (taking the new `settings`,
    /// as far as they apply live), or a new one, which reads back what its
    /// database holds when durable. The second value is a warning to log.
    pub fn attach(
        tier: &str,
        settings: Settings,
        data_file: &std::path::Path,
    ) -> Result<(Arc<Self>, Option<String>), String> {
        let mut brokers = BROKERS.lock().unwrap_or_else(|e| e.into_inner());
        brokers.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(broker) = brokers.iter().find(|(t, _)| t == tier).and_then(|(_, w)| w.upgrade()) {
            let warning = match (&broker.store, settings.config.durable) {
                (Some(store), true) if store.path() != data_file => {
                    Some(format!("the broker keeps using {} until the orchestrator restarts", store.path().display()))
                }
                (Some(_), false) => Some("the broker stays durable until the orchestrator restarts".to_owned()),
                (None, true) => Some("the broker becomes durable when the orchestrator restarts".to_owned()),
                _ => None,
            };
            broker.update(settings);
            return Ok((broker, warning));
        }
        let (store, recovered) = if settings.config.durable {
            let (store, recovered) = Store::open(data_file)?;
            (Some(store), recovered)
        } else {
            (None, Vec::new())
        };
        let boot = (now_us() as u32) ^ std::process::id().rotate_left(16);
        let mut state = State { settings, topics: BTreeMap::new(), next_id: 1, next_group: 1, generation: 1 };
        for (topic, seq, record) in recovered {
            let t = state.topic(&topic);
            t.next_seq = t.next_seq.max(seq + 1);
            let stored = Stored {
                id: MessageId::Text(record.id.into()),
                published_us: record.published_us,
                headers: (!record.headers.is_empty()).then(|| record.headers.into()),
                body: record.body,
                pending: 0,
                unclaimed: true,
                recovered: true,
            };
            t.messages.insert(seq, stored);
        }
        let broker = Arc::new(Self { tier: tier.to_owned(), boot, state: Mutex::new(state), store });
        brokers.push((tier.to_owned(), Arc::downgrade(&broker)));
        Ok((broker, None))
    }

    /// Whether its store (if durable) writes: a broker that cannot keep
    /// what it accepts is not ready.
    pub fn writes(&self) -> bool {
        self.store.as_ref().is_none_or(Store::healthy)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, settings: Settings) {
        let mut state = self.lock();
        state.generation += 1;
        for (name, topic) in state.topics.iter_mut() {
            topic.settings = settings.topic(name);
            // A larger capacity may let waiting publishers in.
            topic.blocked = 0;
            topic.space.notify_waiters();
        }
        state.settings = settings;
    }

    /// Joins (or creates) group `key` of `topic`. Messages nobody claims
    /// (their groups went away, or they came back from disk) go to it.
    #[cfg(test)]
    pub fn subscribe(&self, topic: &str, key: &str, mode: &'static str) -> Result<GroupRef, String> {
        self.subscribe_as(topic, key, mode, key)
    }

    /// [`Broker::subscribe`] for subscribing tier `member` (shown in the status).
    pub fn subscribe_as(&self, topic: &str, key: &str, mode: &'static str, member: &str) -> Result<GroupRef, String> {
        let member: Arc<str> = Arc::from(member);
        let mut state = self.lock();
        let (group_id, generation) = (state.next_group, state.generation);
        let t = state.topic(topic);
        if let Some((slot, group)) =
            t.groups.iter_mut().enumerate().find_map(|(i, g)| g.as_mut().filter(|g| g.key == key).map(|g| (i, g)))
        {
            group.owners += 1;
            *group.members.entry(member.clone()).or_default() += 1;
            return Ok(GroupRef { topic: topic.into(), slot, id: group.id, notify: group.notify.clone(), member });
        }
        let slot = match t.groups.iter().position(Option::is_none) {
            Some(slot) => slot,
            None if t.groups.len() < MAX_GROUPS => {
                t.groups.push(None);
                t.groups.len() - 1
            }
            None => return Err(format!("topic `{topic}` has {MAX_GROUPS} subscriber groups already")),
        };
        let bit = 1u64 << slot;
        let mut pending = 0;
        // At the start (generation 1), the messages recovered from disk go
        // to every group, not to the first only: a pub/sub subscriber must
        // not lose what another one acknowledged before the crash.
        let starting = generation == 1;
        for message in t.messages.values_mut().filter(|m| m.unclaimed || (starting && m.recovered)) {
            message.unclaimed = false;
            message.pending |= bit;
            pending += 1;
        }
        let notify = Arc::new(Notify::new());
        t.groups[slot] = Some(Group {
            id: group_id,
            key: key.to_owned(),
            mode,
            owners: 1,
            members: BTreeMap::from([(member.clone(), 1)]),
            generation,
            cursor: 0,
            retries: BTreeSet::new(),
            attempts: HashMap::new(),
            in_flight: 0,
            pending,
            notify: notify.clone(),
            sleepers: 0,
            delivered: 0,
            redelivered: 0,
            deliveries: 0,
            dead_lettered: 0,
            last_error: None,
            dead_letters: Default::default(),
        });
        state.next_group += 1;
        Ok(GroupRef { topic: topic.into(), slot, id: group_id, notify, member })
    }

    /// Leaves a group; the last owner to leave removes it. What it had not
    /// acknowledged is handed over to the groups that the same reload created
    /// (a renamed or replaced subscriber carries on where the old one
    /// stopped); with none, it is dropped where other groups had their copy,
    /// and kept for the next subscriber where the topic has no group left.
    pub fn unsubscribe(&self, group: &GroupRef) {
        let mut state = self.lock();
        let generation = state.generation;
        let Some(t) = state.topics.get_mut(&*group.topic) else { return };
        let Some(g) = t.group_mut(group.slot, group.id) else { return };
        g.owners = g.owners.saturating_sub(1);
        if let Some(n) = g.members.get_mut(&group.member) {
            *n -= 1;
            if *n == 0 {
                g.members.remove(&group.member);
            }
        }
        if g.owners > 0 {
            return;
        }
        g.notify.notify_waiters();
        t.groups[group.slot] = None;
        let bit = 1u64 << group.slot;
        let mut heirs = 0u64;
        for (slot, heir) in t.groups.iter().enumerate() {
            if heir.as_ref().is_some_and(|h| h.generation == generation && h.id != group.id) {
                heirs |= 1 << slot;
            }
        }
        let others = t.groups.iter().any(Option::is_some);
        let mut dropped = Vec::new();
        for (&seq, message) in t.messages.iter_mut().filter(|(_, m)| m.pending & bit != 0) {
            message.pending &= !bit;
            let inherited = heirs & !message.pending;
            message.pending |= inherited;
            for (slot, heir) in t.groups.iter_mut().enumerate() {
                if let Some(heir) = heir.as_mut().filter(|_| inherited & (1 << slot) != 0) {
                    heir.pending += 1;
                    // Behind its cursor: offer it again from the start.
                    heir.cursor = heir.cursor.min(seq);
                }
            }
            if message.pending == 0 {
                if others {
                    dropped.push(seq);
                } else {
                    message.unclaimed = true;
                }
            }
        }
        for seq in dropped {
            t.messages.remove(&seq);
            if let Some(store) = &self.store {
                store.remove(&group.topic, seq);
            }
        }
        if heirs != 0 {
            for heir in t.groups.iter().flatten().filter(|h| h.generation == generation) {
                heir.notify.notify_waiters();
            }
        }
        if t.blocked > 0 {
            t.blocked = 0;
            t.space.notify_waiters();
        }
    }

    /// Accepts messages on `topic`, all or none: waits for room (`on_full:
    /// block`) or refuses (`reject`); on a durable broker, completes once
    /// they are on disk.
    /// Their ids are the first one's, then [`MessageId::after`] it.
    #[cfg(test)]
    pub async fn publish(&self, topic: &str, messages: &[(MessageHeaders, Bytes)]) -> Result<MessageId, PublishError> {
        self.publish_given(topic, messages, &[]).await
    }

    /// [`publish`](Self::publish), where `given[i]`, when there is one, is
    /// message `i`'s id (the publisher's own, e.g. an outbox row's); the
    /// others get the broker's, as `publish` gives them.
    pub async fn publish_given(
        &self,
        topic: &str,
        messages: &[(MessageHeaders, Bytes)],
        given: &[Option<String>],
    ) -> Result<MessageId, PublishError> {
        let (first, persisted) = match self.try_insert(topic, messages, given, false)? {
            Some(inserted) => inserted,
            None => loop {
                // Full: wait for room, registered before looking again so
                // that no wake-up is missed.
                let space = self.lock().topic(topic).space.clone();
                let notified = space.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                match self.try_insert(topic, messages, given, true)? {
                    Some(inserted) => break inserted,
                    None => notified.await,
                }
            },
        };
        if let Some(persisted) = persisted {
            match persisted.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(PublishError::Store(e)),
                Err(_) => return Err(PublishError::Store("the message store has stopped".to_owned())),
            }
        }
        Ok(first)
    }

    /// Adds the messages if the topic has room for all; `None` if it has not
    /// and blocks (then, with `waiting`, the caller is counted as waiting for room).
    fn try_insert(
        &self,
        topic: &str,
        messages: &[(MessageHeaders, Bytes)],
        given: &[Option<String>],
        waiting: bool,
    ) -> Result<Option<Inserted>, PublishError> {
        let mut state = self.lock();
        let published_us = now_us();
        let first_id = state.next_id;
        let t = state.topic(topic);
        let n = messages.len() as u64;
        if n > t.settings.capacity {
            return Err(PublishError::TooMany(format!(
                "a batch of {n} messages cannot fit in topic `{topic}` (capacity {})",
                t.settings.capacity
            )));
        }
        if t.messages.len() as u64 + n <= t.settings.capacity {
            let mut records = Vec::new();
            for (i, (headers, body)) in messages.iter().enumerate() {
                let id = match given.get(i) {
                    Some(Some(id)) => MessageId::Text(id.as_str().into()),
                    _ => MessageId::Counter(self.boot, first_id + i as u64),
                };
                let seq = t.insert(id.clone(), published_us, headers.clone(), body.clone());
                if self.store.is_some() {
                    let headers = headers.as_deref().map(<[_]>::to_vec).unwrap_or_default();
                    records.push((seq, Record { id: id.to_string(), published_us, headers, body: body.clone() }));
                }
            }
            let persisted = self.store.as_ref().map(|store| store.put(topic, records));
            state.next_id += n;
            return Ok(Some((MessageId::Counter(self.boot, first_id), persisted)));
        }
        if t.settings.on_full == OnFull::Reject {
            return Err(PublishError::Full(format!("topic `{topic}` is full (capacity {})", t.settings.capacity)));
        }
        if waiting {
            t.blocked += 1;
        }
        Ok(None)
    }

    /// Up to `max` deliveries for `group`, in order: redeliveries that fell
    /// due first, then the oldest messages the group has not been offered.
    /// With nothing to deliver, the caller is counted as waiting on the
    /// group's `notify` (which it must have enabled before asking).
    pub fn take(&self, group: &GroupRef, max: usize, jobs: &mut Vec<Job>) -> Take {
        let mut state = self.lock();
        let Some(t) = state.topics.get_mut(&*group.topic) else { return Take::Gone };
        let bit = 1u64 << group.slot;
        let Some(g) = t.groups.get_mut(group.slot).and_then(Option::as_mut).filter(|g| g.id == group.id) else {
            return Take::Gone;
        };
        let now = Instant::now();
        while jobs.len() < max {
            let Some(&(due, seq)) = g.retries.first() else { break };
            if due > now {
                break;
            }
            g.retries.pop_first();
            let Some(message) = t.messages.get(&seq).filter(|m| m.pending & bit != 0) else {
                g.attempts.remove(&seq);
                continue;
            };
            let attempt = g.attempts.entry(seq).or_insert(0);
            *attempt += 1;
            let attempt = *attempt;
            if attempt > 1 {
                g.redelivered += 1;
            }
            g.in_flight += 1;
            g.deliveries += 1;
            jobs.push(Job::new(seq, group, message, attempt));
        }
        if jobs.len() < max {
            let mut next = g.cursor;
            for (&seq, message) in t.messages.range(g.cursor..) {
                next = seq + 1;
                if message.pending & bit == 0 {
                    continue;
                }
                g.attempts.insert(seq, 1);
                g.in_flight += 1;
                g.deliveries += 1;
                jobs.push(Job::new(seq, group, message, 1));
                if jobs.len() >= max {
                    break;
                }
            }
            g.cursor = if jobs.len() >= max { next } else { t.next_seq };
        }
        if !jobs.is_empty() {
            return Take::Jobs;
        }
        g.sleepers += 1;
        Take::Wait(g.retries.first().map(|(due, _)| *due))
    }

    /// The subscriber acknowledged `jobs`.
    pub fn ack(&self, jobs: &[Job]) {
        let Some(first) = jobs.first() else { return };
        let mut state = self.lock();
        let Some(t) = state.topics.get_mut(&*first.topic) else { return };
        for job in jobs {
            let Some(g) = t.group_mut(job.slot, job.group) else { continue };
            g.in_flight -= 1;
            g.attempts.remove(&job.seq);
            g.delivered += 1;
            g.pending = g.pending.saturating_sub(1);
            t.settle(job.seq, job.slot, self.store.as_ref(), &job.topic);
        }
    }

    /// The subscriber failed `job`: it is offered again after a backoff, or,
    /// after the topic's `max_attempts`, moved to the dead-letter topic.
    /// What became of it, for the log.
    pub fn fail(&self, job: &Job, reason: String) -> Failed {
        let mut state = self.lock();
        let next_id = state.next_id;
        let Some(t) = state.topics.get_mut(&*job.topic) else { return Failed::Gone };
        let settings = t.settings.clone();
        let Some(g) = t.group_mut(job.slot, job.group) else { return Failed::Gone };
        g.in_flight -= 1;
        g.last_error = Some(reason.clone());
        if job.attempt < settings.max_attempts {
            let after = settings.backoff(job.attempt);
            g.retries.insert((Instant::now() + after, job.seq));
            g.notify.notify_waiters();
            return Failed::Retry { attempt: job.attempt, of: settings.max_attempts, after };
        }
        g.attempts.remove(&job.seq);
        g.dead_lettered += 1;
        if g.dead_letters.len() == LAST_DEAD_LETTERS {
            g.dead_letters.pop_front();
        }
        g.dead_letters.push_back((job.id.to_string(), now_us(), job.attempt, reason.chars().take(200).collect()));
        g.pending = g.pending.saturating_sub(1);
        let group_key = g.key.clone();
        t.settle(job.seq, job.slot, self.store.as_ref(), &job.topic);
        // To the dead-letter topic, whatever its capacity: it never refuses
        // what it is given, and nothing is dropped.
        let mut headers = job.headers.as_deref().map(<[_]>::to_vec).unwrap_or_default();
        headers.retain(|(name, _)| !name.starts_with("orch-dead-letter-"));
        headers.push(("orch-dead-letter-topic".into(), job.topic.to_string()));
        headers.push(("orch-dead-letter-subscriber".into(), group_key));
        headers.push(("orch-dead-letter-attempts".into(), job.attempt.to_string()));
        headers.push(("orch-dead-letter-reason".into(), reason.chars().take(200).collect()));
        let dlq = t.settings.dead_letter.clone();
        let id = MessageId::Counter(self.boot, next_id);
        let record = Record { id: id.to_string(), published_us: now_us(), headers, body: job.body.clone() };
        let d = state.topic(&dlq);
        let seq = d.insert(id, record.published_us, Some(record.headers.clone().into()), record.body.clone());
        if let Some(store) = &self.store {
            drop(store.put(&dlq, vec![(seq, record)]));
        }
        state.next_id += 1;
        Failed::DeadLettered { attempts: job.attempt, to: dlq }
    }

    /// `job` was not delivered at all (the subscriber has no ready replica,
    /// or the link is not wired yet): it goes back to the head of the line,
    /// without counting as an attempt.
    pub fn requeue(&self, job: &Job, reason: String) {
        let mut state = self.lock();
        let Some(t) = state.topics.get_mut(&*job.topic) else { return };
        let Some(g) = t.group_mut(job.slot, job.group) else { return };
        g.in_flight -= 1;
        if let Some(attempt) = g.attempts.get_mut(&job.seq) {
            *attempt = attempt.saturating_sub(1);
        }
        if job.attempt > 1 {
            g.redelivered = g.redelivered.saturating_sub(1);
        }
        g.last_error = Some(reason);
        g.retries.insert((Instant::now(), job.seq));
        g.notify.notify_waiters();
    }

    /// Per topic: depth, in flight, counters, and each subscriber group's lag.
    pub fn status(&self) -> Value {
        let state = self.lock();
        let topics: serde_json::Map<String, Value> = state
            .topics
            .iter()
            .map(|(name, t)| {
                let groups = t.groups.iter().flatten();
                let subscribers: serde_json::Map<String, Value> = groups
                    .map(|g| {
                        let status = json!({
                            "mode": g.mode,
                            "lag": g.pending,
                            "in_flight": g.in_flight,
                            "waiting_redelivery": g.retries.len(),
                            "delivered": g.delivered,
                            "deliveries": g.deliveries,
                            "redelivered": g.redelivered,
                            "dead_lettered": g.dead_lettered,
                            "last_error": g.last_error,
                            "last_dead_letters": dead_letters(g.dead_letters.iter()),
                            "tiers": g.members.keys().map(|m| m.to_string()).collect::<Vec<_>>(),
                        });
                        // Named by the subscribing tiers: a point-to-point
                        // group is every tier that competes for the topic.
                        let name = if g.mode == "pubsub" || g.members.is_empty() {
                            g.key.clone()
                        } else {
                            g.members.keys().map(|m| &**m).collect::<Vec<_>>().join("+")
                        };
                        (name, status)
                    })
                    .collect();
                let sum = |f: fn(&Group) -> u64| t.groups.iter().flatten().map(f).sum::<u64>();
                let status = json!({
                    "depth": t.messages.len(),
                    "unclaimed": t.messages.values().filter(|m| m.unclaimed).count(),
                    "in_flight": sum(|g| g.in_flight as u64),
                    "published": t.published,
                    "delivered": sum(|g| g.delivered),
                    "deliveries": sum(|g| g.deliveries),
                    "oldest_published_us": t.messages.values().next().map(|m| m.published_us),
                    "redelivered": sum(|g| g.redelivered),
                    "dead_lettered": sum(|g| g.dead_lettered),
                    "capacity": t.settings.capacity,
                    "on_full": t.settings.on_full,
                    "max_attempts": t.settings.max_attempts,
                    "dead_letter_topic": t.settings.dead_letter,
                    "last_dead_letters": last_dead_letters(t),
                    "subscribers": subscribers,
                });
                (name.clone(), status)
            })
            .collect();
        json!({
            "durable": self.store.is_some(),
            "store": self.store.as_ref().map(|s| s.path().display().to_string()),
            "store_error": self.store.as_ref().and_then(Store::error),
            "store_bytes": self.store.as_ref().map(|s| s.bytes()),
            "store_commits": self.store.as_ref().map(|s| s.commits().report()),
            "topics": topics,
        })
    }
}

impl State {
    fn topic(&mut self, name: &str) -> &mut Topic {
        if !self.topics.contains_key(name) {
            let topic = Topic {
                settings: self.settings.topic(name),
                next_seq: 1,
                messages: BTreeMap::new(),
                groups: Vec::new(),
                space: Arc::new(Notify::new()),
                blocked: 0,
                published: 0,
            };
            self.topics.insert(name.to_owned(), topic);
        }
        self.topics.get_mut(name).expect("inserted above")
    }
}

impl Topic {
    fn group_mut(&mut self, slot: usize, id: u64) -> Option<&mut Group> {
        self.groups.get_mut(slot).and_then(Option::as_mut).filter(|g| g.id == id)
    }

    /// Adds a message for every current group (or for the next one, if none).
    fn insert(&mut self, id: MessageId, published_us: u64, headers: MessageHeaders, body: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.published += 1;
        let mut pending = 0u64;
        for (slot, group) in self.groups.iter_mut().enumerate() {
            if let Some(g) = group {
                pending |= 1 << slot;
                g.pending += 1;
                if g.sleepers > 0 {
                    g.sleepers = 0;
                    g.notify.notify_waiters();
                }
            }
        }
        self.messages.insert(
            seq,
            Stored { id, published_us, headers, body, pending, unclaimed: pending == 0, recovered: false },
        );
        seq
    }

    /// Group `slot` is done with message `seq`; the message goes when no group needs it.
    fn settle(&mut self, seq: u64, slot: usize, store: Option<&Store>, topic: &str) {
        let Some(message) = self.messages.get_mut(&seq) else { return };
        message.pending &= !(1u64 << slot);
        if message.pending == 0 && !message.unclaimed {
            self.messages.remove(&seq);
            if let Some(store) = store {
                store.remove(topic, seq);
            }
            if self.blocked > 0 {
                self.blocked = 0;
                self.space.notify_waiters();
            }
        }
    }
}

impl Job {
    fn new(seq: u64, group: &GroupRef, message: &Stored, attempt: u32) -> Self {
        Self {
            topic: group.topic.clone(),
            seq,
            slot: group.slot,
            group: group.id,
            id: message.id.clone(),
            attempt,
            published_us: message.published_us,
            headers: message.headers.clone(),
            body: message.body.clone(),
        }
    }
}

/// How long a worker waits before asking again after a delivery could not
/// be made at all: doubling from 10 ms to 1 s.
pub fn pause_after(not_delivered: u32) -> Duration {
    Duration::from_millis(10u64 << not_delivered.min(7)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Queue;

    fn broker(tier: &str, config: Queue) -> Arc<Broker> {
        let settings = Settings::new(config).unwrap();
        Broker::attach(tier, settings, std::path::Path::new("/nonexistent")).unwrap().0
    }

    fn message(body: &'static str) -> (MessageHeaders, Bytes) {
        (None, Bytes::from_static(body.as_bytes()))
    }

    fn take(broker: &Broker, group: &GroupRef, max: usize) -> Vec<Job> {
        let mut jobs = Vec::new();
        broker.take(group, max, &mut jobs);
        jobs
    }

    fn bodies(jobs: &[Job]) -> Vec<&[u8]> {
        jobs.iter().map(|j| &j.body[..]).collect()
    }

    #[tokio::test]
    async fn each_group_gets_every_message_and_a_message_leaves_when_all_acknowledged() {
        let b = broker("t-groups", Queue::default());
        let (one, two) = (b.subscribe("t", "one", "pubsub").unwrap(), b.subscribe("t", "two", "pubsub").unwrap());
        b.publish("t", &[message("a"), message("b")]).await.unwrap();
        let jobs = take(&b, &one, 10);
        assert_eq!(bodies(&jobs), [b"a", b"b"]);
        b.ack(&jobs);
        // Still held for the other group.
        assert_eq!(b.status()["topics"]["t"]["depth"], 2);
        let jobs = take(&b, &two, 1);
        assert_eq!(bodies(&jobs), [b"a"]);
        b.ack(&jobs);
        assert_eq!(b.status()["topics"]["t"]["depth"], 1);
        assert_eq!(b.status()["topics"]["t"]["subscribers"]["two"]["lag"], 1);
    }

    #[tokio::test]
    async fn a_publisher_s_own_ids_are_what_deliveries_carry() {
        let b = broker("t-given", Queue::default());
        let group = b.subscribe("t", "one", "pubsub").unwrap();
        let given = [Some("order-41".to_owned()), None, Some("order-43".to_owned())];
        let first = b.publish_given("t", &[message("a"), message("b"), message("c")], &given).await.unwrap();
        let ids: Vec<String> = take(&b, &group, 10).iter().map(|j| j.id.to_string()).collect();
        // The one without an id gets the broker's, as a plain publish would.
        assert_eq!(ids, ["order-41".to_owned(), first.after(1).to_string(), "order-43".to_owned()]);
    }

    #[tokio::test]
    async fn after_a_crash_every_group_gets_what_came_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.redb");
        let durable = || Settings::new(Queue { durable: true, ..Queue::default() }).unwrap();
        {
            let (b, _) = Broker::attach("t-recovered", durable(), &file).unwrap();
            let (worker, audit) =
                (b.subscribe("t", "worker", "pubsub").unwrap(), b.subscribe("t", "audit", "pubsub").unwrap());
            b.publish("t", &[message("1"), message("2")]).await.unwrap();
            // The worker acknowledged both, the audit neither: then a crash.
            b.ack(&take(&b, &worker, 10));
            assert_eq!(bodies(&take(&b, &audit, 0)), Vec::<&[u8]>::new());
        }
        let (b, _) = Broker::attach("t-recovered", durable(), &file).unwrap();
        let (worker, audit) =
            (b.subscribe("t", "worker", "pubsub").unwrap(), b.subscribe("t", "audit", "pubsub").unwrap());
        // The worker gets them again (it deduplicates), and so does the
        // audit, which joined second: not only the first group to join.
        let jobs = take(&b, &worker, 10);
        assert_eq!(bodies(&jobs), [b"1", b"2"]);
        b.ack(&jobs);
        assert_eq!(bodies(&take(&b, &audit, 10)), [b"1", b"2"]);
    }

    #[tokio::test]
    async fn what_a_departed_group_left_waits_for_the_next_subscriber() {
        let b = broker("t-unclaimed", Queue::default());
        // Published before anyone subscribed: kept.
        b.publish("t", &[message("early")]).await.unwrap();
        let first = b.subscribe("t", "first", "pubsub").unwrap();
        b.publish("t", &[message("later")]).await.unwrap();
        let jobs = take(&b, &first, 1);
        assert_eq!(bodies(&jobs), [b"early"]);
        // The group goes away with one message in flight and one not yet offered.
        b.unsubscribe(&first);
        b.ack(&jobs); // settling a job of a group that is gone changes nothing
        assert_eq!(b.status()["topics"]["t"]["unclaimed"], 2);
        let next = b.subscribe("t", "next", "pubsub").unwrap();
        assert_eq!(bodies(&take(&b, &next, 10)), [b"early", b"later"]);
    }

    #[tokio::test]
    async fn a_replaced_subscriber_hands_over_what_it_had_not_acknowledged() {
        let b = broker("t-handover", Queue::default());
        let (old, other) = (b.subscribe("t", "old", "pubsub").unwrap(), b.subscribe("t", "other", "pubsub").unwrap());
        b.publish("t", &[message("1"), message("2"), message("3")]).await.unwrap();
        b.ack(&take(&b, &old, 1));
        b.ack(&take(&b, &other, 3));
        // A reload: the broker's new instance subscribes `new` in place of `old`.
        let (again, _) = Broker::attach("t-handover", Settings::new(Queue::default()).unwrap(), "/x".as_ref()).unwrap();
        let new = again.subscribe("t", "new", "pubsub").unwrap();
        let other_again = again.subscribe("t", "other", "pubsub").unwrap();
        b.unsubscribe(&old);
        b.unsubscribe(&other);
        assert_eq!(bodies(&take(&b, &new, 10)), [b"2", b"3"]);
        // `other` had its copies: nothing again for it.
        assert!(take(&b, &other_again, 10).is_empty());
    }

    #[tokio::test]
    async fn a_removed_subscriber_backlog_goes_when_others_had_their_copies() {
        let b = broker("t-removed", Queue::default());
        let (gone, stays) = (b.subscribe("t", "gone", "pubsub").unwrap(), b.subscribe("t", "stays", "pubsub").unwrap());
        b.publish("t", &[message("1"), message("2")]).await.unwrap();
        b.ack(&take(&b, &stays, 2));
        // A reload that only removes `gone`.
        let (again, _) = Broker::attach("t-removed", Settings::new(Queue::default()).unwrap(), "/x".as_ref()).unwrap();
        let _stays_again = again.subscribe("t", "stays", "pubsub").unwrap();
        b.unsubscribe(&gone);
        assert_eq!(b.status()["topics"]["t"]["depth"], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_redelivered_after_a_backoff_then_dead_lettered() {
        let config = Queue { max_attempts: 2, retry_backoff: "1s".into(), ..Queue::default() };
        let b = broker("t-dead", config);
        let g = b.subscribe("t", "g", "pubsub").unwrap();
        let dead = b.subscribe("t.dlq", "d", "pubsub").unwrap();
        b.publish("t", &[message("poison")]).await.unwrap();
        let jobs = take(&b, &g, 1);
        let failed = b.fail(&jobs[0], "no".into());
        assert_eq!(failed, Failed::Retry { attempt: 1, of: 2, after: std::time::Duration::from_secs(1) });
        // Due in 1 s: nothing yet, then (the clock moved on) the second attempt.
        let due = match b.take(&g, 1, &mut Vec::new()) {
            Take::Wait(Some(due)) => due,
            _ => panic!("a redelivery should be scheduled"),
        };
        assert_eq!(due - tokio::time::Instant::now(), std::time::Duration::from_secs(1));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let again = take(&b, &g, 1);
        assert_eq!((again[0].attempt, &again[0].body[..]), (2, &b"poison"[..]));
        let failed = b.fail(&again[0], "still no".into());
        assert_eq!(failed, Failed::DeadLettered { attempts: 2, to: "t.dlq".into() });
        let status = b.status();
        assert_eq!(status["topics"]["t"]["depth"], 0);
        assert_eq!(status["topics"]["t"]["subscribers"]["g"]["dead_lettered"], 1);
        let last = &status["topics"]["t"]["last_dead_letters"];
        assert_eq!((last[0]["reason"].as_str(), last[0]["attempts"].as_u64()), (Some("still no"), Some(2)));
        assert_eq!(last[0]["id"].as_str(), Some(jobs[0].id.to_string().as_str()));
        let letters = take(&b, &dead, 1);
        let headers = letters[0].headers.as_deref().unwrap();
        assert!(headers.contains(&("orch-dead-letter-reason".into(), "still no".into())), "{headers:?}");
    }

    #[tokio::test]
    async fn not_delivered_goes_back_first_in_line_without_counting_an_attempt() {
        let b = broker("t-requeue", Queue::default());
        let g = b.subscribe("t", "g", "pubsub").unwrap();
        b.publish("t", &[message("1"), message("2"), message("3")]).await.unwrap();
        let jobs = take(&b, &g, 2);
        for job in &jobs {
            b.requeue(job, "no ready replica".into());
        }
        let again = take(&b, &g, 3);
        assert_eq!(bodies(&again), [b"1", b"2", b"3"]);
        assert!(again.iter().all(|j| j.attempt == 1));
    }

    #[tokio::test]
    async fn a_full_topic_rejects_whole_batches_and_never_takes_part_of_one() {
        let config = Queue { capacity: 3, on_full: OnFull::Reject, ..Queue::default() };
        let b = broker("t-full", config);
        b.publish("t", &[message("1"), message("2")]).await.unwrap();
        assert!(matches!(b.publish("t", &[message("3"), message("4")]).await, Err(PublishError::Full(_))));
        assert!(matches!(b.publish("t", &vec![message("x"); 4]).await, Err(PublishError::TooMany(_))));
        assert_eq!(b.status()["topics"]["t"]["depth"], 2);
        b.publish("t", &[message("3")]).await.unwrap();
        assert_eq!(b.status()["topics"]["t"]["published"], 3);
    }

    #[tokio::test]
    async fn a_blocked_publisher_gets_in_when_a_message_leaves() {
        let b = broker("t-block", Queue { capacity: 1, ..Queue::default() });
        let g = b.subscribe("t", "g", "pubsub").unwrap();
        b.publish("t", &[message("1")]).await.unwrap();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.publish("t", &[message("2")]).await.map(|id| id.to_string()) }
        });
        let jobs = take(&b, &g, 1);
        b.ack(&jobs);
        assert!(waiting.await.unwrap().unwrap().ends_with("-2"));
        assert_eq!(bodies(&take(&b, &g, 1)), [b"2"]);
    }
}
