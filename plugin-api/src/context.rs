//! The host's services as a plugin instance sees them.

use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::abi::{HostVTable, RStr, link_code, log_level};
use crate::queue::{self, PublishError, Published};
use crate::{LinkError, LinkInfo, Request, Response};

/// Handle to the host for one plugin instance: outbound links, timers, logs.
/// Cheap to clone; move it into the futures that need it.
#[derive(Clone)]
pub struct Context {
    host: *const HostVTable,
    ctx: *const c_void,
}

// SAFETY: the host guarantees that its vtable is immutable for the life of the
// process and that `ctx` stays valid and thread-safe for as long as the
// instance (and any future it returned) exists.
unsafe impl Send for Context {}
// SAFETY: as above; every host service takes `ctx` by shared pointer.
unsafe impl Sync for Context {}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// Wraps the host pointers handed to `create`.
    ///
    /// # Safety
    /// `host` must point to a vtable valid for the life of the instance and
    /// `ctx` must be the context the host gave for this instance.
    pub unsafe fn from_raw(host: *const HostVTable, ctx: *const c_void) -> Self {
        Self { host, ctx }
    }

    fn host(&self) -> &HostVTable {
        // SAFETY: see `from_raw`.
        unsafe { &*self.host }
    }

    /// The name of this instance's tier.
    pub fn tier(&self) -> String {
        // SAFETY: `ctx` is this instance's host context; the name lives as long as it.
        unsafe { (self.host().instance)(self.ctx).tier.to_string_lossy() }
    }

    /// This instance's replica index, from 0.
    pub fn replica(&self) -> u32 {
        // SAFETY: as for `tier`.
        unsafe { (self.host().instance)(self.ctx).replica }
    }

    /// The tier's environment variable `key`, from the topology's `env:`.
    pub fn env(&self, key: &str) -> Option<String> {
        // SAFETY: `ctx` is this instance's host context; `key` outlives the call and
        // the returned value lives as long as the instance.
        let value = unsafe { (self.host().env)(self.ctx, RStr::from_bytes(key.as_bytes())) };
        // SAFETY: as above.
        (!value.ptr.is_null()).then(|| unsafe { value.to_string_lossy() })
    }

    /// The tier's whole environment (the topology's `env:`).
    pub fn env_all(&self) -> std::collections::BTreeMap<String, String> {
        // SAFETY: `ctx` is this instance's host context.
        let json = unsafe { (self.host().env_all)(self.ctx) };
        serde_json::from_slice(json.as_bytes()).unwrap_or_default()
    }

    /// The names of the tier's outbound links.
    pub fn links(&self) -> Vec<String> {
        self.link_infos().into_iter().map(|l| l.name).collect()
    }

    /// The tier's outbound links and their kinds.
    pub fn link_kinds(&self) -> Vec<(String, crate::LinkKind)> {
        self.link_infos().into_iter().map(|l| (l.name, l.kind)).collect()
    }

    /// The tier's outbound links, with their kinds and settings.
    pub fn link_infos(&self) -> Vec<LinkInfo> {
        // SAFETY: `ctx` is this instance's host context.
        let lines = unsafe { (self.host().links)(self.ctx) };
        String::from_utf8_lossy(lines.as_bytes()).lines().filter_map(LinkInfo::parse).collect()
    }

    /// The URL of a local listener, owned by the host, that forwards to
    /// outbound link `name`, for programs that run outside the orchestrator:
    /// `http://127.0.0.1:PORT` (HTTP/1.1) for a REST link,
    /// `h2c://127.0.0.1:PORT` (gRPC over cleartext HTTP/2) for an RPC link.
    /// Its address stays the same across reloads. `None` if the tier has no
    /// such link.
    pub fn link_url(&self, name: &str) -> Option<String> {
        // SAFETY: `ctx` is this instance's host context; `name` outlives the call.
        let url = unsafe { (self.host().link_url)(self.ctx, RStr::from_bytes(name.as_bytes())) };
        (!url.is_empty()).then(|| String::from_utf8_lossy(url.as_bytes()).into_owned())
    }

    /// The directory of the topology file: resolve relative paths against it.
    pub fn base_dir(&self) -> std::path::PathBuf {
        // SAFETY: as for `tier`.
        std::path::PathBuf::from(unsafe { (self.host().instance)(self.ctx).base_dir.to_string_lossy() })
    }

    /// Calls outbound link `link` with `req`. Without trace headers of its
    /// own, `req` carries those of the request being handled.
    pub fn call(
        &self,
        link: &str,
        mut req: Request,
    ) -> impl Future<Output = Result<Response, LinkError>> + Send + 'static {
        crate::trace::propagate(&mut req.headers);
        let call_link = self.host().call_link;
        let ctx = self.ctx;
        // SAFETY: `req` and `link` outlive this synchronous call, during which
        // the host copies what it needs.
        let fut = req.with_raw(|raw| unsafe { call_link(ctx, RStr::from_bytes(link.as_bytes()), raw) });
        async move {
            let result = fut.await;
            if result.code == link_code::OK {
                Ok(Response::from_raw(result.response))
            } else {
                Err(LinkError::from_code(result.code, String::from_utf8_lossy(result.message.as_bytes()).into_owned()))
            }
        }
    }

    /// Calls `method` (`package.Service/Method`) on outbound RPC link `link`
    /// with `message`; the answer's message, or its status.
    pub fn rpc(
        &self,
        link: &str,
        method: &str,
        message: impl Into<crate::Body>,
    ) -> impl Future<Output = Result<crate::Body, crate::rpc::Status>> + Send + 'static {
        let call = self.call(link, Request::rpc(method, message));
        async move { call.await.map_err(crate::rpc::Status::from).and_then(Response::into_rpc) }
    }

    /// Publishes `body` on outbound queue link `link`. Completes when the
    /// broker has accepted the message (and stored it, on a durable topic).
    pub fn publish(
        &self,
        link: &str,
        body: impl Into<crate::Body>,
    ) -> impl Future<Output = Result<Published, PublishError>> + Send + 'static {
        let call = self.call(link, queue::publish_request(body));
        async move { queue::read_publish_answer(call.await) }
    }

    /// Publishes every one of `bodies` on outbound queue link `link`, in
    /// order, in one call: all are accepted (their ids, in order) or none.
    pub fn publish_batch<B: AsRef<[u8]>>(
        &self,
        link: &str,
        bodies: impl IntoIterator<Item = B>,
    ) -> impl Future<Output = Result<Vec<Published>, PublishError>> + Send + 'static {
        let call = self.call(link, queue::publish_batch_request(bodies));
        async move { queue::read_publish_batch_answer(call.await) }
    }

    /// Publishes `value` as JSON on outbound queue link `link`.
    pub fn publish_json<T: Serialize + ?Sized>(
        &self,
        link: &str,
        value: &T,
    ) -> impl Future<Output = Result<Published, PublishError>> + Send + 'static {
        let call = self.call(link, queue::publish_json_request(value));
        async move { queue::read_publish_answer(call.await) }
    }

    /// A handle for outbound link `name`.
    pub fn link<'a>(&'a self, name: &'a str) -> Link<'a> {
        Link { cx: self, name }
    }

    /// Completes after `duration`, on the host's timer.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: `sleep` is a host function taking plain data.
        unsafe { (self.host().sleep)(nanos) }
    }

    fn log(&self, level: u32, message: fmt::Arguments<'_>) {
        let text = message.to_string();
        // SAFETY: `ctx` is this instance's host context; the message outlives the call.
        unsafe { (self.host().log)(self.ctx, level, RStr::from_bytes(text.as_bytes())) }
    }

    /// Logs `message` at ERROR, attributed to this tier and replica.
    pub fn error(&self, message: impl fmt::Display) {
        self.log(log_level::ERROR, format_args!("{message}"));
    }

    /// Logs `message` at WARN, attributed to this tier and replica.
    pub fn warn(&self, message: impl fmt::Display) {
        self.log(log_level::WARN, format_args!("{message}"));
    }

    /// Logs a line a program wrote to its standard error: at WARN,
    /// attributed to this tier and replica, and marked as the program's
    /// stderr (the dashboard and `orchestrator logs` show it apart).
    pub fn program_stderr(&self, line: impl fmt::Display) {
        self.log(log_level::WARN | log_level::STDERR, format_args!("{line}"));
    }

    /// Logs a line a program wrote to its standard error at `level` (one of
    /// [`log_level`](crate::abi::log_level)'s), for programs whose lines say
    /// their own severity (PostgreSQL writes `LOG:` and `ERROR:` alike to
    /// stderr). Marked as the program's stderr, like [`Self::program_stderr`].
    pub fn program_stderr_at(&self, level: u32, line: impl fmt::Display) {
        self.log(level | log_level::STDERR, format_args!("{line}"));
    }

    /// Logs `message` at INFO, attributed to this tier and replica.
    pub fn info(&self, message: impl fmt::Display) {
        self.log(log_level::INFO, format_args!("{message}"));
    }

    /// Logs `message` at DEBUG, attributed to this tier and replica.
    pub fn debug(&self, message: impl fmt::Display) {
        self.log(log_level::DEBUG, format_args!("{message}"));
    }
}

