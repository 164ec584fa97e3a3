#!/usr/bin/env python3
"""An HTTP proxy in front of moto's EC2 that makes it behave like a crowded cloud.

Every forwarded request carries `x-moto-account-id: ACCOUNT`, so each test (each proxy) has
its own moto account. Rules, set with `POST /_proxy/rules` (a JSON list) or --rules, answer
chosen requests with EC2's error XML or hang them:

  {"action": "RunInstances", "instance_type": "g5.xlarge", "zone": "us-east-1a",
   "error": "InsufficientInstanceCapacity"}
  {"region": "us-west-2", "hang": true}
  {"action": "RunInstances", "region": "us-east-2", "error": "VcpuLimitExceeded"}
  {"action": "RunInstances", "hang_after": true}   # moto acts; the answer never comes

Each key but error/hang/status/times is a condition (missing = any). The region is read from
the request's SigV4 credential scope; the zone and instance type from the form body.
`times: N` makes a rule apply to its first N matches only. `GET /_proxy/log` lists the
RunInstances calls seen, in order, with what the proxy did and when; `GET /_proxy/stats`
counts forwarded requests and the seconds spent waiting for moto (for benchmarks).

Prints the port it listens on, then serves until killed.

usage: ec2-proxy.py TARGET_URL --account ID [--rules JSON] [--latency SECONDS]
"""
import argparse
import http.client
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("target")
parser.add_argument("--account", required=True)
parser.add_argument("--rules", default="[]")
parser.add_argument("--latency", type=float, default=0.0,
                    help="seconds added before forwarding each request (a far-away region)")
args = parser.parse_args()
target = urllib.parse.urlparse(args.target)
lock = threading.Lock()
rules = json.loads(args.rules)
hits = {}
log = []
stats = {"requests": 0, "upstream_seconds": 0.0}

STATUS = {
    "AuthFailure": 401,
    "UnauthorizedOperation": 403,
    "InternalError": 500,
    "Unavailable": 503,
    "RequestLimitExceeded": 503,
}


def error_xml(code):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>injected by ec2-proxy for this test</Message>"
        "</Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()


def describe(headers, body):
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
    auth = headers.get("Authorization", "")
    m = re.search(r"Credential=[^/]+/\d+/([^/]+)/", auth)
    return {
        "action": (form.get("Action") or [""])[0],
        "region": m.group(1) if m else "",
        "zone": (form.get("Placement.AvailabilityZone") or [""])[0],
        "instance_type": (form.get("InstanceType") or [""])[0],
    }


CONTROL = ("error", "hang", "hang_after", "seconds", "status", "times")


def match(req):
    with lock:
        for i, r in enumerate(rules):
            if all(req.get(k) == v for k, v in r.items() if k not in CONTROL):
                n = hits.get(i, 0)
                if "times" in r and n >= r["times"]:
                    continue
                hits[i] = n + 1
                return r
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def reply(self, status, body, ctype="text/xml"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        global rules
        if self.path.startswith("/_proxy/rules"):
            with lock:
                rules = json.loads(body or b"[]")
                hits.clear()
            return self.reply(200, b"{}", "application/json")
        if self.path.startswith("/_proxy/stats"):
            with lock:
                data = json.dumps(stats).encode()
            return self.reply(200, data, "application/json")
        if self.path.startswith("/_proxy/log"):
            with lock:
                data = json.dumps(log).encode()
            return self.reply(200, data, "application/json")
        req = describe(self.headers, body)
        rule = match(req)
        if req["action"] == "RunInstances":
            outcome = "forwarded"
            if rule is not None:
                if rule.get("hang"):
                    outcome = "hang"
                elif rule.get("hang_after"):
                    outcome = "forwarded, answer withheld"
                else:
                    outcome = rule.get("error", "forwarded")
            with lock:
                log.append(dict(req, outcome=outcome, t=time.time()))
        if rule is not None and rule.get("hang"):
            # Hold the request until the client gives up (or an hour passes).
            time.sleep(float(rule.get("seconds", 3600)))
            self.close_connection = True
            return
        if rule is not None and rule.get("error"):
            code = rule["error"]
            return self.reply(rule.get("status", STATUS.get(code, 400)), error_xml(code))
        if args.latency:
            time.sleep(args.latency)
        started = time.monotonic()
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "x-moto-account-id")}
        headers["x-moto-account-id"] = args.account
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        with lock:
            stats["requests"] += 1
            stats["upstream_seconds"] += time.monotonic() - started
        if rule is not None and rule.get("hang_after"):
            time.sleep(float(rule.get("seconds", 3600)))
            self.close_connection = True
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
