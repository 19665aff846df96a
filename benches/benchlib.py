"""Helpers shared by the load scripts: start and stop servers on loopback,
read their CPU and memory from /proc, run wrk and parse its report."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
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
    """Every descendant of `pid` (a process tier's program runs under a shim:
    its grandchild), children before theirs."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    out, todo = [], [pid]
    while todo:
        parent = todo.pop(0)
        kids = [p for p, pp in parents.items() if pp == parent]
        out.extend(kids)
        todo.extend(kids)
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


def start_orchestrator(started, topology_yaml, tmp, name, extra_args=(), binary=None, timeout=30):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(topology_yaml)
    proc = started.add(subprocess.Popen(
        [binary or os.path.join(RELEASE, "orchestrator"), "run", path, "--admin", "127.0.0.1:0", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", "ORCH_LOG": "warn,orchestrator::runtime=info"}))
    admin = wait_line(proc, proc.stderr, r"Admin API listening\. addr=(\S+)", timeout).group(1)
    wait_line(proc, proc.stderr, r"Topology running\.", timeout)
    # Keep draining stderr so the process never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    status = json.load(urllib.request.urlopen(f"http://{admin}/admin/status"))
    return proc, status


def link_variables(env_file, keys, timeout=30):
    """The `ORCH_LINK_*` variables a tier wrote into `env_file` as it started
    (`env | grep ^ORCH_LINK_ > FILE`), once every one of `keys` is there."""
    deadline = time.monotonic() + timeout
    while True:
        links = dict(line.strip().split("=", 1) for line in open(env_file) if "=" in line) \
            if os.path.exists(env_file) else {}
        if set(keys) <= links.keys():
            return links
        if time.monotonic() > deadline:
            raise SystemExit(f"the tier wrote no link variables {keys}: {links}")
        time.sleep(0.05)


def free_port():
    # nginx refuses port 0, so ask the kernel for a free port and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(started, tmp, upstream, workers, location_extra="", main_extra="", prefix=()):
    """nginx proxying to `upstream`; returns (process, address, config path).
    `main_extra` goes into the main context (e.g. `worker_cpu_affinity auto;`);
    `prefix` runs it under another command (`ip netns exec NS`)."""
    port = free_port()
    conf = os.path.join(tmp, f"nginx-{workers}.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes {workers};
{main_extra}
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
            {location_extra}
        }}
    }}
}}
""")
    proc = started.add(subprocess.Popen([*prefix, "nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    # Ready when its listener is up and its workers are forked.
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: see {tmp}/nginx-error.log")
        if port in listening_ports(proc.pid) and children(proc.pid):
            return proc, f"127.0.0.1:{port}", conf
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
    # The process's own view: the sockets of its network namespace.
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                ports.append(int(parts[1].split(":")[1], 16))
    return ports


def wrk(url, duration, connections, script, prefix=()):
    out = subprocess.run([*prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": requests, "p99_ms": p99_ms,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else "none"}


def prepare(build):
    """Installs wrk and nginx if missing; builds the release binaries unless told not to."""
    # SIGTERM ends the script the way Ctrl-C does: through the `finally`
    # blocks that stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools()
    if build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "--lib"], cwd=ROOT, check=True)


def post_script(tmp):
    """A wrk script POSTing the backend's JSON message; returns its path."""
    path = os.path.join(tmp, "post.lua")
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = \'{"message":"Hello Go!"}\'\nwrk.headers["Content-Type"] = "application/json"\n')
    return path
