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

/// One delivery of a message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Unique per broker; the same on every attempt.
    pub id: String,
    pub topic: String,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub attempt: u32,
    /// Publish time, in microseconds since the Unix epoch.
    pub published_at_us: u64,
    /// The path the delivery was sent to (the subscription's `path`).
    pub path: String,
    /// The publisher's `content-type` and trace context, and the delivery headers.
    pub headers: Headers,
    pub body: Body,
}

impl Message {
    /// The delivery carried by `req`, if it is one.
    pub fn from_request(req: &Request) -> Option<Self> {
        let id = req.headers.get(MESSAGE_ID)?.to_owned();
        let number = |name| req.headers.get(name).and_then(|v| v.parse().ok());
        Some(Self {
            id,
            topic: req.headers.get(TOPIC).unwrap_or_default().to_owned(),
            attempt: number(ATTEMPT).unwrap_or(1) as u32,
            published_at_us: number(PUBLISHED_AT).unwrap_or(0),
            path: req.uri.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        })
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

/// The request that publishes `body` on a queue link.
pub fn publish_request(body: impl Into<Body>) -> Request {
    Request::post("/").with_body(body)
}

/// The request that publishes `value` as JSON on a queue link.
pub fn publish_json_request<T: Serialize + ?Sized>(value: &T) -> Request {
    Request::post("/").with_json(value)
}

/// Reads the broker's answer to a publish.
pub fn read_publish_answer(answer: Result<Response, LinkError>) -> Result<Published, PublishError> {
    let resp = answer.map_err(PublishError::Link)?;
    let reason = || {
        resp.json_body::<serde_json::Value>()
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned())
    };
    if resp.status.is_success() {
        let id = resp.headers.get(MESSAGE_ID).unwrap_or_default().to_owned();
        return Ok(Published { id });
    }
    Err(match resp.status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => PublishError::Full(reason()),
        s if s.is_client_error() => PublishError::Refused(reason()),
        _ => PublishError::Link(LinkError::new(LinkErrorKind::Upstream, reason())),
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
