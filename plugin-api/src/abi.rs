//! The C ABI between the host and a plugin library.
//!
//! Everything that crosses the boundary is defined here, and nothing else does:
//! `#[repr(C)]` structs, borrowed byte slices ([`RStr`]) and owned buffers
//! ([`RBuf`]) that carry the function that frees them. No Rust trait objects,
//! `String`s or `Vec`s cross, so host and plugin need not share a compiler.
//!
//! The exported symbol [`ENTRY_SYMBOL`] returns a pointer to a [`PluginDecl`],
//! whose first field is [`ABI_VERSION`]. A host reads that `u32` before anything
//! else and refuses the library when it differs.
//!
//! Contracts every side keeps:
//! - borrowed data ([`RStr`], `*const RawRequest`) is valid only for the
//!   duration of the synchronous call it is passed to; whoever needs it later copies it;
//! - an [`RBuf`] is freed by calling its own `free`, i.e. by the allocator of the
//!   side that made it ([`RBuf`]'s `Drop` does that);
//! - no panic unwinds out of an `extern "C"` function: every entry point catches it.

use std::ffi::c_void;
use std::ptr::NonNull;

use async_ffi::FfiFuture;

/// Version of this binary interface. Bumped on any layout or contract change.
pub const ABI_VERSION: u32 = 1;

/// Name of the symbol every plugin library exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"orchestrator_plugin_declaration\0";

/// Signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDecl;

