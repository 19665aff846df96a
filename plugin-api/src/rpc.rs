//! RPC over links, with gRPC's semantics: a method (`package.Service/Method`),
//! an opaque message (protobuf or anything else), a status code.
//!
//! Between native tiers an RPC is an in-process call like any other link
//! call: a [`Request`] `POST /package.Service/Method` with content type
//! `application/grpc` whose body is the message, answered by a [`Response`]
//! whose `grpc-status` and `grpc-message` headers carry the status.
//!
//! ```ignore
//! // Calling, from a handler:
//! let reply = cx.rpc("pricing", "pricing.Pricing/Quote", message).await?;
//! // Serving (with `const SERVES: &[LinkKind] = &[LinkKind::Rpc]`):
//! match req.rpc_method() {
//!     Some("pricing.Pricing/Quote") => Response::rpc(answer),
//!     _ => Response::rpc_error(Code::Unimplemented, "no such method"),
//! }
//! ```

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::{Body, LinkError, LinkErrorKind, Request, Response};

/// The content type of gRPC requests and responses.
pub const CONTENT_TYPE: &str = "application/grpc";

/// gRPC status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    /// Not an error.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error of no other kind.
    Unknown = 2,
    /// The request is invalid whatever the server's state.
    InvalidArgument = 3,
    /// No answer before the deadline.
    DeadlineExceeded = 4,
    /// What was asked for does not exist.
    NotFound = 5,
    /// What was to be created exists already.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A quota or resource ran out.
    ResourceExhausted = 8,
    /// The system is not in a state where this can be done.
    FailedPrecondition = 9,
    /// Aborted, e.g. by a concurrency conflict.
    Aborted = 10,
    /// Out of a valid range.
    OutOfRange = 11,
    /// The method is not implemented.
    Unimplemented = 12,
    /// An internal error.
    Internal = 13,
    /// Unavailable for now: retrying may succeed.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// The caller is not authenticated.
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code numbered `n`; unknown numbers are `Unknown`.
    pub fn from_u32(n: u32) -> Code {
        Code::ALL.get(n as usize).copied().unwrap_or(Code::Unknown)
    }

    /// The name gRPC uses, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The status gRPC gives a plain HTTP answer (its HTTP-to-gRPC mapping).
    fn from_http(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// The outcome of a failed RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The status code.
    pub code: Code,
    /// A message for the caller.
    pub message: String,
}

