#!/usr/bin/env python3
"""Reloads under load: the orchestrator against nginx's own reload.

In one run, on this machine:

  orchestrator  `orchestrator run topologies/hello.yaml` (gateway -> frontend -> backend x3);
                wrk GETs /api for --duration seconds while the script saves the topology
                --reloads times (editor-style: temp file + rename), each changing the
                backend's greeting. Reload latency: from the write to the first response
                carrying the new greeting (so it includes the watcher's debounce).
  nginx         nginx proxying to direct-hyper under the same wrk load while the script
                runs `nginx -s reload` as many times, each changing an `add_header` value;
                latency: from the signal to the first response carrying the new value.

Prints requests, non-2xx responses and socket errors for each, and the reload
latency p50/p99. Targets for the orchestrator: 0 non-2xx, 0 socket errors, p99 < 100 ms.

Usage: benches/reload_load.py [--reloads 100] [--duration 20] [--connections 32] [--no-build]
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import http.client
import os
import shutil
import subprocess
import tempfile
import threading
import time

from benchlib import RELEASE, ROOT, Started, post_script, prepare, start_nginx, start_orchestrator, wait_line, wrk


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def served(addr, check, deadline):
    """Polls `addr` on one keep-alive connection until `check(response)` holds."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        while time.perf_counter() < deadline:
            try:
                conn.request("GET", check.path)
                resp = conn.getresponse()
                body = resp.read()
            except (ConnectionError, http.client.HTTPException):
                # nginx closes keep-alive connections as old workers exit: reconnect.
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                continue
            if check(resp, body):
                return time.perf_counter()
    finally:
        conn.close()
    raise RuntimeError("the change was not served in time")


class Check:
    def __init__(self, path, fn):
        self.path, self.fn = path, fn

    def __call__(self, resp, body):
        return self.fn(resp, body)


def run_under_load(addr, path, duration, connections, script, reloads, apply_change):
    """Runs wrk against addr for `duration` s while applying `reloads` changes
    spread over it. Returns (wrk result, latencies in ms)."""
    result = {}
    load = threading.Thread(target=lambda: result.update(wrk(f"http://{addr}{path}", duration, connections, script)))
    load.start()
    time.sleep(1)  # let wrk ramp up before the first reload
    interval = (duration - 2) / reloads
    latencies = []
    for i in range(reloads):
        slot = time.perf_counter() + interval
        started, check = apply_change(i)
        done = served(addr, check, started + 10)
        latencies.append((done - started) * 1000)
        pause = slot - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing between reloads, not synchronization
    load.join()
    return result, latencies


def report(name, res, latencies):
    print(f"{name:<14} requests {res['requests']:>8}  non-2xx {res['non2xx']:>5}  socket errors: {res['socket_errors']}")
    print(f"{'':<14} reload latency ms: p50 {percentile(latencies, 50):.1f}  p99 {percentile(latencies, 99):.1f}  max {max(latencies):.1f}  (n={len(latencies)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    prepare(build=not args.no_build)

    tmp = tempfile.mkdtemp(prefix="orch-reload-bench-")
    script = os.path.join(tmp, "get.lua")
    with open(script, "w") as f:
        f.write("-- plain GETs\n")
    started = Started()
    try:
        # The orchestrator.
        with open(os.path.join(ROOT, "topologies/hello.yaml")) as f:
            base = f.read().replace("127.0.0.1:8080", "127.0.0.1:0")
        orch, status = start_orchestrator(started, base, tmp, "hello.yaml")
        path = os.path.join(tmp, "hello.yaml")
        web = next(t["listen"] for t in status["tiers"] if t["name"] == "web")

        def change_topology(i):
            greeting = f"Greeting {i}"
            text = base.replace("greeting: Hello Python!", f"greeting: {greeting}")
            staged = path + ".swp"
            with open(staged, "w") as f:
                f.write(text)
            t0 = time.perf_counter()
            os.rename(staged, path)
            return t0, Check("/api", lambda resp, body: greeting.encode() in body)

        orch_res, orch_lat = run_under_load(web, "/api", args.duration, args.connections, script, args.reloads, change_topology)

        # nginx, reloading its own configuration.
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-hyper")], stdout=subprocess.PIPE, text=True))
        upstream = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        nginx, nginx_addr, conf = start_nginx(started, tmp, upstream, "auto", 'add_header X-Generation "0" always;')
        with open(conf) as f:
            conf_text = f.read()

        def change_nginx(i):
            value = str(i + 1)
            with open(conf, "w") as f:
                f.write(conf_text.replace('add_header X-Generation "0" always;', f'add_header X-Generation "{value}" always;'))
            t0 = time.perf_counter()
            subprocess.run(["nginx", "-c", conf, "-p", tmp, "-s", "reload"], check=True, stderr=subprocess.DEVNULL)
            return t0, Check("/backend", lambda resp, body: resp.getheader("X-Generation") == value)

        # wrk POSTs to nginx like the HTTP benchmark; a GET is enough to check the header.
        post = post_script(tmp)
        nginx_res, nginx_lat = run_under_load(nginx_addr, "/backend", args.duration, args.connections, post, args.reloads, change_nginx)

        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.reloads} reloads each")
        report("orchestrator", orch_res, orch_lat)
        report("nginx", nginx_res, nginx_lat)
        print(f"orchestrator: {orch_res['non2xx']} non-2xx, socket errors: {orch_res['socket_errors']} (target: 0 and none); "
              f"p99 {percentile(orch_lat, 99):.1f} ms (target < 100 ms)")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
