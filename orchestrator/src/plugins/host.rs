//! The services the host offers plugin instances: the `HostVTable`.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::abi::{
    ABI_VERSION, HostVTable, InstanceInfo, RBuf, RStr, RawLinkResult, RawRequest, RawResponse, link_code, log_level,
};
use plugin_api::{LinkError, LinkErrorKind};

use super::BorrowedRequest;
use crate::links::{self, LinkTable};
use crate::topology::TierId;

/// What the host knows about one plugin instance; the plugin holds a pointer
/// to it, kept alive by the `Instance`.
pub struct HostCtx {
    pub tier: TierId,
    pub replica: u32,
    pub links: Arc<LinkTable>,
    pub env: BTreeMap<String, String>,
    /// The topology file's directory.
    pub base_dir: String,
    /// The tier's outbound links in the topology the instance was made for
    /// (its link table is filled only when that topology is committed).
    pub link_names: Vec<plugin_api::LinkInfo>,
    /// The span every log line of this instance is attributed to.
    pub span: tracing::Span,
    /// A coloured `tier.replica |` put before each line the instance logs,
    /// when logs go to a terminal (like Compose's per-service colours).
    pub tag: Option<String>,
}

impl HostCtx {
    pub fn new(
        tier: TierId,
        replica: u32,
        links: Arc<LinkTable>,
        env: BTreeMap<String, String>,
        base_dir: &std::path::Path,
        link_names: Vec<plugin_api::LinkInfo>,
    ) -> Self {
        let span = tracing::info_span!("tier", tier = %tier, replica);
        Self { tier, replica, links, env, base_dir: base_dir.display().to_string(), link_names, span, tag: None }
    }

    /// Tags the instance's log lines with its tier and replica in ANSI colour
    /// number `color` (30–37).
    pub fn with_color(mut self, color: Option<u8>) -> Self {
        self.tag = color.map(|c| format!("\x1b[{c}m{}.{} |\x1b[0m", self.tier, self.replica));
        self
    }
}

pub static VTABLE: HostVTable =
    HostVTable { abi_version: ABI_VERSION, call_link, sleep, log, instance, env, env_all, links, link_url };

fn empty_response() -> RawResponse {
    RawResponse { status: 0, headers: RBuf::empty(), body: RBuf::empty() }
}

fn link_result(result: Result<RawResponse, LinkError>) -> RawLinkResult {
    match result {
        Ok(response) => RawLinkResult { code: link_code::OK, response, message: RBuf::empty() },
        Err(e) => RawLinkResult {
            code: e.code(),
            response: empty_response(),
            message: RBuf::from_vec(e.message.into_bytes()),
        },
    }
}

fn failed(error: LinkError) -> FfiFuture<RawLinkResult> {
    std::future::ready(link_result(Err(error))).into_ffi()
}

unsafe extern "C" fn call_link(
    host_ctx: *const c_void,
    link: RStr,
    req: *const RawRequest,
) -> FfiFuture<RawLinkResult> {
    let started = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `host_ctx` is the HostCtx this host gave the instance, alive while
        // it runs; `link` and `req` are readable for this synchronous call.
        let (ctx, name, req) =
            unsafe { (&*host_ctx.cast::<HostCtx>(), link.as_bytes(), BorrowedRequest::from_raw(&*req)) };
        let name = String::from_utf8_lossy(name);
        match ctx.links.get(&name) {
            Some(route) => {
                let call = links::call(&route, &req);
                async move { link_result(call.await) }.into_ffi()
            }
            None => failed(LinkError::new(
                LinkErrorKind::UnknownLink,
                format!("tier `{}` has no outbound link named `{name}`", ctx.tier),
            )),
        }
    }));
    started.unwrap_or_else(|_| failed(LinkError::new(LinkErrorKind::Upstream, "the host failed to start the call")))
}

unsafe extern "C" fn sleep(nanos: u64) -> FfiFuture<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::time::sleep(Duration::from_nanos(nanos)).into_ffi(),
        Err(_) => {
            tracing::error!("A plugin asked for a timer outside the host's runtime; it completes at once.");
            std::future::ready(()).into_ffi()
        }
    }
}

