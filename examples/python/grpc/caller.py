"""A process tier that calls RPC links with an ordinary gRPC client (grpcio).

It serves HTTP on $PORT (standard library only), and for each request makes
gRPC calls through the orchestrator: the address of each outbound RPC link
`<name>` is in $ORCH_LINK_<NAME>_ADDR, a plain host:port a channel dials.
Messages are bytes: no generated code is needed.

  GET /call?link=pricing&method=pricing.Pricing/Quote&message=...&timeout=0.1&md-<key>=<value>
      -> {"code": "OK", "reply": "..."} or {"code": "NOT_FOUND", "details": "..."}
      (md-* parameters are sent as call metadata)
  GET /spread?link=pricing&method=...&message=...&n=300
      -> {"replicas": {"0": 100, ...}, "errors": 0}: n calls on ONE channel
         (keys `host/replica` when the answers name their host)
  GET /healthz
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import grpc

_channels = {}
_lock = threading.Lock()


def channel(link):
    """One long-lived channel per link, as real clients keep them."""
    with _lock:
        if link not in _channels:
            address = os.environ[f"ORCH_LINK_{link.upper().replace('-', '_')}_ADDR"]
            _channels[link] = grpc.insecure_channel(address)
        return _channels[link]


def call(link, method, message, timeout=None, metadata=None):
    stub = channel(link).unary_unary(f"/{method}")
    try:
        return {"code": "OK", "reply": stub(message.encode(), timeout=timeout, metadata=metadata).decode()}
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            return self.answer(200, {"ok": True})
        if url.path == "/call":
            timeout = float(q["timeout"]) if "timeout" in q else None
            # Metadata to send: md-<key>=<value> query parameters.
            metadata = [(k[3:], v) for k, v in q.items() if k.startswith("md-")] or None
            return self.answer(200, call(q["link"], q["method"], q.get("message", ""), timeout, metadata))
        if url.path == "/spread":
            replicas, errors = {}, 0
            for _ in range(int(q.get("n", "300"))):
                result = call(q["link"], q["method"], q.get("message", ""))
                if result["code"] != "OK":
                    errors += 1
                    continue
                reply = json.loads(result["reply"])
                # On several hosts, a replica is a host's: `h2/0`.
                replica = str(reply.get("replica"))
                if "host" in reply:
                    replica = f"{reply['host']}/{replica}"
                replicas[replica] = replicas.get(replica, 0) + 1
            return self.answer(200, {"replicas": replicas, "errors": errors})
        self.answer(404, {"error": f"no route for {url.path}"})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
