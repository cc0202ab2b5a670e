#!/usr/bin/env python3
"""The demo's alert receiver: a webhook endpoint for the notifier's webhook_configs.

It takes Alertmanager's webhook JSON (version "4"), prints one line per alert
transition it has not printed before, e.g.

    03:41:07  FIRING    checkout_error_rate  critical  value 0.113 > 0.05  Checkout error rate ...

and appends every body it receives to --log as one JSON line. A notification carries
every alert of its group that still fires, so the same transition can come again; its
dedup_key annotation (unique per transition) is what tells.

    demo/receiver.py --listen 127.0.0.1:9095 [--log alerts.jsonl]

Python 3 standard library only. GET / answers "ok", so a script can wait for it.
"""

import argparse
import json
import signal
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 4 * 1024 * 1024


def short_number(text):
    """0.1153846153846 -> 0.115, 4084.9174 -> 4085: what a person reads at a glance."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return str(text)
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def describe(alert):
    """One line for one alert of a notification."""
    labels = alert.get("labels") or {}
    notes = alert.get("annotations") or {}
    status = (alert.get("status") or "?").upper()
    name = labels.get("alertname", "?")
    group = ""
    # The rule's own labels and its group_by dimension; the built-in ones are shown apart.
    builtin = {"alertname", "kpi", "severity"}
    extra = {k: v for k, v in labels.items() if k not in builtin}
    if extra:
        group = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(extra.items())) + "}"
    value = notes.get("value")
    threshold = notes.get("threshold", "")
    if notes.get("condition", "").startswith("absent("):
        measured = notes["condition"]
    elif value is not None:
        measured = f"value {short_number(value)} {threshold}".rstrip()
    else:
        measured = ""
    when = datetime.now().strftime("%H:%M:%S")
    return (f"{when}  {status:<9} {name}{group}  {labels.get('severity', '')}  "
            f"{measured}  {notes.get('summary', '')}").rstrip()


class Receiver(BaseHTTPRequestHandler):
    seen = set()
    lock = threading.Lock()
    log_file = None

    def do_GET(self):
        self.reply(200, b"ok\n")

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.reply(413, b'{"error":"body too large or no Content-Length"}\n')
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
            alerts = body["alerts"]
        except (ValueError, KeyError, TypeError) as e:
            self.reply(400, json.dumps({"error": f"not an Alertmanager webhook body: {e}"}).encode())
            return
        with Receiver.lock:
            if Receiver.log_file:
                Receiver.log_file.write(json.dumps(body, separators=(",", ":")) + "\n")
                Receiver.log_file.flush()
            for alert in alerts:
                key = (alert.get("annotations") or {}).get("dedup_key") or json.dumps(alert, sort_keys=True)
                if key in Receiver.seen:
                    continue
                Receiver.seen.add(key)
                print(f"[alert] {describe(alert)}", flush=True)
        self.reply(200, b"{}\n")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # the alert lines are the output; no access log


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9095", help="host:port (default 127.0.0.1:9095)")
    parser.add_argument("--log", help="append every webhook body to this file (JSON lines)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    try:
        server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Receiver)
    except (OSError, ValueError) as e:
        sys.exit(f"receiver: cannot listen on {args.listen}: {e}")
    if args.log:
        Receiver.log_file = open(args.log, "a", encoding="utf-8")
    # SIGTERM (how scripts/demo.sh stops it) ends the loop cleanly, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
