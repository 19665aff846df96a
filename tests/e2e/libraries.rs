//! Hostile and broken plugin libraries: none takes the orchestrator down, and
//! none is loaded from a place another user could have written.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use integration_tests::{Running, TopologyFile, orchestrator, target_dir};

/// Builds `lib<name>.so` in `dir` from C `source` with the system compiler.
fn c_library(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let lib = dir.join(format!("lib{name}.so"));
    let out = std::process::Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&c).output().unwrap();
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(c).unwrap();
    lib
}

const EXITS: &str = "#include <stdlib.h>\n__attribute__((constructor)) static void init(void) { exit(42); }\nvoid *orchestrator_plugin_declaration(void) { return 0; }\n";
/// ABI version 1, then pointers to nowhere where the name should be.
const GARBAGE: &str = "struct decl { unsigned abi; const char *name; unsigned long len; void *rest[32]; };\nstatic struct decl d = { 1, (const char *)16, 100000, { 0 } };\nvoid *orchestrator_plugin_declaration(void) { return &d; }\n";

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_library_that_exits_or_crashes_while_loading_is_refused_and_validate_survives() {
    let dir = private_dir();
    c_library(dir.path(), "exits", EXITS);
    c_library(dir.path(), "garbage", GARBAGE);
    // Before, `plugins` exited 42 with the first, and died of SIGSEGV with the second.
    let out = orchestrator(&["plugins", "--plugin-dir", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    assert!(line("exits").contains("loading it made the probe exit with status 42"), "{stdout}");
    assert!(line("garbage").contains("loading it killed the probe with SIGSEGV"), "{stdout}");

    let topology = TopologyFile::new(&format!(
        "version: 1\nname: x\nplugins: [{}]\ntiers:\n  a: {{ plugin: exits }}\n  b: {{ plugin: garbage }}\n",
        dir.path().display()
    ));
    let out = orchestrator(&["validate", topology.path_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("tiers.a.plugin: ")
            && stderr.contains("libexits.so is refused: loading it made the probe exit with status 42"),
        "{stderr}"
    );
    assert!(stderr.contains("libgarbage.so is refused: loading it killed the probe with SIGSEGV"), "{stderr}");
}

#[test]
fn a_library_others_can_write_is_refused_unless_allowed() {
    let dir = private_dir();
    let lib = dir.path().join("libhello.so");
    std::fs::copy(target_dir().join("libhello.so"), &lib).unwrap();
    let topology = TopologyFile::new(&format!(
        "version: 1\nname: x\nplugins: [{}]\ntiers:\n  a: {{ plugin: hello }}\n",
        dir.path().display()
    ));
    assert_eq!(orchestrator(&["validate", topology.path_str()]).status.code(), Some(0));

    for (what, path, mode) in [("the file", &lib, 0o666), ("its directory", &dir.path().to_path_buf(), 0o777)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = orchestrator(&["validate", topology.path_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        let sentence = format!(
            "libhello.so is refused: {what} ({}) is writable by every user; make it writable only by its owner, or pass --allow-insecure-plugins",
            std::fs::canonicalize(path).unwrap().display()
        );
        assert!(stderr.contains(&sentence), "expected `{sentence}` in:\n{stderr}");
        let out = orchestrator(&["validate", topology.path_str(), "--allow-insecure-plugins"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn loading_writes_nothing_to_the_temporary_directory_and_clears_old_copies() {
    let tmp = private_dir();
    // What orchestrators before left behind: a copies directory of a process
    // that is gone (pid 4194304 is above the kernel's maximum), and another
    // user's trap: a link named like one, which must not be followed.
    let stale = tmp.path().join("orchestrator-4194304");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("libhello-0.so"), b"x").unwrap();
    let kept = tempfile::tempdir().unwrap();
    std::fs::write(kept.path().join("precious"), b"x").unwrap();
    std::os::unix::fs::symlink(kept.path(), tmp.path().join("orchestrator-4194303")).unwrap();

    let out = std::process::Command::new(integration_tests::bin())
        .args(["plugins"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("libhello.so"));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["orchestrator-4194303"], "only the link is left");
    assert!(kept.path().join("precious").exists());
}

fn hello_topology(plugins: &Path) -> String {
    format!(
        "version: 1\nname: lib\nplugins: [{}]\ntiers:\n  web:\n    plugin: gateway\n    listen: 127.0.0.1:0\n    config: {{ routes: [{{ path: /, link: hello }}] }}\n  hello: {{ plugin: hello, config: {{ greeting: GREETING }} }}\nlinks:\n  - {{ from: web, to: hello, kind: rest }}\n",
        plugins.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_slowly_copied_library_never_takes_the_orchestrator_down() {
    let plugins = private_dir();
    let installed = plugins.path().join("libhello.so");
    let build = std::fs::read(target_dir().join("libhello.so")).unwrap();
    std::fs::write(&installed, &build).unwrap();
    let orch = Running::start(&hello_topology(plugins.path()).replace("GREETING", "One.")).await;
    let web = orch.tier_addr("web").await;
    assert!(orch.get(web, "/x").await.1.starts_with("One."));

    // Truncated in place: before, the orchestrator died of SIGBUS (exit 135).
    std::fs::OpenOptions::new().write(true).open(&installed).unwrap().set_len(build.len() as u64 / 3).unwrap();
    let status = orch.wait_attempts(1).await;
    let error = status["last_reload"]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status["last_reload"]["outcome"], "failed", "{status}");
    assert!(error.contains("libhello.so is not a loadable library: it is truncated"), "{error}");
    assert!(orch.get(web, "/x").await.1.starts_with("One."), "the old code keeps serving");

    // Copied in slowly, in twenty pieces: every reload in between is refused
    // or waits, none crashes, and the whole file is loaded at the end.
    let mut file = std::fs::File::create(&installed).unwrap();
    let piece = build.len() / 20 + 1;
    for chunk in build.chunks(piece) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        // The pace of a slow copy: the watcher sees each write.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(orch.get(web, "/x").await.1.starts_with("One."));
    }
    drop(file);
    orch.save(&hello_topology(plugins.path()).replace("GREETING", "Two."));
    orch.wait_generation(2).await;
    assert!(orch.get(web, "/x").await.1.starts_with("Two."));
    assert!(orch.log().iter().all(|l| !l.contains("panicked")), "{:?}", orch.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_not_taken_for_an_old_copies_directory() {
    // `orchestrator-<number>` directories of dead processes are removed at
    // start; the state directory `run` keeps in TMPDIR must survive that.
    let tmp = private_dir();
    let env = [("TMPDIR", tmp.path().to_str().unwrap()), ("XDG_RUNTIME_DIR", "")];
    let hello = std::fs::read_to_string(integration_tests::repo_root().join("topologies/hello.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let orch = Running::start_with_env(TopologyFile::new(&hello), &env).await;
    let cli =
        |args: &[&str]| std::process::Command::new(integration_tests::bin()).args(args).envs(env).output().unwrap();
    assert_eq!(cli(&["plugins"]).status.code(), Some(0));
    let out = cli(&["reload", orch.topology.path_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
