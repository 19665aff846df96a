//! Message bodies that cross the ABI without copies when passed through.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::abi::RBuf;

/// The body of a [`Request`](crate::Request) or [`Response`](crate::Response):
/// bytes, readable as a slice (`&body[..]`, `body.as_ref()`).
///
/// A body received from another tier stays in the buffer that tier allocated,
/// and is handed on as is when a handler forwards it: passing a response
/// through costs no copy and no allocation.
#[derive(Default)]
pub struct Body(Repr);

#[derive(Default)]
enum Repr {
    #[default]
    Empty,
    Bytes(Bytes),
    /// Made by this side, handed across the ABI as it is.
    Vec(Vec<u8>),
    /// Owned by the other side of the ABI; freed by its own function.
    Foreign(RBuf),
}

impl Body {
    /// An empty body.
    pub fn new() -> Self {
        Self(Repr::Empty)
    }

    pub(crate) fn foreign(buf: RBuf) -> Self {
        if buf.is_empty() { Self(Repr::Empty) } else { Self(Repr::Foreign(buf)) }
    }

    /// The body's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::Bytes(b) => b,
            Repr::Vec(v) => v,
            Repr::Foreign(buf) => buf.as_bytes(),
        }
    }

    /// The body as `Bytes`; a foreign buffer is wrapped, not copied.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Empty => Bytes::new(),
            Repr::Bytes(b) => b,
            Repr::Vec(v) => Bytes::from(v),
            Repr::Foreign(buf) => Bytes::from_owner(buf),
        }
    }

    /// The body as an owned buffer for the ABI, without copying.
    pub(crate) fn into_rbuf(self) -> RBuf {
        match self.0 {
            Repr::Empty => RBuf::empty(),
            Repr::Bytes(b) => RBuf::from_bytes(b),
            Repr::Vec(v) => RBuf::from_vec(v),
            Repr::Foreign(buf) => buf,
        }
    }
}

impl Clone for Body {
    fn clone(&self) -> Self {
        match &self.0 {
            Repr::Empty => Self(Repr::Empty),
            Repr::Bytes(b) => Self(Repr::Bytes(b.clone())),
            Repr::Vec(v) => Self(Repr::Vec(v.clone())),
            Repr::Foreign(buf) => Self(Repr::Bytes(Bytes::copy_from_slice(buf.as_bytes()))),
        }
    }
}

impl Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_bytes()), f)
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        if b.is_empty() { Self(Repr::Empty) } else { Self(Repr::Bytes(b)) }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        if v.is_empty() { Self(Repr::Empty) } else { Self(Repr::Vec(v)) }
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        s.into_bytes().into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<[u8]> for Body {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<str> for Body {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Body {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_buffer_passes_through_untouched() {
        let buf = RBuf::from_vec(b"payload".to_vec());
        let ptr = buf.as_bytes().as_ptr();
        let body = Body::foreign(buf);
        assert_eq!(body, "payload");
        assert_eq!(body.into_rbuf().as_bytes().as_ptr(), ptr);
    }

    #[test]
    fn clones_and_conversions_keep_the_bytes() {
        let body = Body::foreign(RBuf::from_vec(b"abc".to_vec()));
        let copy = body.clone();
        assert_eq!(copy, body);
        assert_eq!(body.into_bytes(), &b"abc"[..]);
        assert_eq!(Body::from("x").into_rbuf().as_bytes(), b"x");
        assert!(Body::from(Vec::new()).is_empty());
    }
}
