#!/usr/bin/env python3
"""Message throughput and publish->deliver latency: the embedded broker
against nats-server, in one run, 128-byte messages.

Embedded broker (the orchestrator running benches/plugins/qbench):
  a native publisher tier -> queue tier -> native consumer tier(s), in process:
    pubsub  one subscribing tier
    p2p     two competing consumers (point-to-point, one tier of 2 replicas)
  publishing one message per call (`publish`) or 64 per call (`publish_batch`);
  in memory, and durable (redb, fsync on every commit).
  HTTP publish from outside: wrk POSTs to the gateway, whose route is a queue
  link into the broker; a native tier consumes. Baseline: the same POSTs to a
  native tier that answers 202 at once.

nats-server (Debian's, installed if missing), driven by benches/nats-load
(async-nats, publisher and subscribers on their own connections):
    core       1 publisher, 1 subscriber
    queue      1 publisher, a queue group of 2 subscribers
    jetstream  file-backed stream, publishes acknowledged with 256 in flight,
               one pull consumer with explicit acks

The orchestrator with `backend: nats` (the queue tier on that JetStream
server, file storage), against the same JetStream run directly:
    nats backend, pubsub      publish with 256 in flight, one subscribing tier
    nats backend, p2p x2      two competing consumers

Each measurement: N messages, end-to-end messages/s (first publish to last
delivery) and latency percentiles of publish->deliver; every pair is
interleaved over --rounds rounds and the medians compared.

Usage: benches/queue_load.py [--rounds 3] [--messages 2000000] [--durable-messages 500000] [--nats-messages 100000] [--no-build]
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import ROOT, Started, free_port, prepare, start_orchestrator, wrk

NATS_LOAD = os.path.join(ROOT, "benches", "nats-load")


def ensure_nats():
    if not shutil.which("nats-server") and not os.path.exists("/usr/sbin/nats-server"):
        print("installing nats-server from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nats-server"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "--manifest-path", os.path.join(NATS_LOAD, "Cargo.toml")],
                   check=True)


def nats_version():
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    return subprocess.run([server, "--version"], capture_output=True, text=True).stdout.strip()


def topology(durable, data_dir, nats_url=None):
    store = f", durable: true, data_dir: '{data_dir}'" if durable else ""
    capacity = 100000
    if nats_url:
        store = f", backend: nats, url: '{nats_url}'"
        capacity = 1000000
    return f"""
version: 1
name: bench-queue
tiers:
  web:
    plugin: gateway
    listen: 127.0.0.1:0
    config:
      routes:
        - {{ path: /publish, link: publish }}
        - {{ path: /noop, link: producer }}
        - {{ path: /, link: producer }}
  producer: {{ plugin: qbench }}
  q:
    plugin: queue
    config: {{ capacity: {capacity}, max_message_size: 65536{store} }}
  consumer: {{ plugin: qbench }}
  workers: {{ plugin: qbench, replicas: 2 }}
links:
  - {{ from: web, to: producer, kind: rest, timeout: 600s }}
  - {{ from: web, to: q, kind: queue, name: publish, topic: http }}
  - {{ from: producer, to: q, kind: queue, name: pubsub, topic: pubsub }}
  - {{ from: producer, to: q, kind: queue, name: p2p, topic: p2p }}
  - {{ from: q, to: consumer, kind: queue, topic: pubsub }}
  - {{ from: q, to: consumer, kind: queue, name: consumer-http, topic: http }}
  - {{ from: q, to: workers, kind: queue, topic: p2p, mode: point-to-point, concurrency: 2 }}
