#!/usr/bin/env python3
"""An example ktrigger plugin: a `counter` source and a `jsonl` destination.

Started by ktrigger (see docs/plugins/plugins.yaml), it listens on a free local port and
prints the handshake line `KTRIGGER_PLUGIN|1|127.0.0.1:PORT`. Run as a sidecar, give it
`--listen 0.0.0.0:50051` and name that address in the plugins file.

It loads the protocol from proto/ktrigger/plugin/v1/plugin.proto at start-up (grpcio-tools
compiles it in process), so there is no generated code to keep in step.

Environment:
  EXAMPLE_PLUGIN_STATE_DIR   where `counter` keeps the last acknowledged number of each trigger,
                             so that a restarted plugin goes on after it (default: memory only)
  EXAMPLE_PLUGIN_OUTPUT_DIR  where `jsonl` writes `<name>.jsonl` files (default: the working dir)
"""

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.environ.get("KTRIGGER_PROTO_PATH", os.path.join(HERE, "..", "..", "..", "proto"))
sys.path.insert(0, os.path.abspath(PROTO_ROOT))
pb, services = grpc.protos_and_services("ktrigger/plugin/v1/plugin.proto")

PROTOCOL_VERSION = 1
# Events sent but not yet acknowledged, per trigger; the source waits when there are this many.
MAX_IN_FLIGHT = 100

COUNTER_SCHEMA = {
    "type": "object",
    "properties": {
        "intervalMs": {"type": "integer", "minimum": 1, "description": "time between events (default 1000)"},
        "count": {"type": "integer", "minimum": 1, "description": "stop after this many events (default: never)"},
    },
    "additionalProperties": False,
}

JSONL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9-]{1,63}$", "description": "file name without .jsonl"},
        "failFirst": {"type": "integer", "minimum": 0,
                      "description": "answer a transient failure to the first N attempts of each delivery"},
        "reject": {"type": "boolean", "description": "answer a permanent failure to every delivery"},
        "delayMs": {"type": "integer", "minimum": 0, "description": "wait this long before answering"},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def trigger_key(trigger):
    return f"{trigger.namespace}/{trigger.service}/{trigger.name}"


class Counter:
    """The numbers of one trigger: what was acknowledged survives restarts when a state dir is set."""

    def __init__(self, key):
        self.lock = threading.Condition()
        self.acked = 0
        state_dir = os.environ.get("EXAMPLE_PLUGIN_STATE_DIR")
        self.path = None
        if state_dir:
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            self.path = os.path.join(state_dir, f"counter-{digest}.json")
            try:
                with open(self.path) as f:
                    self.acked = json.load(f)["acked"]
            except (OSError, ValueError, KeyError):
                pass

    def ack(self, number):
        with self.lock:
            if number <= self.acked:
                return
            self.acked = number
            if self.path:
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"acked": number}, f)
                os.replace(tmp, self.path)
            self.lock.notify_all()


class Plugin(services.PluginServicer):
    def __init__(self):
        self.counters = {}
        self.counters_lock = threading.Lock()
        self.attempts = {}

    def Describe(self, request, context):
        return pb.DescribeResponse(
            sources=[pb.TypeInfo(
                name="counter",
                description="Counts up: one event {n: 1, 2, ...} every intervalMs",
                properties_schema=json.dumps(COUNTER_SCHEMA),
                example="type: counter\nproperties: {intervalMs: 500}\n",
            )],
            destinations=[pb.TypeInfo(
                name="jsonl",
                description="Appends each delivery as a JSON line to <name>.jsonl",
                properties_schema=json.dumps(JSONL_SCHEMA),
                example="type: jsonl\nproperties: {name: deliveries}\n",
            )],
        )

    def Validate(self, request, context):
        properties = json.loads(request.properties_json or "{}")
        errors = []
        if request.type == "counter" and properties.get("intervalMs", 1000) > 3_600_000:
            errors.append("intervalMs: at most one hour (3600000)")
        return pb.ValidateResponse(errors=errors)

    def Health(self, request, context):
        return pb.HealthResponse()

    def RunSource(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("request") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must be start")
        start = first.start
        if start.type != "counter":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown source type {start.type!r}")
        properties = json.loads(start.properties_json or "{}")
        interval = properties.get("intervalMs", 1000) / 1000
        count = properties.get("count")
        key = trigger_key(start.trigger)
        with self.counters_lock:
            counter = self.counters.setdefault(key, Counter(key))

        def read_acks():
            for request in request_iterator:
                if request.WhichOneof("request") == "ack":
                    counter.ack(int(request.ack.event_id.rsplit("-", 1)[1]))

        threading.Thread(target=read_acks, daemon=True).start()
        # Start after the last acknowledged number: whatever was sent and not acknowledged
        # before (a broken stream, a restart) is sent again with the same id.
        number = counter.acked
        while context.is_active() and (count is None or number < count):
            with counter.lock:
                while context.is_active() and number - counter.acked >= MAX_IN_FLIGHT:
                    counter.lock.wait(0.5)
            number += 1
            yield pb.SourceEvent(
                id=f"counter-{number}",
                type="tick",
                object_json=json.dumps({"n": number, "trigger": start.trigger.name}),
            )
            time.sleep(interval)
        while context.is_active():
            time.sleep(0.5)

    def Deliver(self, request, context):
        properties = json.loads(request.properties_json or "{}")
        if properties.get("delayMs"):
            time.sleep(properties["delayMs"] / 1000)
        if properties.get("reject"):
            return pb.DeliverResponse(permanent=pb.PermanentFailure(reason="this destination rejects everything"))
        if request.attempt <= properties.get("failFirst", 0):
            return pb.DeliverResponse(transient=pb.TransientFailure(
                reason=f"attempt {request.attempt} fails on purpose", retry_after_ms=100))
        name = properties.get("name", "")
        if not re.fullmatch(r"[a-z0-9-]{1,63}", name):
            return pb.DeliverResponse(permanent=pb.PermanentFailure(reason="name: must match [a-z0-9-]{1,63}"))
        out_dir = os.environ.get("EXAMPLE_PLUGIN_OUTPUT_DIR", ".")
        record = {
            "deliveryId": request.delivery_id,
            "attempt": request.attempt,
            "trigger": request.trigger.name,
            "context": json.loads(request.context_json),
        }
        with open(os.path.join(out_dir, f"{name}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        return pb.DeliverResponse(delivered=pb.Delivered(detail=f"written to {name}.jsonl"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="address to serve on (default: a free local port)")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    services.add_PluginServicer_to_server(Plugin(), server)
    port = server.add_insecure_port(args.listen)
    server.start()
    if os.environ.get("KTRIGGER_PLUGIN_PROTOCOL_VERSION"):
        # Started by ktrigger: go when it goes, even if it could not stop us (SIGKILL).
        parent = os.getppid()

        def watch_parent():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(0)

        threading.Thread(target=watch_parent, daemon=True).start()
    host = args.listen.rsplit(":", 1)[0].replace("0.0.0.0", "127.0.0.1")
    print(f"KTRIGGER_PLUGIN|{PROTOCOL_VERSION}|{host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
