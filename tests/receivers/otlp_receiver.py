#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for end-to-end tests, decoding exports with the official
`opentelemetry-proto` messages.

Usage: otlp_receiver.py OUTPUT_FILE

Binds 127.0.0.1 on a free port and prints the port alone on the first line of stdout. Every
POST /v1/traces with Content-Type application/x-protobuf is parsed as an
ExportTraceServiceRequest; each span is appended to OUTPUT_FILE as one JSON line with the
service name, span name, hex trace id, span id and parent span id, and string, integer and bool
attributes. Anything else is answered with HTTP 400 or 404. The server stops on SIGTERM or SIGINT.
"""

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_write_lock = threading.Lock()


def _value(any_value):
    """The Python value of an OTLP AnyValue of a scalar kind, else None."""
    kind = any_value.WhichOneof("value")
    if kind in ("string_value", "int_value", "bool_value", "double_value"):
        return getattr(any_value, kind)
    return None


def _spans(request):
    """One record per span of an export request."""
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": resource.get("service.name"),
                    "name": span.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                }


class Handler(BaseHTTPRequestHandler):
    """Decodes each trace export and records its spans."""

    output_path = ""

    def _answer(self, status, content_type, payload):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        if self.path != "/v1/traces":
            self._answer(404, "text/plain", b"not found")
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self._answer(400, "text/plain", b"expected application/x-protobuf")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            self._answer(400, "text/plain", f"not an ExportTraceServiceRequest: {error}".encode())
            return
        lines = [json.dumps(span, sort_keys=True) for span in _spans(request)]
        with _write_lock:
            with open(self.output_path, "a", encoding="utf-8") as output:
                for line in lines:
                    output.write(line + "\n")
                output.flush()
        self._answer(200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString())

    def log_message(self, format, *args):  # noqa: A002 (signature fixed by the base class)
        sys.stderr.write("otlp_receiver: " + (format % args) + "\n")


def main(argv):
    """Runs the receiver until it is told to stop."""
    if len(argv) != 2:
        sys.stderr.write("usage: otlp_receiver.py OUTPUT_FILE\n")
        return 2
    Handler.output_path = argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