"""


def http(method, url):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = resp.read()
        return json.loads(body) if body else None


def ours(web, link, n, batch, window):
    run = http("POST", f"http://{web}/run?n={n}&size=128&batch={batch}&window={window}&link={link}")
    if run["failed"]:
        raise RuntimeError(f"publishes failed: {run}")
    return http("GET", f"http://{web}/result?n={n}")


def nats(url, mode, n, extra=()):
    out = subprocess.run([os.path.join(NATS_LOAD, "target", "release", "nats-load"), url, mode, "--messages", str(n), *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2_000_000)
    ap.add_argument("--durable-messages", type=int, default=500_000)
    ap.add_argument("--nats-messages", type=int, default=100_000, help="messages of the backend: nats cases")
    ap.add_argument("--duration", type=int, default=5, help="seconds of each wrk run (HTTP publish)")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    prepare(build=not args.no_build)
    ensure_nats()

    tmp = tempfile.mkdtemp(prefix="orch-queue-bench-")
    started = Started()
    try:
        port = free_port()
        server = shutil.which("nats-server") or "/usr/sbin/nats-server"
        nats_proc = started.add(subprocess.Popen(
            [server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", os.path.join(tmp, "jetstream")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"nats://127.0.0.1:{port}"
        deadline = time.time() + 10
        while True:
            try:
                nats(url, "core", 1000)
                break
            except subprocess.CalledProcessError:
                if time.time() > deadline or nats_proc.poll() is not None:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.1)

        def start(durable, name, nats_url=None):
            yaml = topology(durable, os.path.join(tmp, name), nats_url)
            orch, status = start_orchestrator(started, yaml, tmp, f"{name}.yaml")
            web = next(t["listen"] for t in status["tiers"] if t["name"] == "web")
            return orch, web

        mem_orch, mem = start(False, "memory")
        dur_orch, dur = start(True, "durable")
        js_orch, js = start(False, "jetstream", url)
        n, dn, jn = args.messages, args.durable_messages, args.nats_messages
        cases = [
            # (label, ours, nats baseline label, nats)
            ("pubsub, publish", lambda: ours(mem, "pubsub", n, 1, 1), "NATS core", lambda: nats(url, "core", n)),
            ("pubsub, publish_batch 64", lambda: ours(mem, "pubsub", n, 64, 1), "NATS core", lambda: nats(url, "core", n)),
            ("p2p x2, publish", lambda: ours(mem, "p2p", n, 1, 1), "NATS queue x2", lambda: nats(url, "queue", n)),
            ("p2p x2, publish_batch 64", lambda: ours(mem, "p2p", n, 64, 1), "NATS queue x2", lambda: nats(url, "queue", n)),
            ("durable, publish, 256 in flight", lambda: ours(dur, "pubsub", dn, 1, 256), "JetStream", lambda: nats(url, "jetstream", dn)),
            ("durable, publish_batch 64, 16 in flight", lambda: ours(dur, "pubsub", dn, 64, 16), "JetStream", lambda: nats(url, "jetstream", dn)),
            ("nats backend, pubsub, 256 in flight", lambda: ours(js, "pubsub", jn, 1, 256), "JetStream, same n", lambda: nats(url, "jetstream", jn)),
            ("nats backend, p2p x2, 256 in flight", lambda: ours(js, "p2p", jn, 1, 256), "JetStream, same n", lambda: nats(url, "jetstream", jn)),
            ("embedded durable, pubsub, 256 in flight", lambda: ours(dur, "pubsub", jn, 1, 256), "JetStream, same n", lambda: nats(url, "jetstream", jn)),
        ]
        # Warm up both.
        ours(mem, "pubsub", 100_000, 64, 1)
        nats(url, "core", 100_000)
        results = {}
        print(f"{nats_version()}; {n} messages in memory, {dn} durable; 128 B; {args.rounds} interleaved rounds")
        print(f"{'round':<6}{'case':<42}{'msgs/s':>11}{'p50 us':>10}{'p99 us':>10}{'lost':>9}")
        for r in range(1, args.rounds + 1):
            for label, run_ours, base, run_nats in cases:
                for name, run in ((label, run_ours), (f"  {base}", run_nats)):
                    if name in results and len(results[name]) >= r:
                        continue  # a baseline shared by two cases runs once per round
                    res = run()
                    results.setdefault(name, []).append(res)
                    print(f"{r:<6}{name:<42}{res['msgs_per_s']:>11.0f}{res['p50_us']:>10}{res['p99_us']:>10}{res.get('lost', 0):>9}")

        def med(name, key):
            return statistics.median(x[key] for x in results[name])

        print()
        print("medians (ratio = ours / baseline msgs/s; lost = messages published but never delivered, all rounds):")
        print(f"{'case':<42}{'msgs/s':>11}{'p99 us':>10}{'lost':>6}{'baseline':>16}{'msgs/s':>11}{'p99 us':>10}{'lost':>9}{'ratio':>7}")
        for label, _, base, _ in cases:
            a, b = med(label, "msgs_per_s"), med(f"  {base}", "msgs_per_s")
            lost_a = sum(x.get("lost", 0) for x in results[label])
            lost_b = sum(x.get("lost", 0) for x in results[f"  {base}"])
            print(f"{label:<42}{a:>11.0f}{med(label, 'p99_us'):>10.0f}{lost_a:>6}{base:>16}{b:>11.0f}"
                  f"{med(f'  {base}', 'p99_us'):>10.0f}{lost_b:>9}{a / b:>7.2f}")

        # HTTP publish from outside, against the same POSTs to a native tier.
        body = os.path.join(tmp, "publish.lua")
        with open(body, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 128)\nwrk.headers["Content-Type"] = "application/octet-stream"\n')
        print()
        print(f"HTTP publish: wrk -t1 -c32, {args.duration}s, 128-byte bodies, {args.rounds} interleaved rounds")
        print(f"{'round':<6}{'target':<28}{'req/s':>10}{'p99 ms':>9}{'non-2xx':>9}{'delivered':>11}")
        http_results = {"publish": [], "noop": []}
        for r in range(1, args.rounds + 1):
            http("POST", f"http://{mem}/reset")
            pub = wrk(f"http://{mem}/publish", args.duration, 32, body)
            got = http("GET", f"http://{mem}/result?n={pub['requests']}")
            pub["delivered"] = got["received"]
            noop = wrk(f"http://{mem}/noop", args.duration, 32, body)
            noop["delivered"] = 0
            for name, res in (("publish (gateway -> queue)", pub), ("baseline (gateway -> 202)", noop)):
                http_results["publish" if name.startswith("publish") else "noop"].append(res)
                print(f"{r:<6}{name:<28}{res['rps']:>10.0f}{res['p99_ms']:>9.2f}{res['non2xx']:>9}{res['delivered']:>11}")
        p = statistics.median(x["rps"] for x in http_results["publish"])
        b = statistics.median(x["rps"] for x in http_results["noop"])
        print(f"median req/s: publish {p:.0f}, baseline {b:.0f}; publish/baseline = {p / b:.2f}")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
