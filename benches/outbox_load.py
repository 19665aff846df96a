#!/usr/bin/env python3
"""Orders through a transactional outbox against publishing after the commit.

One orchestrator runs topology `outbox-bench`: a `postgres` tier whose
outbox feeds a durable `queue` tier (`outbox: { table: outbox }`), a
subscriber program that records when each message arrived, and a publisher
tier whose queue link this script publishes through. The clients are this
script's threads (psycopg, as a Python api would write), so the figures are
the data path's, not a web framework's. In one run, over interleaved rounds:

  outbox   BEGIN; INSERT the order; INSERT its outbox row; COMMIT
           (the db tier publishes the row once committed)
  direct   BEGIN; INSERT the order; COMMIT; POST the message to the queue
           link (the unsafe way: a crash between the two loses the message)

Each mode runs `--clients` threads for `--duration` seconds: orders per
second end to end (accepted by the database and delivered to the
subscriber), then the ratio outbox/direct against the target (>= 0.8). Then,
paced at `--rate` orders per second (moderate load), the commit-to-delivery
latency (from just before COMMIT to the subscriber's receipt): p50, p99
against the target (< 50 ms). Last, the relay alone: `--bulk` rows inserted
in one transaction, the insert's rate against the rate the relay empties
the table at.

Usage: benches/outbox_load.py [--rounds 3] [--duration 10] [--clients 8] [--rate 200] [--bulk 20000]
                              [--no-build] [--bin PATH]
Needs the machine's PostgreSQL and psycopg (scripts/setup-tools, scripts/setup-examples).
Only loopback addresses are used. Everything started is stopped by its PID.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import ROOT, Started, link_variables, prepare, start_orchestrator

TOPOLOGY = """
version: 1
name: outbox-bench
tiers:
  db:
    plugin: postgres
    config: {{ database: bench, settings: {{ max_connections: 100 }} }}
  q:
    plugin: queue
    config: {{ durable: true, capacity: 100000 }}
  sub:
    plugin: process
    config:
      command: [{python}, {subscriber}]
      readiness: {{ http: /healthz }}
  pub:
    plugin: process
    config:
      command: [sh, -c, 'env | grep ^ORCH_LINK_ > {env}; exec sleep 86400']
      readiness: {{ exec: ["true"] }}
links:
  - {{ from: db, to: q, kind: queue, topic: orders, outbox: {{ table: outbox, batch: 256 }} }}
  - {{ from: pub, to: q, kind: queue, topic: orders }}
  - {{ from: q, to: sub, kind: queue, topic: orders, concurrency: 16 }}
