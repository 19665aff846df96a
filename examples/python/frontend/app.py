"""The frontend of the original two-tier example, as a Flask app.

GET /api POSTs {"message": "Hello Go!"} to the backend and returns the
backend's JSON. The backend's address comes from the orchestrator:
ORCH_LINK_BACKEND_URL is a local listener that balances over the backend's
replicas and keeps its address across reloads. The app serves on $PORT.
"""

import json
import os
import urllib.error
import urllib.request

from flask import Flask, Response, jsonify

app = Flask(__name__)
BACKEND_URL = os.environ.get("ORCH_LINK_BACKEND_URL", "http://localhost:8080")


@app.route("/api")
def api():
    body = json.dumps({"message": "Hello Go!"}).encode()
    request = urllib.request.Request(
        f"{BACKEND_URL}/backend", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return Response(answer.read(), status=answer.status, content_type="application/json")
    except urllib.error.HTTPError as error:
        return Response(error.read(), status=error.code, content_type="application/json")
    except OSError as error:
        return jsonify(error=f"the backend is unreachable: {error}"), 502


@app.route("/healthz")
def healthz():
    return "ok\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
