#!/usr/bin/env python3
"""HTTP throughput of the orchestrator against a direct hyper server and nginx.

In one run, on this machine, interleaved A B C A B C ... over several rounds:

  A  orchestrator: gateway -> native backend plugin (one HTTP hop, then an in-process call)
  B  direct-hyper: the same work in a minimal hyper server (the limit of one HTTP hop)
  C  nginx (Debian), reverse-proxying to B, tuned as a user would (upstream keepalive,
     HTTP/1.1 upstream, empty Connection header, high keepalive_requests)
  D  orchestrator: gateway -> process tier running direct-hyper (one more HTTP hop, like C)
  E  hyper-proxy -> B: a reverse proxy of hyper alone, built like D's hop (threads with a
     single-threaded runtime each, as many as the orchestrator's workers; per-thread
     upstream pools) and nothing else: what hyper itself costs for that hop

wrk (-t1 -c32 by default) POSTs {"message":"Hello Go!"}. Prints req/s, p99 and
server CPU per request for each target and round, then pooled ratios A/B, A/C, D/C,
E/C and D/E, and the idle resident memory of topologies/hello.yaml next to nginx's.

With --before BIN (an orchestrator binary built before a change), A0 and D0
run A's and D's topologies on it in the same rounds, and A/A0 and D/D0 are
printed: a change on the request path, measured before and after in one run.
With --metrics-off, A0 and D0 are the same binary run with --no-metrics: what
recording the request metrics costs.

Usage: benches/http_load.py [--rounds 6] [--duration 5] [--connections 32] [--workers auto|N|shared]
                            [--pin-workers] [--no-build] [--before BIN | --metrics-off]
(--workers is passed to both orchestrators: how their connections are served. --pin-workers
binds their worker threads to CPUs, nginx's workers too (`worker_cpu_affinity auto`), and E's.)
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request

from benchlib import (RELEASE, ROOT, TICK, Started, children, cpu_ticks, post_script, prepare, rss_kib,
                      start_nginx, start_orchestrator, wait_line, wrk)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", default="auto", help="orchestrator run --workers (default: auto)")
    ap.add_argument("--pin-workers", action="store_true",
                    help="orchestrator run --pin-workers, and worker_cpu_affinity auto for nginx")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--before", help="an orchestrator binary from before a change: adds targets A0 and D0")
    ap.add_argument("--metrics-off", action="store_true",
                    help="adds targets A0 and D0: this binary with --no-metrics (what recording costs)")
    args = ap.parse_args()
    if args.before and args.metrics_off:
        ap.error("--before and --metrics-off both make A0 and D0: give one")

    prepare(build=not args.no_build)
    orch_args = ["--workers", args.workers] + (["--pin-workers"] if args.pin_workers else [])

    started = Started()
    tmp = tempfile.mkdtemp(prefix="orch-bench-")
    script = post_script(tmp)
    try:
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-hyper")], stdout=subprocess.PIPE, text=True))
        b_addr = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        with open(os.path.join(ROOT, "benches/topologies/gateway-backend.yaml")) as f:
            orch, status = start_orchestrator(started, f.read(), tmp, "gateway-backend.yaml", orch_args)
        a_addr = next(t["listen"] for t in status["tiers"] if t["name"] == "web")
        nginx, c_addr, _ = start_nginx(started, tmp, b_addr, "auto",
                                       main_extra="worker_cpu_affinity auto;" if args.pin_workers else "")
        nginx_pids = [nginx.pid] + children(nginx.pid)
        with open(os.path.join(ROOT, "benches/topologies/gateway-process.yaml")) as f:
            process_yaml = f.read().replace("DIRECT_HYPER", os.path.join(RELEASE, "direct-hyper"))
        orch_p, status_p = start_orchestrator(started, process_yaml, tmp, "gateway-process.yaml", orch_args)
        d_addr = next(t["listen"] for t in status_p["tiers"] if t["name"] == "web")
        # As many threads as the orchestrator has workers (`auto`: one per core but one).
        threads = {"auto": str(max(1, len(os.sched_getaffinity(0)) - 1))}.get(args.workers, args.workers)
        proxy_args = ["--threads", threads] + (["--pin"] if args.pin_workers else [])
        proxy = started.add(subprocess.Popen([os.path.join(RELEASE, "hyper-proxy"), b_addr] + proxy_args,
                                             stdout=subprocess.PIPE, text=True))
        e_addr = wait_line(proxy, proxy.stdout, r"listening on (\S+)").group(1)
        before = {}
        if args.before or args.metrics_off:
            args0 = orch_args + (["--no-metrics"] if args.metrics_off else [])
            with open(os.path.join(ROOT, "benches/topologies/gateway-backend.yaml")) as f:
                orch0, status0 = start_orchestrator(started, f.read(), tmp, "gateway-backend-0.yaml", args0, args.before)
            orch0_p, status0_p = start_orchestrator(started, process_yaml, tmp, "gateway-process-0.yaml", args0, args.before)
            web = lambda st: next(t["listen"] for t in st["tiers"] if t["name"] == "web")
            before = {
                "A0 before": (web(status0), [orch0.pid]),
                "D0 before": (web(status0_p), [orch0_p.pid] + children(orch0_p.pid)),
            }

        targets = {
            "A orchestrator": (a_addr, [orch.pid]),
            "B direct hyper": (b_addr, [direct.pid]),
            "C nginx -> B": (c_addr, nginx_pids + [direct.pid]),
            # CPU of the orchestrator and of the program it runs.
            "D orch -> process": (d_addr, [orch_p.pid] + children(orch_p.pid)),
            "E hyper proxy -> B": (e_addr, [proxy.pid, direct.pid]),
            **before,
        }
        # Each answers correctly before we measure.
        for name, (addr, _) in targets.items():
            req = urllib.request.Request(f"http://{addr}/backend", data=b'{"message":"Hello Go!"}', method="POST")
            body = urllib.request.urlopen(req).read()
            assert json.loads(body) == {"message": "Hello Python!", "data": "Hello Go!"}, (name, body)
            wrk(f"http://{addr}/backend", 1, args.connections, script)  # warm-up

        results = {name: [] for name in targets}
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, orchestrator {' '.join(orch_args)}")
        print(f"{'round':<6}{'target':<19}{'req/s':>10}{'p99 ms':>9}{'CPU us/req':>12}{'non-2xx':>9}  socket errors")
        for r in range(1, args.rounds + 1):
            for name, (addr, pids) in targets.items():
                # Not `before`: that names the before-targets, read after the rounds.
                ticks = cpu_ticks(pids)
                res = wrk(f"http://{addr}/backend", args.duration, args.connections, script)
                res["cpu_us"] = (cpu_ticks(pids) - ticks) / TICK * 1e6 / max(res["requests"], 1)
                results[name].append(res)
                print(f"{r:<6}{name:<19}{res['rps']:>10.0f}{res['p99_ms']:>9.2f}{res['cpu_us']:>12.2f}{res['non2xx']:>9}  {res['socket_errors']}")

        def pooled(name):
            rs = results[name]
            # Total requests over total measured time (wrk runs a little past -d).
            return (sum(x["requests"] for x in rs) / sum(x["requests"] / x["rps"] for x in rs),
                    sum(x["cpu_us"] * x["requests"] for x in rs) / sum(x["requests"] for x in rs),
                    sorted(x["p99_ms"] for x in rs)[len(rs) // 2])

        a, b, c, d, e = (pooled(n) for n in list(targets)[:5])
        print()
        print(f"pooled req/s: A {a[0]:.0f}  B {b[0]:.0f}  C {c[0]:.0f}  D {d[0]:.0f}  E {e[0]:.0f}")
        print(f"median p99 ms: A {a[2]:.2f}  B {b[2]:.2f}  C {c[2]:.2f}  D {d[2]:.2f}  E {e[2]:.2f}")
        print(f"D/C req/s = {d[0] / c[0]:.3f}  (target >= 1.0, p99 no worse: D {d[2]:.2f} ms vs C {c[2]:.2f} ms)")
        print(f"E/C req/s = {e[0] / c[0]:.3f}  (hyper alone against nginx); D/E = {d[0] / e[0]:.3f}  (the orchestrator against hyper alone)")
        print(f"A/B req/s = {a[0] / b[0]:.3f}  (target >= 0.9)")
        print(f"A/C req/s = {a[0] / c[0]:.3f}  (target >= 1.5)")
        print(f"CPU us/request: A {a[1]:.2f}  B {b[1]:.2f}  C (nginx + B) {c[1]:.2f}  D (orchestrator + program) {d[1]:.2f}  "
              f"E (hyper-proxy + B) {e[1]:.2f};  A/B = {a[1] / b[1]:.3f}  (target <= 1.1)")
        ratios = [x["rps"] / y["rps"] for x, y in zip(results["A orchestrator"], results["B direct hyper"])]
        print(f"A/B per round: {' '.join(f'{x:.3f}' for x in ratios)}")
        ratios = [x["rps"] / y["rps"] for x, y in zip(results["D orch -> process"], results["C nginx -> B"])]
        print(f"D/C per round: {' '.join(f'{x:.3f}' for x in ratios)}")
        if before:
            a0, d0 = pooled("A0 before"), pooled("D0 before")
            what = "recorded/unrecorded" if args.metrics_off else "after/before"
            print(f"{what} req/s: A/A0 = {a[0] / a0[0]:.3f}  D/D0 = {d[0] / d0[0]:.3f};  "
                  f"CPU us/request A {a[1]:.2f} vs A0 {a0[1]:.2f}, D {d[1]:.2f} vs D0 {d0[1]:.2f};  "
                  f"median p99 ms A {a[2]:.2f} vs A0 {a0[2]:.2f}, D {d[2]:.2f} vs D0 {d0[2]:.2f}")

        # Idle memory: the hello topology next to nginx with one worker.
        started.stop()
        started = Started()
        with open(os.path.join(ROOT, "topologies/hello.yaml")) as f:
            hello, _ = start_orchestrator(started, f.read().replace("127.0.0.1:8080", "127.0.0.1:0"), tmp, "hello.yaml")
        direct = started.add(subprocess.Popen([os.path.join(RELEASE, "direct-hyper")], stdout=subprocess.PIPE, text=True))
        b_addr = wait_line(direct, direct.stdout, r"listening on (\S+)").group(1)
        nginx1, _, _ = start_nginx(started, tmp, b_addr, 1)
        print(f"idle RSS: orchestrator (topologies/hello.yaml) {rss_kib([hello.pid]) / 1024:.1f} MiB; "
              f"nginx, 1 worker {rss_kib([nginx1.pid] + children(nginx1.pid)) / 1024:.1f} MiB")
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
