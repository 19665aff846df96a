#!/usr/bin/env python3
"""Across two hosts: the orchestrator's peer hop against nginx over the same link.

Two network namespaces made by this script (h1, h2, veth pairs on a bridge
in a third; nothing routed outside them; all removed at the end). In one run,
interleaved R N L B R N L B ... over several rounds, wrk running in h1:

  R  orchestrator: gateway on h1 -> native backend on h2, through h2's peer listener
  N  nginx on h1 -> the direct hyper server on h2 (tuned as in http_load.py)
  L  orchestrator on h1: gateway -> a local process tier running direct hyper
     (the hop R's cross-host hop is compared with)
  B  the direct hyper server on h2, straight from h1 (what the link itself allows)

Prints req/s, p99 and CPU per request for each target and round, then pooled
ratios R/N (target >= 1.0, p99 no worse) and R/L, and the CPU a cross-host
hop adds over a local process-tier hop.

Usage: benches/hosts_load.py [--rounds 4] [--duration 5] [--connections 32] [--no-build]
Needs root (ip netns), wrk and nginx (installed when missing).
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile

from benchlib import (RELEASE, ROOT, TICK, Started, children, cpu_ticks, ensure_tools, post_script, prepare,
                      start_nginx, wait_line, wrk)

NET = "10.232.0"


def ip(*args):
    subprocess.run(["ip", *args], check=True)


class Network:
    def __init__(self):
        self.prefix = f"ob{os.getpid()}"
        self.br = self.prefix + "br"
        ip("netns", "add", self.br)
        ip("-n", self.br, "link", "add", "br0", "type", "bridge")
        ip("-n", self.br, "link", "set", "br0", "up")
        for i in (1, 2):
            ns = self.ns(i)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"p{i}", "netns", self.br)
            ip("-n", self.br, "link", "set", f"p{i}", "master", "br0")
            ip("-n", self.br, "link", "set", f"p{i}", "up")
            ip("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", f"eth{i}")
            ip("-n", ns, "link", "set", f"eth{i}", "up")

    def ns(self, i):
        return f"{self.prefix}h{i}"

    def exec(self, i):
        return ["ip", "netns", "exec", self.ns(i)]

    def remove(self):
        for ns in (self.ns(1), self.ns(2), self.br):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def start(started, cmd, ready):
    proc = started.add(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "NO_COLOR": "1", "ORCH_LOG": "warn,orchestrator::runtime=info"}))
    wait_line(proc, proc.stderr, ready)
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    prepare(build=not args.no_build)
    ensure_tools()

    started = Started()
    tmp = tempfile.mkdtemp(prefix="orch-hosts-bench-")
    script = post_script(tmp)
    network = Network()
    try:
        orch = os.path.join(RELEASE, "orchestrator")
        direct_hyper = os.path.join(RELEASE, "direct-hyper")
        token = os.path.join(tmp, "peer-token")
        with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("a-benchmark-peer-token\n")
        split = f"""
version: 1
name: bench-hosts
hosts:
  h1: {{ peer: "{NET}.1:7700" }}
  h2: {{ peer: "{NET}.2:7700" }}
tiers:
  web: {{ plugin: gateway, host: h1, listen: 127.0.0.1:18080, config: {{ routes: [{{ path: /, link: backend }}] }} }}
  backend: {{ plugin: backend, host: h2 }}
links:
  - {{ from: web, to: backend, kind: rest }}
