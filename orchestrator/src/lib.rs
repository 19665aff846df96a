//! orchestrator: run a multi-tier application declared in one YAML file.
//!
//! Layout:
//! - [`alloc`] — the global allocator (mimalloc) and its settings;
//! - [`topology`] — the topology language: parse YAML into a located tree,
//!   validate it into typed specs (every error located), graph and schema;
//! - [`plugins`] — the plugin registry (built-ins and `cdylib` libraries), the
//!   loader (permission checks, a sealed in-memory snapshot of each library,
//!   a probe in a child process, then the ABI checks), and the host services
//!   plugins call (all the host's `unsafe` lives here);
//! - [`serve`] — the serving substrate: the worker threads that serve
//!   connections (one single-threaded runtime each; a connection stays on
//!   one) within one connection budget (`admission`), per-worker timers,
//!   drain, and HTTP listeners (HTTP/1.1, h2c, or both) that hand requests
//!   to a handler without knowing what it routes to;
//! - [`links`] — outbound link tables, endpoints of ready replicas, round-robin
//!   balancing, timeouts and retries, and the local listeners that let
//!   programs outside the process call a link (on `serve`);
//! - [`runtime`] — the supervisor that owns running tiers and applies each
//!   topology as a plan (prepare, commit, drain), the handlers of tier
//!   listeners and of the peer listener (on `links` and `serve`), status
//!   snapshots, the state files by which the CLI finds a running
//!   orchestrator (`running`), and the run loop: signals, reloads, graceful
//!   shutdown;
//! - [`logging`] — the log formats: text, or JSON lines (`--log-format json`),
//!   and the ring of recent lines per tier and replica that the dashboard
//!   and `orchestrator logs` read;
//! - [`metrics`] — what the request path records (per link, per listener),
//!   in per-thread shards merged when scraped;
//! - [`reload`] — the file watcher (topology and plugin libraries) with debounce;
//! - [`traces`] — OpenTelemetry spans of listeners, link calls and the
//!   calls tiers handle, exported over OTLP off the request path;
//! - [`admin`] — the admin HTTP API: status (with waits on the generation),
//!   readiness, reload, restart, Prometheus metrics, the dashboard and what
//!   it reads (the overview with live figures, events, logs); its guard
//!   (Host, cross-site requests, the bearer token) and its own limits;
//! - [`cli`] — the commands that call it: `status`, `logs`, `restart`.
//!
//! The pipeline runs one way: file → `topology::load` → `Topology` →
//! `topology::diff` against the running one → `Plan` → `Supervisor` applies it.
//! Every trigger (start, file change, plugin change, SIGHUP, admin API) goes
//! through `Supervisor::reload`.

// Only `plugins`, the host's side of the C ABI, and `alloc`, the allocator's
// settings, may use `unsafe`.
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
#[allow(unsafe_code)]
pub mod alloc;
pub mod cli;
pub mod export;
pub mod links;
pub mod logging;
pub mod metrics;
#[allow(unsafe_code)]
pub mod plugins;
pub mod reload;
pub mod runtime;
pub mod serve;
pub mod topology;
pub mod traces;
