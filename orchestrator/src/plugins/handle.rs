//! Safe wrappers around a plugin's declaration and its instances.

use std::ffi::c_void;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use async_ffi::FfiFuture;
use libloading::Library;
use plugin_api::abi::{PluginDecl, RStr, RawRequest, RawResponse};
use plugin_api::export::{NativeFuture, NativeHandle, plugin_of};
use plugin_api::{ConfigIssue, LinkKind};

use super::host::{self, HostCtx};
use crate::links::LinkTable;
use crate::topology::TierId;

/// A plugin: built in, or a loaded library that this handle keeps loaded.
pub struct PluginHandle {
    decl: *const PluginDecl,
    name: String,
    version: String,
    api_version: String,
    path: Option<PathBuf>,
    /// `handle` without the C ABI, for a plugin linked into this binary.
    native: Option<NativeHandle>,
    /// Which built-in this is, for one linked into this binary.
    builtin: Option<Builtin>,
    // Declared last: dropped after everything above that points into it.
    _lib: Option<Arc<Library>>,
}

// SAFETY: the declaration is immutable static data of a library that stays
// loaded while this handle exists; its functions are thread-safe by contract.
unsafe impl Send for PluginHandle {}
// SAFETY: as above.
unsafe impl Sync for PluginHandle {}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl PluginHandle {
    /// # Safety
    /// `decl` must point to a declaration of this host's ABI version that stays
    /// valid while `lib` is loaded (or forever, when `lib` is `None`).
    pub(super) unsafe fn from_decl(decl: *const PluginDecl, lib: Option<Arc<Library>>, path: Option<PathBuf>) -> Self {
        // SAFETY: guaranteed by the caller.
        let d = unsafe { &*decl };
        // SAFETY: the declaration's strings are static data of the library.
        let (name, version, api_version) =
            unsafe { (d.name.to_string_lossy(), d.version.to_string_lossy(), d.api_version.to_string_lossy()) };
        Self { decl, name, version, api_version, path, native: None, builtin: None, _lib: lib }
    }

    /// Calls the plugin's handler through `native` rather than the C ABI.
    ///
    /// # Safety
    /// `native` must be `handle` of the same plugin type as the declaration,
    /// linked into this binary, and that type must be the one `builtin` names.
    pub(super) unsafe fn with_native(mut self, native: NativeHandle, builtin: Builtin) -> Self {
        self.native = Some(native);
        self.builtin = Some(builtin);
        self
    }

    fn decl(&self) -> &PluginDecl {
        // SAFETY: see `from_decl`; the library is kept loaded by `self._lib`.
        unsafe { &*self.decl }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its replicas hold data only one server may use at a time (a
    /// store's data directory): one is replaced by stopping it first, then
    /// starting the new one on the same data, never both at once.
    pub fn holds_data(&self) -> bool {
        matches!(self.builtin, Some(Builtin::Postgres | Builtin::Redis))
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    pub fn abi_version(&self) -> u32 {
        self.decl().abi_version
    }

    /// The library file, or `None` for a built-in plugin.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Link kinds this plugin can serve.
    pub fn serves(&self) -> Vec<LinkKind> {
        let bits = self.decl().serves;
        LinkKind::ALL.into_iter().filter(|k| bits & k.bit() != 0).collect()
    }

    /// Asks the plugin to check `config`, given its tier's outbound link names.
    pub fn validate(&self, config: &serde_json::Value, links: &[String]) -> Vec<ConfigIssue> {
        let config = config.to_string();
        let links = links.join("\n");
        // SAFETY: both strings outlive the call; `validate` catches its own panics.
        let out =
            unsafe { (self.decl().validate)(RStr::from_bytes(config.as_bytes()), RStr::from_bytes(links.as_bytes())) };
        serde_json::from_slice(out.as_bytes()).unwrap_or_else(|e| {
            vec![ConfigIssue::new("", format!("plugin `{}` returned an unreadable validation result: {e}", self.name))]
        })
    }
}

/// The plugins linked into this binary. The host may call their own Rust
/// methods, beyond the ABI's, on their instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Gateway,
    Process,
    Queue,
    /// A tier that runs on other hosts.
    Peer,
    /// Store tiers: servers run as programs.
    Postgres,
    Redis,
}

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

/// One running instance of a plugin: a replica of a tier.
pub struct Instance {
    ptr: *const c_void,
    pub id: u64,
    pub started: SystemTime,
    /// Calls in flight, and a signal when they reach zero (for draining).
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    ctx: Arc<HostCtx>,
    // Dropped after `Drop::drop` destroyed the instance, keeping the code loaded until then.
    plugin: Arc<PluginHandle>,
}

// SAFETY: a plugin instance is `Send + Sync` by the `Plugin` trait's bounds;
// the pointer is only passed back to the plugin's own functions.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("id", &self.id).field("plugin", &self.plugin.name).finish_non_exhaustive()
    }
}

