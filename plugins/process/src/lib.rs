//! The built-in `process` plugin: each replica of the tier is an external
//! program, in any language.
//!
//! ```yaml
//! backend:
//!   plugin: process
//!   replicas: 2
//!   config:
//!     command: [go, run, ./examples/go/backend]
//!     workdir: ..                          # relative to the topology file
//!     env: { GREETING: Hello Python! }
//!     readiness: { http: /healthz }        # or { tcp: true } (default), or { exec: [cmd, args] }
//!     liveness: { http: /healthz, interval: 5s, failure_threshold: 3 }
//!     restart: always                      # always (default) | on-failure | never
//!     max_restarts: 5
//!     stop_grace: 10s
//! ```
//!
//! Each replica runs with `PORT` (a free port it must serve HTTP on),
//! `ORCH_TIER`, `ORCH_REPLICA`, the tier's `env:` and the config's `env`, and
//! `ORCH_LINK_<NAME>_URL` for each outbound link: a local listener owned by the
//! orchestrator that balances over the link's target and keeps its address
//! across reloads. Requests to the tier are forwarded over HTTP to ready
//! replicas only.
//!
//! Layout: `config` (what the user writes), `replica` (one program's life:
//! start, probe, restart, stop), `probe`, `forward` (HTTP to the program).

#![deny(unsafe_code)]

mod config;
mod forward;
mod grpc;
mod probe;
mod replica;
pub mod shim;
mod sys;

use std::sync::{Arc, OnceLock};

pub use config::{Process, Recipe, Settings};
pub use forward::{Failure, HttpRequest, HttpResponse};
use plugin_api::prelude::*;
use plugin_api::serde_json;
pub use replica::Replica;
pub use replica::{PROGRAM_PORT_ENV, command_exists, link_var, strip_ansi, tcp_link_vars};
pub use sys::command;

impl Plugin for Process {
    /// REST over HTTP/1.1, and RPC as gRPC over HTTP/2, to the program's `PORT`.
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest, LinkKind::Rpc, LinkKind::Queue, LinkKind::Tcp];

    fn validate(&self, _cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        self.check()
    }

    async fn handle(&self, req: Request, _cx: Context) -> Response {
        match self.replica.get() {
            Some(replica) => replica.forward(req).await,
            None => Response::not_delivered("the replica has not started"),
        }
    }

    /// A delivery is POSTed to the program like any request; a 2xx answer acknowledges it.
    async fn on_message(&self, msg: Message, _cx: Context) -> Result<(), String> {
        let Some(replica) = self.replica.get() else { return Err("the replica has not started".to_owned()) };
        let resp = replica.forward(msg.into_request()).await;
        if resp.status.is_success() {
            return Ok(());
        }
        let body = String::from_utf8_lossy(&resp.body);
        Err(match resp.failure() {
            Some(_) => format!("no answer: {body}"),
            None => format!("the program answered {}: {}", resp.status, body.chars().take(200).collect::<String>()),
        })
    }

    fn is_ready(&self) -> bool {
        self.replica.get().is_some_and(|r| r.is_ready())
    }

    /// Ready once its probe passes; a job (`run: once`) once it exited 0.
    async fn wait_ready(&self, cx: Context) -> Result<(), String> {
        let mut settings = self.parse().map_err(|issues| {
            issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; ")
        })?;
        settings.job = cx.env(RUN_ENV).is_some_and(|r| r == "once");
        let replica = self.replica.get_or_init(|| Replica::start(settings, cx));
        replica.wait_ready().await
    }

    fn status(&self) -> serde_json::Value {
        self.replica.get().map_or(serde_json::Value::Null, |r| r.report())
    }

    async fn stop(&self, _cx: Context) {
        if let Some(replica) = self.replica.get() {
            replica.stop().await;
        }
    }
}

impl Process {
    /// The port this replica's program serves on, once it was started.
    pub fn port(&self) -> Option<u16> {
        self.replica.get().map(|r| r.port())
    }

    /// This replica's program, to send REST requests to in hyper's types:
    /// for a host this plugin is linked into, which would otherwise copy a
    /// request into the plugin API's types and the answer back out.
    /// `None` until the replica has started.
    pub fn http(&self) -> Option<Http> {
        self.replica.get().map(|replica| Http(replica.clone()))
    }
}

/// A tier whose replica is a server a TCP link connects to, with what a
/// caller needs to use it (a store's connection string).
pub trait Server {
    /// The port the replica's program serves on, once started.
    fn port(&self) -> Option<u16>;
    /// What a caller connects with when it reaches this server at `addr`
    /// (`host:port`): a connection string with credentials, for a store.
    fn connection_url(&self, _addr: &str) -> Option<String> {
        None
    }
}

impl Server for Process {
    fn port(&self) -> Option<u16> {
        Process::port(self)
    }
}

/// A replica's program, as [`Process::http`] gives it.
#[derive(Debug, Clone)]
pub struct Http(Arc<Replica>);

impl Http {
    /// What [`Plugin::handle`] does with a REST request (not gRPC): sends it
    /// to the program if the replica is ready, and answers what the program
    /// answered, without the headers that framed it on its connection.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, Failure> {
        self.0.forward_http(req).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The supervising task holds the replica too: tell it to end, so that
        // no program outlives its instance.
        if let Some(replica) = self.replica.get() {
            replica.abandon();
        }
    }
}

/// The environment variable by which the host tells a replica it is a job
/// (the tier's `run: once`).
pub const RUN_ENV: &str = "ORCH_RUN";

/// Shared, started on first use (`wait_ready`, which the host calls before
/// routing anything to the instance).
pub(crate) type Started = OnceLock<Arc<Replica>>;

plugin_api::declare_plugin!(Process);
