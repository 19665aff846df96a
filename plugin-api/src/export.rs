//! The glue [`export_plugin!`](crate::export_plugin) generates calls into:
//! `extern "C"` shims that adapt a [`Plugin`] to the ABI. Every shim catches
//! panics, so none unwinds into the host.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use http::StatusCode;

use crate::abi::{HostVTable, RBuf, RStr, RawRequest, RawResponse};
use crate::{ConfigIssue, Context, Plugin, Request, Response, ValidateContext};

struct Instance<P> {
    plugin: P,
    cx: Context,
}

/// Text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Deserializes a plugin from its configuration, with the path of the first error.
pub fn parse_config<P: Plugin>(config: &[u8]) -> Result<P, ConfigIssue> {
    let mut de = serde_json::Deserializer::from_slice(config);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        // serde_json appends " at line 1 column N" of the JSON text: meaningless to the user.
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        ConfigIssue::new(path, message)
    })
}

/// # Safety
/// `config` and `links` must be valid for reads during the call.
pub unsafe extern "C" fn validate<P: Plugin>(config: RStr, links: RStr) -> RBuf {
    let result = catch_unwind(|| {
        // SAFETY: the caller guarantees both slices are readable.
        let (config, links) = unsafe { (config.as_bytes(), links.to_string_lossy()) };
        let cx = ValidateContext::new(links.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect());
        let issues = match parse_config::<P>(config) {
            Ok(plugin) => plugin.validate(&cx).err().unwrap_or_default(),
            Err(issue) => vec![issue],
        };
        serde_json::to_vec(&issues).unwrap_or_default()
    });
    let json = result.unwrap_or_else(|payload| {
        let issue = ConfigIssue::new("", format!("the plugin panicked while validating: {}", panic_message(&*payload)));
        serde_json::to_vec(&[issue]).unwrap_or_default()
    });
    RBuf::from_vec(json)
}

/// # Safety
/// `config` must be readable; `host` and `host_ctx` must satisfy
/// [`Context::from_raw`]; `out` must be writable.
pub unsafe extern "C" fn create<P: Plugin>(
    config: RStr,
    host: *const HostVTable,
    host_ctx: *const c_void,
    out: *mut *const c_void,
) -> RBuf {
    let result = catch_unwind(|| {
        // SAFETY: the caller guarantees `config` is readable.
        let plugin = parse_config::<P>(unsafe { config.as_bytes() }).map_err(|issue| {
            if issue.path.is_empty() { issue.message } else { format!("{}: {}", issue.path, issue.message) }
        })?;
        // SAFETY: forwarded from the caller.
        let cx = unsafe { Context::from_raw(host, host_ctx) };
        Ok::<_, String>(Box::into_raw(Box::new(Instance { plugin, cx })))
    });
    match result {
        Ok(Ok(instance)) => {
            // SAFETY: the caller guarantees `out` is writable.
            unsafe { *out = instance.cast::<c_void>() };
            RBuf::empty()
        }
        Ok(Err(message)) => RBuf::from_vec(message.into_bytes()),
        Err(payload) => {
            RBuf::from_vec(format!("the plugin panicked while starting: {}", panic_message(&*payload)).into_bytes())
        }
    }
}

/// What [`native_handle`] returns: the handler's future, as Rust.
pub type NativeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = RawResponse> + Send + 'static>>;

/// The signature of [`native_handle`].
pub type NativeHandle = unsafe fn(*const c_void, *const RawRequest) -> NativeFuture;

/// # Safety
/// `instance` must come from [`create`] with the same `P`, and must not be
/// destroyed before the returned future is dropped (the ABI contract: the host
/// keeps an instance alive while any of its calls is in flight); `req` must be
/// readable during the call.
pub unsafe extern "C" fn handle<P: Plugin>(instance: *const c_void, req: *const RawRequest) -> FfiFuture<RawResponse> {
    // SAFETY: the caller's guarantees.
    unsafe { start_handle::<P>(instance, req) }.into_ffi()
}

/// [`handle`] for a plugin linked into the host itself (a built-in): the
/// same future, without the C ABI's wrapping. Across the C ABI every waker a
/// future below the boundary keeps is boxed anew, at every boundary above it.
///
/// # Safety
/// As for [`handle`]; and the caller must be the binary `P` is linked into.
pub unsafe fn native_handle<P: Plugin>(instance: *const c_void, req: *const RawRequest) -> NativeFuture {
    // SAFETY: the caller's guarantees.
    Box::pin(unsafe { start_handle::<P>(instance, req) })
}

