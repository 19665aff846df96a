//! The container image: `Containerfile` built with buildah and run with
//! podman (Debian's packages, `scripts/setup-tools`), on storage of the
//! test's own (`vfs`, in a temporary directory, removed at the end) with
//! runc and cgroupfs. No base image can be pulled here, so the image's file
//! tree is made from this build (`scripts/image-root`) and handed to the
//! Containerfile's second stage in place of the first (`--build-context`),
//! as its header says; the Rust build stage itself is not run here.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use integration_tests::repo_root;

const IMAGE: &str = "localhost/orchestrator-test:0.1.0";
const DEADLINE: Duration = Duration::from_secs(60);

/// buildah and podman on storage of their own.
struct Storage {
    dir: tempfile::TempDir,
}

impl Storage {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn flags(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![format!("--root={d}/root"), format!("--runroot={d}/run"), "--storage-driver=vfs".to_owned()]
    }

    fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.args(self.flags());
        c
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.flags()).args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c
    }

    /// `podman run --rm` of the image with `args`, on the host's network.
    fn run(&self, mounts: &[(&Path, &str)], entrypoint: &str, args: &[&str]) -> Command {
        self.run_named("", mounts, entrypoint, args)
    }

    /// `run`, the container named `name` (unless empty).
    fn run_named(&self, name: &str, mounts: &[(&Path, &str)], entrypoint: &str, args: &[&str]) -> Command {
        let mut c = self.podman();
        c.args(["run", "--rm", "--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024"]);
        if !name.is_empty() {
            c.args(["--name", name]);
        }
        for (from, to) in mounts {
            c.arg("-v").arg(format!("{}:{to}:ro", from.display()));
        }
        c.args(["--entrypoint", entrypoint, IMAGE]).args(args);
        c
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // What a run left (none, with --rm), then the images.
        let _ = self.podman().args(["rm", "--all", "--force"]).output();
        let _ = self.podman().args(["rmi", "--all", "--force"]).output();
    }
}

/// The binary the exported manifests name: the image must have it there.
fn manifest_command() -> String {
    let out = integration_tests::orchestrator(&[
        "export",
        "kubernetes",
        repo_root().join("topologies/hello.yaml").to_str().unwrap(),
        "-o",
        "-",
    ]);
    assert!(out.status.success());
    let stream = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stream.lines().skip_while(|l| !l.starts_with("        command:")).nth(1).expect("a command");
    line.trim().trim_start_matches("- ").to_owned()
}

#[test]
fn the_image_builds_from_the_containerfile_validates_and_serves_the_hello_topology() {
    let storage = Storage::new();
    let context = tempfile::tempdir().unwrap();
    let bin = integration_tests::bin();
    let out = Command::new(repo_root().join("scripts/image-root"))
        .arg(bin.parent().unwrap())
        .arg(context.path().join("rootfs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "image-root: {}", String::from_utf8_lossy(&out.stderr));
    let out = storage
        .buildah()
        .arg("build")
        .arg(format!("--build-context=build={}", context.path().display()))
        .args(["-t", IMAGE, "-f"])
        .arg(repo_root().join("Containerfile"))
        .arg(repo_root())
        .output()
        .expect("buildah (installed by scripts/setup-tools)");
    assert!(out.status.success(), "buildah build: {}", String::from_utf8_lossy(&out.stderr));

    // `validate`, inside, of every topology the image carries.
    let entrypoint = manifest_command();
    assert_eq!(entrypoint, "/opt/orchestrator/bin/orchestrator");
    let mut args = vec!["validate"];
    let names: Vec<String> = std::fs::read_dir(repo_root().join("topologies"))
        .unwrap()
        .map(|e| format!("/opt/orchestrator/topologies/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    args.extend(names.iter().map(String::as_str));
    let out = storage.run(&[], &entrypoint, &args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "validate in the image: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(": ok (").count(), names.len(), "{stdout}");

    // The hello topology, run inside; the test asks it from the host.
    let topology = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("topologies/hello.yaml")).unwrap();
    std::fs::write(topology.path().join("hello.yaml"), yaml.replace("127.0.0.1:8080", "127.0.0.1:0")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(topology.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(topology.path().join("hello.yaml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = format!("orch-test-{}", std::process::id());
    let mut child = storage
        .run_named(
            &name,
            &[(topology.path(), "/opt/orchestrator/topology")],
            &entrypoint,
            &["run", "/opt/orchestrator/topology/hello.yaml", "--admin", "127.0.0.1:0", "--drain-timeout", "2s"],
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    let mut log = Vec::new();
    let listening = wait_for(&lines, &mut log, "Tier listening. tier=web");
    let addr: std::net::SocketAddr = listening.split("addr=").nth(1).unwrap().trim().parse().unwrap();
    wait_for(&lines, &mut log, "Topology running.");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (code, body) = rt
        .block_on(integration_tests::request(&integration_tests::client(), "GET", addr, "/api", Default::default()))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Hello Python!"), "{body}");
    // Stopped as a container runtime stops it: SIGTERM to the container's
    // process (`podman stop`, of the container this test named), and the
    // orchestrator drains. (Signalling the `podman run` client instead
    // relies on its signal proxy, which is not always in place yet.)
    let out = storage.podman().args(["stop", "--time", "20", &name]).output().unwrap();
    assert!(out.status.success(), "podman stop: {}", String::from_utf8_lossy(&out.stderr));
    wait_for(&lines, &mut log, "Shutting down.");
    wait_for(&lines, &mut log, "Stopped.");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", log.join("\n"));
}

fn lines_of(child: &mut Child) -> Receiver<String> {
    integration_tests::collect_lines([child.stderr.take().unwrap()]).1
}

fn wait_for(lines: &Receiver<String>, log: &mut Vec<String>, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!("no `{needle}` from the container:\n{}", log.join("\n")),
        }
    }
}
