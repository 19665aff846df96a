//! docs/plugin-guide.md: its examples are the `hello` and `frontend`
//! plugins, compiled and tested by the workspace; a topology that names
//! `hello` runs it; and its standalone `Cargo.toml` builds `hello` outside
//! the workspace into a library the orchestrator loads.

use integration_tests::{Running, repo_root};

/// The fenced code blocks of `markdown` tagged `lang`, each with the path
/// written on the line before it as `<!-- file: PATH -->`.
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().peekable();
    let mut file = None;
    while let Some(line) = lines.next() {
        if let Some(path) = line.strip_prefix("<!-- file: ").and_then(|l| l.strip_suffix(" -->")) {
            file = Some(path.to_owned());
        } else if line.starts_with("```") && file.is_some() {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push((file.take().unwrap_or_default(), body));
        }
    }
    out
}

#[test]
fn the_guide_shows_the_files_the_tests_compile() {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugin-guide.md")).unwrap();
    let blocks = blocks(&guide);
    let files: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for required in [
        "plugins/hello/Cargo.toml",
        "plugins/hello/src/lib.rs",
        "plugins/hello/tests/hello.rs",
        "plugins/hello/tests/tour.rs",
        "topologies/hello-plugin.yaml",
        "plugins/frontend/Cargo.toml",
        "plugins/frontend/src/lib.rs",
        "plugins/visits/Cargo.toml",
        "plugins/visits/src/lib.rs",
        "plugins/ledger/Cargo.toml",
        "plugins/ledger/src/lib.rs",
    ] {
        assert!(files.contains(&required), "the guide does not show {required}");
    }
    for (file, body) in &blocks {
        let actual = std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(body.trim_end(), actual.trim_end(), "docs/plugin-guide.md shows a different {file}");
    }
    let lib = std::fs::read_to_string(repo_root().join("plugins/hello/src/lib.rs")).unwrap();
    let lines = lib.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 20, "the hello plugin should stay about 15 lines, it has {lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_naming_the_guide_plugin_runs_it() {
    let yaml = std::fs::read_to_string(repo_root().join("topologies/hello-plugin.yaml")).unwrap();
    let orch = Running::start(&yaml.replace("127.0.0.1:8081", "127.0.0.1:0")).await;
    let web = orch.tier_addr("hello").await;
    let (code, body) = orch.get(web, "/anything").await;
    assert_eq!(code, 200);
    assert_eq!(body, "Hello from my first plugin! You asked for /anything.\n");
}

/// The block of `markdown` after the line `<!-- standalone: NAME -->`.
fn standalone(markdown: &str, name: &str) -> String {
    let marker = format!("<!-- standalone: {name} -->");
    let after = markdown.split_once(&marker).unwrap_or_else(|| panic!("no {marker} in the guide")).1;
    let body = after.split_once("```").and_then(|(_, rest)| rest.split_once('\n')).map(|(_, rest)| rest).unwrap();
    body.split_once("```").unwrap().0.to_owned()
}

#[test]
fn the_guides_standalone_crate_builds_outside_the_workspace_and_loads() {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugin-guide.md")).unwrap();
    let manifest = standalone(&guide, "Cargo.toml");
    // The crate as a user would lay it out: beside a checkout of this repository.
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("hello");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    assert!(manifest.contains("<checkout>/plugin-api"), "{manifest}");
    let manifest = manifest.replace("<checkout>", &repo_root().display().to_string());
    std::fs::write(krate.join("Cargo.toml"), &manifest).unwrap();
    std::fs::copy(repo_root().join("plugins/hello/src/lib.rs"), krate.join("src/lib.rs")).unwrap();
    // The workspace's resolved versions, so that the build needs nothing new.
    std::fs::copy(repo_root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    // A target directory of its own that lasts between runs (the build is the slow part).
    let target = integration_tests::target_dir().parent().unwrap().join("standalone-plugin");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build of the guide's crate: {}", String::from_utf8_lossy(&out.stderr));
    let built = target.join("debug");
    let out = integration_tests::orchestrator(&["plugins", "--plugin-dir", built.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("hello ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.ends_with(&built.join("libhello.so").display().to_string()), "{stdout}");
}