/// # Safety
/// As for [`handle`].
unsafe fn start_handle<P: Plugin>(
    instance: *const c_void,
    req: *const RawRequest,
) -> impl std::future::Future<Output = RawResponse> + Send + 'static {
    let started = catch_unwind(|| {
        // SAFETY: the caller guarantees that the instance outlives the future
        // built here, so borrowing it for 'static is sound; `req` is readable now.
        let (instance, raw): (&'static Instance<P>, _) = unsafe { (&*instance.cast::<Instance<P>>(), &*req) };
        // SAFETY: as above.
        let request = unsafe { Request::from_raw(raw) };
        request.map(|request| {
            let trace = crate::trace::Trace::of(&request.headers);
            let rpc = request.rpc_method().is_some();
            // Deliveries are boxed: their futures are several times a
            // request's, and the enum is as big as its biggest variant,
            // copied whole each time it moves on its way into a box.
            let handling = if crate::queue::Message::is_delivery(&request) {
                let msg = crate::queue::Message::from_delivery(request);
                let delivery = instance.plugin.on_message(msg, instance.cx.clone());
                Either::Left(Either::Left(Box::pin(async move { crate::queue::delivery_response(delivery.await) })))
            } else if request.headers.find_raw(crate::queue::BATCH).is_some() {
                Either::Left(Either::Right(Box::pin(deliver_batch(&instance.plugin, &instance.cx, request))))
            } else {
                Either::Right(instance.plugin.handle(request, instance.cx.clone()))
            };
            (crate::trace::WithTrace::new(handling, trace), rpc)
        })
    });
    let ready = |response: Response| Either::Right(std::future::ready(response.into_raw()));
    match started {
        Ok(Ok((handling, rpc))) => Either::Left(async move {
            match AssertUnwindSafe(handling).catch_unwind().await {
                Ok(response) => response.into_raw(),
                Err(payload) => {
                    let why = format!("the handler panicked: {}", panic_message(&*payload));
                    if rpc {
                        Response::rpc_error(crate::rpc::Code::Internal, &why).into_raw()
                    } else {
                        Response::error(StatusCode::INTERNAL_SERVER_ERROR, &why).into_raw()
                    }
                }
            }
        }),
        Ok(Err(reason)) => ready(Response::error(StatusCode::BAD_REQUEST, &reason)),
        Err(payload) => ready(Response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the plugin panicked: {}", panic_message(&*payload)),
        )),
    }
}

/// Hands each message of a delivered batch to [`Plugin::on_message`], one
/// after the other, and answers which failed: `200 {"failed": [[index, reason], …]}`.
async fn deliver_batch<P: Plugin>(plugin: &P, cx: &Context, req: Request) -> Response {
    let topic = req.headers.find_raw(crate::queue::TOPIC).map(|t| String::from_utf8_lossy(t).into_owned());
    let (topic, path) = (topic.unwrap_or_default(), req.uri);
    let body = req.body.into_bytes();
    let mut failed = Vec::new();
    for (i, entry) in crate::queue::batch_entries(&body).enumerate() {
        let (headers, message) = match entry {
            Ok(entry) => entry,
            Err(why) => return Response::error(StatusCode::BAD_REQUEST, &why),
        };
        let msg = crate::queue::Message::from_batch_entry(&topic, &path, headers, message);
        let trace = crate::trace::Trace::of(&msg.headers);
        let handling = crate::trace::WithTrace::new(plugin.on_message(msg, cx.clone()), trace);
        match AssertUnwindSafe(handling).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => failed.push((i, reason)),
            Err(payload) => failed.push((i, format!("the handler panicked: {}", panic_message(&*payload)))),
        }
    }
    Response::json(&serde_json::json!({ "failed": failed }))
}

/// The plugin value behind an instance that [`create`] made: for a host `P`
/// is linked into (a built-in), which may then call the plugin's own Rust
/// methods beyond the ABI's.
///
/// # Safety
/// `instance` must come from [`create`] with the same `P`, and must not be
/// destroyed while the returned reference is used; the caller must be the
/// binary `P` is linked into.
pub unsafe fn plugin_of<'a, P: Plugin>(instance: *const c_void) -> &'a P {
    // SAFETY: the caller's guarantees.
    unsafe { &(*instance.cast::<Instance<P>>()).plugin }
}

/// # Safety
/// `instance` must come from [`create`] with the same `P` and be alive.
pub unsafe extern "C" fn is_ready<P: Plugin>(instance: *const c_void) -> u32 {
    // SAFETY: guaranteed by the caller.
    let instance = unsafe { &*instance.cast::<Instance<P>>() };
    catch_unwind(AssertUnwindSafe(|| u32::from(instance.plugin.is_ready()))).unwrap_or(0)
}

/// # Safety
/// As for [`handle`]: the instance outlives the returned future.
pub unsafe extern "C" fn wait_ready<P: Plugin>(instance: *const c_void) -> FfiFuture<RBuf> {
    // SAFETY: guaranteed by the caller.
    let instance: &'static Instance<P> = unsafe { &*instance.cast::<Instance<P>>() };
    match catch_unwind(AssertUnwindSafe(|| instance.plugin.wait_ready(instance.cx.clone()))) {
        Ok(waiting) => async move {
            match AssertUnwindSafe(waiting).catch_unwind().await {
                Ok(Ok(())) => RBuf::empty(),
                Ok(Err(reason)) => RBuf::from_vec(reason.into_bytes()),
                Err(payload) => {
                    RBuf::from_vec(format!("the plugin panicked: {}", panic_message(&*payload)).into_bytes())
                }
            }
        }
        .into_ffi(),
        Err(payload) => std::future::ready(RBuf::from_vec(
            format!("the plugin panicked: {}", panic_message(&*payload)).into_bytes(),
        ))
        .into_ffi(),
    }
}

