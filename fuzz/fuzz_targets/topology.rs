//! Any bytes through the topology pipeline: parse, validate (with the
//! built-in plugins), render the errors as the terminal shows them, and diff.
//!
//! An input is one topology, or two separated by a line `---8<---`: then the
//! plan from the first to the second, applied to the first, must give the
//! second (`Plan::apply`), and each one's diff with itself must be empty.

#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orchestrator::plugins::Registry;
use orchestrator::topology::{diff, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let registry = Registry::with_dirs(Vec::new());
    let parsed: Vec<_> = text
        .splitn(2, "\n---8<---\n")
        .map(|source| match validate::parse(Path::new("fuzz.yaml"), source, &registry) {
            Ok(topology) => Some(topology),
            Err(diagnostics) => {
                // Every error renders, located or not.
                let _ = diagnostics.render(false);
                let _ = diagnostics.to_string();
                None
            }
        })
        .collect();
    for topology in parsed.iter().flatten() {
        assert!(diff::diff(topology, topology, &HashSet::new()).is_empty());
    }
    if let [Some(old), Some(new)] = parsed.as_slice() {
        let plan = diff::diff(old, new, &HashSet::new());
        let applied = plan.apply(old, new);
        assert_eq!(applied.len(), new.tiers.len());
        for (id, spec) in &new.tiers {
            assert_eq!(applied.get(id), Some(spec), "tier {id}");
        }
    }
});
