//! Requests and responses as a plugin sees them.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{RBuf, RStr, RawRequest, RawResponse};
use crate::{Body, Headers};

/// An HTTP-shaped request: what a tier receives and what it sends on a link.
#[derive(Clone, Debug)]
pub struct Request {
    /// The HTTP method.
    pub method: Method,
    /// Path and query, e.g. `/api/items?page=2`.
    pub uri: String,
    /// The request's headers.
    pub headers: Headers,
    /// The request's body.
    pub body: Body,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Self { method, uri: uri.into(), headers: Headers::new(), body: Body::new() }
    }

    /// A `GET` of `uri` (a path and query).
    pub fn get(uri: impl Into<String>) -> Self {
        Self::new(Method::GET, uri)
    }

    /// A `POST` to `uri` (a path and query); give it a body with [`Request::with_body`].
    pub fn post(uri: impl Into<String>) -> Self {
        Self::new(Method::POST, uri)
    }

    /// Sets the body and the `content-type: application/json` header.
    pub fn with_json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.body = serde_json::to_vec(value).map(Body::from).unwrap_or_default();
        self.headers.insert("content-type", "application/json");
        self
    }

    /// This request with `body`.
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header; an invalid name or value is ignored.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }

    /// Parses the body as JSON.
    ///
    /// ```
    /// use plugin_api::Request;
    ///
    /// let req = Request::post("/orders?dry_run=1").with_json(&serde_json::json!({ "sku": "A1" }));
    /// assert_eq!((req.path(), req.query()), ("/orders", Some("dry_run=1")));
    /// let order: serde_json::Value = req.json().unwrap();
    /// assert_eq!(order["sku"], "A1");
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Copies a borrowed raw request.
    ///
    /// # Safety
    /// Every `RStr` in `raw` must be valid for reads.
    pub unsafe fn from_raw(raw: &RawRequest) -> Result<Self, String> {
        // SAFETY: forwarded to the caller.
        let (method, uri, headers, body) =
            unsafe { (raw.method.as_bytes(), raw.uri.as_bytes(), raw.headers.as_bytes(), raw.body.as_bytes()) };
        let method = Method::from_bytes(method).map_err(|_| "invalid request method".to_owned())?;
        let uri = std::str::from_utf8(uri).map_err(|_| "request URI is not UTF-8".to_owned())?;
        Ok(Self {
            method,
            uri: uri.to_owned(),
            headers: if headers.is_empty() {
                Headers::new()
            } else {
                Headers::encoded(Bytes::copy_from_slice(headers))
            },
            body: Body::from(Bytes::copy_from_slice(body)),
        })
    }

    /// Lends this request as a [`RawRequest`] to `f`.
    pub fn with_raw<R>(&self, f: impl FnOnce(&RawRequest) -> R) -> R {
        let headers = self.headers.to_encoded();
        let raw = RawRequest {
            method: RStr::from_bytes(self.method.as_str().as_bytes()),
            uri: RStr::from_bytes(self.uri.as_bytes()),
            headers: RStr::from_bytes(&headers),
            body: RStr::from_bytes(&self.body),
        };
        f(&raw)
    }
}

/// An HTTP-shaped response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response's headers.
    pub headers: Headers,
    /// The response's body.
    pub body: Body,
    failure: Option<Failure>,
}

/// Why a [`Response`] carries no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer came; the request may have been delivered.
    NoAnswer,
    /// The request was not delivered at all.
    NotDelivered,
}

impl Default for Response {
    fn default() -> Self {
        Self::new(StatusCode::OK)
    }
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: StatusCode) -> Self {
        Self { status, headers: Headers::new(), body: Body::new(), failure: None }
    }

    /// No answer came (the replica failed while handling the request): the
    /// caller sees a `502`, and the host may retry an idempotent request on
    /// another replica.
    pub fn no_answer(reason: &str) -> Self {
        let mut r = Self::error(StatusCode::BAD_GATEWAY, reason);
        r.failure = Some(Failure::NoAnswer);
        r
    }

    /// The request was not delivered (the replica is not ready, the
    /// connection was refused): the host may retry it on another replica,
    /// whatever its method; otherwise the caller sees a `502`.
    pub fn not_delivered(reason: &str) -> Self {
        let mut r = Self::error(StatusCode::BAD_GATEWAY, reason);
        r.failure = Some(Failure::NotDelivered);
        r
    }

    /// Why this response carries no answer, if it does not.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// `200 OK` with a JSON body.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                let mut r = Self::new(StatusCode::OK).with_body(body);
                r.headers.insert("content-type", "application/json");
                r
            }
            Err(e) => Self::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode JSON: {e}")),
        }
    }

    /// `200 OK` with a plain-text body.
    pub fn text(body: impl Into<String>) -> Self {
        let mut r = Self::new(StatusCode::OK).with_body(body.into());
        r.headers.insert("content-type", "text/plain; charset=utf-8");
        r
    }

    /// A JSON error body `{"error": message}` with `status`.
    pub fn error(status: StatusCode, message: &str) -> Self {
        Self::json(&serde_json::json!({ "error": message })).with_status(status)
    }

    /// This response with `status`.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// This response with `body`.
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header; an invalid name or value is ignored.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Parses the body as JSON.
    ///
    /// ```
    /// use plugin_api::{Response, StatusCode};
    ///
    /// let answer = Response::json(&serde_json::json!({ "cents": 250 })).with_status(StatusCode::CREATED);
    /// let body: serde_json::Value = answer.json_body().unwrap();
    /// assert_eq!((answer.status, body["cents"].as_u64()), (StatusCode::CREATED, Some(250)));
    /// ```
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Hands this response over the ABI. The body is not copied when it is
    /// uniquely owned.
    pub fn into_raw(self) -> RawResponse {
        if let Some(failure) = self.failure {
            let reason =
                self.json_body::<serde_json::Value>().ok().and_then(|v| v["error"].as_str().map(str::to_owned));
            let reason = reason.unwrap_or_else(|| "no answer".to_owned());
            let status = match failure {
                Failure::NoAnswer => crate::abi::NO_ANSWER,
                Failure::NotDelivered => crate::abi::NOT_DELIVERED,
            };
            return RawResponse { status, headers: RBuf::empty(), body: RBuf::from_vec(reason.into_bytes()) };
        }
        RawResponse { status: self.status.as_u16(), headers: self.headers.into_rbuf(), body: self.body.into_rbuf() }
    }

    /// Takes a response from the ABI. The body is not copied: it is freed by
    /// the side that allocated it when the last `Bytes` referring to it drops.
    pub fn from_raw(raw: RawResponse) -> Self {
        match raw.status {
            crate::abi::NO_ANSWER => return Self::no_answer(&String::from_utf8_lossy(raw.body.as_bytes())),
            crate::abi::NOT_DELIVERED => return Self::not_delivered(&String::from_utf8_lossy(raw.body.as_bytes())),
            _ => {}
        }
        let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = Headers::foreign(raw.headers);
        let body = Body::foreign(raw.body);
        Self { status, headers, body, failure: None }
    }
}
