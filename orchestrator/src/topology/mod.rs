//! The topology language: read a file, check it, and describe it.
//!
//! `node` parses YAML into a located tree; `validate` turns it into the typed
//! `model` (collecting every error as a located `Diagnostic`); `raw` is the
//! serde shape (and the JSON Schema); `graph` draws it.

pub mod diagnostic;
pub mod diff;
pub mod graph;
pub mod model;
pub mod node;
pub mod raw;
pub mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use model::{LinkKind, LinkSpec, QueueMode, QueueRole, TierId, TierSpec, Topology};

use crate::plugins::Registry;

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Box<Diagnostics>),
}

/// Reads, parses and validates the topology at `path`.
pub fn load(path: &Path, registry: &Registry) -> Result<Topology, Error> {
    let source = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    validate::parse(path, &source, registry).map_err(|d| Error::Invalid(Box::new(d)))
}
