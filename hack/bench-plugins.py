#!/usr/bin/env python3
"""Events per second through plugin types against built-in ones, in one run of release builds.

Four runs of `ktrigger run`, each until N deliveries are logged:
  source:      plugin `sequence` source -> log    vs  built-in webhook source -> log
               (the webhook source is fed by 4 keep-alive HTTP clients here)
  destination: plugin `sequence` source -> plugin `tally` destination
               vs  plugin `sequence` source -> built-in webhook destination (a local HTTP receiver)
The plugin is the Rust example (examples/plugins/rust), so the figures show the protocol's cost
rather than an interpreter's. Time runs from the trigger's start (the first webhook request, or
the "loaded" line for the plugin source, which starts producing then) to the Nth "delivered" log
line.
"""

import argparse
import http.client
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time


def service(source, destination):
    return f"""apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: bench}}
spec:
  triggers:
  - name: bench
    source: {source}
    destinations: [{destination}]
"""


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def post_events(port, count, clients=4):
    def client(share):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for i in range(share):
            connection.request("POST", "/in", body=f'{{"i": {i}}}', headers={"Content-Type": "application/json"})
            connection.getresponse().read()

    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(args, label, config, feed=None):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.yaml")
        with open(path, "w") as f:
            f.write(config)
        plugins = os.path.join(tmp, "plugins.yaml")
        with open(plugins, "w") as f:
            f.write(f"plugins:\n- name: rust\n  command: [{args.plugin}]\n")
        command = [args.ktrigger, "run", "--plugins", plugins, "-f", path, "--webhook-addr", "127.0.0.1:0"]
        env = dict(os.environ, KTRIGGER_LOG="info")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        delivered = 0
        start = None
        feeder = None
        for line in process.stderr:
            if line.startswith("webhook listener on http://"):
                port = int(line.rsplit(":", 1)[1])
            elif line.startswith("loaded  trigger") and not feed:
                # The plugin source starts producing as soon as its trigger is loaded.
                start = time.monotonic()
            elif line.startswith("ktrigger running") and feed:
                start = time.monotonic()
                feeder = threading.Thread(target=feed, args=(port,))
                feeder.start()
            elif " delivered " in line:
                delivered += 1
                if delivered == args.events:
                    break
            elif line.startswith("error") or line.startswith("skipped"):
                sys.exit(f"{label}: {line.strip()}")
        elapsed = time.monotonic() - start
        process.terminate()
        process.wait()
        if feeder:
            feeder.join()
    rate = args.events / elapsed
    print(f"  {label:<48} {args.events} events in {elapsed:6.2f} s = {rate:9.0f} events/s")
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ktrigger", required=True)
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sequence = f"{{type: sequence, properties: {{count: {args.events}, intervalMs: 0}}}}"
    webhook = "{type: webhook, properties: {path: /in}}"
    log = "{type: log, properties: {includeObject: false}}"
    print(f"sources ({args.events} events each):")
    plugin_source = measure(args, "plugin source (sequence) -> log", service(sequence, log))
    builtin_source = measure(
        args, "built-in webhook source -> log", service(webhook, log), lambda port: post_events(port, args.events)
    )
    print(f"  ratio plugin/built-in: {plugin_source / builtin_source:.2f}")
    print(f"destinations ({args.events} events each):")
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    plugin_destination = measure(args, "sequence -> plugin destination (tally)", service(sequence, "{type: tally}"))
    builtin_destination = measure(
        args, "sequence -> built-in webhook destination", service(sequence, f"{{type: webhook, properties: {{url: '{url}'}}}}")
    )
    print(f"  ratio plugin/built-in: {plugin_destination / builtin_destination:.2f}")


if __name__ == "__main__":
    main()
