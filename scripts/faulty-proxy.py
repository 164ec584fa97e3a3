#!/usr/bin/env python3
"""An HTTP proxy that forwards to TARGET and breaks a fraction of requests, to test how
skyform's state layer copes with a flaky object store.

Each request, chosen at random (seeded, so a failing run can be repeated), is one of:
  - answered 500 or 503 without being forwarded,
  - dropped before being forwarded (the connection closes with no answer),
  - forwarded, and then dropped: the store acted, but the client never hears of it,
  - forwarded normally.
Prints the port it listens on, then serves until killed.

usage: faulty-proxy.py TARGET_URL [--fail FRACTION] [--seed N]
"""
import argparse
import http.client
import http.server
import random
import sys
import threading
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("target")
parser.add_argument("--fail", type=float, default=0.2)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
target = urllib.parse.urlparse(args.target)
rng = random.Random(args.seed)
rng_lock = threading.Lock()
counts = {"ok": 0, "5xx": 0, "drop-before": 0, "drop-after": 0}


def choose():
    with rng_lock:
        r = rng.random()
    if r >= args.fail:
        return "ok"
    return ("5xx", "drop-before", "drop-after")[int(r / args.fail * 3) % 3]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, Nagle's algorithm and delayed ACKs add 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fate = choose()
        counts[fate] += 1
        if fate == "5xx":
            code = 503 if rng.random() < 0.5 else 500
            msg = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            self.send_response(code)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        if fate == "drop-before":
            self.close_connection = True
            self.connection.close()
            return
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if fate == "drop-after":
            self.close_connection = True
            self.connection.close()
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
sys.stderr.write(f"faulty-proxy: {counts}\n")
