"""The `worker` and `audit` tiers of topologies/orders-db.yaml: each order
message applied exactly once, over deliveries that come at least once.

The pattern, in one transaction: record the message's id (`orch-message-id`,
the same on every delivery of it) in `processed`, apply the effect, commit;
then answer 2xx, which acknowledges the delivery. A repeat finds its id
already there (the insert does nothing) and is acknowledged without applying
anything. If the program dies before the commit, nothing was applied and the
message comes again; after it, the id is there when it comes again.

ROLE=worker: takes the order's items from stock and marks the order applied
(then caches its new state). ROLE=audit: records the order in `audit`.
"""

import json
import logging
import os

import psycopg
from flask import Flask, jsonify, request

from common import cache_order, db, order_row

app = Flask(__name__)
# One line per request is too many for the orchestrator's log.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
ROLE = os.environ.get("ROLE", "worker")


@app.post("/messages/orders")
def deliver():
    message_id = request.headers["orch-message-id"]
    order = json.loads(request.get_data())

    def apply(conn):
        first = conn.execute(
            "INSERT INTO processed (consumer, message_id, order_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (ROLE, message_id, order["id"]),
        ).rowcount
        if not first:
            conn.execute("INSERT INTO duplicates (consumer, message_id) VALUES (%s, %s)", (ROLE, message_id))
            return order_row(conn, order["id"]) if ROLE == "worker" else None
        if ROLE == "worker":
            conn.execute(
                "UPDATE stock SET quantity = quantity - %s WHERE item = %s", (order["quantity"], order["item"])
            )
            conn.execute(
                "UPDATE orders SET status = 'applied', version = version + 1 WHERE id = %s", (order["id"],)
            )
            return order_row(conn, order["id"])
        conn.execute(
            "INSERT INTO audit (order_id, message_id, item, quantity) VALUES (%s, %s, %s, %s)",
            (order["id"], message_id, order["item"], order["quantity"]),
        )
        return None

    changed = db(apply)
    if changed is not None:
        # After the commit; on a repeat too, in case the first one died before it.
        cache_order(changed)
    return "", 204


@app.get("/healthz")
def healthz():
    return "ok\n"


@app.errorhandler(psycopg.Error)
def database_error(error):
    return jsonify(error=f"the database: {error}"), 503


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
