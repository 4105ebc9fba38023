#!/usr/bin/env python3
"""An SMTP server for end-to-end tests, built on the `aiosmtpd` package.

Usage: smtp_server.py OUTPUT_DIR [--port PORT] [--tls-cert PEM --tls-key PEM] [--auth USER:PASSWORD]

Binds 127.0.0.1 (PORT, or a free port when absent or 0) and prints the bound port alone on the
first line of stdout.

- `--tls-cert`/`--tls-key`: offer STARTTLS with that certificate, and require it before MAIL.
- `--auth USER:PASSWORD`: require AUTH (PLAIN or LOGIN) with exactly these credentials; wrong
  ones get aiosmtpd's `535 5.7.8 Authentication credentials invalid`. Without TLS, AUTH is
  allowed in plain text.
- Recipients whose local part starts with `busy` are refused with `451 4.3.2` (try later), those
  starting with `unknown` with `550 5.1.1` (no such mailbox).

Every accepted message is saved as OUTPUT_DIR/<n>.eml, and summarised with Python's own `email`
parser as one JSON line of OUTPUT_DIR/messages.jsonl: the envelope (`mail_from`, `rcpt_tos`),
whether the session used TLS and who authenticated, the decoded headers `subject`, `from`, `to`,
`cc`, `message_id`, `delivery_id`, the top-level `content_type`, and each leaf part as
`{"content_type", "text"}` (decoded, with LF line ends). Every AUTH attempt is appended to OUTPUT_DIR/auth.jsonl as
`{"login", "password_matched"}`.
"""

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import threading
from email import policy
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

_write_lock = threading.Lock()


def _append(path, record):
    with _write_lock:
        with open(path, "a", encoding="utf-8") as output:
            output.write(json.dumps(record, sort_keys=True) + "\n")
            output.flush()


def summarise(raw):
    """The JSON summary of a raw message, as Python's email package reads it."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    parts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        text = part.get_content()
        if isinstance(text, str):
            text = text.replace("\r\n", "\n")
        else:
            text = None
        parts.append({"content_type": part.get_content_type(), "text": text})
    header = lambda name: str(message[name]) if message[name] is not None else None  # noqa: E731
    return {
        "subject": header("Subject"),
        "from": header("From"),
        "to": header("To"),
        "cc": header("Cc"),
        "message_id": header("Message-ID"),
        "delivery_id": header("X-Ktrigger-Delivery-Id"),
        "content_type": message.get_content_type(),
        "parts": parts,
    }


class Recorder:
    """The aiosmtpd handler: refuses marked recipients, saves and summarises messages."""

    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        local = address.split("@", 1)[0].lower()
        if local.startswith("busy"):
            return "451 4.3.2 Mailbox busy, try again later"
        if local.startswith("unknown"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.count += 1
        raw = envelope.original_content or envelope.content
        with open(os.path.join(self.directory, f"{self.count}.eml"), "wb") as output:
            output.write(raw)
        record = summarise(raw)
        record["mail_from"] = envelope.mail_from
        record["rcpt_tos"] = list(envelope.rcpt_tos)
        record["tls"] = session.ssl is not None
        record["authenticated_as"] = session.auth_data if session.authenticated else None
        _append(os.path.join(self.directory, "messages.jsonl"), record)
        return f"250 2.0.0 Ok: queued as {self.count}"


class Authenticator:
    """Accepts exactly one login and password; records each attempt (never the password)."""

    def __init__(self, directory, login, password):
        self.directory = directory
        self.login = login
        self.password = password

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        matched = login == self.login and auth_data.password.decode("utf-8", "replace") == self.password
        _append(
            os.path.join(self.directory, "auth.jsonl"),
            {"login": login, "mechanism": mechanism, "password_matched": matched},
        )
        return AuthResult(success=matched, handled=False, auth_data=login if matched else None)


async def serve(args, sock):
    loop = asyncio.get_running_loop()
    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)
    authenticator = None
    if args.auth:
        login, password = args.auth.split(":", 1)
        authenticator = Authenticator(args.output, login, password)
    handler = Recorder(args.output)

    def factory():
        return SMTP(
            handler,
            hostname="smtp.test",
            tls_context=tls_context,
            require_starttls=tls_context is not None,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            auth_require_tls=tls_context is not None,
            loop=loop,
        )

    server = await loop.create_server(factory, sock=sock)
    async with server:
        await server.serve_forever()


def main(argv):
    """Runs the server until it is killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--auth")
    args = parser.parse_args(argv[1:])
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.auth and ":" not in args.auth:
        parser.error("--auth must be USER:PASSWORD")
    os.makedirs(args.output, exist_ok=True)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    try:
        asyncio.run(serve(args, sock))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
