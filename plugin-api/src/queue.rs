//! Messages through a queue tier: publishing on an outbound queue link and
//! receiving deliveries.
//!
//! A delivery is an HTTP-shaped `POST` whose headers say which message it is
//! ([`MESSAGE_ID`], [`ATTEMPT`], [`TOPIC`]); the same request reaches a process
//! tier's program over HTTP. A plugin receives it in [`Plugin::on_message`]:
//! returning `Ok` acknowledges the message, `Err` has it redelivered later.
//!
//! [`Plugin::on_message`]: crate::Plugin::on_message

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use bytes::Bytes;

use crate::{Body, Headers, LinkError, LinkErrorKind, Request, Response, StatusCode};

/// Header of a delivery: the message's id, unique per broker (deduplicate on it).
pub const MESSAGE_ID: &str = "orch-message-id";
/// Header of a delivery: which attempt this is, from 1.
pub const ATTEMPT: &str = "orch-message-attempt";
/// Header of a delivery: the topic the message was published on.
pub const TOPIC: &str = "orch-topic";
/// Header of a delivery: when the message was published, in microseconds
/// since the Unix epoch.
pub const PUBLISHED_AT: &str = "orch-published-at";
/// Header of a batch of deliveries to a native tier: how many messages its
/// body carries, framed by [`BatchWriter`].
pub const BATCH: &str = "orch-batch";
/// Header of a batch of publishes: how many messages its body carries,
/// framed by [`BatchWriter`].
pub const PUBLISH_BATCH: &str = "orch-publish-batch";

/// One delivery of a message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Unique per broker; the same on every attempt.
    pub id: String,
    /// The topic it was published on.
    pub topic: String,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub attempt: u32,
    /// Publish time, in microseconds since the Unix epoch.
    pub published_at_us: u64,
    /// The path the delivery was sent to (the subscription's `path`).
    pub path: String,
    /// The publisher's `content-type` and trace context, and the delivery headers.
    pub headers: Headers,
    /// What the publisher sent.
    pub body: Body,
}

impl Message {
    /// One message of a delivered batch: its own headers and body, and the
    /// batch's topic and path.
    pub(crate) fn from_batch_entry(topic: &str, path: &str, headers: Headers, body: Bytes) -> Self {
        let number = |name| headers.find_raw(name).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        Self {
            id: headers.find_raw(MESSAGE_ID).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
            topic: topic.to_owned(),
            attempt: number(ATTEMPT).map_or(1, |a| u32::try_from(a).unwrap_or(u32::MAX)),
            published_at_us: number(PUBLISHED_AT).unwrap_or(0),
            path: path.to_owned(),
            headers,
            body: body.into(),
        }
    }

    /// The delivery carried by `req`, if it is one.
    pub fn from_request(req: &Request) -> Option<Self> {
        Self::is_delivery(req).then(|| Self::from_delivery(req.clone()))
    }

    /// Whether `req` is the delivery of one message.
    pub fn is_delivery(req: &Request) -> bool {
        req.headers.find_raw(MESSAGE_ID).is_some()
    }

    /// The message `req` delivers (see [`Message::is_delivery`]). The headers
    /// are read in their wire form, without building a map.
    pub fn from_delivery(req: Request) -> Self {
        let text = |name| req.headers.find_raw(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let number = |name| req.headers.find_raw(name).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        Self {
            id: text(MESSAGE_ID).unwrap_or_default(),
            topic: text(TOPIC).unwrap_or_default(),
            attempt: number(ATTEMPT).map_or(1, |a| u32::try_from(a).unwrap_or(u32::MAX)),
            published_at_us: number(PUBLISHED_AT).unwrap_or(0),
            path: req.uri,
            headers: req.headers,
            body: req.body,
        }
    }

    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The delivery as the HTTP request it arrived as.
    pub fn into_request(self) -> Request {
        Request { method: http::Method::POST, uri: self.path, headers: self.headers, body: self.body }
    }

    /// The body as text, replacing invalid UTF-8.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// The outcome of handling a delivery, as the answer the broker reads:
/// `Ok` acknowledges (204), `Err` asks for a redelivery (500 with the reason).
pub fn delivery_response(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => Response::new(StatusCode::NO_CONTENT),
        Err(reason) => Response::error(StatusCode::INTERNAL_SERVER_ERROR, &reason),
    }
}

/// A message the broker accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The id its deliveries will carry.
    pub id: String,
}

/// Why a publish was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The topic is full and rejects (`on_full: reject`), or stayed full
    /// until the link's timeout (`on_full: block`).
    Full(String),
    /// The broker refused the message (e.g. too large).
    Refused(String),
    /// The link failed: no such link, broker not running, timeout.
    Link(LinkError),
}

impl PublishError {
    /// The HTTP status a gateway would answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            PublishError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::Refused(_) => StatusCode::BAD_REQUEST,
            PublishError::Link(e) => e.status(),
        }
    }

    /// The JSON error response for this failure.
    pub fn to_response(&self) -> Response {
        Response::error(self.status(), &self.to_string())
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Full(why) | PublishError::Refused(why) => f.write_str(why),
            PublishError::Link(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PublishError {}

/// The request that publishes `body` on a queue link. Its path is left
/// empty: the host sends it to the link's topic.
pub fn publish_request(body: impl Into<Body>) -> Request {
    Request::post(String::new()).with_body(body)
}

/// The request that publishes `value` as JSON on a queue link.
pub fn publish_json_request<T: Serialize + ?Sized>(value: &T) -> Request {
    Request::post(String::new()).with_json(value)
}

/// Writes the body of a batch: per message, `u32 LE headers length, headers
/// (in the ABI's header encoding), u32 LE body length, body`.
#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: usize,
}

impl BatchWriter {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message.
    pub fn push<'a>(&mut self, headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, body: &[u8]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        crate::abi::encode_headers(headers, &mut self.buf);
        let len = u32::try_from(self.buf.len() - at - 4).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.buf.extend_from_slice(body);
        self.count += 1;
    }

    /// Number of messages in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The number of messages and the body.
    pub fn finish(self) -> (usize, Vec<u8>) {
        (self.count, self.buf)
    }
}

