//! Everything a tier plugin for the orchestrator depends on.
//!
//! A plugin is a type that implements [`Plugin`] (one required method,
//! [`Plugin::handle`]) and a call to [`export_plugin!`]; build the crate as a
//! `cdylib` and name it in a topology's `plugin:` key.
//!
//! ```ignore
//! use plugin_api::prelude::*;
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "plugin_api::serde", default, deny_unknown_fields)]
//! struct Hello {
//!     greeting: String,
//! }
//!
//! impl Default for Hello {
//!     fn default() -> Self {
//!         Self { greeting: "Hello!".into() }
//!     }
//! }
//!
//! impl Plugin for Hello {
//!     async fn handle(&self, _req: Request, _cx: Context) -> Response {
//!         Response::text(self.greeting.clone())
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! Layout:
//! - [`abi`] — the C ABI: the only types that cross between host and plugin;
//! - `message` — [`Request`] and [`Response`];
//! - `context` — [`Context`], the host's services (outbound links, timers, logs);
//! - `plugin` — the [`Plugin`] trait;
//! - [`export`] — the `extern "C"` shims behind [`export_plugin!`];
//! - [`files`] — reading a file that configures something (a topology, a
//!   secret, a certificate) as the orchestrator does: refused when another
//!   user could have written it;
//! - [`testing`] — [`testing::TestHost`], to unit-test a plugin without the host;
//! - [`rpc`] — RPC calls over links, with gRPC's status codes and deadlines;
//! - [`queue`] — publishing on queue links and receiving deliveries;
//! - `trace` — W3C trace context carried from a handled request to its link calls.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod abi;
mod body;
mod context;
pub mod export;
pub mod files;
mod headers;
mod message;
mod plugin;
pub mod queue;
pub mod rpc;
pub mod testing;
mod trace;
mod types;

pub use body::Body;
pub use bytes::{self, Bytes};
pub use context::{Context, Link};
pub use headers::Headers;
pub use http::{self, HeaderMap, Method, StatusCode};
pub use message::{Failure, Request, Response};
pub use plugin::Plugin;
pub use queue::{Message, PublishError, Published};
pub use types::{ConfigIssue, LinkError, LinkErrorKind, LinkInfo, LinkKind, ValidateContext};
pub use {serde, serde_json};

/// Version of this crate, recorded in every plugin's declaration. The host
/// accepts plugins built against a caret-compatible version.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The names most plugins need.
pub mod prelude {
    pub use crate::serde::{Deserialize, Serialize};
    pub use crate::{
        Body, ConfigIssue, Context, LinkError, LinkKind, Message, Plugin, PublishError, Request, Response, StatusCode,
        ValidateContext, export_plugin,
    };
}