unsafe extern "C" fn log(host_ctx: *const c_void, level: u32, message: RStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in `call_link`.
        let (ctx, mut message) = unsafe { (&*host_ctx.cast::<HostCtx>(), message.to_string_lossy()) };
        if let Some(tag) = &ctx.tag {
            message = format!("{tag} {message}");
        }
        let span = &ctx.span;
        // Logged while handling a traced call: the line names the trace.
        let trace = crate::traces::current().map(|t| t.to_string());
        let stderr = level & log_level::STDERR != 0;
        macro_rules! log {
            ($level:ident) => {
                match (&trace, stderr) {
                    (Some(trace_id), false) => tracing::$level!(parent: span, trace_id = %trace_id, "{message}"),
                    (Some(trace_id), true) => {
                        tracing::$level!(parent: span, trace_id = %trace_id, stream = "stderr", "{message}")
                    }
                    (None, false) => tracing::$level!(parent: span, "{message}"),
                    (None, true) => tracing::$level!(parent: span, stream = "stderr", "{message}"),
                }
            };
        }
        match level & log_level::LEVEL_MASK {
            log_level::ERROR => log!(error),
            log_level::WARN => log!(warn),
            log_level::INFO => log!(info),
            log_level::DEBUG => log!(debug),
            _ => log!(trace),
        }
    }));
}

unsafe extern "C" fn instance(host_ctx: *const c_void) -> InstanceInfo {
    // SAFETY: as in `call_link`; the tier name lives as long as the context.
    let ctx = unsafe { &*host_ctx.cast::<HostCtx>() };
    InstanceInfo {
        tier: RStr::from_bytes(ctx.tier.as_str().as_bytes()),
        replica: ctx.replica,
        base_dir: RStr::from_bytes(ctx.base_dir.as_bytes()),
    }
}

unsafe extern "C" fn env(host_ctx: *const c_void, key: RStr) -> RStr {
    // SAFETY: as in `call_link`; values live as long as the context.
    let (ctx, key) = unsafe { (&*host_ctx.cast::<HostCtx>(), key.as_bytes()) };
    let value = std::str::from_utf8(key).ok().and_then(|k| ctx.env.get(k));
    match value {
        Some(v) => RStr::from_bytes(v.as_bytes()),
        None => RStr { ptr: std::ptr::null(), len: 0 },
    }
}

unsafe extern "C" fn env_all(host_ctx: *const c_void) -> RBuf {
    // SAFETY: as in `call_link`.
    let ctx = unsafe { &*host_ctx.cast::<HostCtx>() };
    RBuf::from_vec(serde_json::to_vec(&ctx.env).unwrap_or_default())
}

unsafe extern "C" fn links(host_ctx: *const c_void) -> RBuf {
    // SAFETY: as in `call_link`.
    let ctx = unsafe { &*host_ctx.cast::<HostCtx>() };
    let lines: Vec<String> = ctx.link_names.iter().map(plugin_api::LinkInfo::to_line).collect();
    RBuf::from_vec(lines.join("\n").into_bytes())
}

unsafe extern "C" fn link_url(host_ctx: *const c_void, link: RStr) -> RBuf {
    let url = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in `call_link`.
        let (ctx, name) = unsafe { (&*host_ctx.cast::<HostCtx>(), link.to_string_lossy()) };
        let kind = ctx.link_names.iter().find(|l| l.name == name).map(|l| l.kind)?;
        match ctx.links.proxy_url(&name, kind) {
            // A TCP link to a store: its connection string, at the link's address.
            Ok(Some(url)) if kind == plugin_api::LinkKind::Tcp => {
                Some(ctx.links.connection_url(&name, &url).unwrap_or(url))
            }
            Ok(url) => url,
            Err(e) => {
                tracing::error!(parent: &ctx.span, link = %name, error = %e, "Cannot open a local listener for the link.");
                None
            }
        }
    }));
    match url {
        Ok(Some(url)) => RBuf::from_vec(url.into_bytes()),
        _ => RBuf::empty(),
    }
}