/// A borrowed byte slice (often UTF-8 text).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RStr {
    /// Start of the bytes (may dangle when `len` is 0).
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl RStr {
    /// Borrows a `'static` string.
    pub const fn from_static(s: &'static str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// Borrows `bytes`; the result must not outlive them.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// The borrowed bytes.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads for the chosen lifetime.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees the range is valid; len > 0 so ptr is non-null.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The borrowed bytes as UTF-8, replacing invalid sequences.
    ///
    /// # Safety
    /// As for [`RStr::as_bytes`].
    pub unsafe fn to_string_lossy(self) -> String {
        // SAFETY: forwarded to the caller.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }
}

/// Frees an [`RBuf`]'s memory with the allocator that made it.
pub type FreeFn = unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize);

/// An owned byte buffer that carries its own free function.
#[repr(C)]
#[derive(Debug)]
pub struct RBuf {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    free: Option<FreeFn>,
}

// SAFETY: an RBuf is a uniquely owned heap buffer; nothing else aliases it.
unsafe impl Send for RBuf {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for RBuf {}

unsafe extern "C" fn free_vec(ptr: *mut u8, len: usize, cap: usize) {
    // SAFETY: the buffer was made by `RBuf::from_vec` of this same library, so
    // (ptr, len, cap) came from a `Vec<u8>` of this allocator. Dropping a Vec<u8>
    // cannot panic.
    drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
}

unsafe extern "C" fn free_bytes(_ptr: *mut u8, _len: usize, boxed: usize) {
    // SAFETY: made by `RBuf::from_bytes` of this same library: `boxed` is the
    // address of a leaked `Box<Bytes>`. Dropping `Bytes` does not panic.
    drop(unsafe { Box::from_raw(boxed as *mut bytes::Bytes) });
}

impl RBuf {
    /// An empty buffer that owns nothing.
    pub const fn empty() -> Self {
        Self { ptr: NonNull::dangling().as_ptr(), len: 0, cap: 0, free: None }
    }

    /// Takes ownership of `v`; it is freed by this library's allocator.
    pub fn from_vec(v: Vec<u8>) -> Self {
        if v.capacity() == 0 {
            return Self::empty();
        }
        let mut v = std::mem::ManuallyDrop::new(v);
        Self { ptr: v.as_mut_ptr(), len: v.len(), cap: v.capacity(), free: Some(free_vec) }
    }

    /// Hands over `bytes` without copying: the `Bytes` handle itself is kept
    /// alive (boxed) until the receiver frees the buffer.
    pub fn from_bytes(bytes: bytes::Bytes) -> Self {
        if bytes.is_empty() {
            return Self::empty();
        }
        let (ptr, len) = (bytes.as_ptr().cast_mut(), bytes.len());
        // The box's address travels in `cap`, which only `free_bytes` reads.
        let boxed = Box::into_raw(Box::new(bytes)) as usize;
        Self { ptr, len, cap: boxed, free: Some(free_bytes) }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, borrowed from the buffer.
    pub fn as_bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe an initialised buffer owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for RBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Drop for RBuf {
    fn drop(&mut self) {
        if let Some(free) = self.free.take() {
            // SAFETY: `free` belongs to the side that allocated this buffer and
            // is called exactly once (it was taken out of the Option).
            unsafe { free(self.ptr, self.len, self.cap) }
        }
    }
}

/// A request, borrowed for the duration of one synchronous call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawRequest {
    /// The HTTP method, e.g. `GET`.
    pub method: RStr,
    /// Path and query, e.g. `/api/items?page=2`.
    pub uri: RStr,
    /// Headers in the [`encode_headers`] format.
    pub headers: RStr,
    /// The body bytes.
    pub body: RStr,
}

/// A response, owned by whoever holds it.
#[repr(C)]
#[derive(Debug)]
pub struct RawResponse {
    /// The HTTP status, or one of [`NO_ANSWER`] and [`NOT_DELIVERED`]: the
    /// handler could not get an answer (the body then holds the reason) and
    /// the host may retry on another replica.
    pub status: u16,
    /// Headers in the [`encode_headers`] format.
    pub headers: RBuf,
    /// The body bytes.
    pub body: RBuf,
}

/// [`RawResponse::status`]: no answer came, and the request may have been
/// delivered (retry only idempotent requests).
pub const NO_ANSWER: u16 = 0;
/// [`RawResponse::status`]: the request was not delivered at all (e.g. the
/// connection was refused): any request may be retried.
pub const NOT_DELIVERED: u16 = 1;

/// Outcome codes of a link call ([`RawLinkResult::code`]).
pub mod link_code {
    /// The call got a response.
    pub const OK: u32 = 0;
    /// The caller has no outbound link of that name.
    pub const UNKNOWN_LINK: u32 = 1;
    /// No ready replica of the target could take the call.
    pub const UNAVAILABLE: u32 = 2;
    /// No answer within the link's timeout.
    pub const TIMEOUT: u32 = 3;
    /// The target failed without answering.
    pub const UPSTREAM: u32 = 4;
}

/// The result of calling an outbound link through the host.
#[repr(C)]
#[derive(Debug)]
pub struct RawLinkResult {
    /// One of [`link_code`]; `response` is meaningful only for `OK`.
    pub code: u32,
    /// The target's response, for `OK`.
    pub response: RawResponse,
    /// A human-readable reason when `code != OK`.
    pub message: RBuf,
}

/// Log levels for [`HostVTable::log`].
pub mod log_level {
    /// Errors.
    pub const ERROR: u32 = 1;
    /// Warnings.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging detail.
    pub const DEBUG: u32 = 4;
    /// Tracing detail.
    pub const TRACE: u32 = 5;
    /// Or-ed into a level: the line is what a tier's program wrote to its
    /// standard error (shown marked as such). A host that predates it logs
    /// the line at TRACE.
    pub const STDERR: u32 = 0x100;
    /// The bits that hold the level itself.
    pub const LEVEL_MASK: u32 = 0xff;
}

/// Services the host provides to a plugin instance. A cdylib has its own copy of
/// every runtime's statics and no reactor of its own, so timers, outbound calls
/// and logging are done by the host.
#[repr(C)]
pub struct HostVTable {
    /// The ABI version of this table: [`ABI_VERSION`].
    pub abi_version: u32,
    /// Calls outbound link `link` of the instance identified by `host_ctx`. The
    /// host copies what it needs from `req` before returning.
    pub call_link:
        unsafe extern "C" fn(host_ctx: *const c_void, link: RStr, req: *const RawRequest) -> FfiFuture<RawLinkResult>,
    /// Completes after `nanos` nanoseconds.
    pub sleep: unsafe extern "C" fn(nanos: u64) -> FfiFuture<()>,
    /// Emits a log line attributed to the instance.
    pub log: unsafe extern "C" fn(host_ctx: *const c_void, level: u32, message: RStr),
    /// Which tier and replica the instance is; the name lives as long as the instance.
    pub instance: unsafe extern "C" fn(host_ctx: *const c_void) -> InstanceInfo,
    /// Looks up the tier's environment variable `key` (from the topology's
    /// `env:`); a null `ptr` means unset. The value lives as long as the instance.
    pub env: unsafe extern "C" fn(host_ctx: *const c_void, key: RStr) -> RStr,
    /// The tier's whole `env:`, as a JSON object.
    pub env_all: unsafe extern "C" fn(host_ctx: *const c_void) -> RBuf,
    /// The tier's outbound links, one `name<TAB>kind` line each.
    pub links: unsafe extern "C" fn(host_ctx: *const c_void) -> RBuf,
    /// The URL of a local listener, owned by the host, that forwards to
    /// outbound link `link` (for programs outside the process): HTTP/1.1
    /// (`http://host:port`) for REST links, gRPC over cleartext HTTP/2
    /// (`h2c://host:port`) for RPC links. Its address stays the same across
    /// reloads. Empty when there is no such link.
    pub link_url: unsafe extern "C" fn(host_ctx: *const c_void, link: RStr) -> RBuf,
}

/// Identity of a plugin instance.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InstanceInfo {
    /// The tier's name.
    pub tier: RStr,
    /// Replica index, from 0.
    pub replica: u32,
    /// The directory of the topology file, against which relative paths in a
    /// configuration are resolved.
    pub base_dir: RStr,
}

/// What a plugin library declares. Starts with the ABI version.
#[repr(C)]
pub struct PluginDecl {
    /// [`ABI_VERSION`] of the library; read before anything else.
    pub abi_version: u32,
    /// Version of the `plugin-api` crate the plugin was built with.
    pub api_version: RStr,
    /// The plugin's name: what `plugin:` in a topology names.
    pub name: RStr,
    /// The plugin's own version (its crate's).
    pub version: RStr,
    /// Bit set of link kinds the plugin serves (see `LinkKind::bit`).
    pub serves: u32,
    /// Validates a configuration (JSON) given the caller's outbound link names
    /// (newline separated). Returns a JSON array of `ConfigIssue`s, empty if valid.
    pub validate: unsafe extern "C" fn(config: RStr, links: RStr) -> RBuf,
    /// Creates an instance. On success writes it to `out` and returns an empty
    /// buffer; on failure returns the reason as UTF-8.
    pub create: unsafe extern "C" fn(
        config: RStr,
        host: *const HostVTable,
        host_ctx: *const c_void,
        out: *mut *const c_void,
    ) -> RBuf,
    /// Handles one request. The plugin copies `req` before returning.
    pub handle: unsafe extern "C" fn(instance: *const c_void, req: *const RawRequest) -> FfiFuture<RawResponse>,
    /// Whether the instance can take requests now (1) or not (0). Called on
    /// every routing decision: must be cheap.
    pub is_ready: unsafe extern "C" fn(instance: *const c_void) -> u32,
    /// Completes when the instance is first ready (empty buffer) or cannot
    /// become ready (the reason, UTF-8).
    pub wait_ready: unsafe extern "C" fn(instance: *const c_void) -> FfiFuture<RBuf>,
    /// The instance's own status for the admin API, as JSON (`null` if none).
    pub status: unsafe extern "C" fn(instance: *const c_void) -> RBuf,
    /// Stops the instance gracefully; `destroy` follows.
    pub stop: unsafe extern "C" fn(instance: *const c_void) -> FfiFuture<()>,
    /// Destroys an instance made by `create`.
    pub destroy: unsafe extern "C" fn(instance: *const c_void),
}

// SAFETY: a PluginDecl is immutable static data: string pointers into the
// library's read-only data and function pointers.
unsafe impl Sync for PluginDecl {}

/// Appends headers to `out` as `u32 LE name length, name, u32 LE value length, value`.
pub fn encode_headers<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, out: &mut Vec<u8>) {
    for (name, value) in headers {
        for part in [name, value] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&part[..len as usize]);
        }
    }
}

