"""A process tier that serves RPC with an ordinary gRPC server (grpcio).

It listens on $PORT (cleartext HTTP/2) and serves, with JSON messages as
bytes (no generated code needed):

  pricing.Pricing/Quote  {"item": "widget", "quantity": 2}
                         -> {"item", "quantity", "unit_price", "total", "replica", "served_by": "python",
                             "metadata": the call's x-request-id and traceparent, if sent}
                         NOT_FOUND for an unknown item, INVALID_ARGUMENT for a bad message
"""

import json
import os
from concurrent import futures

import grpc

PRICES = {"widget": 2.5, "gadget": 10.0, "gizmo": 0.75}


def quote(request, context):
    try:
        asked = json.loads(request)
        item, quantity = asked["item"], int(asked.get("quantity", 1))
    except (ValueError, KeyError, TypeError) as error:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected {{item, quantity}}: {error}")
    if item not in PRICES:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no price for `{item}`")
    answer = {
        "item": item,
        "quantity": quantity,
        "unit_price": PRICES[item],
        "total": PRICES[item] * quantity,
        "replica": int(os.environ.get("ORCH_REPLICA", "0")),
        "served_by": "python",
        "metadata": {k: v for k, v in context.invocation_metadata() if k in ("x-request-id", "traceparent")},
    }
    return json.dumps(answer).encode()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {"Quote": grpc.unary_unary_rpc_method_handler(quote)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pricing.Pricing", handlers),))
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
