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

With `--machines FILE` (lines `ADDRESS DIR`, as `scripts/sshd.sh cloud` writes them: an
OpenSSH server on ADDRESS port 22 whose authorized keys are DIR/authorized_keys) moto's
instances become real hosts, as on EC2: the public key of every ImportKeyPair goes into
each server's authorized keys (cloud-init's part), and each instance's own addresses
(`privateIpAddress`, `ipAddress`) in moto's answers are rewritten to one server's address,
the same one for the life of the instance, round robin in the order instances appear (so
the instances of one launch are different servers while there are enough). What an
instance ran there ends with it: StopInstances kills the processes of its cluster (those
whose command line or working directory is under `DIR/skyform/clusters/TOKEN`, TOKEN from
the launch's `skyform:token` tag), as a power-off would; TerminateInstances also removes
that directory, as the disk goes. A machine's own `shutdown` (see `scripts/sshd.sh cloud`)
leaves the cluster's token in DIR/poweroff/; the proxy then stops or terminates the
instances of that cluster on that machine through moto, as EC2 applies an instance's
`InstanceInitiatedShutdownBehavior`.

Prints the port it listens on, then serves until killed.

usage: ec2-proxy.py TARGET_URL --account ID [--rules JSON] [--latency SECONDS]
                    [--machines FILE]
"""
import base64
import os
import shutil
import signal
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
parser.add_argument("--machines", help="ADDRESS DIR lines: sshd servers the instances become")
parser.add_argument("--boot-seconds", type=float, default=0.0,
                    help="the imported key reaches the machines this long after the import "
                         "(machines still booting: ssh refuses them until then)")
args = parser.parse_args()
machines = []
if args.machines:
    with open(args.machines) as f:
        machines = [tuple(line.split(None, 1)) for line in f.read().splitlines() if line.strip()]
# instance id -> the address of the server it is, and the skyform:token it was launched with
placed = {}
tokens = {}
# instance id -> (region, shutdown behaviour) from its launch
launched = {}
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

INSTANCE = re.compile(rb"<instanceId>(i-[0-9a-f]+)</instanceId>")
ADDRESS = re.compile(rb"<(privateIpAddress|ipAddress)>[^<]*</(privateIpAddress|ipAddress)>")


def install_key(body):
    """ImportKeyPair: its public key goes where the servers read authorized keys (after
    --boot-seconds, as cloud-init on a booting machine would)."""
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    material = (form.get("PublicKeyMaterial") or [""])[0]
    if not material or not machines:
        return
    key = base64.b64decode(material).decode().strip()
    if args.boot_seconds > 0:
        threading.Timer(args.boot_seconds, write_key, [key]).start()
    else:
        write_key(key)


def write_key(key):
    with lock:
        for _, d in machines:
            path = d.strip() + "/authorized_keys"
            try:
                with open(path) as f:
                    if key in f.read():
                        continue
            except FileNotFoundError:
                pass
            with open(path, "a") as f:
                f.write(key + "\n")


def launch_behaviour(body):
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    return (form.get("InstanceInitiatedShutdownBehavior") or ["stop"])[0]


def launch_token(body):
    """The `skyform:token` tag of a RunInstances request, if any."""
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    for k, v in form.items():
        if k.endswith(".Key") and v == ["skyform:token"]:
            return (form.get(k[:-4] + ".Value") or [""])[0]
    return ""


def power_off(body, terminate):
    """The instances of a Stop/TerminateInstances request stop running what they ran on
    their servers (and, terminated, lose its files)."""
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    ids = [v[0] for k, v in form.items() if k.startswith("InstanceId.")]
    dirs = dict(machines)
    for iid in ids:
        with lock:
            addr, token = placed.get(iid), tokens.get(iid)
        if not addr or not token:
            continue
        cluster = os.path.join(dirs[addr].strip(), "skyform", "clusters", token)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode("utf-8", "replace")
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cluster in cmd or cwd.startswith(cluster):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        if terminate:
            shutil.rmtree(cluster, ignore_errors=True)


def ec2_call(region, action, ids):
    """An EC2 call of the machines themselves, straight to moto in this proxy's account."""
    form = {"Action": action, "Version": "2016-11-15"}
    for n, iid in enumerate(ids, 1):
        form[f"InstanceId.{n}"] = iid
    body = urllib.parse.urlencode(form).encode()
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    conn.request("POST", "/", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, "
                         "SignedHeaders=host, Signature=0",
        "x-moto-account-id": args.account,
    })
    conn.getresponse().read()
    conn.close()


def watch_shutdowns():
    """Machines that shut themselves down: their instances stop or terminate."""
    while True:
        time.sleep(0.3)
        for addr, d in machines:
            box = os.path.join(d.strip(), "poweroff")
            try:
                asked = os.listdir(box)
            except OSError:
                continue
            for token in asked:
                with lock:
                    ids = [i for i, t in tokens.items() if t == token and placed.get(i) == addr]
                if not ids:
                    continue  # another proxy's instance
                for iid in ids:
                    region, behaviour = launched.get(iid, ("us-east-1", "stop"))
                    action = "TerminateInstances" if behaviour == "terminate" else "StopInstances"
                    ec2_call(region, action, [iid])
                    power_off(urllib.parse.urlencode({"InstanceId.1": iid}).encode(),
                              behaviour == "terminate")
                try:
                    os.remove(os.path.join(box, token))
                except OSError:
                    pass


def as_machines(data, token="", launch=None):
    """Rewrites each instance's addresses in an answer to those of the server it is. The
    text after an `instanceId` up to the next one belongs to that instance (moto writes
    the id first in each instance's item); everything else stays byte for byte."""
    if not machines:
        return data
    parts = INSTANCE.split(data)
    if len(parts) == 1:
        return data
    out = [parts[0]]
    with lock:
        for i in range(1, len(parts), 2):
            iid = parts[i].decode()
            if iid not in placed:
                placed[iid] = machines[len(placed) % len(machines)][0]
            if token:
                tokens[iid] = token
            if launch:
                launched[iid] = launch
            addr = placed[iid].encode()
            rest = ADDRESS.sub(lambda m: b"<%s>%s</%s>" % (m.group(1), addr, m.group(1)), parts[i + 1])
            out.append(b"<instanceId>" + parts[i] + b"</instanceId>" + rest)
    return b"".join(out)


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
        # What moto did is real even when its answer is withheld: the instances it made
        # are placed on machines (and end with them) either way.
        if resp.status == 200 and req["action"] == "RunInstances":
            data = as_machines(data, launch_token(body), (req["region"], launch_behaviour(body)))
        if rule is not None and rule.get("hang_after"):
            time.sleep(float(rule.get("seconds", 3600)))
            self.close_connection = True
            return
        if resp.status == 200 and req["action"] == "ImportKeyPair":
            install_key(body)
        if resp.status == 200 and req["action"] == "DescribeInstances":
            data = as_machines(data)
        if resp.status == 200 and machines and req["action"] in ("StopInstances", "TerminateInstances"):
            power_off(body, req["action"] == "TerminateInstances")
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


if machines:
    threading.Thread(target=watch_shutdowns, daemon=True).start()
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
