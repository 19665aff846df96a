"""The `api` tier of topologies/stores.yaml: items in PostgreSQL, read
through a Redis cache.

Its database and cache come from the orchestrator as connection strings:
ORCH_LINK_DB_URL (postgresql://…) and ORCH_LINK_CACHE_URL (redis://…), each
at a local address that stays the same while the app runs, whatever
happens to the server behind it. When a server restarts, a connection in
use fails once; the app opens a new one to the same address and retries.

    POST /items {"name": "…", "price_cents": 250}  → 201 {"id": …}
    GET  /items/<id>                               → the item; "cached": true when Redis had it
    GET  /items/<id>?fresh=1                       → from PostgreSQL only
    GET  /stats                                    → rows in PostgreSQL, creations counted in Redis
"""

import json
import os
import threading

import psycopg
import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
DB_URL = os.environ["ORCH_LINK_DB_URL"]
CACHE = redis.Redis.from_url(
    os.environ["ORCH_LINK_CACHE_URL"], socket_timeout=5, retry_on_error=[redis.ConnectionError]
)
local = threading.local()


def db(work):
    """Runs work(connection) in a transaction, on this thread's connection;
    once more on a new connection if the server went away."""
    for attempt in (1, 2):
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = psycopg.connect(DB_URL, connect_timeout=5)
        try:
            with conn.transaction():
                return work(conn)
        except psycopg.OperationalError:
            conn.close()
            if attempt == 2:
                raise


@app.post("/items")
def create():
    body = request.get_json(force=True)
    name, price = body.get("name"), int(body.get("price_cents", 0))
    row = db(lambda c: c.execute(
        "INSERT INTO items (name, price_cents) VALUES (%s, %s) RETURNING id", (name, price)
    ).fetchone())
    # Committed: now counted. A count lost to a cache restart is only a count.
    try:
        CACHE.incr("items:created")
    except redis.RedisError:
        pass
    return jsonify(id=row[0]), 201


@app.get("/items/<int:item>")
def read(item):
    key = f"item:{item}"
    if request.args.get("fresh") != "1":
        try:
            hit = CACHE.get(key)
        except redis.RedisError:
            hit = None
        if hit is not None:
            return jsonify(json.loads(hit) | {"cached": True})
    row = db(lambda c: c.execute("SELECT id, name, price_cents FROM items WHERE id = %s", (item,)).fetchone())
    if row is None:
        return jsonify(error=f"no item {item}"), 404
    found = {"id": row[0], "name": row[1], "price_cents": row[2]}
    try:
        CACHE.set(key, json.dumps(found), ex=60)
    except redis.RedisError:
        pass
    return jsonify(found | {"cached": False})


@app.get("/stats")
def stats():
    rows = db(lambda c: c.execute("SELECT count(*) FROM items").fetchone()[0])
    return jsonify(items=rows, created=int(CACHE.get("items:created") or 0))


@app.get("/healthz")
def healthz():
    return "ok\n"


@app.errorhandler(psycopg.Error)
def database_error(error):
    return jsonify(error=f"the database: {error}"), 503


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
