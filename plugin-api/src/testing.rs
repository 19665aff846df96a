//! Test a plugin without the orchestrator.
//!
//! [`TestHost`] drives a plugin through the same ABI the orchestrator uses
//! (the `extern "C"` shims, FFI futures, owned buffers), with outbound links
//! answered by closures you provide:
//!
//! ```
//! use plugin_api::prelude::*;
//! use plugin_api::testing::TestHost;
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "plugin_api::serde")]
//! struct Echo {}
//!
//! impl Plugin for Echo {
//!     async fn handle(&self, req: Request, cx: Context) -> Response {
//!         match cx.link("upstream").call(req).await {
//!             Ok(resp) => resp,
//!             Err(e) => e.to_response(),
//!         }
//!     }
//! }
//!
//! let host = TestHost::new().link("upstream", |req| Response::text(req.path().to_owned()));
//! let echo = host.start::<Echo>(serde_json::json!({})).unwrap();
//! assert_eq!(echo.call(Request::get("/hi")).body, "/hi");
//! ```

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use async_ffi::{FfiFuture, FutureExt as _};

use crate::abi::{
    ABI_VERSION, HostVTable, InstanceInfo, RBuf, RStr, RawLinkResult, RawRequest, RawResponse, link_code,
};
use crate::{ConfigIssue, LinkError, Plugin, Request, Response, export};

type LinkFn = Box<dyn Fn(Request) -> Result<Response, LinkError> + Send + Sync>;

struct HostState {
    links: HashMap<String, LinkFn>,
    logs: Mutex<Vec<String>>,
}

/// A stand-in for the orchestrator in plugin unit tests.
pub struct TestHost {
    state: HostState,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// A host with no links: every outbound call fails with `UnknownLink` until one is added with [`TestHost::link`].
    pub fn new() -> Self {
        Self { state: HostState { links: HashMap::new(), logs: Mutex::new(Vec::new()) } }
    }

    /// Answers outbound link `name` with `f`.
    pub fn link(self, name: &str, f: impl Fn(Request) -> Response + Send + Sync + 'static) -> Self {
        self.link_result(name, move |req| Ok(f(req)))
    }

    /// Answers outbound link `name` with `f`, which may fail like a real link.
    pub fn link_result(
        mut self,
        name: &str,
        f: impl Fn(Request) -> Result<Response, LinkError> + Send + Sync + 'static,
    ) -> Self {
        self.state.links.insert(name.to_owned(), Box::new(f));
        self
    }

    /// Validates `config` for plugin `P` as the orchestrator would, with this
    /// host's links as the tier's outbound links.
    pub fn validate<P: Plugin>(&self, config: serde_json::Value) -> Vec<ConfigIssue> {
        let config = config.to_string();
        let links = self.state.links.keys().cloned().collect::<Vec<_>>().join("\n");
        // SAFETY: both slices outlive the call.
        let out =
            unsafe { export::validate::<P>(RStr::from_bytes(config.as_bytes()), RStr::from_bytes(links.as_bytes())) };
        serde_json::from_slice(out.as_bytes()).unwrap_or_default()
    }

    /// Validates and starts an instance of `P` with `config`.
    pub fn start<P: Plugin>(self, config: serde_json::Value) -> Result<TestInstance<P>, String> {
        let issues = self.validate::<P>(config.clone());
        if !issues.is_empty() {
            let text: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
            return Err(text.join("; "));
        }
        let state = Arc::new(self.state);
        let config = config.to_string();
        let mut instance: *const c_void = std::ptr::null();
        // SAFETY: the vtable is static, the context is kept alive by the
        // returned TestInstance, and `instance` is writable.
        let err = unsafe {
            export::create::<P>(
                RStr::from_bytes(config.as_bytes()),
                &TEST_VTABLE,
                Arc::as_ptr(&state).cast(),
                &mut instance,
            )
        };
        if !err.is_empty() {
            return Err(String::from_utf8_lossy(err.as_bytes()).into_owned());
        }
        Ok(TestInstance { instance, state, _plugin: std::marker::PhantomData })
    }
}

/// A running plugin instance under test.
pub struct TestInstance<P: Plugin> {
    instance: *const c_void,
    state: Arc<HostState>,
    _plugin: std::marker::PhantomData<P>,
}

// SAFETY: the pointer is to the plugin's instance, which is `Send + Sync`
// because `P` is (the `Plugin` bounds); the host state is `Send + Sync`.
unsafe impl<P: Plugin> Send for TestInstance<P> {}
// SAFETY: as above.
unsafe impl<P: Plugin> Sync for TestInstance<P> {}

impl<P: Plugin> TestInstance<P> {
    /// Sends `req` through the ABI and waits for the response.
    pub fn call(&self, req: Request) -> Response {
        block_on(self.call_async(req))
    }

