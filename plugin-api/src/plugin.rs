//! The one trait a plugin author implements.

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::{ConfigIssue, Context, LinkKind, Message, Request, Response, ValidateContext};

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

    /// Checks the configuration beyond what deserialization does: called by
    /// `orchestrator validate`, and before an instance is created at start
    /// and at each reload. Each [`ConfigIssue`] is shown located in the
    /// topology file.
    ///
    /// ```
    /// use plugin_api::prelude::*;
    /// use plugin_api::testing::TestHost;
    ///
    /// #[derive(Deserialize)]
    /// #[serde(crate = "plugin_api::serde")]
    /// struct Proxy {
    ///     upstream: String,
    /// }
    ///
    /// impl Plugin for Proxy {
    ///     fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
    ///         if cx.has_link(&self.upstream) {
    ///             return Ok(());
    ///         }
    ///         let issue = ConfigIssue::new("upstream", format!("this tier has no link named `{}`", self.upstream));
    ///         Err(vec![issue.with_hint("add it under `links:`")])
    ///     }
    ///
    ///     async fn handle(&self, req: Request, cx: Context) -> Response {
    ///         cx.link(&self.upstream).call(req).await.unwrap_or_else(|e| e.to_response())
    ///     }
    /// }
    ///
    /// let issues = TestHost::new().validate::<Proxy>(serde_json::json!({ "upstream": "api" }));
    /// assert_eq!(issues[0].path, "upstream");
    /// assert_eq!(issues[0].message, "this tier has no link named `api`");
    /// ```
    fn validate(&self, cx: &ValidateContext) -> Result<(), Vec<ConfigIssue>> {
        let _ = cx;
        Ok(())
    }

    /// Handles one request. Panics are caught and become a `500` response.
    fn handle(&self, req: Request, cx: Context) -> impl Future<Output = Response> + Send;

    /// Handles one message delivered by a queue tier (list `LinkKind::Queue`
    /// in [`Plugin::SERVES`] to receive them). `Ok` acknowledges it; `Err`
    /// (or a panic) has it redelivered with backoff, up to the topic's
    /// `max_attempts`, then dead-lettered. Deliveries are at least once:
    /// deduplicate on [`Message::id`] where a repeat matters.
    ///
    /// The default refuses every message.
    fn on_message(&self, msg: Message, cx: Context) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (msg, cx);
        std::future::ready(Err("this tier does not take messages (its plugin has no `on_message`)".to_owned()))
    }

    /// Whether this instance can take requests now. Links and listeners route
    /// only to ready instances. Called on every routing decision: keep it cheap.
    fn is_ready(&self) -> bool {
        true
    }

    /// Completes when the instance is ready to serve, or with the reason it
    /// cannot be. Nothing routes to a new instance before this completes.
    fn wait_ready(&self, cx: Context) -> impl Future<Output = Result<(), String>> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }

    /// This instance's state for `/admin/status` (shown under the instance).
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Stops gracefully, after the instance stopped receiving requests and its
    /// in-flight requests completed (or the drain timeout passed).
    fn stop(&self, cx: Context) -> impl Future<Output = ()> + Send {
        let _ = cx;
        std::future::ready(())
    }
}
