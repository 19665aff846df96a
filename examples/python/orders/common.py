"""What the api and the consumers of topologies/orders-db.yaml share: a
PostgreSQL connection per thread, retried once on a new connection when the
server went away, and the cache's write that never goes back in time."""

import json
import os
import threading

import psycopg
import redis

DB_URL = os.environ["ORCH_LINK_DB_URL"]
CACHE_TTL = 300
local = threading.local()

# The tiers with a link to the cache get its URL; the audit has none.
CACHE = redis.Redis.from_url(os.environ["ORCH_LINK_CACHE_URL"], socket_timeout=5) if "ORCH_LINK_CACHE_URL" in os.environ else None

# Keeps an order's cached state only if it is newer than the one cached:
# a reader that read the database before a change cannot put back what the
# change replaced.
_SET_NEWER = CACHE and CACHE.register_script(
    """
    local cached = redis.call('GET', KEYS[1])
    if cached and tonumber(cjson.decode(cached)['version']) >= tonumber(ARGV[2]) then
        return 0
    end
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
    return 1
    """
)


def db(work):
    """Runs work(connection) in one transaction on this thread's connection;
    once more on a new connection if the server went away. Only for work
    that may run twice (each here is idempotent)."""
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


def order_row(conn, order_id):
    row = conn.execute(
        "SELECT id, item, quantity, status, version FROM orders WHERE id = %s", (order_id,)
    ).fetchone()
    if row is None:
        return None
    return {"id": row[0], "item": row[1], "quantity": row[2], "status": row[3], "version": row[4]}


def cache_order(order):
    """Caches `order` unless a newer state of it is cached. A cache that is
    down only costs reads from the database."""
    if CACHE is None:
        return
    try:
        _SET_NEWER(keys=[f"order:{order['id']}"], args=[json.dumps(order), order["version"], CACHE_TTL])
    except redis.RedisError:
        pass
