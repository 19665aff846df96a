//! Headers that cross the ABI in their wire form and are decoded only when read.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::Body;
use crate::abi::{self, RBuf};

/// The headers of a [`Request`](crate::Request) or [`Response`](crate::Response).
///
/// Headers received over the ABI stay encoded until a handler reads them, and
/// are passed on unchanged without being decoded again: a tier that forwards a
/// request or a response pays nothing for its headers.
#[derive(Clone, Default)]
pub struct Headers {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// As received: encoded, plus the decoded map once someone read it.
    Encoded(Body, OnceLock<Box<HeaderMap>>),
    // Boxed: requests and responses live inside futures that are moved
    // across the ABI, so they are kept small.
    Map(Box<HeaderMap>),
}

impl Default for Repr {
    /// No headers, in wire form: nothing is allocated until one is added.
    fn default() -> Self {
        Repr::Encoded(Body::new(), OnceLock::new())
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Headers from name/value pairs, kept in wire form: nothing is checked
    /// or decoded until someone reads them by name. A pair that is not a
    /// valid header is skipped when they are read as a map or sent over HTTP.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out = Vec::with_capacity(128);
        abi::encode_headers(pairs.into_iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut out);
        Self { repr: Repr::Encoded(Body::from(out), OnceLock::new()) }
    }

    /// The first value of header `name` (case-insensitive), found without
    /// decoding the headers into a map.
    pub fn find_raw(&self, name: &str) -> Option<&[u8]> {
        match &self.repr {
            Repr::Encoded(bytes, _) => {
                abi::decode_headers(bytes).find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
            }
            Repr::Map(map) => map.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// Headers in the ABI's encoded form.
    pub(crate) fn encoded(bytes: Bytes) -> Self {
        Self { repr: Repr::Encoded(Body::from(bytes), OnceLock::new()) }
    }

    /// Headers in a buffer from the other side of the ABI, kept as is.
    pub(crate) fn foreign(buf: RBuf) -> Self {
        if buf.is_empty() {
            return Self::new();
        }
        Self { repr: Repr::Encoded(Body::foreign(buf), OnceLock::new()) }
    }

    /// All headers as an `http::HeaderMap`.
    pub fn map(&self) -> &HeaderMap {
        match &self.repr {
            Repr::Map(map) => map,
            Repr::Encoded(bytes, map) => map.get_or_init(|| Box::new(abi::decode_header_map(bytes))),
        }
    }

    /// All headers, for changing them.
    pub fn map_mut(&mut self) -> &mut HeaderMap {
        if let Repr::Encoded(bytes, map) = &mut self.repr {
            let map = map.take().unwrap_or_else(|| Box::new(abi::decode_header_map(bytes)));
            self.repr = Repr::Map(map);
        }
        match &mut self.repr {
            Repr::Map(map) => map,
            Repr::Encoded(..) => unreachable!("converted to a map just above"),
        }
    }

    /// The first value of header `name` (case-insensitive), if it is text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map().get(name).and_then(|v| v.to_str().ok())
    }

    /// Sets header `name`, replacing other values; an invalid name or value is ignored.
    pub fn insert(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            self.map_mut().insert(n, v);
        }
    }

    /// Adds a value for header `name`; an invalid name or value is ignored.
    pub fn append(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            self.map_mut().append(n, v);
        }
    }

    /// Visits every header as raw name and value, without decoding headers
    /// that are still in their wire form.
    pub fn for_each_raw(&self, mut f: impl FnMut(&[u8], &[u8])) {
        match &self.repr {
            Repr::Encoded(bytes, _) => abi::decode_headers(bytes).for_each(|(n, v)| f(n, v)),
            Repr::Map(map) => map.iter().for_each(|(n, v)| f(n.as_str().as_bytes(), v.as_bytes())),
        }
    }

    /// Whether header `name` has a value starting with `prefix`, checked
    /// without decoding the headers.
    pub fn raw_starts_with(&self, name: &str, prefix: &str) -> bool {
        let mut found = false;
        self.for_each_raw(|n, v| found |= n.eq_ignore_ascii_case(name.as_bytes()) && v.starts_with(prefix.as_bytes()));
        found
    }

    /// Number of headers (a name given twice counts twice).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        match &self.repr {
            Repr::Encoded(bytes, _) => bytes.is_empty(),
            Repr::Map(map) => map.is_empty(),
        }
    }

    /// The encoded form, borrowed when unchanged since it was received.
    pub(crate) fn to_encoded(&self) -> Cow<'_, [u8]> {
        match &self.repr {
            Repr::Encoded(bytes, _) => Cow::Borrowed(bytes),
            Repr::Map(map) => {
                let mut out = Vec::new();
                abi::encode_header_map(map, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// The encoded form as an owned buffer, without copying when unchanged.
    pub(crate) fn into_rbuf(self) -> RBuf {
        match self.repr {
            Repr::Encoded(bytes, _) => bytes.into_rbuf(),
            Repr::Map(map) => {
                let mut out = Vec::new();
                abi::encode_header_map(&map, &mut out);
                RBuf::from_vec(out)
            }
        }
    }
}

impl From<HeaderMap> for Headers {
    fn from(map: HeaderMap) -> Self {
        Self { repr: Repr::Map(Box::new(map)) }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.map(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(pairs: &[(&str, &str)]) -> Headers {
        let mut buf = Vec::new();
        abi::encode_headers(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut buf);
        Headers::encoded(Bytes::from(buf))
    }

    #[test]
    fn unchanged_headers_pass_through_encoded() {
        let h = encoded(&[("content-type", "application/json"), ("x-a", "1")]);
        assert_eq!(h.get("Content-Type"), Some("application/json"));
        assert!(matches!(h.to_encoded(), Cow::Borrowed(_)));
    }

    #[test]
    fn pairs_stay_encoded_until_read() {
        let h = Headers::from_pairs([("x-id", "7"), ("bad name", "x"), ("content-type", "text/plain")]);
        // The invalid pair is there in wire form, and skipped in the map.
        assert!(matches!(h.to_encoded(), Cow::Borrowed(_)));
        assert_eq!(h.find_raw("X-Id"), Some(&b"7"[..]));
        assert_eq!((h.get("content-type"), h.len()), (Some("text/plain"), 2));
        assert!(Headers::new().is_empty());
    }

    #[test]
    fn changed_headers_are_encoded_again() {
        let mut h = encoded(&[("x-a", "1")]);
        h.insert("x-b", "2");
        let round = Headers::encoded(Bytes::from(h.to_encoded().into_owned()));
        assert_eq!((round.get("x-a"), round.get("x-b"), round.len()), (Some("1"), Some("2"), 2));
    }
}
