#!/usr/bin/env python3
"""A stand-in for kubelets, for tests against the control planes of scripts/kube.sh.

It registers Node objects (with CPUs, memory, GPUs and GPU labels), runs every pod bound to
them as a local process (the first container's command and args, in a directory of its
own; an image under `fakelet.invalid/` cannot be pulled), reports the pod's status and exit
code, finishes deletions and evictions, and serves
container logs to the apiserver (which proxies `pods/log` to the node's address and port,
over TLS it does not verify). A control port lets tests evict a pod as a kubelet would.

    fakelet.py --server https://127.0.0.1:PORT --ca CA --token-file TOKEN --dir DIR \
        --node gpu-1:cpu=16,memory=64Gi,gpus=8,product=NVIDIA-A100-SXM4-80GB [--node ...] \
        [--control-port PORT]

Python's standard library only. Facts behind it: docs/notes/kubernetes-research.md.
"""

import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    def __init__(self, server, ca, token):
        self.server = server.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca)

    def call(self, method, path, body=None, content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from e

    def patch(self, path, body):
        return self.call("PATCH", path, body, "application/merge-patch+json")


def parse_node(spec):
    name, _, rest = spec.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, opts


class Node:
    """One fake node: its logs server (TLS, self-signed) and its registration."""

    def __init__(self, api, name, opts, dir_):
        self.api, self.name, self.opts = api, name, opts
        self.dir = os.path.join(dir_, name)
        os.makedirs(self.dir, exist_ok=True)
        cert, key = os.path.join(self.dir, "tls.crt"), os.path.join(self.dir, "tls.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "365", "-subj", "/CN=" + name,
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LogHandler)
        self.server.fakelet = None  # set by Fakelet
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def register(self):
        o = self.opts
        labels = {"kubernetes.io/hostname": self.name, "skyform.dev/test-node": "true"}
        if o.get("product"):
            labels["nvidia.com/gpu.product"] = o["product"]
        if o.get("gke"):
            labels["cloud.google.com/gke-accelerator"] = o["gke"]
        self.api.call("DELETE", f"/api/v1/nodes/{self.name}")
        self.api.call("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
        })
        capacity = {"cpu": o.get("cpu", "8"), "memory": o.get("memory", "32Gi"), "pods": "110"}
        if o.get("gpus"):
            capacity["nvidia.com/gpu"] = o["gpus"]
        self.api.patch(f"/api/v1/nodes/{self.name}/status", {"status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fakelet", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {"kubeletVersion": "v1.20.2", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "fakelet://1",
                         "kernelVersion": "", "osImage": "fakelet", "machineID": "",
                         "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
        }})
        # Admission marks new nodes not-ready; this one is.
        self.api.patch(f"/api/v1/nodes/{self.name}", {"spec": {"taints": None}})


class Pod:
    def __init__(self, uid):
        self.uid = uid
        self.proc = None
        self.log = None
        self.done = False