"""
        path = os.path.join(tmp, "hosts.yaml")
        with open(path, "w") as f:
            f.write(split)
        peer = ["--peer-token-file", token, "--admin", "127.0.0.1:0", "--no-watch"]
        h2 = start(started, network.exec(2) + [orch, "run", path, "--host", "h2", "--peer-listen", f"{NET}.2:7700", *peer],
                   r"Topology running\.")
        h1 = start(started, network.exec(1) + [orch, "run", path, "--host", "h1", "--peer-listen", f"{NET}.1:7700", *peer],
                   r"Topology running\.")
        direct = started.add(subprocess.Popen(network.exec(2) + [direct_hyper, f"{NET}.2:18081"], stdout=subprocess.PIPE, text=True))
        wait_line(direct, direct.stdout, r"listening on")
        nginx, n_addr, _ = start_nginx(started, tmp, f"{NET}.2:18081", "auto", prefix=network.exec(1))
        with open(os.path.join(ROOT, "benches/topologies/gateway-process.yaml")) as f:
            local = f.read().replace("DIRECT_HYPER", direct_hyper).replace("127.0.0.1:0", "127.0.0.1:18082")
        lpath = os.path.join(tmp, "local.yaml")
        with open(lpath, "w") as f:
            f.write(local)
        l = start(started, network.exec(1) + [orch, "run", lpath, "--admin", "127.0.0.1:0", "--no-watch"], r"Topology running\.")

        targets = {
            "R orch h1 -> h2": ("127.0.0.1:18080", [h1.pid, h2.pid]),
            "N nginx h1 -> h2": (n_addr, [nginx.pid] + children(nginx.pid) + [direct.pid]),
            "L orch local proc": ("127.0.0.1:18082", [l.pid] + children(l.pid)),
            "B direct h2": (f"{NET}.2:18081", [direct.pid]),
        }
        in_h1 = network.exec(1)
        for name, (addr, _) in targets.items():
            out = subprocess.run(in_h1 + ["curl", "-s", "-X", "POST", "-d", '{"message":"Hello Go!"}', f"http://{addr}/backend"],
                                 capture_output=True, text=True, check=True).stdout
            assert json.loads(out) == {"message": "Hello Python!", "data": "Hello Go!"}, (name, out)
            wrk(f"http://{addr}/backend", 1, args.connections, script, prefix=in_h1)  # warm-up

        results = {name: [] for name in targets}
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s in h1, {args.rounds} interleaved rounds")
        print(f"{'round':<6}{'target':<20}{'req/s':>10}{'p99 ms':>9}{'CPU us/req':>12}{'non-2xx':>9}  socket errors")
        for r in range(1, args.rounds + 1):
            for name, (addr, pids) in targets.items():
                before = cpu_ticks(pids)
                res = wrk(f"http://{addr}/backend", args.duration, args.connections, script, prefix=in_h1)
                res["cpu_us"] = (cpu_ticks(pids) - before) / TICK * 1e6 / max(res["requests"], 1)
                results[name].append(res)
                print(f"{r:<6}{name:<20}{res['rps']:>10.0f}{res['p99_ms']:>9.2f}{res['cpu_us']:>12.2f}{res['non2xx']:>9}  {res['socket_errors']}")

        def pooled(name):
            rs = results[name]
            return (sum(x["requests"] for x in rs) / sum(x["requests"] / x["rps"] for x in rs),
                    sum(x["cpu_us"] * x["requests"] for x in rs) / sum(x["requests"] for x in rs),
                    sorted(x["p99_ms"] for x in rs)[len(rs) // 2])

        rr, nn, ll, bb = (pooled(n) for n in targets)
        print()
        print(f"pooled req/s: R {rr[0]:.0f}  N {nn[0]:.0f}  L {ll[0]:.0f}  B {bb[0]:.0f}")
        print(f"median p99 ms: R {rr[2]:.2f}  N {nn[2]:.2f}  L {ll[2]:.2f}  B {bb[2]:.2f}")
        print(f"R/N req/s = {rr[0] / nn[0]:.3f}  (target >= 1.0, p99 no worse: R {rr[2]:.2f} ms vs N {nn[2]:.2f} ms)")
        print(f"R/L req/s = {rr[0] / ll[0]:.3f}  (a cross-host hop against a local process-tier hop)")
        print(f"CPU us/request: R (both orchestrators) {rr[1]:.2f}  N (nginx + direct hyper) {nn[1]:.2f}  "
              f"L (orchestrator + program) {ll[1]:.2f};  the cross-host hop adds {rr[1] - ll[1]:+.2f} us over a local one")
    finally:
        started.stop()
        network.remove()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