impl Status {
    /// A status of `code` with `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Status {}

impl From<LinkError> for Status {
    /// No ready replica → UNAVAILABLE, timeout → DEADLINE_EXCEEDED, a target
    /// that failed without answering → UNAVAILABLE, no such link → UNIMPLEMENTED.
    fn from(e: LinkError) -> Self {
        let code = match e.kind {
            LinkErrorKind::Unavailable | LinkErrorKind::Upstream => Code::Unavailable,
            LinkErrorKind::Timeout => Code::DeadlineExceeded,
            LinkErrorKind::UnknownLink => Code::Unimplemented,
        };
        Status::new(code, e.message)
    }
}

/// The one message of a unary gRPC body (5-byte prefix: compressed flag,
/// big-endian length).
pub fn unframe(body: &[u8]) -> Result<&[u8], Status> {
    let Some((prefix, message)) = body.split_first_chunk::<5>() else {
        return Err(Status::new(Code::Internal, "a gRPC message needs its 5-byte prefix"));
    };
    if prefix[0] != 0 {
        return Err(Status::new(Code::Unimplemented, "compressed messages are not supported"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if message.len() != len {
        return Err(Status::new(Code::Internal, "a unary call carries exactly one whole message"));
    }
    Ok(message)
}

/// `message` with its gRPC prefix.
pub fn frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// `grpc-timeout` for `d`: an integer of at most 8 digits and a unit.
pub fn encode_timeout(d: Duration) -> String {
    let units: [(u128, &str); 5] =
        [(1, "n"), (1_000, "u"), (1_000_000, "m"), (1_000_000_000, "S"), (60_000_000_000, "M")];
    let nanos = d.as_nanos();
    for (scale, unit) in units {
        let value = nanos.div_ceil(scale);
        if value < 100_000_000 {
            return format!("{value}{unit}");
        }
    }
    format!("{}H", (nanos / 3_600_000_000_000).min(99_999_999))
}

/// Parses a `grpc-timeout` value.
pub fn decode_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encodes a `grpc-message` (as the gRPC spec asks).
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_message(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = value.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Request {
    /// An RPC call of `method` (`package.Service/Method`) with `message`.
    pub fn rpc(method: &str, message: impl Into<Body>) -> Request {
        Request::post(format!("/{}", method.trim_start_matches('/')))
            .with_header("content-type", CONTENT_TYPE)
            .with_header("te", "trailers")
            .with_body(message)
    }

    /// Sets the call's deadline (`grpc-timeout`), relative to now.
    pub fn with_deadline(mut self, deadline: Duration) -> Request {
        self.headers.insert("grpc-timeout", &encode_timeout(deadline));
        self
    }

    /// The method, when this request is an RPC call.
    pub fn rpc_method(&self) -> Option<&str> {
        let grpc = self.headers.raw_starts_with("content-type", CONTENT_TYPE);
        grpc.then(|| self.path().trim_start_matches('/'))
    }

    /// The call's deadline (`grpc-timeout`), if it has one.
    pub fn deadline(&self) -> Option<Duration> {
        self.headers.get("grpc-timeout").and_then(|v| decode_timeout(v.as_bytes()))
    }
}

impl Response {
    /// A successful RPC answer carrying `message`.
    pub fn rpc(message: impl Into<Body>) -> Response {
        Response::new(StatusCode::OK)
            .with_header("content-type", CONTENT_TYPE)
            .with_header("grpc-status", "0")
            .with_body(message)
    }

    /// A failed RPC answer.
    pub fn rpc_error(code: Code, message: &str) -> Response {
        Response::new(StatusCode::OK)
            .with_header("content-type", CONTENT_TYPE)
            .with_header("grpc-status", &(code as u32).to_string())
            .with_header("grpc-message", &encode_message(message))
    }

    /// This answer's RPC status: from `grpc-status`, or mapped from a plain
    /// HTTP answer.
    pub fn rpc_status(&self) -> Status {
        match self.headers.get("grpc-status").and_then(|s| s.parse::<u32>().ok()) {
            Some(code) => Status::new(
                Code::from_u32(code),
                self.headers.get("grpc-message").map(decode_message).unwrap_or_default(),
            ),
            None if self.status == StatusCode::OK => Status::new(Code::Internal, "the answer has no grpc-status"),
            None => Status::new(
                Code::from_http(self.status),
                format!("HTTP {}: {}", self.status.as_u16(), String::from_utf8_lossy(&self.body)),
            ),
        }
    }

    /// The answer's message, or its status when it is not OK.
    pub fn into_rpc(self) -> Result<Body, Status> {
        let status = self.rpc_status();
        if status.code == Code::Ok { Ok(self.body) } else { Err(status) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_within_eight_digits() {
        for d in [
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_nanos(7),
            Duration::from_secs(86_400 * 365),
        ] {
            let text = encode_timeout(d);
            assert!(text.len() <= 9, "{text}");
            assert!(
                decode_timeout(text.as_bytes()).unwrap() >= d.min(Duration::from_secs(99_999_999 * 3600)),
                "{text}"
            );
        }
        assert_eq!(decode_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(decode_timeout(b"123456789S"), None);
        assert_eq!(decode_timeout(b"5x"), None);
    }

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(unframe(&framed).unwrap(), b"hello");
        assert_eq!(unframe(&framed[..4]).unwrap_err().code, Code::Internal);
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert_eq!(unframe(&compressed).unwrap_err().code, Code::Unimplemented);
    }

    #[test]
    fn statuses_travel_in_headers() {
        let err = Response::rpc_error(Code::NotFound, "no item «x»");
        assert_eq!(err.rpc_status(), Status::new(Code::NotFound, "no item «x»"));
        assert_eq!(Response::rpc("payload").into_rpc().unwrap(), "payload");
        assert_eq!(Response::error(StatusCode::SERVICE_UNAVAILABLE, "down").rpc_status().code, Code::Unavailable);
        let call = Request::rpc("pricing.Pricing/Quote", "m").with_deadline(Duration::from_millis(250));
        assert_eq!(
            (call.rpc_method(), call.deadline()),
            (Some("pricing.Pricing/Quote"), Some(Duration::from_millis(250)))
        );
        assert_eq!(Request::get("/x").rpc_method(), None);
    }
}
