#!/usr/bin/env python3
"""Instructions per request through the gateway to the native backend (target A
of http_load.py), counted by valgrind's callgrind: deterministic, unlike
wall-clock runs on a shared machine.

For each binary: one run with N keep-alive POSTs and one with none; the
difference over N is what one request costs. The latency clock's calibration
at start (a time-bound spin) is left out of both. Compare builds in one run:

  benches/callgrind_requests.py target/release/orchestrator /tmp/orch-before [--requests 2000]

With --metrics-off, each binary is also run with --no-metrics (shown as
`BIN --no-metrics`): what recording the request metrics costs.

Needs valgrind (`apt-get install valgrind`). Only loopback is used; each
orchestrator is stopped by its PID.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def instructions(binary, n, tmp, extra=()):
    out = os.path.join(tmp, f"callgrind.{os.getpid()}.{n}")
    env = dict(os.environ, NO_COLOR="1", ORCH_LOG="warn,orchestrator::runtime=info",
               ORCH_PLUGIN_PATH=os.path.join(ROOT, "target", "release"))
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "run",
                          os.path.join(ROOT, "benches/topologies/gateway-backend.yaml"),
                          "--admin", "127.0.0.1:0", "--no-watch", *extra],
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        admin = None
        for line in p.stderr:
            m = re.search(r"Admin API listening\. addr=(\S+)", line)
            if m:
                admin = m.group(1)
            if "Topology running" in line:
                break
        status = json.load(urllib.request.urlopen(f"http://{admin}/admin/status"))
        host, port = next(t["listen"] for t in status["tiers"] if t["name"] == "web").rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        for _ in range(n):
            c.request("POST", "/backend", body=b'{"message":"Hello Go!"}', headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()
    finally:
        p.terminate()
        p.wait(timeout=120)
    with open(out) as f:
        total = next((int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))), None)
    if total is None:
        raise RuntimeError(f"no totals in {out}")
    return total - clock_calibration(out)


def clock_calibration(out):
    """What the latency clock's calibration cost in run `out`: it spins until
    its estimate is stable (at most 200 ms), so its instruction count depends
    on time, not on requests, and is left out."""
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", out],
                               capture_output=True, text=True, check=True).stdout
    for line in annotated.splitlines():
        if "quanta::Clock::new" in line:
            return int(line.split()[0].replace(",", ""))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--metrics-off", action="store_true", help="also run each binary with --no-metrics")
    args = ap.parse_args()
    runs = [(b, ()) for b in args.binaries]
    if args.metrics_off:
        runs = [run for b in args.binaries for run in ((b, ()), (b, ("--no-metrics",)))]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for binary, extra in runs:
            name = " ".join([binary, *extra])
            idle, busy = instructions(binary, 0, tmp, extra), instructions(binary, args.requests, tmp, extra)
            results[name] = (busy - idle) / args.requests
            print(f"{name}: {results[name]:,.0f} instructions per request", flush=True)
        first_name = next(iter(results))
        first = results[first_name]
        for name, per in results.items():
            print(f"{name}: {per / first:.3f} of {first_name}")


if __name__ == "__main__":
    main()
