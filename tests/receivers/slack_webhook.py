#!/usr/bin/env python3
"""A Slack incoming-webhook endpoint for end-to-end tests (Python standard library only).

Usage: slack_webhook.py OUTPUT_FILE [--path PATH]

Binds 127.0.0.1 on a free port and prints the port alone on the first line of stdout. It answers
the way Slack's incoming webhooks do (https://api.slack.com/messaging/webhooks):

- a POST to any other path than PATH (default /services/T000/B000/XXXX): 404 `no_service`;
- a body that is not a JSON object: 400 `invalid_payload`;
- neither `text` nor `blocks`: 400 `no_text`;
- Block Kit limits broken (at most 50 blocks; a section's text at most 3000 characters and at
  from 1 to 10 fields of at most 2000; a header's plain_text at most 150; a context at most 10
  elements; text objects of type mrkdwn or plain_text; known block types): 400 `invalid_blocks`;
- otherwise 200 `ok`, and the payload is appended to OUTPUT_FILE as one JSON line.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK_TYPES = {"section", "header", "context", "divider", "actions", "image", "rich_text"}
TEXT_TYPES = {"mrkdwn", "plain_text"}

_write_lock = threading.Lock()


def text_object_ok(text, limit, plain_only=False):
    """Whether `text` is a text object of an allowed type within `limit` characters."""
    if not isinstance(text, dict) or not isinstance(text.get("text"), str):
        return False
    allowed = {"plain_text"} if plain_only else TEXT_TYPES
    return text.get("type") in allowed and 0 < len(text["text"]) <= limit


def blocks_ok(blocks):
    """Whether `blocks` follows the Block Kit limits this receiver checks."""
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return False
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return False
        kind = block["type"]
        if kind == "header" and not text_object_ok(block.get("text"), 150, plain_only=True):
            return False
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and fields is None:
                return False
            if text is not None and not text_object_ok(text, 3000):
                return False
            if fields is not None and (
                not isinstance(fields, list)
                or not 0 < len(fields) <= 10
                or not all(text_object_ok(field, 2000) for field in fields)
            ):
                return False
        if kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 10:
                return False
            if not all(text_object_ok(element, 3000) for element in elements):
                return False
    return True


def make_handler(output, path):
    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, text):
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != path:
                return self.answer(404, "no_service")
            try:
                payload = json.loads(raw)
            except ValueError:
                return self.answer(400, "invalid_payload")
            if not isinstance(payload, dict):
                return self.answer(400, "invalid_payload")
            text, blocks = payload.get("text"), payload.get("blocks")
            if not (isinstance(text, str) and text) and blocks is None:
                return self.answer(400, "no_text")
            if blocks is not None and not blocks_ok(blocks):
                return self.answer(400, "invalid_blocks")
            with _write_lock:
                with open(output, "a", encoding="utf-8") as out:
                    out.write(json.dumps(payload, sort_keys=True) + "\n")
            return self.answer(200, "ok")

        def log_message(self, format, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--path", default="/services/T000/B000/XXXX")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.output, args.path))
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
