#!/usr/bin/env python3
"""A Compute Engine fake on loopback: the part of the compute v1 REST API skyform's GCP
backend uses, with GCE's long-running operations, errors and request deduplication, and
instances that are real OpenSSH servers.

No emulator of Compute Engine exists, so the project owns this one. Its answers are checked
against Google's discovery document (`tests/gcp_fake.rs`, the schema test), so it cannot drift
into answers GCE would never give.

API (under /compute/v1/projects/PROJECT/):
  zones/Z/instances              POST insert (?requestId=), GET list (?filter=)
  zones/Z/instances/N            GET, DELETE
  zones/Z/instances/N/start|stop|setLabels|setMetadata   POST
  aggregated/instances           GET (?filter=)
  zones/Z/operations             GET list (?filter=), system events included
  global/operations              GET list (?filter=)
  zones/Z/operations/OP          GET;  zones/Z/operations/OP/wait  POST
  global/operations/OP           GET;  global/operations/OP/wait   POST
  global/firewalls               POST insert, GET list;  global/firewalls/N  GET, DELETE
  global/images/N, global/images/family/F   GET (any project: every image exists)
  zones, zones/Z                 GET

Every mutation answers an Operation that goes PENDING -> RUNNING -> DONE over
--op-seconds, and acts when DONE, as GCE does. A request whose `requestId` was seen before
answers the operation of the first one and does nothing again. Filters understand
`labels.KEY = "VALUE"` and `FIELD = "VALUE"` terms (ANDed) on top-level fields (`name`,
`operationType`, `targetId`, ...).

Rules (POST /_fake/rules with a JSON list, or --rules) make chosen calls fail or hang:

  {"method": "insert", "zone": "us-central1-a", "machine_type": "n2-standard-8",
   "error": "ZONE_RESOURCE_POOL_EXHAUSTED"}        # in the finished operation (as GCE)
  {"region": "us-east4", "error": "QUOTA_EXCEEDED", "http": true}   # on the HTTP answer
  {"zone": "us-central1-b", "hang": true}           # the request gets no answer
  {"zone": "us-central1-c", "hang_op": true}        # its operation never finishes
  {"hang_after": true}                              # GCE acts, the answer never comes

Conditions: method (default insert; delete, start, stop, setLabels, setMetadata, get, list,
aggregatedList, operations.list, firewalls.insert, ...), project, zone, region, machine_type. Errors:
ZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS), QUOTA_EXCEEDED (regional),
QUOTA_EXCEEDED_GLOBAL, PERMISSION_DENIED, UNAUTHENTICATED, RATE_LIMIT (429),
BACKEND_ERROR (503), or any other code (sent as given). `times: N` applies a rule to its
first N matches only. GET /_fake/log lists the inserts seen (zone, machine type, outcome);
GET /_fake/instances and /_fake/firewalls list what exists (for tests).

POST /_fake/preempt/ZONE/NAME preempts a running spot instance as GCE does: it goes
STOPPING at once (its machine stops running what it ran, as a stop does), a system event
`compute.instances.preempted` (user `system`, DONE) is in the zone's operations, then the
instance is TERMINATED (`lastStopTimestamp`, external address released) after
--op-seconds, and deleted after as long again when its
`scheduling.instanceTerminationAction` is DELETE (skyform's spot instances), else kept.

With --machines FILE (lines `ADDRESS DIR`, as `scripts/sshd.sh cloud` writes them) instances
are real hosts: each gets one server's address as its networkIP and natIP (round robin,
fixed for its life), the keys of its `ssh-keys` metadata item (`USER:KEY` lines) are
installed into the servers' authorized keys as GCE's guest agent would, a stop kills what
its cluster ran there (processes under DIR/skyform/clusters/TOKEN, TOKEN from the
`skyform-token` label), a delete also removes that directory, and a machine's own
`shutdown` (a TOKEN left in DIR/poweroff/) stops the instance (status TERMINATED), as a
guest shutdown does on GCE.

--record FILE appends every call as a JSON line (method id, request body, status,
response body) for the schema test.

Prints the port it listens on, then serves until killed.
"""
import argparse
import base64
import http.server
import json
import os
import random
import re
import shutil
import signal
import socketserver
import sys
import threading
import time
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--machines")
parser.add_argument("--op-seconds", type=float, default=0.3)
parser.add_argument("--boot-seconds", type=float, default=0.0)
parser.add_argument("--rules", default="[]")
parser.add_argument("--record")
args = parser.parse_args()

