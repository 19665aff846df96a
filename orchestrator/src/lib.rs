//! orchestrator: run a multi-tier application declared in one YAML file.
//!
//! Layout:
//! - [`topology`] — the topology language: parse YAML into a located tree,
//!   validate it into typed specs (every error located), graph and schema;
//! - [`plugins`] — the plugin registry (built-ins and `cdylib` libraries), the
//!   loader with its ABI checks, and the host services plugins call (all the
//!   host's `unsafe` lives here);
//! - [`links`] — outbound link tables, endpoints of ready replicas, round-robin
//!   balancing, timeouts and retries;
//! - [`runtime`] — the supervisor that owns running tiers, tier HTTP listeners,
//!   status snapshots, and the run loop with graceful shutdown;
//! - [`admin`] — the admin HTTP API (status, readiness).
//!
//! The pipeline runs one way: file → `topology::load` → `Topology` →
//! `runtime::Supervisor::start` → tiers serving, links routed.

// Only `plugins`, the host's side of the C ABI, may use `unsafe`.
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod links;
#[allow(unsafe_code)]
pub mod plugins;
pub mod runtime;
pub mod topology;
