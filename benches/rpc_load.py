#!/usr/bin/env python3
"""Unary RPC throughput: through an RPC link against a gRPC server direct.

In one run, on this machine:

  A  a gRPC client (benches/grpc_load.rs, hyper HTTP/2, 4 connections, 32 calls
     in flight) -> the orchestrator's link listener (ORCH_LINK_PRICING_ADDR) ->
     the native `pricing` plugin (2 replicas)
  B  the same client -> `direct-grpc` (benches/direct_grpc.rs): a plain hyper
     HTTP/2 gRPC server doing the same work, nothing in between
  N  native -> native over the link, in process: criterion's
     `rpc_call/link_to_pricing` (one core)

A and B interleave over --rounds rounds of --duration seconds. Prints calls/s
and p99 for each, and the ratio A/B.

Usage: benches/rpc_load.py [--rounds 5] [--duration 5] [--no-build]
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from benchlib import RELEASE, ROOT, TICK, Started, cpu_ticks, prepare, start_orchestrator, wait_line


def load(addr, duration):
    out = subprocess.run([os.path.join(RELEASE, "grpc-load"), addr, "--duration", str(duration)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    prepare(build=not args.no_build)

    tmp = tempfile.mkdtemp(prefix="orch-rpc-bench-")
    started = Started()
    try:
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-grpc")], stdout=subprocess.PIPE, text=True))
        b_addr = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        addr_file = os.path.join(tmp, "addr")
        # A process tier whose program only tells us its link's address.
        topology = f"""
version: 1
name: bench-rpc
tiers:
  caller:
    plugin: process
    config:
      command: [sh, -c, 'echo "$ORCH_LINK_PRICING_ADDR" > {addr_file}; exec sleep 1000000']
      readiness: {{ exec: ["true"] }}
  pricing: {{ plugin: pricing, replicas: 2 }}
links:
  - {{ from: caller, to: pricing, kind: rpc }}
"""
        orch, _ = start_orchestrator(started, topology, tmp, "rpc.yaml")
        deadline = time.time() + 10
        while not (os.path.exists(addr_file) and open(addr_file).read().strip()):
            if time.time() > deadline:
                raise RuntimeError("the link address never appeared")
            time.sleep(0.05)
        a_addr = open(addr_file).read().strip()

        load(a_addr, 1)  # warm-up
        load(b_addr, 1)
        results = {"A link": [], "B direct": []}
        print(f"grpc-load: 4 HTTP/2 connections, 32 calls in flight, {args.duration}s, {args.rounds} interleaved rounds")
        print(f"{'round':<6}{'target':<10}{'calls/s':>10}{'p50 us':>9}{'p99 us':>9}{'errors':>8}{'server CPU us/call':>20}")
        for r in range(1, args.rounds + 1):
            for name, addr, pid in (("A link", a_addr, orch.pid), ("B direct", b_addr, direct.pid)):
                before = cpu_ticks([pid])
                res = load(addr, args.duration)
                res["cpu_us"] = (cpu_ticks([pid]) - before) / TICK * 1e6 / max(res["calls"], 1)
                results[name].append(res)
                print(f"{r:<6}{name:<10}{res['calls_per_sec']:>10.0f}{res['p50_us']:>9}{res['p99_us']:>9}{res['errors']:>8}{res['cpu_us']:>20.2f}")

        def pooled(name):
            rs = results[name]
            calls = sum(x["calls"] for x in rs)
            cpu = sum(x["cpu_us"] * x["calls"] for x in rs) / calls
            return calls / sum(x["calls"] / x["calls_per_sec"] for x in rs), sorted(x["p99_us"] for x in rs)[len(rs) // 2], cpu

        (a, a99, acpu), (b, b99, bcpu) = pooled("A link"), pooled("B direct")
        print()
        print(f"pooled calls/s: A {a:.0f}  B {b:.0f};  A/B = {a / b:.3f}")
        print(f"median p99: A {a99} us  B {b99} us")
        print(f"server CPU per call: A {acpu:.2f} us  B {bcpu:.2f} us;  A/B = {acpu / bcpu:.3f}")

        bench = subprocess.run(
            ["cargo", "bench", "-p", "benches", "--bench", "abi", "--", "rpc_call", "--warm-up-time", "1", "--measurement-time", "3"],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
        m = re.search(r"rpc_call/link_to_pricing\s+time:\s+\[\S+ \S+ ([\d.]+) (ns|µs)", bench)
        if m:
            ns = float(m.group(1)) * (1000 if m.group(2) == "µs" else 1)
            print(f"N native -> native over the link: {ns:.0f} ns/call = {1e9 / ns:.0f} calls/s on one core")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