    /// Sends `req` through the ABI. The future borrows the instance, which
    /// must outlive every call (as the orchestrator guarantees).
    pub fn call_async(&self, req: Request) -> impl std::future::Future<Output = Response> + Send + '_ {
        // SAFETY: `instance` is live until drop, and the returned future borrows
        // `self`, so it cannot outlive it; `raw` outlives the call.
        let fut = req.with_raw(|raw| unsafe { export::handle::<P>(self.instance, raw) });
        async move { Response::from_raw(fut.await) }
    }

    /// The instance's status, as `/admin/status` shows it.
    pub fn status(&self) -> serde_json::Value {
        // SAFETY: `instance` is live until drop.
        let json = unsafe { export::status::<P>(self.instance) };
        serde_json::from_slice(json.as_bytes()).unwrap_or(serde_json::Value::Null)
    }

    /// Lines the plugin logged, as `LEVEL message`.
    pub fn logs(&self) -> Vec<String> {
        self.state.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl<P: Plugin> Drop for TestInstance<P> {
    fn drop(&mut self) {
        // SAFETY: made by create::<P>, destroyed once, no call outlives `self`
        // because `call` blocks (and async callers hold `&self`).
        unsafe { export::destroy::<P>(self.instance) }
    }
}

/// A context backed by a host with no links, for calling a plugin's handler
/// directly (benchmarks, or unit tests that bypass the ABI).
pub fn detached_context() -> crate::Context {
    static EMPTY: std::sync::OnceLock<HostState> = std::sync::OnceLock::new();
    let state = EMPTY.get_or_init(|| HostState { links: HashMap::new(), logs: Mutex::new(Vec::new()) });
    // SAFETY: the vtable and the state are static.
    unsafe { crate::Context::from_raw(&TEST_VTABLE, std::ptr::from_ref(state).cast()) }
}

/// Runs a future to completion on the current thread.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    pollster::block_on(fut)
}

static TEST_VTABLE: HostVTable =
    HostVTable { abi_version: ABI_VERSION, call_link, sleep, log, instance, env, env_all, links, link_url };

unsafe extern "C" fn call_link(
    host_ctx: *const c_void,
    link: RStr,
    req: *const RawRequest,
) -> FfiFuture<RawLinkResult> {
    // SAFETY: host_ctx is the HostState a TestInstance keeps alive; link and req are readable now.
    let (state, name, req) =
        unsafe { (&*host_ctx.cast::<HostState>(), link.to_string_lossy(), Request::from_raw(&*req)) };
    let result = match (state.links.get(&name), req) {
        (Some(f), Ok(req)) => f(req),
        (None, _) => Err(LinkError::new(crate::LinkErrorKind::UnknownLink, format!("no outbound link named `{name}`"))),
        (_, Err(e)) => Err(LinkError::new(crate::LinkErrorKind::Upstream, e)),
    };
    let raw = match result {
        Ok(resp) => RawLinkResult { code: link_code::OK, response: resp.into_raw(), message: RBuf::empty() },
        Err(e) => RawLinkResult {
            code: e.code(),
            response: RawResponse { status: 0, headers: RBuf::empty(), body: RBuf::empty() },
            message: RBuf::from_vec(e.message.into_bytes()),
        },
    };
    std::future::ready(raw).into_ffi()
}

unsafe extern "C" fn sleep(nanos: u64) -> FfiFuture<()> {
    let shared = Arc::new(Mutex::new((false, None::<Waker>)));
    let timer = shared.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_nanos(nanos));
        if let Ok(mut s) = timer.lock() {
            s.0 = true;
            if let Some(w) = s.1.take() {
                w.wake();
            }
        }
    });
    std::future::poll_fn(move |cx| match shared.lock() {
        Ok(mut s) if !s.0 => {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
        _ => Poll::Ready(()),
    })
    .into_ffi()
}

unsafe extern "C" fn log(host_ctx: *const c_void, level: u32, message: RStr) {
    // SAFETY: host_ctx is the HostState a TestInstance keeps alive; message is readable now.
    let (state, message) = unsafe { (&*host_ctx.cast::<HostState>(), message.to_string_lossy()) };
    let stderr = if level & crate::abi::log_level::STDERR != 0 { " stderr" } else { "" };
    let level = match level & crate::abi::log_level::LEVEL_MASK {
        1 => "ERROR",
        2 => "WARN",
        3 => "INFO",
        4 => "DEBUG",
        _ => "TRACE",
    };
    if let Ok(mut logs) = state.logs.lock() {
        logs.push(format!("{level}{stderr} {message}"));
    }
}

unsafe extern "C" fn instance(_host_ctx: *const c_void) -> InstanceInfo {
    InstanceInfo { tier: RStr::from_static("test"), replica: 0, base_dir: RStr::from_static(".") }
}

unsafe extern "C" fn env_all(_host_ctx: *const c_void) -> RBuf {
    RBuf::from_vec(b"{}".to_vec())
}

unsafe extern "C" fn links(host_ctx: *const c_void) -> RBuf {
    // SAFETY: host_ctx is the HostState a TestInstance keeps alive.
    let state = unsafe { &*host_ctx.cast::<HostState>() };
    RBuf::from_vec(state.links.keys().map(|k| format!("{k}\trest")).collect::<Vec<_>>().join("\n").into_bytes())
}

unsafe extern "C" fn link_url(_host_ctx: *const c_void, _link: RStr) -> RBuf {
    RBuf::empty()
}

unsafe extern "C" fn env(_host_ctx: *const c_void, _key: RStr) -> RStr {
    RStr { ptr: std::ptr::null(), len: 0 }
}