class Fakelet:
    def __init__(self, api, nodes, dir_):
        self.api, self.nodes, self.dir = api, nodes, dir_
        self.pods = {}  # uid -> Pod
        self.lock = threading.Lock()

    def log_path(self, ns, name):
        return os.path.join(self.dir, "logs", f"{ns}_{name}.log")

    def env_of(self, ns, pod, container):
        # FAKELET_POD marks every process of the pod, exec'd ones too, so they end with it.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
               "FAKELET_POD": pod["metadata"]["uid"]}
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            src = e.get("valueFrom") or {}
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
                data = (secret or {}).get("data") or {}
                if ref["key"] in data:
                    env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                env[e["name"]] = {
                    "metadata.name": pod["metadata"]["name"],
                    "metadata.namespace": ns,
                    "status.podIP": "127.0.0.1",
                    "spec.nodeName": pod["spec"].get("nodeName", ""),
                }.get(path, "")
        return env

    def start(self, pod):
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        c = spec["containers"][0]
        argv = (c.get("command") or []) + (c.get("args") or [])
        if not argv:
            argv = ["true"]
        if c.get("image", "").startswith("fakelet.invalid/"):
            # As a kubelet whose registry does not have the image: the pod stays Pending.
            self.pods[uid] = Pod(uid)
            self.pods[uid].done = True
            self.api.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": {
                "phase": "Pending", "hostIP": "127.0.0.1",
                "containerStatuses": [{
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                    "restartCount": 0, "started": False, "state": {"waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f"Back-off pulling image \"{c['image']}\"",
                    }},
                }],
            }})
            return
        work = os.path.join(self.dir, "pods", uid)
        os.makedirs(work, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path(ns, name)), exist_ok=True)
        log = open(self.log_path(ns, name), "ab")
        p = Pod(uid)
        try:
            p.proc = subprocess.Popen(argv, cwd=work, env=self.env_of(ns, pod, c), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        except OSError as e:
            log.write(f"fakelet: cannot start {argv[0]}: {e}\n".encode())
            log.close()
            self.finish(pod, 127, "StartError")
            p.done = True
            self.pods[uid] = p
            return
        p.log = log
        self.pods[uid] = p
        self.api.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now(),
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                "restartCount": 0, "started": True, "state": {"running": {"startedAt": now()}},
            }],
        }})

    def finish(self, pod, code, reason=None, phase=None):
        meta, c = pod["metadata"], pod["spec"]["containers"][0]
        phase = phase or ("Succeeded" if code == 0 else "Failed")
        status = {
            "phase": phase,
            "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": code,
                                         "reason": reason or ("Completed" if code == 0 else "Error"),
                                         "startedAt": now(), "finishedAt": now()}},
            }],
        }
        if reason == "Evicted":
            status["reason"] = "Evicted"
            status["message"] = "evicted by the fakelet on request"
        self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                       {"status": status})

    def kill(self, p):
        if p.proc and p.proc.poll() is None:
            try:
                os.killpg(p.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.proc.wait()
        # What the pod started in sessions of their own (jobs run through exec): a container's
        # processes all end with it.
        mark = f"FAKELET_POD={p.uid}".encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def step(self):
        seen = set()
        for node in self.nodes:
            q = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node.name}"})
            listing = self.api.call("GET", f"/api/v1/pods?{q}")
            if listing is None:
                return
            for pod in listing.get("items") or []:
                seen.add(pod["metadata"]["uid"])
                self.one(pod)
        # Pods removed from the API at once (deleted with grace 0): as a kubelet, end them.
        with self.lock:
            for uid in [u for u in self.pods if u not in seen]:
                self.kill(self.pods.pop(uid))

    def one(self, pod):
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            p = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if p:
                    self.kill(p)
                self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
                return
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                return
            if p is None:
                self.start(pod)
                return
            if not p.done and p.proc and p.proc.poll() is not None:
                p.done = True
                p.log.close()
                code = p.proc.returncode
                self.finish(pod, code if code >= 0 else 128 - code)

    def evict(self, ns, name):
        """As a kubelet under pressure: stop the pod and mark it Failed/Evicted."""
        pod = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        if not pod:
            return False
        with self.lock:
            p = self.pods.get(pod["metadata"]["uid"])
            if p:
                p.done = True
                self.kill(p)
            self.finish(pod, 137, reason="Evicted", phase="Failed")
        return True


