#!/usr/bin/env python3
"""TCP links against the server direct and against HAProxy, for PostgreSQL and Redis.

One orchestrator runs topology `stores-bench` (a `postgres` tier, a `redis`
tier, and a caller with a `tcp` link to each); HAProxy 2.6 (Debian's) runs
in TCP mode in front of the same two servers, tuned as its docs advise
(`option splice-auto`, one thread per core, `tune.bufsize` 64 KiB, no
logging). In one run, over interleaved rounds, each client runs against:

  direct   the server's own port
  link     the tcp link's local address (the orchestrator's listener, spliced)
  haproxy  HAProxy's frontend

Clients: `pgbench -S -c 8 -j 2` (select-only, scale 10), and `pgbench -S -C`
(a new connection per transaction: what the proxy adds per connection);
`redis-benchmark` for PING, GET and SET, 50 clients, without and with
pipelining (-P 16), and with one client (-c 1: the added latency per round
trip). Prints each figure, then pooled ratios link/direct and link/haproxy
against the targets (pgbench TPS >= 0.95x direct, redis >= 0.9x direct, both
>= 1.0x HAProxy).

Usage: benches/tcp_load.py [--rounds 3] [--duration 10] [--requests 200000] [--no-build] [--bin PATH]
                           [--workers auto|N|shared]
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

from benchlib import Started, free_port, link_variables, prepare, start_orchestrator

TOPOLOGY = """
version: 1
name: stores-bench
tiers:
  db:
    plugin: postgres
    config: {{ database: bench, settings: {{ max_connections: 100 }} }}
  cache:
    plugin: redis
  caller:
    plugin: process
    config:
      command: [sh, -c, 'env | grep ^ORCH_LINK_ > {env}; exec sleep 86400']
      readiness: {{ exec: ["true"] }}
links:
  - {{ from: caller, to: db, kind: tcp, max_connections: 4096 }}
  - {{ from: caller, to: cache, kind: tcp, max_connections: 4096 }}
"""

HAPROXY = """
global
    nbthread {threads}
    maxconn 4000
    tune.bufsize 65536
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:{pg_port}
    server db 127.0.0.1:{db_port}
listen redis
    bind 127.0.0.1:{redis_port}
    server cache 127.0.0.1:{cache_port}
