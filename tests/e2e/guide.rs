//! docs/plugin-guide.md: its example is the `hello` plugin, compiled and
//! tested by the workspace, and a topology that names it runs it.

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
        "topologies/hello-plugin.yaml",
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
