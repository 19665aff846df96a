#!/usr/bin/env python3
"""How `orchestrator validate` scales with the size of a topology.

For N tiers (and, in the second case, N links to unknown tiers: N errors, each
with a hint and a rendered source line), times `orchestrator validate` (best
of --repeat runs) and prints the time per tier and the ratio to the smallest
N: a near-linear validator keeps time per tier flat as N grows. The baseline
in the same run is reading and parsing the same file with Python's json
module after converting it (a linear pass over the same bytes), printed as
the ratio "validate / linear pass".

With --bin PATH (repeatable) it times each of those binaries instead, side
by side in the same run (e.g. a build from before a change and one from after).

The YAML parser refuses a document of more than 250,000 nodes, which bounds
N (20,000 tiers with 20,000 links is about 180,000).

Usage: benches/validate_scale.py [--sizes 5000,10000,20000] [--repeat 3] [--no-build] [--bin PATH ...]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "orchestrator")


def topology(n, bad_links):
    lines = ["version: 1", "name: scale", "tiers:"]
    lines += [f"  t{i}: {{ plugin: gateway }}" for i in range(n)]
    if bad_links:
        lines.append("links:")
        lines += [f"  - {{ from: t{i}, to: u{i}, kind: rest }}" for i in range(n)]
    return "\n".join(lines) + "\n"


def best(cmd, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=600)
        times.append(time.perf_counter() - start)
    return min(times)


def linear_pass(path):
    start = time.perf_counter()
    with open(path) as f:
        text = f.read()
    json.loads(json.dumps(text.splitlines()))
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,10000,20000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bin", action="append", help="an orchestrator binary to time (repeatable)")
    args = ap.parse_args()
    bins = args.bin or [BIN]
    if not args.no_build and not args.bin:
        subprocess.run(["cargo", "build", "--release", "-p", "orchestrator"], cwd=ROOT, check=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for bad in (False, True):
            for binary in bins:
                print(f"\n{binary}: {'N tiers, N links to unknown tiers' if bad else 'N valid tiers'}")
                print(f"{'N':>7} {'validate s':>11} {'µs/tier':>9} {'vs first':>9} {'errors':>7}")
                first = None
                for n in sizes:
                    path = os.path.join(tmp, f"t{n}{'bad' if bad else ''}.yaml")
                    with open(path, "w") as f:
                        f.write(topology(n, bad))
                    cmd = [binary, "validate", path]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
                    errors = out.stderr.count("unknown tier")
                    secs = best(cmd, args.repeat)
                    per = secs / n * 1e6
                    first = first or per
                    print(f"{n:>7} {secs:>11.3f} {per:>9.1f} {per / first:>9.2f} {errors:>7}"
                          f"   (validate / linear pass {secs / max(linear_pass(path), 1e-9):.0f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
