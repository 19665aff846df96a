//! Plugin loading refusals, panics, and the `plugins` listing.

use integration_tests::{Running, TopologyFile, orchestrator, target_dir};
use serde_json::Value;

#[test]
fn a_plugin_built_for_another_abi_is_refused_in_one_sentence() {
    let file = TopologyFile::new("version: 1\nname: x\ntiers:\n  a: { plugin: future_abi }\n");
    let out = orchestrator(&["validate", file.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let lib = target_dir().join("libfuture_abi.so");
    let sentence = format!(
        "{} was built for plugin ABI version 999, but this orchestrator speaks ABI version 1; rebuild the plugin against plugin-api",
        lib.display()
    );
    assert!(stderr.contains(&sentence), "expected `{sentence}` in:\n{stderr}");
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    // Any shared library that is not a plugin: copy one under a plugin's file name.
    let dir = tempfile::tempdir().unwrap();
    let libc = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a system shared library");
    std::fs::copy(libc, dir.path().join("libnotaplugin.so")).unwrap();
    std::fs::write(dir.path().join("libgarbage.so"), b"not an ELF file").unwrap();
    let topo = TopologyFile::new(
        "version: 1\nname: x\nplugins: [PLUGINS]\ntiers:\n  a: { plugin: notaplugin }\n  b: { plugin: garbage }\n"
            .replace("PLUGINS", dir.path().to_str().unwrap())
            .as_str(),
    );
    let out = orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "libnotaplugin.so is not an orchestrator plugin: it does not export `orchestrator_plugin_declaration`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("libgarbage.so is not a loadable library: it is not an ELF file"), "{stderr}");
}

#[test]
fn plugins_lists_builtins_and_libraries() {
    let out = orchestrator(&["plugins"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{stdout}"))
            .to_owned()
    };
    let gateway: Vec<String> = line("gateway").split_whitespace().map(str::to_owned).collect();
    assert_eq!(gateway[1..], ["0.1.0", "1", "0.3.0", "built-in"]);
    let backend = line("backend");
    assert!(backend.contains(" 1 ") && backend.ends_with("libbackend.so"), "{backend}");
    assert!(line("future_abi").contains("refused: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_500_and_the_next_request_succeeds() {
    let orch = Running::start(
        r#"
version: 1
name: panics
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config: { routes: [{ path: /, link: kit }] }
  kit: { plugin: testkit }
  inner: { plugin: testkit }
links:
  - { from: web, to: kit, kind: rest }
  - { from: kit, to: inner, kind: rest }
"#,
    )
    .await;
    let web = orch.tier_addr("web").await;
    for path in ["/panic", "/call/inner/panic"] {
        let (code, body) = orch.get(web, path).await;
        assert_eq!(code, 500, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"], "the handler panicked: asked to panic", "{path}");
        let (code, body) = orch.get(web, "/whoami").await;
        assert_eq!(code, 200, "{body}");
    }
    // The process is still up and ready.
    assert_eq!(orch.get(orch.admin, "/admin/ready").await.0, 200);
}

#[test]
fn plugins_searches_a_topologys_directories_even_when_it_has_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(target_dir().join("libhello.so"), dir.path().join("libhello.so")).unwrap();
    let topo = TopologyFile::new(&format!(
        "version: 1\nname: x\nplugins: [{}]\ntiers:\n  a: {{ plugin: hello, replicas: 0 }}\n",
        dir.path().display()
    ));
    let out = orchestrator(&["plugins", "--topology", topo.path_str()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Before, the directory was dropped with the error, and the plugin with it.
    assert!(stdout.contains(&dir.path().join("libhello.so").display().to_string()), "{stdout}");
    assert!(stderr.starts_with("warning: the topology has 1 error:\n"), "{stderr}");
    assert_eq!(stderr.matches(topo.path_str()).count(), 1, "the file is named once: {stderr}");
}

#[test]
fn paths_in_messages_are_tidy() {
    let topo = TopologyFile::new("version: 1\nname: x\nplugins: [./sub/../lib/.]\ntiers:\n  a: { plugin: nope }\n");
    let out = orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    // Before: `…/./sub/../lib/.`.
    let dir = topo.dir.path().join("lib");
    assert!(stderr.contains(&format!("(looked for libnope.so in {}, ", dir.display())), "{stderr}");
}

#[test]
fn the_plugins_a_missing_one_could_be_are_listed_apart_from_those_refused() {
    let topo = TopologyFile::new("version: 1\nname: x\ntiers:\n  a: { plugin: zzzzzz }\n");
    let out = orchestrator(&["validate", topo.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let help = stderr.lines().find_map(|l| l.trim().strip_prefix("help: ")).unwrap_or_else(|| panic!("{stderr}"));
    // Before: `available plugins: gateway, process, queue, backend, frontend, future_abi, …`.
    let (usable, refused) = help.split_once("; found but refused: ").unwrap_or_else(|| panic!("{help}"));
    let usable: Vec<&str> = usable.strip_prefix("available plugins: ").unwrap().split(", ").collect();
    assert!(usable.contains(&"hello") && usable.contains(&"gateway"), "{help}");
    assert!(!usable.iter().any(|p| ["future_abi", "swap_v1", "swap_v2"].contains(p)), "{help}");
    assert!(
        refused.starts_with("future_abi, swap_v1, swap_v2 ") && refused.ends_with("(`orchestrator plugins` says why)")
    );
}
