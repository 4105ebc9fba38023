#!/usr/bin/env python3
"""A CloudEvents HTTP receiver for end-to-end tests, built on the official `cloudevents` SDK.

Usage: cloudevents_receiver.py OUTPUT_FILE [PORT]

Binds 127.0.0.1 (PORT, or a free port when absent or 0) and prints the bound port alone on the
first line of stdout. Every POST is parsed with the SDK's `from_http`, which accepts both the
structured and the binary content modes; anything the SDK refuses is answered with HTTP 400 and
the SDK's reason. Each accepted event is appended to OUTPUT_FILE as one JSON line holding its
attributes plus `data` (or `data_base64` for binary data that is not UTF-8). GET /healthz answers
200. The server stops on SIGTERM or SIGINT.

Batches (`application/cloudevents-batch+json`, a JSON array of structured events) are parsed
event by event with the same SDK call and answered once; each line then carries `_batch`, the
number of events in its request.

For ordering and slow-receiver tests, an event whose data object (or, for a ConfigMap, its
`data`) holds `delay` (seconds, a number or a string) is answered that long after it arrived,
and `hang: true` is never answered (well, after an hour). Each line carries `_received` and
`_answered`, monotonic seconds of its arrival and of its answer; it is written when answered.
"""

import base64
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:  # cloudevents 2.x keeps the HTTP binding under cloudevents.v1
    from cloudevents.v1.http import from_http
except ImportError:  # cloudevents 1.x
    from cloudevents.http import from_http

_write_lock = threading.Lock()


def _record(event):
    """The JSON line written for an accepted event: its attributes plus its data."""
    record = {str(k): v for k, v in event.get_attributes().items()}
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        try:
            record["data"] = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            record["data_base64"] = base64.b64encode(bytes(data)).decode("ascii")
    else:
        record["data"] = data
    return record


def _subject(record):
    """The delivered object: the payload of a webhook event, or a Kubernetes object."""
    data = record.get("data")
    subject = data.get("object") if isinstance(data, dict) else None
    return subject if isinstance(subject, dict) else {}


def _delay(record):
    """Seconds the event asks its answer to wait (`delay` in the object or in its `data`)."""
    subject = _subject(record)
    inner = subject.get("data") if isinstance(subject.get("data"), dict) else {}
    try:
        return float(subject.get("delay", inner.get("delay", 0)))
    except (TypeError, ValueError):
        return 0.0


def _hangs(record):
    """Whether the event asks never to be answered."""
    return _subject(record).get("hang") is True


class Handler(BaseHTTPRequestHandler):
    """Parses each POST as a CloudEvent and records it."""

    output_path = ""

    def _answer(self, status, text):
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        if self.path == "/healthz":
            self._answer(200, "ok")
        else:
            self._answer(404, "not found")

    def do_POST(self):  # noqa: N802
        received = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name: value for name, value in self.headers.items()}
        content_type = headers.get("Content-Type", headers.get("content-type", ""))
        try:
            if content_type.startswith("application/cloudevents-batch+json"):
                single = {"Content-Type": "application/cloudevents+json"}
                events = [from_http(single, json.dumps(item).encode("utf-8")) for item in json.loads(body)]
            else:
                events = [from_http(headers, body)]
        except Exception as error:  # the SDK raises several exception types; all mean "not accepted"
            self._answer(400, f"not a CloudEvent: {type(error).__name__}: {error}")
            return
        records = [_record(event) for event in events]
        if any(_hangs(record) for record in records):
            time.sleep(3600)
        wait = max(_delay(record) for record in records) - (time.monotonic() - received)
        if wait > 0:
            time.sleep(wait)
        answered = time.monotonic()
        lines = []
        for record in records:
            record.update({"_received": received, "_answered": answered, "_batch": len(records)})
            lines.append(json.dumps(record, default=str, sort_keys=True))
        with _write_lock:
            with open(self.output_path, "a", encoding="utf-8") as output:
                output.write("".join(line + "\n" for line in lines))
                output.flush()
        self._answer(200, "accepted")

    def log_message(self, format, *args):  # noqa: A002 (signature fixed by the base class)
        sys.stderr.write("cloudevents_receiver: " + (format % args) + "\n")


def main(argv):
    """Runs the receiver until it is told to stop."""
    if len(argv) < 2 or len(argv) > 3:
        sys.stderr.write("usage: cloudevents_receiver.py OUTPUT_FILE [PORT]\n")
        return 2
    Handler.output_path = argv[1]
    port = int(argv[2]) if len(argv) == 3 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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