BASE = "https://www.googleapis.com/compute/v1/"
REGIONS = {
    "us-central1": "abcf",
    "us-east1": "bcd",
    "us-east4": "abc",
    "us-east5": "abc",
    "us-west1": "abc",
    "us-west4": "abc",
    "europe-west1": "bcd",
    "europe-west4": "abc",
    "asia-east1": "abc",
    "asia-northeast1": "abc",
}

lock = threading.RLock()
machines = []
if args.machines:
    with open(args.machines) as f:
        machines = [tuple(line.split(None, 1)) for line in f.read().splitlines() if line.strip()]
rules = json.loads(args.rules)
hits = {}
log = []
instances = {}  # (project, zone, name) -> instance resource
firewalls = {}  # (project, name) -> firewall resource
operations = {}  # name -> {"op": resource, "t0", "act": callable, "fail": error or None, "hang": bool}
request_ids = {}  # requestId -> operation name
placed = {}  # instance id -> machine address
next_machine = [0]
ids = [random.randint(10**17, 10**18)]


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


def new_id():
    with lock:
        ids[0] += random.randint(1, 1000)
        return str(ids[0])


def fingerprint():
    # 8 bytes, as the discovery document's `byte` format says: URL-safe base64.
    return base64.urlsafe_b64encode(os.urandom(8)).decode()


def region_of(zone):
    return zone.rsplit("-", 1)[0] if zone else ""


def zone_url(project, zone):
    return f"{BASE}projects/{project}/zones/{zone}"


class Fail(Exception):
    def __init__(self, status, reason, message):
        self.status, self.reason, self.message = status, reason, message