/// The messages of a batch body, as headers and body sharing its buffer; an
/// error for a truncated entry.
pub fn batch_entries(body: &Bytes) -> impl Iterator<Item = Result<(Headers, Bytes), String>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let mut take = || -> Option<Bytes> {
            let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
            let part = body.get(at + 4..at + 4 + len).map(|_| body.slice(at + 4..at + 4 + len))?;
            at += 4 + len;
            Some(part)
        };
        match (take(), take()) {
            (Some(headers), Some(message)) => Some(Ok((Headers::encoded(headers), message))),
            _ => {
                at = body.len();
                Some(Err("a batch entry is truncated".to_owned()))
            }
        }
    })
}

/// The request that publishes every one of `bodies` on a queue link, in order.
pub fn publish_batch_request<B: AsRef<[u8]>>(bodies: impl IntoIterator<Item = B>) -> Request {
    let mut writer = BatchWriter::new();
    for body in bodies {
        writer.push([], body.as_ref());
    }
    let (count, buf) = writer.finish();
    Request::post(String::new()).with_header(PUBLISH_BATCH, &count.to_string()).with_body(buf)
}

/// Reads the broker's answer to a batch of publishes: the ids, in order.
pub fn read_publish_batch_answer(answer: Result<Response, LinkError>) -> Result<Vec<Published>, PublishError> {
    let resp = accepted(answer)?;
    let answer: serde_json::Value = resp.json_body().unwrap_or_default();
    let ids = answer.get("ids").and_then(|ids| ids.as_array()).map(Vec::as_slice).unwrap_or_default();
    Ok(ids.iter().filter_map(|v| v.as_str().map(|id| Published { id: id.to_owned() })).collect())
}

/// Reads the broker's answer to a publish.
pub fn read_publish_answer(answer: Result<Response, LinkError>) -> Result<Published, PublishError> {
    let resp = accepted(answer)?;
    let id = resp.headers.find_raw(MESSAGE_ID).map(|v| String::from_utf8_lossy(v).into_owned());
    Ok(Published { id: id.unwrap_or_default() })
}

/// The broker's answer if it accepted the publish, else why not.
fn accepted(answer: Result<Response, LinkError>) -> Result<Response, PublishError> {
    let resp = answer.map_err(PublishError::Link)?;
    if resp.status.is_success() {
        return Ok(resp);
    }
    let reason = resp
        .json_body::<serde_json::Value>()
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned());
    Err(match resp.status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => PublishError::Full(reason),
        s if s.is_client_error() => PublishError::Refused(reason),
        _ => PublishError::Link(LinkError::new(LinkErrorKind::Upstream, reason)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_reads_back_as_a_message() {
        let req = Request::post("/messages/orders")
            .with_header(MESSAGE_ID, "b1-7")
            .with_header(ATTEMPT, "2")
            .with_header(TOPIC, "orders")
            .with_header(PUBLISHED_AT, "1700000000000000")
            .with_body("{\"n\":1}");
        let msg = Message::from_request(&req).unwrap();
        assert_eq!((msg.id.as_str(), msg.attempt, msg.topic.as_str()), ("b1-7", 2, "orders"));
        assert_eq!(msg.published_at_us, 1_700_000_000_000_000);
        assert_eq!(msg.json::<serde_json::Value>().unwrap()["n"], 1);
        assert!(Message::from_request(&Request::post("/x")).is_none());
    }

    #[test]
    fn batches_frame_their_messages() {
        let mut writer = BatchWriter::new();
        writer.push([(&b"orch-message-id"[..], &b"b-1"[..])], b"first");
        writer.push([], b"");
        writer.push([], b"third");
        let (count, buf) = writer.finish();
        let buf = Bytes::from(buf);
        let entries: Vec<_> = batch_entries(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(count, 3);
        assert_eq!(entries[0].0.find_raw(MESSAGE_ID), Some(&b"b-1"[..]));
        let bodies: Vec<&[u8]> = entries.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(bodies, [&b"first"[..], b"", b"third"]);
        let truncated = buf.slice(..buf.len() - 2);
        assert!(batch_entries(&truncated).any(|e| e.is_err()));
    }

    #[test]
    fn publish_answers_map_to_outcomes() {
        let ok = Response::new(StatusCode::ACCEPTED).with_header(MESSAGE_ID, "b1-1");
        assert_eq!(read_publish_answer(Ok(ok)), Ok(Published { id: "b1-1".into() }));
        let full = Response::error(StatusCode::SERVICE_UNAVAILABLE, "topic `t` is full");
        assert_eq!(read_publish_answer(Ok(full)), Err(PublishError::Full("topic `t` is full".into())));
        let big = Response::error(StatusCode::PAYLOAD_TOO_LARGE, "too large");
        assert!(matches!(read_publish_answer(Ok(big)), Err(PublishError::Refused(_))));
        let down = LinkError::new(LinkErrorKind::Unavailable, "no ready replica");
        assert_eq!(read_publish_answer(Err(down)).unwrap_err().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
