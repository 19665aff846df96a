"""The `api` tier of topologies/orders-db.yaml.

POST /api/orders {"id": "…", "item": "widget", "quantity": 3}
    One transaction: the order, and its message in the outbox table. The
    `db` tier publishes the message once the transaction has committed
    (its link's `outbox:`), so a message is never sent for an order that
    was not stored, and an order stored is never left unannounced. The id
    is the client's (one is made if it gives none): a POST retried after a
    lost answer is the same order, stored and announced once.
    → 201 {"id": …, "status": "accepted"}  (200 when it was already there)
GET /api/orders/<id>
    Through the Redis cache (cache-aside): the cached state, else the
    database's, cached. The worker writes the new state when it changes
    the order; a state older than the cached one is never cached.
"""

import json
import logging
import os
import uuid

import psycopg
import redis
from flask import Flask, jsonify, request

from common import CACHE, cache_order, db, order_row

app = Flask(__name__)
# One line per request is too many for the orchestrator's log.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@app.post("/api/orders")
def create():
    body = request.get_json(force=True, silent=True) or {}
    order_id = str(body.get("id") or uuid.uuid4())
    item, quantity = body.get("item"), body.get("quantity")
    if not isinstance(item, str) or not isinstance(quantity, int) or quantity <= 0:
        return jsonify(error="an order is {\"item\": text, \"quantity\": a positive integer}"), 400
    message = json.dumps({"id": order_id, "item": item, "quantity": quantity})

    def write(conn):
        made = conn.execute(
            "INSERT INTO orders (id, item, quantity) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (order_id, item, quantity),
        ).rowcount
        if made:
            # Last in the transaction: the outbox row's id is drawn after
            # the order's row is written.
            conn.execute("INSERT INTO outbox (payload) VALUES (%s)", (message,))
        return made

    made = db(write)
    return jsonify(id=order_id, status="accepted"), 201 if made else 200


@app.get("/api/orders/<order_id>")
def read(order_id):
    try:
        hit = CACHE.get(f"order:{order_id}")
    except redis.RedisError:
        hit = None
    if hit is not None:
        return jsonify(json.loads(hit) | {"cached": True})
    order = db(lambda c: order_row(c, order_id))
    if order is None:
        return jsonify(error=f"no order {order_id}"), 404
    cache_order(order)
    return jsonify(order | {"cached": False})


@app.get("/healthz")
def healthz():
    return "ok\n"


@app.errorhandler(psycopg.Error)
def database_error(error):
    return jsonify(error=f"the database: {error}"), 503


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