def error_body(status, reason, message):
    return {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


# What each injected error looks like, as GCE words it: (HTTP status, reason on an HTTP
# answer, message). In an operation the code is the error's name.
def injected(code, project, zone, machine_type):
    region = region_of(zone)
    if code in ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"):
        return (503, "resourceExhausted",
                f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                f"available to fulfill the request. '(resource type:compute)'.")
    if code == "QUOTA_EXCEEDED":
        return (403, "quotaExceeded", f"Quota 'CPUS' exceeded.  Limit: 8.0 in region {region}.")
    if code == "QUOTA_EXCEEDED_GLOBAL":
        return (403, "quotaExceeded", "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally.")
    if code == "PERMISSION_DENIED":
        return (403, "forbidden",
                f"Required 'compute.instances.create' permission for 'projects/{project}'")
    if code == "UNAUTHENTICATED":
        return (401, "authError", "Request had invalid authentication credentials.")
    if code == "RATE_LIMIT":
        return (429, "rateLimitExceeded", "Rate Limit Exceeded")
    if code == "BACKEND_ERROR":
        return (503, "backendError", "Internal error. Please try again or contact Google Support.")
    return (400, code, f"{code} (injected by gce-fake)")


def match(req):
    with lock:
        for i, r in enumerate(rules):
            conds = {k: v for k, v in r.items()
                     if k not in ("error", "http", "hang", "hang_after", "hang_op", "seconds", "times")}
            # A rule that names no method is about inserts (where capacity is decided).
            conds.setdefault("method", "insert")
            if all(req.get(k) == v for k, v in conds.items()):
                n = hits.get(i, 0)
                if "times" in r and n >= r["times"]:
                    continue
                hits[i] = n + 1
                return r
    return None


# ---- operations ---------------------------------------------------------------------

def new_operation(project, zone, kind, target, act, fail=None, hang=False, target_id=None):
    name = "operation-%d-%s" % (int(time.time() * 1000), "%012x" % random.getrandbits(48))
    op = {
        "kind": "compute#operation",
        "id": new_id(),
        "name": name,
        "operationType": kind,
        "targetLink": target,
        "status": "PENDING",
        "user": "fake@gce-fake.iam.gserviceaccount.com",
        "progress": 0,
        "insertTime": now(),
        "selfLink": (f"{zone_url(project, zone)}/operations/{name}" if zone
                     else f"{BASE}projects/{project}/global/operations/{name}"),
    }
    if target_id:
        op["targetId"] = target_id
    if zone:
        op["zone"] = zone_url(project, zone)
    with lock:
        operations[name] = {"op": op, "t0": time.monotonic(), "act": act, "fail": fail,
                            "hang": hang, "project": project, "zone": zone}
    return op


def advance():
    """Moves operations on by the time passed; a finished one acts (or fails)."""
    t = time.monotonic()
    with lock:
        for o in operations.values():
            op = o["op"]
            if op["status"] == "DONE":
                continue
            age = t - o["t0"]
            if op["status"] == "PENDING" and age >= args.op_seconds / 3:
                op["status"] = "RUNNING"
                op["startTime"] = now()
                op["progress"] = 50
            if o["hang"] or age < args.op_seconds:
                continue
            op["status"] = "DONE"
            op["progress"] = 100
            op["endTime"] = now()
            if o["fail"] is not None:
                code, (status, _, message) = o["fail"]
                op["error"] = {"errors": [{"code": code.replace("_GLOBAL", ""), "message": message}]}
                op["httpErrorStatusCode"] = status
                op["httpErrorMessage"] = {503: "SERVICE UNAVAILABLE", 403: "FORBIDDEN",
                                          429: "TOO MANY REQUESTS", 401: "UNAUTHORIZED"
                                          }.get(status, "BAD REQUEST")
                if o.get("undo"):
                    o["undo"]()
            elif o["act"]:
                o["act"]()


def ticker():
    while True:
        time.sleep(0.05)
        advance()


# ---- machines -----------------------------------------------------------------------

def install_keys(metadata):
    if not machines:
        return
    keys = []
    for item in (metadata or {}).get("items", []):
        if item.get("key") == "ssh-keys":
            for line in (item.get("value") or "").splitlines():
                if ":" in line:
                    keys.append(line.split(":", 1)[1].strip())
    if not keys:
        return
    if args.boot_seconds > 0:
        threading.Timer(args.boot_seconds, write_keys, [keys]).start()
    else:
        write_keys(keys)


def write_keys(keys):
    with lock:
        for _, d in machines:
            path = d.strip() + "/authorized_keys"
            try:
                with open(path) as f:
                    have = f.read()
            except FileNotFoundError:
                have = ""
            with open(path, "a") as f:
                for k in keys:
                    if k not in have:
                        f.write(k + "\n")


def power_off(inst, remove):
    """What the instance ran on its server ends (and, deleted, its files go)."""
    addr = placed.get(inst["id"])
    token = inst.get("labels", {}).get("skyform-token")
    if not addr or not token:
        return
    dirs = dict(machines)
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
    if remove:
        shutil.rmtree(cluster, ignore_errors=True)


def watch_shutdowns():
    """Machines that shut themselves down: their instances stop (TERMINATED), as on GCE."""
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
                    mine = [i for i in instances.values()
                            if i.get("labels", {}).get("skyform-token") == token
                            and placed.get(i["id"]) == addr]
                    for inst in mine:
                        inst["status"] = "TERMINATED"
                        set_ips(inst, False)
                if not mine:
                    continue  # another fake's (or proxy's) instance
                for inst in mine:
                    power_off(inst, False)
                try:
                    os.remove(os.path.join(box, token))
                except OSError:
                    pass


def set_ips(inst, running):
    """A running instance has its server's address as internal and external IP; a stopped
    one keeps its internal IP only (GCE releases ephemeral external IPs on stop)."""
    addr = placed.get(inst["id"], "10.128.0.%d" % (int(inst["id"]) % 250 + 2))
    for nic in inst.get("networkInterfaces", []):
        nic["networkIP"] = addr
        for ac in nic.get("accessConfigs", []):
            if running:
                ac["natIP"] = addr
            else:
                ac.pop("natIP", None)


# ---- the API ------------------------------------------------------------------------

NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def check_labels(labels):
    for k, v in (labels or {}).items():
        if not LABEL_KEY.match(k) or not isinstance(v, str) or not LABEL_VALUE.match(v):
            raise Fail(400, "invalid", f"Invalid value for field 'resource.labels': '{k}'. "
                                       "Label keys and values must be lowercase, at most 63 characters.")
    if len(labels or {}) > 64:
        raise Fail(400, "invalid", "Too many labels.")


def short(url):
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def matches_filter(res, flt):
    if not flt:
        return True
    for key, value in re.findall(r'labels\.([a-z0-9_-]+)\s*[=:]\s*"?([^"\s)]*)"?', flt):
        if res.get("labels", {}).get(key) != value:
            return False
    # Top-level fields (not a label's key: those follow "labels." and may hold "-").
    for key, value in re.findall(r'(?<![.\w-])([a-zA-Z]+)\s*=\s*"?([^"\s)]*)"?', flt):
        if key != "labels" and str(res.get(key, "")) != value:
            return False
    return True


def insert_instance(project, zone, body, rule):
    name = body.get("name") or ""
    if not NAME.match(name):
        raise Fail(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. "
                                   "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    mt = body.get("machineType") or ""
    if not mt:
        raise Fail(400, "required", "Required field 'resource.machineType' not specified")
    check_labels(body.get("labels"))
    disks = body.get("disks") or []
    boot = [d for d in disks if d.get("boot")]
    if len(boot) != 1 or not (boot[0].get("source") or
                              (boot[0].get("initializeParams") or {}).get("sourceImage")):
        raise Fail(400, "required", "Required field 'resource.disks[0].initializeParams.sourceImage' not specified")
    if not body.get("networkInterfaces"):
        raise Fail(400, "required", "Required field 'resource.networkInterfaces' not specified")
    sched = body.get("scheduling") or {}
    if body.get("guestAccelerators") and sched.get("onHostMaintenance") != "TERMINATE":
        raise Fail(400, "badRequest", "Instances with guest accelerators do not support live migration.")
    if sched.get("provisioningModel") == "SPOT" and sched.get("automaticRestart"):
        raise Fail(400, "badRequest", "Invalid value for field 'resource.scheduling.automaticRestart': "
                                      "'true'. Spot VMs do not support automatic restart.")
    with lock:
        if (project, zone, name) in instances:
            raise Fail(409, "alreadyExists",
                       f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists")
        iid = new_id()
        if machines:
            placed[iid] = machines[next_machine[0] % len(machines)][0]
            next_machine[0] += 1
        link = f"{zone_url(project, zone)}/instances/{name}"
        inst = json.loads(json.dumps(body))
        inst.update({
            "kind": "compute#instance",
            "id": iid,
            "creationTimestamp": now(),
            "name": name,
            "zone": zone_url(project, zone),
            "machineType": f"{zone_url(project, zone)}/machineTypes/{short(mt)}",
            "status": "PROVISIONING",
            "selfLink": link,
            "cpuPlatform": "Unknown CPU Platform",
            "labelFingerprint": fingerprint(),
            "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
        })
        inst.setdefault("labels", {})
        meta = inst.setdefault("metadata", {})
        meta["kind"] = "compute#metadata"
        meta["fingerprint"] = fingerprint()
        for n, nic in enumerate(inst["networkInterfaces"]):
            nic["kind"] = "compute#networkInterface"
            nic["name"] = f"nic{n}"
            nic["network"] = BASE + "projects/%s/global/networks/%s" % (
                project, short(nic.get("network") or "default"))
            nic.setdefault("stackType", "IPV4_ONLY")
            nic["fingerprint"] = fingerprint()
            for ac in nic.get("accessConfigs", []):
                ac["kind"] = "compute#accessConfig"
                ac.setdefault("name", "External NAT")
                ac.setdefault("type", "ONE_TO_ONE_NAT")
                ac.setdefault("networkTier", "PREMIUM")
        out_disks = []
        for n, d in enumerate(disks):
            params = d.get("initializeParams") or {}
            out_disks.append({
                "kind": "compute#attachedDisk",
                "type": d.get("type", "PERSISTENT"),
                "mode": d.get("mode", "READ_WRITE"),
                "source": f"{zone_url(project, zone)}/disks/{params.get('diskName') or name}",
                "deviceName": d.get("deviceName") or f"persistent-disk-{n}",
                "index": n,
                "boot": bool(d.get("boot")),
                "autoDelete": bool(d.get("autoDelete", False)),
                "interface": d.get("interface", "SCSI"),
                "diskSizeGb": str(params.get("diskSizeGb") or "10"),
                "architecture": "X86_64",
            })
        inst["disks"] = out_disks
        sched = inst.setdefault("scheduling", {})
        if sched.get("provisioningModel") == "SPOT":
            sched.setdefault("automaticRestart", False)
            sched.setdefault("onHostMaintenance", "TERMINATE")
            sched.setdefault("preemptible", False)
        else:
            sched.setdefault("automaticRestart", True)
            sched.setdefault("onHostMaintenance", "MIGRATE")
            sched.setdefault("preemptible", False)
            sched.setdefault("provisioningModel", "STANDARD")
        for ga in inst.get("guestAccelerators", []):
            ga["acceleratorType"] = f"{zone_url(project, zone)}/acceleratorTypes/{short(ga.get('acceleratorType'))}"
        set_ips(inst, False)
        instances[(project, zone, name)] = inst

    def act():
        inst["status"] = "RUNNING"
        inst["lastStartTimestamp"] = now()
        set_ips(inst, True)
        install_keys(inst.get("metadata"))

    def undo():
        instances.pop((project, zone, name), None)

    fail = None
    if rule is not None and rule.get("error"):
        fail = (rule["error"], injected(rule["error"], project, zone, short(mt)))
    op = new_operation(project, zone, "insert", link, act, fail,
                       bool(rule and rule.get("hang_op")), iid)
    with lock:
        operations[op["name"]]["undo"] = undo
    # Provisioning, then staging while the operation runs.
    threading.Timer(args.op_seconds / 2, lambda: inst.__setitem__("status", "STAGING")
                    if inst["status"] == "PROVISIONING" else None).start()
    return op


def instance(project, zone, name):
    with lock:
        inst = instances.get((project, zone, name))
    if inst is None:
        raise Fail(404, "notFound",
                   f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found")
    return inst


def instance_op(project, zone, name, action, body, rule):
    inst = instance(project, zone, name)
    link = inst["selfLink"]
    act = None
    if action == "delete":
        inst["status"] = "STOPPING"

        def act():
            power_off(inst, True)
            with lock:
                instances.pop((project, zone, name), None)
    elif action == "stop":
        if inst["status"] == "RUNNING":
            inst["status"] = "STOPPING"

        def act():
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = now()
            set_ips(inst, False)
            power_off(inst, False)
    elif action == "start":
        if inst["status"] == "TERMINATED":
            inst["status"] = "STAGING"

        def act():
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = now()
            set_ips(inst, True)
    elif action == "setLabels":
        if body.get("labelFingerprint") != inst.get("labelFingerprint"):
            raise Fail(412, "conditionNotMet",
                       "Labels fingerprint either invalid or resource labels have changed")
        check_labels(body.get("labels"))

        def act():
            inst["labels"] = dict(body.get("labels") or {})
            inst["labelFingerprint"] = fingerprint()
    elif action == "setMetadata":
        if body.get("fingerprint") != inst.get("metadata", {}).get("fingerprint"):
            raise Fail(412, "conditionNotMet",
                       "Supplied fingerprint does not match current metadata fingerprint.")

        def act():
            inst["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(),
                                "items": list(body.get("items") or [])}
            if inst["status"] == "RUNNING":
                install_keys(inst["metadata"])
    fail = None
    if rule is not None and rule.get("error"):
        fail = (rule["error"], injected(rule["error"], project, zone, short(inst["machineType"])))
    return new_operation(project, zone, action, link, act, fail,
                         bool(rule and rule.get("hang_op")), inst["id"])


def preempt(project, zone, name):
    """GCE takes a spot instance back: STOPPING now, with a system event in the zone's
    operations; TERMINATED after --op-seconds; deleted after as long again when its
    termination action is DELETE."""
    inst = instance(project, zone, name)
    with lock:
        sched = inst.get("scheduling") or {}
        if sched.get("provisioningModel") != "SPOT" and not sched.get("preemptible"):
            raise Fail(400, "badRequest", f"{name} is not a spot VM: GCE does not preempt it")
        if inst["status"] != "RUNNING":
            raise Fail(400, "badRequest", f"{name} is {inst['status']}, not RUNNING")
        inst["status"] = "STOPPING"
        t = now()
        ev = "systemevent-%d-%s" % (int(time.time() * 1000), "%012x" % random.getrandbits(48))
        operations[ev] = {"op": {
            "kind": "compute#operation", "id": new_id(), "name": ev,
            "operationType": "compute.instances.preempted", "targetLink": inst["selfLink"],
            "targetId": inst["id"], "status": "DONE", "statusMessage": "Instance was preempted.",
            "user": "system", "progress": 100, "insertTime": t, "startTime": t, "endTime": t,
            "zone": zone_url(project, zone), "selfLink": f"{zone_url(project, zone)}/operations/{ev}",
        }, "t0": time.monotonic(), "act": None, "fail": None, "hang": False,
            "project": project, "zone": zone}
    power_off(inst, False)

    def terminated():
        with lock:
            if inst["status"] != "STOPPING":
                return
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = now()
            set_ips(inst, False)
        if sched.get("instanceTerminationAction") == "DELETE":
            threading.Timer(args.op_seconds, deleted).start()

    def deleted():
        with lock:
            if instances.get((project, zone, name)) is not inst:
                return
            instances.pop((project, zone, name), None)
        power_off(inst, True)

    threading.Timer(args.op_seconds, terminated).start()


def zone_resource(project, z):
    region = region_of(z)
    return {"kind": "compute#zone", "id": str(2000 + sorted(all_zones()).index(z)),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": z,
            "description": z, "status": "UP",
            "region": f"{BASE}projects/{project}/regions/{region}",
            "selfLink": zone_url(project, z), "availableCpuPlatforms": ["Intel Cascade Lake"],
            "supportsPzs": False}


def all_zones():
    return [f"{r}-{z}" for r, zs in REGIONS.items() for z in zs]


def image(project, name, family=None):
    return {"kind": "compute#image", "id": str(abs(hash((project, name, family))) % 10**18),
            "creationTimestamp": "2025-08-05T00:00:00.000-07:00",
            "name": name if not family else f"{family}-v20250805",
            "family": family or name.rsplit("-v", 1)[0],
            "selfLink": f"{BASE}projects/{project}/global/images/" +
                        (name if not family else f"{family}-v20250805"),
            "sourceType": "RAW", "status": "READY", "archiveSizeBytes": "1000000000",
            "diskSizeGb": "10", "architecture": "X86_64", "labelFingerprint": "42WmSpB8rSM="}


def route(method, parts, query, body):
    """Answers (status, body, method id). `parts` is the path after /compute/v1/."""
    if len(parts) < 2 or parts[0] != "projects":
        raise Fail(404, "notFound", "Not Found")
    project, rest = parts[1], parts[2:]
    flt = (query.get("filter") or [""])[0]
    rid = (query.get("requestId") or [""])[0]
    req = {"project": project, "method": None}
    if rest[:1] == ["zones"] and len(rest) >= 2:
        req["zone"] = rest[1]
        req["region"] = region_of(rest[1])

    def guard(name, extra=None):
        req["method"] = name
        if extra:
            req.update(extra)
        rule = match(req)
        if rule is not None and rule.get("hang"):
            raise Hang(float(rule.get("seconds", 3600)))
        if rule is not None and rule.get("error") and (rule.get("http") or name not in MUTATING):
            code = rule["error"]
            status, reason, message = injected(code, project, req.get("zone", ""),
                                               req.get("machine_type", ""))
            if isinstance(rule.get("http"), int) and not isinstance(rule.get("http"), bool):
                status = rule["http"]
            raise Fail(status, reason, message)
        return rule

    def dedup():
        if rid:
            with lock:
                name = request_ids.get(rid)
                if name:
                    return operations[name]["op"]
        return None

    def remember(op):
        if rid:
            with lock:
                request_ids[rid] = op["name"]
        return op

    # zones/Z/instances...
    if rest[:1] == ["zones"] and len(rest) >= 3 and rest[2] == "instances":
        zone = rest[1]
        if len(rest) == 3 and method == "POST":
            mt = short((body or {}).get("machineType"))
            seen = dedup()
            if seen:
                return 200, seen, "compute.instances.insert"
            try:
                rule = guard("insert", {"machine_type": mt})
            except Fail as f:
                log.append({"zone": zone, "machine_type": mt, "outcome": f.reason, "t": time.time()})
                raise
            except Hang:
                log.append({"zone": zone, "machine_type": mt, "outcome": "hang", "t": time.time()})
                raise
            r = rule or {}
            outcome = r.get("error") or next((k for k in ("hang_op", "hang_after") if r.get(k)), "created")
            with lock:
                log.append({"zone": zone, "machine_type": mt, "outcome": outcome, "t": time.time()})
            op = remember(insert_instance(project, zone, body or {}, rule))
            if r.get("hang_after"):
                # GCE acted; the answer never reaches the caller.
                raise Hang(float(r.get("seconds", 3600)))
            return 200, op, "compute.instances.insert"
        if len(rest) == 3 and method == "GET":
            guard("list")
            with lock:
                items = [json.loads(json.dumps(i)) for (p, z, _), i in sorted(instances.items())
                         if p == project and z == zone and matches_filter(i, flt)]
            out = {"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
                   "selfLink": f"{zone_url(project, zone)}/instances"}
            if items:
                out["items"] = items
            return 200, out, "compute.instances.list"
        if len(rest) == 4 and method == "GET":
            inst = instance(project, zone, rest[3])
            guard("get", {"machine_type": short(inst["machineType"])})
            with lock:
                return 200, json.loads(json.dumps(inst)), "compute.instances.get"
        if len(rest) == 4 and method == "DELETE":
            seen = dedup()
            if seen:
                return 200, seen, "compute.instances.delete"
            rule = guard("delete")
            return 200, remember(instance_op(project, zone, rest[3], "delete", body or {}, rule)), "compute.instances.delete"
        if len(rest) == 5 and method == "POST" and rest[4] in ("start", "stop", "setLabels", "setMetadata"):
            seen = dedup()
            if seen:
                return 200, seen, f"compute.instances.{rest[4]}"
            rule = guard(rest[4])
            return 200, remember(instance_op(project, zone, rest[3], rest[4], body or {}, rule)), \
                f"compute.instances.{rest[4]}"
    if rest == ["aggregated", "instances"] and method == "GET":
        guard("aggregatedList")
        items = {}
        with lock:
            for (p, z, _), i in sorted(instances.items()):
                if p == project and matches_filter(i, flt):
                    items.setdefault(f"zones/{z}", {"instances": []})["instances"].append(
                        json.loads(json.dumps(i)))
        for z in all_zones():
            items.setdefault(f"zones/{z}", {"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": "There are no results for scope 'zones/%s' on this page." % z,
                "data": [{"key": "scope", "value": f"zones/{z}"}]}})
        return 200, {"kind": "compute#instanceAggregatedList",
                     "id": f"projects/{project}/aggregated/instances", "items": items,
                     "selfLink": f"{BASE}projects/{project}/aggregated/instances"}, \
            "compute.instances.aggregatedList"
    # operations
    if rest[:1] == ["zones"] and len(rest) == 3 and rest[2] == "operations" and method == "GET":
        zone = rest[1]
        guard("operations.list")
        advance()
        with lock:
            items = [json.loads(json.dumps(o["op"])) for o in operations.values()
                     if o["project"] == project and o["zone"] == zone and matches_filter(o["op"], flt)]
        out = {"kind": "compute#operationList", "id": f"projects/{project}/zones/{zone}/operations",
               "selfLink": f"{zone_url(project, zone)}/operations"}
        if items:
            out["items"] = items
        return 200, out, "compute.zoneOperations.list"
    if rest == ["global", "operations"] and method == "GET":
        guard("operations.list")
        advance()
        with lock:
            items = [json.loads(json.dumps(o["op"])) for o in operations.values()
                     if o["project"] == project and o["zone"] is None and matches_filter(o["op"], flt)]
        out = {"kind": "compute#operationList", "id": f"projects/{project}/global/operations",
               "selfLink": f"{BASE}projects/{project}/global/operations"}
        if items:
            out["items"] = items
        return 200, out, "compute.globalOperations.list"
    if len(rest) >= 4 and rest[2] == "operations" or rest[:2] == ["global", "operations"]:
        scope = "zoneOperations" if rest[0] == "zones" else "globalOperations"
        name = rest[3] if rest[0] == "zones" else rest[2]
        wait = rest[-1] == "wait" and method == "POST"
        if not wait and method != "GET":
            raise Fail(405, "badRequest", "Method not allowed")
        guard("operations.wait" if wait else "operations.get")
        deadline = time.monotonic() + (5 if wait else 0)
        while True:
            advance()
            with lock:
                o = operations.get(name)
                if o is None:
                    raise Fail(404, "notFound", f"The resource '{name}' was not found")
                if o["op"]["status"] == "DONE" or time.monotonic() >= deadline:
                    return 200, json.loads(json.dumps(o["op"])), \
                        f"compute.{scope}.{'wait' if wait else 'get'}"
            time.sleep(0.05)
    # zones
    if rest == ["zones"] and method == "GET":
        guard("zones.list")
        return 200, {"kind": "compute#zoneList", "id": f"projects/{project}/zones",
                     "items": [zone_resource(project, z) for z in sorted(all_zones())],
                     "selfLink": f"{BASE}projects/{project}/zones"}, "compute.zones.list"
    if rest[:1] == ["zones"] and len(rest) == 2 and method == "GET":
        guard("zones.get")
        if rest[1] not in all_zones():
            raise Fail(404, "notFound", f"The resource 'projects/{project}/zones/{rest[1]}' was not found")
        return 200, zone_resource(project, rest[1]), "compute.zones.get"
    # firewalls
    if rest[:2] == ["global", "firewalls"]:
        if len(rest) == 2 and method == "POST":
            seen = dedup()
            if seen:
                return 200, seen, "compute.firewalls.insert"
            rule = guard("firewalls.insert")
            fw = json.loads(json.dumps(body or {}))
            name = fw.get("name") or ""
            if not NAME.match(name):
                raise Fail(400, "invalid", f"Invalid value for field 'resource.name': '{name}'.")
            with lock:
                if (project, name) in firewalls:
                    raise Fail(409, "alreadyExists",
                               f"The resource 'projects/{project}/global/firewalls/{name}' already exists")
            link = f"{BASE}projects/{project}/global/firewalls/{name}"
            fw.update({"kind": "compute#firewall", "id": new_id(), "creationTimestamp": now(),
                       "selfLink": link, "direction": fw.get("direction", "INGRESS"),
                       "priority": fw.get("priority", 1000), "disabled": False,
                       "logConfig": {"enable": False},
                       "network": BASE + f"projects/{project}/global/networks/" +
                                  short(fw.get("network") or "default")})

            def act():
                with lock:
                    firewalls[(project, name)] = fw
            fail = None
            if rule is not None and rule.get("error"):
                fail = (rule["error"], injected(rule["error"], project, "", ""))
            return 200, remember(new_operation(project, None, "insert", link, act, fail,
                                               target_id=fw["id"])), "compute.firewalls.insert"
        if len(rest) == 2 and method == "GET":
            guard("firewalls.list")
            with lock:
                items = [json.loads(json.dumps(f)) for (p, _), f in sorted(firewalls.items())
                         if p == project and matches_filter(f, flt)]
            out = {"kind": "compute#firewallList", "id": f"projects/{project}/global/firewalls",
                   "selfLink": f"{BASE}projects/{project}/global/firewalls"}
            if items:
                out["items"] = items
            return 200, out, "compute.firewalls.list"
        if len(rest) == 3:
            name = rest[2]
            with lock:
                fw = firewalls.get((project, name))
            if fw is None:
                raise Fail(404, "notFound",
                           f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
            if method == "GET":
                guard("firewalls.get")
                return 200, json.loads(json.dumps(fw)), "compute.firewalls.get"
            if method == "DELETE":
                seen = dedup()
                if seen:
                    return 200, seen, "compute.firewalls.delete"
                guard("firewalls.delete")

                def act():
                    with lock:
                        firewalls.pop((project, name), None)
                return 200, remember(new_operation(project, None, "delete", fw["selfLink"], act,
                                                   target_id=fw["id"])), "compute.firewalls.delete"
    # images
    if rest[:2] == ["global", "images"] and method == "GET":
        if len(rest) == 4 and rest[2] == "family":
            guard("images.getFromFamily")
            return 200, image(project, rest[3], family=rest[3]), "compute.images.getFromFamily"
        if len(rest) == 3:
            guard("images.get")
            if rest[2].startswith("missing-"):
                raise Fail(404, "notFound",
                           f"The resource 'projects/{project}/global/images/{rest[2]}' was not found")
            return 200, image(project, rest[2]), "compute.images.get"
    raise Fail(404, "notFound", f"Not Found: {method} /compute/v1/{'/'.join(parts)}")


MUTATING = ("insert", "delete", "start", "stop", "setLabels", "setMetadata", "firewalls.insert")


class Hang(Exception):
    def __init__(self, seconds):
        self.seconds = seconds


def record(entry):
    if args.record:
        with lock:
            with open(args.record, "a") as f:
                f.write(json.dumps(entry) + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        global rules
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/_fake/"):
            what = url.path[len("/_fake/"):]
            if what.startswith("preempt/") and self.command == "POST":
                # /_fake/preempt/ZONE/NAME (the project is the only one the instance is in)
                zone, _, name = what[len("preempt/"):].partition("/")
                with lock:
                    found = [p for (p, z, n) in instances if z == zone and n == name]
                try:
                    if not found:
                        raise Fail(404, "notFound", f"no instance {zone}/{name}")
                    preempt(found[0], zone, name)
                except Fail as f:
                    return self.reply(f.status, error_body(f.status, f.reason, f.message))
                return self.reply(200, {})
            with lock:
                if what == "rules" and self.command == "POST":
                    rules = json.loads(raw or b"[]")
                    hits.clear()
                    return self.reply(200, {})
                if what == "log":
                    return self.reply(200, log)
                if what == "instances":
                    return self.reply(200, [
                        {"project": p, "zone": z, "name": n, "status": i["status"],
                         "machine_type": short(i["machineType"]), "labels": i.get("labels", {}),
                         "address": placed.get(i["id"])}
                        for (p, z, n), i in sorted(instances.items())])
                if what == "firewalls":
                    return self.reply(200, [f for f in firewalls.values()])
            return self.reply(404, {})
        path = url.path
        if not path.startswith("/compute/v1/"):
            return self.reply(404, error_body(404, "notFound", "Not Found"))
        parts = [urllib.parse.unquote(p) for p in path[len("/compute/v1/"):].split("/") if p]
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self.reply(400, error_body(400, "parseError", "Parse Error"))
        try:
            status, out, method = route(self.command, parts, query, body)
        except Hang as h:
            time.sleep(h.seconds)
            self.close_connection = True
            return
        except Fail as f:
            record({"method": None, "path": path, "request": body, "status": f.status,
                    "response": error_body(f.status, f.reason, f.message)})
            return self.reply(f.status, error_body(f.status, f.reason, f.message))
        record({"method": method, "path": path, "request": body, "status": status, "response": out})
        return self.reply(status, out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256


threading.Thread(target=ticker, daemon=True).start()
if machines:
    threading.Thread(target=watch_shutdowns, daemon=True).start()
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