impl Instance {
    /// Creates an instance of `plugin` with `config` for the tier replica `ctx` describes.
    pub fn create(
        plugin: Arc<PluginHandle>,
        config: &serde_json::Value,
        ctx: Arc<HostCtx>,
    ) -> Result<Arc<Self>, String> {
        let config = config.to_string();
        let mut ptr: *const c_void = std::ptr::null();
        // SAFETY: the vtable is static; `ctx` is kept alive by the instance for as
        // long as the plugin may use it; `ptr` is writable; `create` catches panics.
        let err = unsafe {
            (plugin.decl().create)(
                RStr::from_bytes(config.as_bytes()),
                &host::VTABLE,
                Arc::as_ptr(&ctx).cast(),
                &mut ptr,
            )
        };
        if !err.is_empty() || ptr.is_null() {
            let reason = String::from_utf8_lossy(err.as_bytes()).into_owned();
            return Err(if reason.is_empty() { "the plugin returned no instance".to_owned() } else { reason });
        }
        let id = NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Self {
            ptr,
            id,
            started: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            ctx,
            plugin,
        }))
    }

    pub fn replica(&self) -> u32 {
        self.ctx.replica
    }

    pub fn tier(&self) -> &TierId {
        &self.ctx.tier
    }

    /// The instance's outbound links.
    pub fn links(&self) -> &Arc<LinkTable> {
        &self.ctx.links
    }

    /// The gateway, if this is an instance of the built-in `gateway`.
    pub fn as_gateway(&self) -> Option<&gateway::Gateway> {
        // SAFETY: the instance was made by the built-in gateway's `create`
        // (`with_native`'s contract), and is alive while `self` is borrowed.
        (self.plugin.builtin == Some(Builtin::Gateway)).then(|| unsafe { plugin_of::<gateway::Gateway>(self.ptr) })
    }

    /// The process tier replica, if this is an instance of the built-in `process`.
    pub fn as_process(&self) -> Option<&process::Process> {
        // SAFETY: as in `as_gateway`.
        (self.plugin.builtin == Some(Builtin::Process)).then(|| unsafe { plugin_of::<process::Process>(self.ptr) })
    }

    /// The server this replica runs, if it runs one a TCP link can reach:
    /// a process tier's program, or a store tier's server.
    pub fn as_server(&self) -> Option<&dyn process::Server> {
        // SAFETY: as in `as_gateway`: the instance was made by the built-in of this kind.
        match self.plugin.builtin? {
            Builtin::Process => Some(unsafe { plugin_of::<process::Process>(self.ptr) }),
            Builtin::Postgres => Some(unsafe { plugin_of::<postgres_tier::Postgres>(self.ptr) }),
            Builtin::Redis => Some(unsafe { plugin_of::<redis_tier::Redis>(self.ptr) }),
            _ => None,
        }
    }

    /// Where a TCP link connects to this replica: its server on its port.
    /// `None` for others, and while none runs.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        let port = self.as_server()?.port()?;
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The remote tier replica, if this is an instance of the built-in `peer`.
    pub fn as_peer(&self) -> Option<&peer::Peer> {
        // SAFETY: as in `as_gateway`.
        (self.plugin.builtin == Some(Builtin::Peer)).then(|| unsafe { plugin_of::<peer::Peer>(self.ptr) })
    }

    /// Counts a call in flight until the result is dropped: what the
    /// instance's draining waits for. [`Instance::call`] counts its own.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Starts handling `req`; the plugin copies it before this returns.
    pub fn call(self: &Arc<Self>, req: &BorrowedRequest<'_>) -> InstanceCall {
        let in_flight = self.enter();
        // SAFETY: the instance is alive (we hold an Arc) and `req` is readable for
        // the duration of this synchronous call (its lifetime); `handle` catches panics.
        let fut = match self.plugin.native {
            // SAFETY: as above; `native` is this plugin's (see `with_native`).
            Some(native) => Call::Native(unsafe { native(self.ptr, &req.raw) }),
            // SAFETY: as above.
            None => Call::Ffi(unsafe { (self.plugin.decl().handle)(self.ptr, &req.raw) }),
        };
        InstanceCall { fut: Some(fut), _in_flight: in_flight }
    }

    /// Whether the instance takes requests now.
    pub fn is_ready(&self) -> bool {
        // SAFETY: the instance is alive; `is_ready` catches panics.
        unsafe { (self.plugin.decl().is_ready)(self.ptr) != 0 }
    }

    /// Completes when the instance is ready, or with why it cannot be.
    pub fn wait_ready(self: &Arc<Self>) -> impl Future<Output = Result<(), String>> + Send + 'static {
        // SAFETY: the instance is alive, and the future keeps it alive until it
        // completes or is dropped (the `Arc` below is dropped after `fut`).
        let fut = unsafe { (self.plugin.decl().wait_ready)(self.ptr) };
        let instance = self.clone();
        async move {
            let reason = fut.await;
            drop(instance);
            if reason.is_empty() { Ok(()) } else { Err(String::from_utf8_lossy(reason.as_bytes()).into_owned()) }
        }
    }

    /// The plugin's own status for this instance (`null` if it has none).
    pub fn detail(&self) -> serde_json::Value {
        // SAFETY: the instance is alive; `status` catches panics.
        let json = unsafe { (self.plugin.decl().status)(self.ptr) };
        serde_json::from_slice(json.as_bytes()).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until no call is in flight, at most `limit`; whether it got there.
    pub async fn drained(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }

    /// Stops the instance gracefully (a process tier stops its program).
    pub fn stop(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        // SAFETY: as for `wait_ready`.
        let fut = unsafe { (self.plugin.decl().stop)(self.ptr) };
        let instance = self.clone();
        async move {
            fut.await;
            drop(instance);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        tracing::info!(tier = %self.ctx.tier, replica = self.ctx.replica, instance = self.id, "Instance stopped.");
        // SAFETY: made by this plugin's `create`, destroyed once; no call is in
        // flight, because every `InstanceCall` holds an `Arc<Instance>`.
        unsafe { (self.plugin.decl().destroy)(self.ptr) }
    }
}

/// A plugin's handler panicked in a way the plugin did not catch.
#[derive(Debug, Clone, Copy)]
pub struct Panicked;

/// A call counted in flight on an instance, which it keeps alive (and so
/// its library loaded) until it is dropped.
pub struct InFlight(Arc<Instance>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// An in-flight call into a plugin instance. Keeps the instance (and so its
/// library) alive until the call completes or is dropped.
pub struct InstanceCall {
    /// The plugin's future. Declared first: dropped while the instance is
    /// still held and still counts this call.
    fut: Option<Call>,
    _in_flight: InFlight,
}

/// A handler's future: through the C ABI, or as Rust for a built-in plugin.
enum Call {
    Ffi(FfiFuture<RawResponse>),
    Native(NativeFuture),
}

impl Future for InstanceCall {
    type Output = Result<RawResponse, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The plugin catches its own panics; this guards against a plugin that
        // was not built with our export shims.
        let Some(fut) = self.fut.as_mut() else { return Poll::Ready(Err(Panicked)) };
        match catch_unwind(AssertUnwindSafe(|| match fut {
            Call::Ffi(fut) => Pin::new(fut).poll(cx),
            Call::Native(fut) => fut.as_mut().poll(cx),
        })) {
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

/// A request lent across the ABI: valid for `'a`.
#[derive(Clone, Copy, Debug)]
pub struct BorrowedRequest<'a> {
    raw: RawRequest,
    _borrow: PhantomData<&'a [u8]>,
}

// SAFETY: a BorrowedRequest is four shared byte slices borrowed for 'a.
unsafe impl Send for BorrowedRequest<'_> {}
// SAFETY: as above.
unsafe impl Sync for BorrowedRequest<'_> {}

impl<'a> BorrowedRequest<'a> {
    pub fn new(method: &'a [u8], uri: &'a [u8], headers: &'a [u8], body: &'a [u8]) -> Self {
        let raw = RawRequest {
            method: RStr::from_bytes(method),
            uri: RStr::from_bytes(uri),
            headers: RStr::from_bytes(headers),
            body: RStr::from_bytes(body),
        };
        Self { raw, _borrow: PhantomData }
    }

    /// # Safety
    /// Every field of `raw` must be readable for `'a`.
    pub unsafe fn from_raw(raw: &'a RawRequest) -> Self {
        Self { raw: *raw, _borrow: PhantomData }
    }

    /// The same request sent to `uri` instead.
    pub fn with_uri<'b>(&self, uri: &'b [u8]) -> BorrowedRequest<'b>
    where
        'a: 'b,
    {
        Self { raw: RawRequest { uri: RStr::from_bytes(uri), ..self.raw }, _borrow: PhantomData }
    }

    pub fn method(&self) -> &'a [u8] {
        // SAFETY: readable for 'a, by construction.
        unsafe { self.raw.method.as_bytes() }
    }

    pub fn uri(&self) -> &'a [u8] {
        // SAFETY: readable for 'a, by construction.
        unsafe { self.raw.uri.as_bytes() }
    }

    pub fn body(&self) -> &'a [u8] {
        // SAFETY: readable for 'a, by construction.
        unsafe { self.raw.body.as_bytes() }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        // SAFETY: readable for 'a, by construction.
        let headers = unsafe { self.raw.headers.as_bytes() };
        plugin_api::abi::decode_headers(headers).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Copies the request, e.g. to send it again.
    pub fn to_owned(&self) -> OwnedRequest {
        // SAFETY: readable for 'a, by construction.
        let (uri, headers, body) =
            unsafe { (self.raw.uri.as_bytes(), self.raw.headers.as_bytes(), self.raw.body.as_bytes()) };
        OwnedRequest {
            method: self.method().to_vec(),
            uri: uri.to_vec(),
            headers: headers.to_vec(),
            body: body.to_vec(),
        }
    }
}

/// A request owned by the host.
#[derive(Clone, Debug)]
pub struct OwnedRequest {
    method: Vec<u8>,
    uri: Vec<u8>,
    headers: Vec<u8>,
    body: Vec<u8>,
}

impl OwnedRequest {
    pub fn borrow(&self) -> BorrowedRequest<'_> {
        BorrowedRequest::new(&self.method, &self.uri, &self.headers, &self.body)
    }

    /// Carries `traceparent` (and `tracestate`) in place of the request's own.
    pub fn set_trace(&mut self, traceparent: &str, tracestate: Option<&str>) {
        let mut out = Vec::with_capacity(self.headers.len() + 128);
        let trace = |n: &[u8]| n.eq_ignore_ascii_case(b"traceparent") || n.eq_ignore_ascii_case(b"tracestate");
        let kept = plugin_api::abi::decode_headers(&self.headers).filter(|(n, _)| !trace(n));
        let ours = [
            Some((&b"traceparent"[..], traceparent.as_bytes())),
            tracestate.map(|s| (&b"tracestate"[..], s.as_bytes())),
        ];
        plugin_api::abi::encode_headers(kept.chain(ours.into_iter().flatten()), &mut out);
        self.headers = out;
    }
}
