"""The audit tier of topologies/orders.yaml: a Flask app that receives every
order from the queue tier.

The broker POSTs each message to /messages/orders on $PORT, with the headers
orch-message-id, orch-message-attempt, orch-topic and orch-published-at; a 2xx
answer acknowledges it, anything else has it redelivered later. Deliveries are
at least once, so the audit log is keyed by message id: a repeat is recorded
once. GET /audit lists what was recorded.
"""

import os
import threading

from flask import Flask, jsonify, request

app = Flask(__name__)
lock = threading.Lock()
records = {}


@app.route("/messages/orders", methods=["POST"])
def receive():
    message_id = request.headers.get("orch-message-id")
    if not message_id:
        return jsonify(error="not a delivery: no orch-message-id header"), 400
    order = request.get_json(silent=True)
    if order is None:
        # Acknowledge anyway: retrying an unreadable message cannot help; keep it for review.
        order = {"unreadable": request.get_data(as_text=True)}
    with lock:
        first = message_id not in records
        if first:
            records[message_id] = {"id": message_id, "order": order}
    print(f"audit: order {message_id} {'recorded' if first else 'seen again'}", flush=True)
    return "", 204


@app.route("/audit")
def audit():
    with lock:
        return jsonify(count=len(records), orders=list(records.values()))


@app.route("/healthz")
def healthz():
    return "ok\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