"""


def pgbench(port, password, args):
    out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *args, "bench"],
                         env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {args}: {out.stderr}")
    # `-C` counts the connections in: "(including reconnection times)".
    tps = float(re.search(r"tps = ([\d.]+) \((?:without initial connection|including reconnection) time", out.stdout).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))
    return tps, latency


def redis_bench(port, password, args):
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-a", password, "--csv", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark {args}: {out.stderr}")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    return {row["test"]: (float(row["rps"]), float(row["avg_latency_ms"])) for row in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--requests", type=int, default=200000, help="requests per redis-benchmark test")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bin", help="the orchestrator binary (default: target/release/orchestrator)")
    ap.add_argument("--workers", default="auto", help="orchestrator run --workers (default: auto)")
    args = ap.parse_args()
    prepare(build=not args.no_build and not args.bin)
    for tool in ["pgbench", "redis-benchmark", "haproxy"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: scripts/setup-tools installs it")

    started = Started()
    tmp = tempfile.mkdtemp(prefix="orch-tcp-bench-")
    os.chmod(tmp, 0o711)  # PostgreSQL runs as `postgres` when this is root: it passes through.
    try:
        env_file = os.path.join(tmp, "links.env")
        _, status = start_orchestrator(
            started, TOPOLOGY.format(env=env_file), tmp, "topology.yaml",
            ["--no-watch", "--data-dir", os.path.join(tmp, "data"), "--workers", args.workers],
            binary=args.bin, timeout=120)
        port = {t["name"]: t["instances"][0]["detail"]["port"] for t in status["tiers"] if t["name"] in ("db", "cache")}
        # The caller writes its links' variables as it starts (it is ready at once).
        links = link_variables(env_file, ["ORCH_LINK_DB_PORT", "ORCH_LINK_CACHE_PORT"])
        pg_pass = open(os.path.join(tmp, "data/db/password")).read().strip()
        redis_pass = open(os.path.join(tmp, "data/cache/password")).read().strip()

        hp_pg, hp_redis = free_port(), free_port()
        conf = os.path.join(tmp, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(HAPROXY.format(threads=len(os.sched_getaffinity(0)), pg_port=hp_pg, db_port=port["db"],
                                   redis_port=hp_redis, cache_port=port["cache"]))
        subprocess.run(["haproxy", "-c", "-q", "-f", conf], check=True)
        haproxy = started.add(subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, text=True))
        targets = {
            "direct": (port["db"], port["cache"]),
            "link": (int(links["ORCH_LINK_DB_PORT"]), int(links["ORCH_LINK_CACHE_PORT"])),
            "haproxy": (hp_pg, hp_redis),
        }
        # HAProxy answers once it listens.
        deadline = time.monotonic() + 10
        while True:
            if haproxy.poll() is not None:
                raise SystemExit(f"haproxy exited: {haproxy.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", hp_pg), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("haproxy does not listen")
                time.sleep(0.05)
        subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port["db"]), "-U", "postgres", "-i", "-q", "-s", "10",
                        "bench"], env={**os.environ, "PGPASSWORD": pg_pass}, check=True, capture_output=True)

        n = str(args.requests)
        runs = {
            "pgbench -S -c 8 (TPS)": lambda p, r: pgbench(p, pg_pass, ["-S", "-n", "-c", "8", "-j", "2", "-T", str(args.duration)]),
            "pgbench -S -C -c 8 (TPS, a connection each)": lambda p, r: pgbench(
                p, pg_pass, ["-S", "-n", "-C", "-c", "8", "-j", "2", "-T", str(args.duration)]),
        }
        redis_runs = {
            "redis -c 50": ["-c", "50", "-n", n, "-t", "ping,get,set"],
            "redis -c 50 -P 16": ["-c", "50", "-n", n, "-P", "16", "-t", "ping,get,set"],
            "redis -c 1": ["-c", "1", "-n", str(args.requests // 10), "-t", "ping,get,set"],
        }
        results = {}  # (figure, target) -> [(rate, latency ms)]
        print(f"{args.rounds} interleaved rounds; pgbench -T {args.duration}, redis-benchmark -n {args.requests}")
        print(f"{'round':<6}{'figure':<46}{'target':<9}{'rate/s':>11}{'avg ms':>9}")
        for r in range(1, args.rounds + 1):
            for target, (pg, rd) in targets.items():
                for figure, run in runs.items():
                    rate, latency = run(pg, r)
                    results.setdefault((figure, target), []).append((rate, latency))
                    print(f"{r:<6}{figure:<46}{target:<9}{rate:>11.0f}{latency:>9.3f}", flush=True)
                for name, rargs in redis_runs.items():
                    for test, (rate, latency) in redis_bench(rd, redis_pass, rargs).items():
                        figure = f"{name} {test}"
                        results.setdefault((figure, target), []).append((rate, latency))
                        print(f"{r:<6}{figure:<46}{target:<9}{rate:>11.0f}{latency:>9.3f}", flush=True)

        def pooled(figure, target):
            rs = results[(figure, target)]
            return sum(x[0] for x in rs) / len(rs), sum(x[1] for x in rs) / len(rs)

        print()
        print(f"{'figure':<46}{'link/direct':>12}{'link/haproxy':>13}{'added ms vs direct':>20}{'haproxy adds':>14}")
        figures = sorted({f for f, _ in results}, key=lambda f: (not f.startswith("pgbench"), f))
        for figure in figures:
            (d, dl), (l, ll), (h, hl) = (pooled(figure, t) for t in ("direct", "link", "haproxy"))
            print(f"{figure:<46}{l / d:>12.3f}{l / h:>13.3f}{ll - dl:>20.3f}{hl - dl:>14.3f}")
        print("targets: pgbench -S -c 8 link/direct >= 0.95, redis link/direct >= 0.9, link/haproxy >= 1.0")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