class LogHandler(http.server.BaseHTTPRequestHandler):
    """`/containerLogs/NS/POD/CONTAINER?follow=true`, as a kubelet serves it."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        fl = self.server.fakelet
        if len(parts) == 4 and parts[0] == "exec":
            self.exec(parts[1], parts[2], urllib.parse.parse_qs(url.query))
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404)
            return
        ns, name = parts[1], parts[2]
        follow = urllib.parse.parse_qs(url.query).get("follow") == ["true"]
        path = fl.log_path(ns, name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        pos = 0
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                self.wfile.write(chunk)
                self.wfile.flush()
                pos += len(chunk)
            if not follow or not self.running(ns, name):
                if not chunk:
                    return
                continue
            time.sleep(0.2)

    def exec(self, ns, name, query):
        """`/exec/NS/POD/CONTAINER?command=…`: runs the command as a local process in the
        pod's directory with the pod's environment, over a websocket speaking
        v4.channel.k8s.io (0 stdin, 1 stdout, 2 stderr, 3 the exit status)."""
        fl = self.server.fakelet
        key = self.headers.get("Sec-WebSocket-Key")
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if not key or "v4.channel.k8s.io" not in offered:
            self.send_error(400, "a websocket speaking v4.channel.k8s.io is needed")
            return
        pod = fl.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        if not pod or pod["metadata"]["uid"] not in fl.pods:
            self.send_error(404, "no such running pod here")
            return
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n"
                          "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode())
        self.wfile.flush()
        argv = query.get("command", ["true"])
        work = os.path.join(fl.dir, "pods", pod["metadata"]["uid"])
        c = pod["spec"]["containers"][0]
        # The apiserver asks its kubelets with input=1 (stdin=true from clients).
        stdin = query.get("input") == ["1"] or query.get("stdin") == ["true"]
        try:
            proc = subprocess.Popen(argv, cwd=work, env=fl.env_of(ns, pod, c),
                                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            self.frame(b"\x02" + f"{e}\n".encode())
            self.status(126)
            return
        lock = threading.Lock()

        def pump(stream, channel):
            for chunk in iter(lambda: stream.read1(65536), b""):
                with lock:
                    self.frame(bytes([channel]) + chunk)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, 1)),
                 threading.Thread(target=pump, args=(proc.stderr, 2))]
        for t in pumps:
            t.start()
        if stdin:
            threading.Thread(target=self.feed, args=(proc,), daemon=True).start()
        code = proc.wait()
        for t in pumps:
            t.join()
        with lock:
            self.status(code)

    def feed(self, proc):
        """Client frames (masked): channel 0 bytes go to the process's stdin; a close frame,
        or an empty stdin frame, ends it."""
        try:
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    break
                opcode, n = head[0] & 0x0F, head[1] & 0x7F
                if n == 126:
                    n = int.from_bytes(self.rfile.read(2), "big")
                elif n == 127:
                    n = int.from_bytes(self.rfile.read(8), "big")
                mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                if opcode == 8:
                    break
                if opcode in (1, 2) and data[:1] == b"\x00" and len(data) > 1:
                    proc.stdin.write(data[1:])
                    proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass

    def frame(self, payload, opcode=2):
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        try:
            self.wfile.write(head + payload)
            self.wfile.flush()
        except OSError:
            pass

    def status(self, code):
        if code == 0:
            st = {"metadata": {}, "status": "Success"}
        else:
            st = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                  "message": f"command terminated with non-zero exit code: {code}",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        self.frame(b"\x03" + json.dumps(st).encode())
        self.frame(b"\x03\xe8", opcode=8)

    def running(self, ns, name):
        fl = self.server.fakelet
        pod = fl.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        return bool(pod) and pod["status"].get("phase") in ("Pending", "Running")


class Control(http.server.BaseHTTPRequestHandler):
    """Plain HTTP on loopback for tests: `POST /evict/NS/POD`."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "evict" and self.server.fakelet.evict(parts[1], parts[2]):
            self.send_response(200)
        else:
            self.send_response(404)
        self.end_headers()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--node", action="append", required=True)
    ap.add_argument("--control-port", type=int, default=0)
    a = ap.parse_args()
    with open(a.token_file) as f:
        api = Api(a.server, a.ca, f.read().strip())
    nodes = [Node(api, *parse_node(n), a.dir) for n in a.node]
    fl = Fakelet(api, nodes, a.dir)
    for n in nodes:
        n.server.fakelet = fl
        threading.Thread(target=n.server.serve_forever, daemon=True).start()
        n.register()
    control = http.server.ThreadingHTTPServer(("127.0.0.1", a.control_port), Control)
    control.fakelet = fl
    threading.Thread(target=control.serve_forever, daemon=True).start()
    with open(os.path.join(a.dir, "control-port"), "w") as f:
        f.write(str(control.server_address[1]))
    print(f"fakelet: nodes {', '.join(n.name for n in nodes)}; control port "
          f"{control.server_address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            try:
                fl.step()
            except (RuntimeError, OSError, socket.timeout) as e:
                print(f"fakelet: {e}", file=sys.stderr, flush=True)
            time.sleep(0.2)
    finally:
        for p in fl.pods.values():
            fl.kill(p)
        # The nodes go with their agent, so the next test's offers do not include them.
        for n in nodes:
            try:
                api.call("DELETE", f"/api/v1/nodes/{n.name}")
            except (RuntimeError, OSError) as e:
                print(f"fakelet: cannot delete node {n.name}: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
