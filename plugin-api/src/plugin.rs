//! The one trait a plugin author implements.

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::{ConfigIssue, Context, LinkKind, Request, Response, ValidateContext};

/// A tier's handler.
///
/// The implementing type *is* the tier's configuration: the host deserializes
/// it from the tier's `config` (an absent `config` is `{}`), so declare its
/// fields with `#[derive(Deserialize)]`, `#[serde(default)]` for optional ones
/// and `#[serde(deny_unknown_fields)]` to reject typos. Deserialization errors
/// and the issues [`Plugin::validate`] returns are shown to the user located in
/// their topology file.
///
/// Only [`Plugin::handle`] is required.
pub trait Plugin: DeserializeOwned + Send + Sync + 'static {
    /// Link kinds this plugin can serve as a link's target.
    const SERVES: &'static [LinkKind] = &[LinkKind::Rest];

    /// Checks the configuration beyond what deserialization does.
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let _ = cx;
        Ok(())
    }

    /// Handles one request. Panics are caught and become a `500` response.
    fn handle(&self, req: Request, cx: Context) -> impl Future<Output = Response> + Send;
}