/// Iterates over headers encoded by [`encode_headers`]; stops at malformed input.
pub fn decode_headers(mut bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fn take<'b>(bytes: &mut &'b [u8]) -> Option<&'b [u8]> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        *bytes = rest;
        Some(part)
    }
    std::iter::from_fn(move || {
        let name = take(&mut bytes)?;
        let value = take(&mut bytes)?;
        Some((name, value))
    })
}

/// Encodes an `http::HeaderMap`.
pub fn encode_header_map(headers: &http::HeaderMap, out: &mut Vec<u8>) {
    out.reserve(headers.iter().map(|(n, v)| 8 + n.as_str().len() + v.len()).sum());
    encode_headers(headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())), out);
}

/// Decodes into an `http::HeaderMap`, skipping entries that are not valid
/// headers. Values share one copied buffer rather than one allocation each.
pub fn decode_header_map(bytes: &[u8]) -> http::HeaderMap {
    if bytes.is_empty() {
        return http::HeaderMap::new();
    }
    let blob = bytes::Bytes::copy_from_slice(bytes);
    let mut map = http::HeaderMap::with_capacity(decode_headers(bytes).count());
    for (name, value) in decode_headers(&blob) {
        let Ok(name) = http::HeaderName::from_bytes(name) else { continue };
        if let Ok(value) = http::HeaderValue::from_maybe_shared(blob.slice_ref(value)) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut buf = Vec::new();
        encode_headers([(&b"content-type"[..], &b"application/json"[..]), (b"x-a", b"")], &mut buf);
        let decoded: Vec<_> = decode_headers(&buf).collect();
        assert_eq!(decoded, vec![(&b"content-type"[..], &b"application/json"[..]), (&b"x-a"[..], &b""[..])]);
    }

    #[test]
    fn truncated_headers_stop_cleanly() {
        let mut buf = Vec::new();
        encode_headers([(&b"a"[..], &b"b"[..])], &mut buf);
        buf.truncate(buf.len() - 1);
        assert_eq!(decode_headers(&buf).count(), 0);
    }

    #[test]
    fn shared_bytes_cross_without_a_copy() {
        let shared = bytes::Bytes::from(b"shared body".to_vec());
        let keep = shared.clone();
        let buf = RBuf::from_bytes(shared);
        assert_eq!(buf.as_bytes().as_ptr(), keep.as_ptr());
        drop(buf);
        assert_eq!(keep, &b"shared body"[..]);
        let unique = RBuf::from_bytes(bytes::Bytes::from(b"unique".to_vec()));
        assert_eq!(unique.as_bytes(), b"unique");
        let owned = RBuf::from_vec(b"x".to_vec());
        let foreign = bytes::Bytes::from_owner(owned);
        assert_eq!(RBuf::from_bytes(foreign).as_bytes(), b"x");
    }

    #[test]
    fn rbuf_frees_through_its_own_function() {
        let buf = RBuf::from_vec(b"hello".to_vec());
        assert_eq!(buf.as_bytes(), b"hello");
        drop(buf);
        assert!(RBuf::empty().is_empty());
    }
}
