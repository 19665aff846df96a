//! Small shared vocabulary: link kinds, link errors, configuration issues.

use std::fmt;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::Response;
use crate::abi::link_code;

/// How a link carries traffic. A plugin declares which kinds it can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// HTTP requests.
    Rest,
    /// gRPC-compatible unary calls.
    Rpc,
    /// Messages through a queue tier.
    Queue,
    /// TCP connections, forwarded as they are (a database's, a cache's
    /// protocol): the caller gets a local address; the host connects each
    /// connection to a ready replica of the target.
    Tcp,
}

impl LinkKind {
    /// Every kind, in a fixed order.
    pub const ALL: [LinkKind; 4] = [LinkKind::Rest, LinkKind::Rpc, LinkKind::Queue, LinkKind::Tcp];

    /// This kind's bit in `PluginDecl::serves`.
    pub const fn bit(self) -> u32 {
        match self {
            LinkKind::Rest => 1,
            LinkKind::Rpc => 2,
            LinkKind::Queue => 4,
            LinkKind::Tcp => 8,
        }
    }

    /// The bit set for `kinds`.
    pub const fn bits(kinds: &[LinkKind]) -> u32 {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= kinds[i].bit();
            i += 1;
        }
        bits
    }

    /// The kind as a topology writes it: `rest`, `rpc`, `queue` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Rest => "rest",
            LinkKind::Rpc => "rpc",
            LinkKind::Queue => "queue",
            LinkKind::Tcp => "tcp",
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbound link as the host describes it to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The name the caller uses.
    pub name: String,
    /// What the link carries.
    pub kind: LinkKind,
    /// The link's settings that matter to its ends, e.g. `topic`, `mode`,
    /// `concurrency`, `path` and `timeout_ms` for a queue link.
    pub params: std::collections::BTreeMap<String, String>,
}

impl LinkInfo {
    /// Reads one line of the host's link list: `name<TAB>kind[<TAB>key=value]*`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let name = fields.next().filter(|n| !n.is_empty())?.to_owned();
        let kind = fields.next().unwrap_or("rest");
        let kind = LinkKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        let params = fields.filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Some(Self { name, kind, params })
    }

    /// Writes this link as one line of the host's link list.
    pub fn to_line(&self) -> String {
        let mut line = format!("{}\t{}", self.name, self.kind);
        for (k, v) in &self.params {
            line.push('\t');
            line.push_str(k);
            line.push('=');
            line.push_str(v);
        }
        line
    }

    /// Setting `key`, if the host gave it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Why a link call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkErrorKind {
    /// The caller has no outbound link of that name.
    UnknownLink,
    /// The target has no ready replica.
    Unavailable,
    /// The call did not complete within the link's timeout.
    Timeout,
    /// The target failed while handling the call.
    Upstream,
}

/// A failed link call.
///
/// [`LinkError::to_response`] is the usual answer to pass on to the caller:
/// a JSON error with the status a gateway would give.
///
/// ```
/// use plugin_api::{LinkError, LinkErrorKind, StatusCode};
///
/// let error = LinkError::new(LinkErrorKind::Timeout, "no answer within 2s");
/// let response = error.to_response();
/// assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(response.body, r#"{"error":"no answer within 2s"}"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkError {
    /// What went wrong: it decides the status [`LinkError::to_response`] gives.
    pub kind: LinkErrorKind,
    /// What went wrong, in a sentence.
    pub message: String,
}

impl LinkError {
    /// A link error of `kind`.
    pub fn new(kind: LinkErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The status a gateway answers with: 503 unavailable, 504 timeout, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            LinkErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            LinkErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            LinkErrorKind::Upstream | LinkErrorKind::UnknownLink => StatusCode::BAD_GATEWAY,
        }
    }

    /// The JSON error response for this failure.
    pub fn to_response(&self) -> Response {
        Response::error(self.status(), &self.message)
    }

    pub(crate) fn from_code(code: u32, message: String) -> Self {
        let kind = match code {
            link_code::UNKNOWN_LINK => LinkErrorKind::UnknownLink,
            link_code::UNAVAILABLE => LinkErrorKind::Unavailable,
            link_code::TIMEOUT => LinkErrorKind::Timeout,
            _ => LinkErrorKind::Upstream,
        };
        Self { kind, message }
    }

    /// This error's code in [`link_code`].
    pub fn code(&self) -> u32 {
        match self.kind {
            LinkErrorKind::UnknownLink => link_code::UNKNOWN_LINK,
            LinkErrorKind::Unavailable => link_code::UNAVAILABLE,
            LinkErrorKind::Timeout => link_code::TIMEOUT,
            LinkErrorKind::Upstream => link_code::UPSTREAM,
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LinkError {}

/// A problem a plugin found in its tier's `config`. `path` is relative to
/// `config` (`routes[0].link`); the host locates it in the topology file.
///
/// ```
/// use plugin_api::ConfigIssue;
///
/// let issue = ConfigIssue::new("routes[0].link", "no link named `api`").with_hint("did you mean `app`?");
/// assert_eq!(issue.hint.as_deref(), Some("did you mean `app`?"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigIssue {
    /// Where in the tier's `config`, e.g. `routes[0].link` (empty: the whole of it).
    pub path: String,
    /// What is wrong, in a sentence.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// How to fix it, if there is a likely fix.
    pub hint: Option<String>,
}

impl ConfigIssue {
    /// An issue at `path` of the config.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into(), hint: None }
    }

    /// This issue with a hint, e.g. `did you mean `backend`?`.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// What a plugin may consult while validating its configuration: see
/// [`Plugin::validate`](crate::Plugin::validate) for an example.
///
/// ```
/// use plugin_api::ValidateContext;
///
/// let cx = ValidateContext::new(vec!["backend".into()]);
/// assert!(cx.has_link("backend"));
/// assert!(!cx.has_link("cache"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ValidateContext {
    links: Vec<String>,
}

impl ValidateContext {
    /// A context for a tier whose outbound links are named `links`.
    pub fn new(links: Vec<String>) -> Self {
        Self { links }
    }

    /// Names of the tier's outbound links.
    pub fn links(&self) -> &[String] {
        &self.links
    }

    /// Whether the tier has an outbound link named `name`.
    pub fn has_link(&self, name: &str) -> bool {
        self.links.iter().any(|l| l == name)
    }
}
