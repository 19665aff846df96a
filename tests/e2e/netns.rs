//! Network namespaces that stand for machines: `ip netns`, veth pairs on a
//! bridge in a namespace of its own, no address outside them. Each test
//! makes its own and removes them, whatever the outcome.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long one request sent from inside a namespace may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2) is installed by scripts/test");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Hosts `h1`…`hN` on one bridge, at 10.231.<net>.1…N; removed when dropped.
pub struct Network {
    prefix: String,
    net: u8,
    hosts: usize,
}

impl Network {
    pub fn new(hosts: usize) -> Self {
        // Unique per test process and network: namespaces are machine-wide.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("o{}n{n}", std::process::id());
        // Each network's namespaces are its own: the same addresses in two never meet.
        let network = Self { prefix, net: 1, hosts };
        let br = network.ns("br");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let h = network.ns(&format!("h{i}"));
            ip(&["netns", "add", &h]);
            ip(&["-n", &h, "link", "set", "lo", "up"]);
            let (inner, outer) = (format!("eth{i}"), format!("p{i}"));
            ip(&["-n", &h, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns", &br]);
            ip(&["-n", &br, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &outer, "up"]);
            ip(&["-n", &h, "addr", "add", &format!("{}/24", network.addr(i)), "dev", &inner]);
            ip(&["-n", &h, "link", "set", &inner, "up"]);
        }
        network
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The topology's `hosts:`, each host's peer listener on port 7700.
    pub fn hosts_yaml(&self) -> String {
        let peers: String =
            (1..=self.hosts).map(|i| format!("  h{i}: {{ peer: \"{}:7700\" }}\n", self.addr(i))).collect();
        format!("hosts:\n{peers}")
    }

    pub fn addr(&self, host: usize) -> String {
        format!("10.231.{}.{host}", self.net)
    }

    /// Cuts host `i` off the network (`up: false`), or connects it again.
    pub fn link(&self, host: usize, up: bool) {
        let h = self.ns(&format!("h{host}"));
        ip(&["-n", &h, "link", "set", &format!("eth{host}"), if up { "up" } else { "down" }]);
    }
}

impl Network {
    /// Gives host `i`'s namespace a hosts file (`ip netns exec` mounts it
    /// over `/etc/hosts`); removed with the network.
    pub fn hosts_file(&self, i: usize, lines: &str) {
        let dir = std::path::PathBuf::from("/etc/netns").join(self.ns(&format!("h{i}")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = std::fs::remove_dir_all(std::path::PathBuf::from("/etc/netns").join(self.ns(&format!("h{i}"))));
        }
        for i in 1..=self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(&format!("h{i}"))]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns("br")]).status();
    }
}

/// Runs `f` on a thread inside network namespace `ns`, with a runtime of its own.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
    .join()
    .expect("the namespace's thread")
}

/// A peer's credentials: the token it presents and the tier it asks for.
pub type Peer<'a> = Option<(&'a str, &'a str)>;

/// `method path` with `body` to `addr`, from inside `ns`, as peer `peer` if given.
pub fn send(ns: &str, method: &str, addr: SocketAddr, path: &str, body: &str, peer: Peer<'_>) -> (u16, String) {
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
    let peer = peer.map(|(token, tier)| (token.to_owned(), tier.to_owned()));
    in_ns(ns, async move || {
        let client = integration_tests::client();
        let mut req = hyper::Request::builder().method(method.as_str()).uri(format!("http://{addr}{path}"));
        if let Some((token, tier)) = peer {
            req = req.header("authorization", format!("Bearer {token}")).header("orch-peer-tier", tier);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(DEADLINE, client.request(req)).await.expect("answered in time").expect("sent");
        let code = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    })
}

/// `GET path` to `addr`, from inside `ns`, as a peer presenting `token` for tier `web` if given.
pub fn get(ns: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    send(ns, "GET", addr, path, "", token.map(|t| (t, "web")))
}
