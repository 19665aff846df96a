#!/usr/bin/env python3
"""HTTP throughput of the orchestrator against a direct hyper server and nginx.

In one run, on this machine, interleaved A B C A B C ... over several rounds:

  A  orchestrator: gateway -> native backend plugin (one HTTP hop, then an in-process call)
  B  direct-hyper: the same work in a minimal hyper server (the limit of one HTTP hop)
  C  nginx (Debian), reverse-proxying to B, tuned as a user would (upstream keepalive,
     HTTP/1.1 upstream, empty Connection header, high keepalive_requests)

wrk (-t1 -c32 by default) POSTs {"message":"Hello Go!"}. Prints req/s, p99 and
server CPU per request for each target and round, then pooled ratios A/B and A/C,
and the idle resident memory of topologies/hello.yaml next to nginx's.

Usage: benches/http_load.py [--rounds 6] [--duration 5] [--connections 32] [--no-build]
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")


def ensure_tools():
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool)]
    if missing:
        print(f"installing {' '.join(missing)} from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def wait_line(proc, stream, pattern, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"process {proc.pid} exited before printing {pattern!r}")
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError(f"timed out waiting for {pattern!r}")


class Started:
    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def start_orchestrator(started, topology_yaml, tmp, name):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(topology_yaml)
    proc = started.add(subprocess.Popen(
        [os.path.join(RELEASE, "orchestrator"), "run", path, "--admin", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", "ORCH_LOG": "warn,orchestrator::runtime=info"}))
    admin = wait_line(proc, proc.stderr, r"Admin API listening\. addr=(\S+)").group(1)
    wait_line(proc, proc.stderr, r"Topology running\.")
    # Keep draining stderr so the process never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    status = json.load(urllib.request.urlopen(f"http://{admin}/admin/status"))
    return proc, status


def free_port():
    # nginx refuses port 0, so ask the kernel for a free port and hand it over.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(started, tmp, upstream, workers):
    port = free_port()
    conf = os.path.join(tmp, f"nginx-{workers}.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes {workers};
pid {tmp}/nginx-{workers}.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream backend {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    proc = started.add(subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    # Ready when its listener is up and its workers are forked.
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: see {tmp}/nginx-error.log")
        if port in listening_ports(proc.pid) and children(proc.pid):
            return proc, f"127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def listening_ports(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except FileNotFoundError:
        return []
    ports = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                ports.append(int(parts[1].split(":")[1], 16))
    return ports


def wrk(url, duration, connections, script):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": requests, "p99_ms": p99_ms,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else "none"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--lib"], cwd=ROOT, check=True)

    started = Started()
    tmp = tempfile.mkdtemp(prefix="orch-bench-")
    script = os.path.join(tmp, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = \'{"message":"Hello Go!"}\'\nwrk.headers["Content-Type"] = "application/json"\n')
    try:
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-hyper")], stdout=subprocess.PIPE, text=True))
        b_addr = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        with open(os.path.join(ROOT, "benches/topologies/gateway-backend.yaml")) as f:
            orch, status = start_orchestrator(started, f.read(), tmp, "gateway-backend.yaml")
        a_addr = next(t["listen"] for t in status["tiers"] if t["name"] == "web")
        nginx, c_addr = start_nginx(started, tmp, b_addr, "auto")
        nginx_pids = [nginx.pid] + children(nginx.pid)

        targets = {
            "A orchestrator": (a_addr, [orch.pid]),
            "B direct hyper": (b_addr, [direct.pid]),
            "C nginx -> B": (c_addr, nginx_pids + [direct.pid]),
        }
        # Each answers correctly before we measure.
        for name, (addr, _) in targets.items():
            req = urllib.request.Request(f"http://{addr}/backend", data=b'{"message":"Hello Go!"}', method="POST")
            body = urllib.request.urlopen(req).read()
            assert json.loads(body) == {"message": "Hello Python!", "data": "Hello Go!"}, (name, body)
            wrk(f"http://{addr}/backend", 1, args.connections, script)  # warm-up

        results = {name: [] for name in targets}
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds")
        print(f"{'round':<6}{'target':<18}{'req/s':>10}{'p99 ms':>9}{'CPU us/req':>12}{'non-2xx':>9}  socket errors")
        for r in range(1, args.rounds + 1):
            for name, (addr, pids) in targets.items():
                before = cpu_ticks(pids)
                res = wrk(f"http://{addr}/backend", args.duration, args.connections, script)
                res["cpu_us"] = (cpu_ticks(pids) - before) / TICK * 1e6 / max(res["requests"], 1)
                results[name].append(res)
                print(f"{r:<6}{name:<18}{res['rps']:>10.0f}{res['p99_ms']:>9.2f}{res['cpu_us']:>12.2f}{res['non2xx']:>9}  {res['socket_errors']}")

        def pooled(name):
            rs = results[name]
            # Total requests over total measured time (wrk runs a little past -d).
            return (sum(x["requests"] for x in rs) / sum(x["requests"] / x["rps"] for x in rs),
                    sum(x["cpu_us"] * x["requests"] for x in rs) / sum(x["requests"] for x in rs),
                    sorted(x["p99_ms"] for x in rs)[len(rs) // 2])

        a, b, c = (pooled(n) for n in targets)
        print()
        print(f"pooled req/s: A {a[0]:.0f}  B {b[0]:.0f}  C {c[0]:.0f}")
        print(f"median p99 ms: A {a[2]:.2f}  B {b[2]:.2f}  C {c[2]:.2f}")
        print(f"A/B req/s = {a[0] / b[0]:.3f}  (target >= 0.9)")
        print(f"A/C req/s = {a[0] / c[0]:.3f}  (target >= 1.5)")
        print(f"CPU us/request: A {a[1]:.2f}  B {b[1]:.2f}  C (nginx + B) {c[1]:.2f};  A/B = {a[1] / b[1]:.3f}  (target <= 1.1)")
        ratios = [x["rps"] / y["rps"] for x, y in zip(results["A orchestrator"], results["B direct hyper"])]
        print(f"A/B per round: {' '.join(f'{x:.3f}' for x in ratios)}")

        # Idle memory: the hello topology next to nginx with one worker.
        started.stop()
        started = Started()
        with open(os.path.join(ROOT, "topologies/hello.yaml")) as f:
            hello, _ = start_orchestrator(started, f.read().replace("127.0.0.1:8080", "127.0.0.1:0"), tmp, "hello.yaml")
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-hyper")], stdout=subprocess.PIPE, text=True))
        b_addr = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        nginx1, _ = start_nginx(started, tmp, b_addr, 1)
        print(f"idle RSS: orchestrator (topologies/hello.yaml) {rss_kib([hello.pid]) / 1024:.1f} MiB; "
              f"nginx, 1 worker {rss_kib([nginx1.pid] + children(nginx1.pid)) / 1024:.1f} MiB")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