/// An outbound link, named as the caller sees it: [`Context::link`].
///
/// ```
/// use plugin_api::prelude::*;
/// use plugin_api::testing::TestHost;
///
/// #[derive(Deserialize)]
/// #[serde(crate = "plugin_api::serde")]
/// struct Checkout {}
///
/// #[derive(Deserialize)]
/// #[serde(crate = "plugin_api::serde")]
/// struct Price {
///     cents: u64,
/// }
///
/// impl Plugin for Checkout {
///     async fn handle(&self, _req: Request, cx: Context) -> Response {
///         // A failed call (timeout, no ready replica…) is a `LinkError`.
///         let answer = match cx.link("pricing").post_json("/price", &serde_json::json!({ "sku": "A1" })).await {
///             Ok(answer) => answer,
///             Err(e) => return e.to_response(),
///         };
///         match answer.json_body::<Price>() {
///             Ok(price) => Response::json(&serde_json::json!({ "total": price.cents })),
///             Err(e) => Response::error(StatusCode::BAD_GATEWAY, &format!("pricing answered: {e}")),
///         }
///     }
/// }
///
/// let host = TestHost::new().link("pricing", |_req| Response::json(&serde_json::json!({ "cents": 250 })));
/// let checkout = host.start::<Checkout>(serde_json::json!({})).unwrap();
/// assert_eq!(checkout.call(Request::get("/")).body, r#"{"total":250}"#);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    cx: &'a Context,
    name: &'a str,
}

impl Link<'_> {
    /// Sends `req` on this link: the target's response, or a [`LinkError`] (timeout, no ready replica, …).
    pub fn call(&self, req: Request) -> impl Future<Output = Result<Response, LinkError>> + Send + 'static {
        self.cx.call(self.name, req)
    }

    /// Sends `GET uri` on this link.
    pub fn get(&self, uri: &str) -> impl Future<Output = Result<Response, LinkError>> + Send + 'static {
        self.call(Request::get(uri))
    }

    /// POSTs `value` as JSON to `uri`.
    pub fn post_json<T: Serialize + ?Sized>(
        &self,
        uri: &str,
        value: &T,
    ) -> impl Future<Output = Result<Response, LinkError>> + Send + 'static {
        self.call(Request::post(uri).with_json(value))
    }
}