"""

# The subscriber: each delivery's body starts with the time before COMMIT;
# it keeps (arrival - that) per message, and hands them over at /take.
SUBSCRIBER = (
    "import json,os,threading,time\n"
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "seen=[]; lock=threading.Lock()\n"
    "class H(BaseHTTPRequestHandler):\n"
    "  protocol_version='HTTP/1.1'\n"
    "  def log_message(self,*a): pass\n"
    "  def reply(self,code,body=b''):\n"
    "    self.send_response(code); self.send_header('content-length',str(len(body))); self.end_headers(); self.wfile.write(body)\n"
    "  def do_POST(self):\n"
    "    body=self.rfile.read(int(self.headers['content-length']))\n"
    "    now=time.time(); t0=float(body.split(b' ',1)[0])\n"
    "    with lock: seen.append(now-t0)\n"
    "    self.reply(204)\n"
    "  def do_GET(self):\n"
    "    if self.path=='/take':\n"
    "      with lock: out=json.dumps(seen).encode(); seen.clear()\n"
    "      self.reply(200,out)\n"
    "    else: self.reply(200,b'ok')\n"
    "ThreadingHTTPServer(('127.0.0.1',int(os.environ['PORT'])),H).serve_forever()\n"
)

SCHEMA = "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, item text NOT NULL, quantity int NOT NULL)"


class Bench:
    def __init__(self, db_url, publish_url, sub_url):
        self.db_url, self.publish_url, self.sub_url = db_url, publish_url, sub_url

    def connect(self):
        import psycopg
        return psycopg.connect(self.db_url, autocommit=False)

    def order(self, conn, mode, publish):
        item, quantity = "widget", 3
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id", (item, quantity))
            order_id = cur.fetchone()[0]
            t0 = time.time()
            payload = f"{t0:.6f} " + json.dumps({"id": order_id, "item": item, "quantity": quantity})
            if mode == "outbox":
                cur.execute("INSERT INTO outbox (payload, content_type) VALUES (%s, 'text/plain')", (payload,))
        conn.commit()
        if mode == "direct":
            publish(payload.encode())

    def take(self):
        return json.load(urllib.request.urlopen(self.sub_url + "/take", timeout=30))

    def drain(self, expected, timeout=120):
        """The latencies of `expected` deliveries, waiting for them all."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(got)} of {expected} messages were delivered")
            got += self.take()
            time.sleep(0.05)
        return got

    def run(self, mode, clients, duration, rate=None):
        """Orders from `clients` threads for `duration` s (each paced to
        rate/clients per second if `rate`): how many, and when the last
        was delivered."""
        stop, counts, errors = threading.Event(), [0] * clients, []

        def client(i):
            conn = self.connect()
            opener = urllib.request.build_opener()

            def publish(body):
                req = urllib.request.Request(self.publish_url, data=body, method="POST",
                                             headers={"content-type": "text/plain"})
                with opener.open(req, timeout=30) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"publish answered {resp.status}")

            period = clients / rate if rate else 0
            next_at = time.monotonic()
            try:
                while not stop.is_set():
                    if period:
                        next_at += period
                        pause = next_at - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                    self.order(conn, mode, publish)
                    counts[i] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"{mode}: {errors[0]}")
        total = sum(counts)
        latencies = self.drain(total)
        elapsed = time.monotonic() - start
        return total, elapsed, latencies


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rate", type=int, default=200, help="orders per second for the latency run")
    ap.add_argument("--bulk", type=int, default=20000, help="rows in the relay-alone run")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bin", help="the orchestrator binary (default: target/release/orchestrator)")
    args = ap.parse_args()
    prepare(build=not args.no_build and not args.bin)
    python = os.path.join(ROOT, ".venv/bin/python")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        # The example's virtualenv has it (scripts/setup-examples).
        if os.path.exists(python) and sys.executable != python:
            os.execv(python, [python, *sys.argv])
        raise SystemExit("psycopg is missing: scripts/setup-examples installs it into .venv")

    started = Started()
    tmp = tempfile.mkdtemp(prefix="orch-outbox-bench-")
    os.chmod(tmp, 0o711)  # PostgreSQL runs as `postgres` when this is root: it passes through.
    try:
        env_file = os.path.join(tmp, "links.env")
        subscriber = os.path.join(tmp, "subscriber.py")
        with open(subscriber, "w") as f:
            f.write(SUBSCRIBER)
        _, status = start_orchestrator(
            started, TOPOLOGY.format(env=env_file, python=python, subscriber=subscriber), tmp, "topology.yaml",
            ["--no-watch", "--data-dir", os.path.join(tmp, "data")], binary=args.bin, timeout=120)
        tiers = {t["name"]: t for t in status["tiers"]}
        for name, t in tiers.items():
            if t["state"] != "running":
                raise SystemExit(f"tier {name} is {t['state']}: {t.get('reason')}")
        db_port = tiers["db"]["instances"][0]["detail"]["port"]
        sub_port = tiers["sub"]["instances"][0]["detail"]["port"]
        password = open(os.path.join(tmp, "data/db/password")).read().strip()
        links = link_variables(env_file, ["ORCH_LINK_Q_URL"])
        bench = Bench(f"postgresql://postgres:{password}@127.0.0.1:{db_port}/bench",
                      links["ORCH_LINK_Q_URL"] + "/", f"http://127.0.0.1:{sub_port}")
        with bench.connect() as conn:
            conn.execute(SCHEMA)
            conn.commit()

        print(f"outbox against publishing after the commit: {args.clients} clients, {args.duration} s per run, "
              f"{args.rounds} rounds; {os.cpu_count()} CPUs")
        rates = {"outbox": [], "direct": []}
        for r in range(args.rounds):
            for mode in (["outbox", "direct"] if r % 2 == 0 else ["direct", "outbox"]):
                total, elapsed, _ = bench.run(mode, args.clients, args.duration)
                rates[mode].append(total / elapsed)
                print(f"  round {r + 1} {mode:6}: {total:6} orders, {total / elapsed:8.0f} orders/s end to end")
        outbox, direct = statistics.median(rates["outbox"]), statistics.median(rates["direct"])
        ratio = outbox / direct
        print(f"throughput (median): outbox {outbox:.0f}/s, direct {direct:.0f}/s, "
              f"outbox/direct {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")

        for mode in ("outbox", "direct"):
            total, _, latencies = bench.run(mode, min(args.clients, 4), args.duration, rate=args.rate)
            ms = [v * 1000 for v in latencies]
            p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
            verdict = f" (target < 50 ms: {'met' if p99 < 50 else 'NOT met'})" if mode == "outbox" else ""
            print(f"commit to delivery at {args.rate}/s, {mode:6}: {total} orders, p50 {p50:.1f} ms, "
                  f"p99 {p99:.1f} ms, max {max(ms):.1f} ms{verdict}")

        with bench.connect() as conn:
            t0 = time.time()
            begin = time.monotonic()
            conn.execute(
                "INSERT INTO outbox (payload, content_type) SELECT %s || ' {}', 'text/plain' FROM generate_series(1, %s)",
                (f"{t0:.6f}", args.bulk))
            conn.commit()
            inserted = time.monotonic() - begin
            # The relay's own pace: until the table is empty (each batch
            # deleted once the broker stored it), deliveries aside.
            while conn.execute("SELECT count(*) FROM outbox").fetchone()[0] > 0:
                conn.commit()
                time.sleep(0.01)
            relayed = time.monotonic() - begin
            conn.commit()
        latencies = bench.drain(args.bulk, timeout=300)
        delivered = max(latencies)
        print(f"relay alone: {args.bulk} rows inserted in one transaction in {inserted:.2f} s "
              f"({args.bulk / inserted:.0f} rows/s); the relay emptied the table in {relayed:.2f} s "
              f"({args.bulk / relayed:.0f} rows/s, stored on the durable topic); all delivered to the "
              f"subscriber within {delivered:.2f} s")
    finally:
        started.stop()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