/// # Safety
/// `instance` must come from [`create`] with the same `P` and be alive.
pub unsafe extern "C" fn status<P: Plugin>(instance: *const c_void) -> RBuf {
    // SAFETY: guaranteed by the caller.
    let instance = unsafe { &*instance.cast::<Instance<P>>() };
    let json = catch_unwind(AssertUnwindSafe(|| serde_json::to_vec(&instance.plugin.status()).unwrap_or_default()));
    RBuf::from_vec(json.unwrap_or_default())
}

/// # Safety
/// As for [`handle`]: the instance outlives the returned future.
pub unsafe extern "C" fn stop<P: Plugin>(instance: *const c_void) -> FfiFuture<()> {
    // SAFETY: guaranteed by the caller.
    let instance: &'static Instance<P> = unsafe { &*instance.cast::<Instance<P>>() };
    match catch_unwind(AssertUnwindSafe(|| instance.plugin.stop(instance.cx.clone()))) {
        Ok(stopping) => async move {
            let _ = AssertUnwindSafe(stopping).catch_unwind().await;
        }
        .into_ffi(),
        Err(_) => std::future::ready(()).into_ffi(),
    }
}

/// # Safety
/// `instance` must come from [`create`] with the same `P`, and no call on it may
/// be running or follow.
pub unsafe extern "C" fn destroy<P: Plugin>(instance: *const c_void) {
    // A panic in a plugin's Drop must not unwind into the host; the instance is
    // gone either way.
    let _ = catch_unwind(|| {
        // SAFETY: the caller guarantees `instance` came from `create::<P>` and is dropped once.
        drop(unsafe { Box::from_raw(instance.cast::<Instance<P>>().cast_mut()) });
    });
}

/// Exports a [`Plugin`](crate::Plugin) type from a `cdylib`.
///
/// ```ignore
/// plugin_api::export_plugin!(Hello);                  // named after the library crate
/// plugin_api::export_plugin!(Hello, name = "greeter"); // or named explicitly
/// ```
///
/// The host looks for plugin `NAME` in the file `libNAME.so`, so by default
/// the plugin's name is the library crate's name (`[lib] name`). An explicit
/// name must match the file the library is installed as.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, name = env!("CARGO_CRATE_NAME"));
    };
    ($plugin:ty, name = $name:expr) => {
        $crate::declare_plugin!($plugin, name = $name);

        /// The entry point the orchestrator looks up.
        #[unsafe(no_mangle)]
        pub extern "C" fn orchestrator_plugin_declaration() -> *const $crate::abi::PluginDecl {
            &__ORCHESTRATOR_PLUGIN_DECL
        }
    };
}

/// Declares a plugin's ABI table without exporting a symbol: what built-in
/// plugins linked into the host use (they are reached through
/// `plugin_declaration()`), and what [`export_plugin!`] builds on.
#[macro_export]
macro_rules! declare_plugin {
    ($plugin:ty) => {
        $crate::declare_plugin!($plugin, name = env!("CARGO_CRATE_NAME"));
    };
    ($plugin:ty, name = $name:expr) => {
        static __ORCHESTRATOR_PLUGIN_DECL: $crate::abi::PluginDecl = $crate::abi::PluginDecl {
            abi_version: $crate::abi::ABI_VERSION,
            api_version: $crate::abi::RStr::from_static($crate::API_VERSION),
            name: $crate::abi::RStr::from_static($name),
            version: $crate::abi::RStr::from_static(env!("CARGO_PKG_VERSION")),
            serves: $crate::LinkKind::bits(<$plugin as $crate::Plugin>::SERVES),
            validate: $crate::export::validate::<$plugin>,
            create: $crate::export::create::<$plugin>,
            handle: $crate::export::handle::<$plugin>,
            is_ready: $crate::export::is_ready::<$plugin>,
            wait_ready: $crate::export::wait_ready::<$plugin>,
            status: $crate::export::status::<$plugin>,
            stop: $crate::export::stop::<$plugin>,
            destroy: $crate::export::destroy::<$plugin>,
        };

        /// This plugin's ABI declaration.
        pub fn plugin_declaration() -> &'static $crate::abi::PluginDecl {
            &__ORCHESTRATOR_PLUGIN_DECL
        }

        /// The declaration's `handle`, without the C ABI: for a host this
        /// plugin is linked into.
        pub fn plugin_native_handle() -> $crate::export::NativeHandle {
            $crate::export::native_handle::<$plugin>
        }
    };
}
