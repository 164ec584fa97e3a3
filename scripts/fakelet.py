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
        [--control-port PORT] [--images DIR] [--backoff SECONDS]

Images: with `--images DIR`, an image `NAME[:TAG]` whose directory `DIR/<NAME[:TAG] with /
and : replaced by _>/bin` exists (a tagless image also finds `NAME_latest`) runs with that
bin directory first on its PATH; a test "pushes" an image by putting a program there. Other
images run with fakelet's own PATH.

Pods that have volumes, volume mounts, a `workingDir` or a service account token run as a
kubelet would run them, in a mount namespace of their own (`unshare --mount`): a shell
prologue bind-mounts each volume (or its `subPath`) at its `mountPath` (read-only when asked,
and always for configMap, secret, downwardAPI and projected volumes), `cd`s to `workingDir`
(made if missing) and execs the command; exec into the pod enters the same namespace
(`nsenter --mount`). Volumes are materialised under DIR/volumes/POD-UID when the pod starts:
emptyDir (a directory), hostPath (the host's own path), configMap, secret (all keys, or
`items` to relative paths, with `defaultMode`/`mode`), downwardAPI, and projected (secret,
configMap, downwardAPI and serviceAccountToken sources; tokens come from the TokenRequest API
and are renewed at 80% of their life, as a kubelet does). Other volume kinds are empty
directories. A pod whose ConfigMap or Secret is not there yet (and not `optional`) waits in
Pending/ContainerCreating and is tried again. Such pods also get `envFrom` (as every pod
does) and `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`.

Containers restart as a kubelet restarts them (restartPolicy Always, or OnFailure after a
failure): in the same pod, keeping its volumes, at once the first time and then after a
back-off (`--backoff SECONDS`, default 10, doubling up to 30 times that), with
`restartCount` and `lastState` reported and CrashLoopBackOff while waiting; each start's
output goes on in the same log.

Liberties: `KUBERNETES_SERVICE_HOST`/`_PORT` name the apiserver fakelet talks to (127.0.0.1
and its port), not the `kubernetes` Service's ClusterIP, which routes nowhere here. A pod
whose service account token is automounted but which has no volume at
/var/run/secrets/kubernetes.io/serviceaccount (1.20's admission plugin adds one from the
account's token Secret; without the plugin it would not) gets fakelet's own there: a
TokenRequest token, `ca.crt` from --ca, and `namespace`. Mount points missing on the host
(for example /var/lib/skyform, or the service account directory) are created there, empty;
the mounts themselves are seen by the pod only. ConfigMap and Secret volumes hold the data
of the pod's start (a kubelet updates them later, except subPath files). `subPathExpr` and
`$(VAR)` references are not expanded; there is no `logs --previous`. A deleted pod's
volumes, and such a pod's directory, are removed with it.

Python's standard library only (and util-linux's unshare, nsenter and mount; run as root).
Facts behind it: docs/notes/kubernetes-research.md.
"""

import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import re
import select
import shlex
import shutil
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


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The kinds a kubelet always mounts read-only (they are the API's data, not the pod's).
API_DATA = ("configMap", "secret", "downwardAPI", "projected")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"


class Waiting(Exception):
    """What keeps a pod from starting for now (a ConfigMap or Secret not there yet): it stays
    Pending and fakelet tries again, as a kubelet does."""


class Pod:
    def __init__(self, uid):
        self.uid = uid
        self.proc = None
        self.log = None
        self.done = False
        self.env = None  # the container's environment, for exec
        self.contained = False  # runs in a mount namespace of its own
        self.workdir = None  # where exec starts, inside that namespace
        self.tokens = []  # [path, (namespace, pod, account, audience, seconds), renew_at]
        self.cleanup = []  # directories removed with the pod
        self.argv, self.script, self.work = None, None, None
        self.restarts = 0  # the container's restartCount
        self.crashes = 0  # exits in a row, for the back-off
        self.restart_at = None  # when the ended container starts again
        self.started = None  # when the running container started (time, text)
        self.last = None  # how the previous container ended (lastState)


class Fakelet:
    def __init__(self, api, nodes, dir_, ca=None, images=None, backoff=10.0):
        self.api, self.nodes, self.dir = api, nodes, dir_
        self.ca, self.images, self.backoff = ca, images, backoff
        self.pods = {}  # uid -> Pod
        self.waiting = {}  # uid -> (why, when to try again)
        self.lock = threading.Lock()

    def log_path(self, ns, name):
        return os.path.join(self.dir, "logs", f"{ns}_{name}.log")

    def image_bin(self, image):
        """The bin directory of an image "pushed" under --images, or None."""
        if not self.images or not image:
            return None
        names = [image]
        if ":" not in image.rsplit("/", 1)[-1]:
            names.append(image + ":latest")
        for n in names:
            d = os.path.join(self.images, n.replace("/", "_").replace(":", "_"), "bin")
            if os.path.isdir(d):
                return d
        return None

    def source(self, ns, kind, name, optional):
        """A ConfigMap's or Secret's data as {key: bytes}; {} when it is missing and optional."""
        obj = self.api.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        if obj is None:
            if optional:
                return {}
            raise Waiting(f"{kind[:-1]} \"{name}\" not found")
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def field(self, pod, path):
        meta = pod["metadata"]
        if path.startswith(("metadata.labels", "metadata.annotations")):
            which = "labels" if path.startswith("metadata.labels") else "annotations"
            values = meta.get(which) or {}
            key = path[len("metadata." + which):]
            if key.startswith("['") and key.endswith("']"):
                return values.get(key[2:-2], "")
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        return {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        }.get(path, "")

    def env_of(self, ns, pod, container, contained=False):
        # FAKELET_POD marks every process of the pod, exec'd ones too, so they end with it.
        path = os.environ.get("PATH", "/usr/bin:/bin")
        image_bin = self.image_bin(container.get("image", ""))
        if image_bin:
            path = image_bin + os.pathsep + path
        env = {"PATH": path, "HOME": os.environ.get("HOME", "/"),
               "FAKELET_POD": pod["metadata"]["uid"]}
        if contained:
            # The apiserver fakelet talks to, not the Service's ClusterIP (see the docstring).
            url = urllib.parse.urlparse(self.api.server)
            port = str(url.port or 443)
            env.update({"KUBERNETES_SERVICE_HOST": url.hostname,
                        "KUBERNETES_SERVICE_PORT": port,
                        "KUBERNETES_SERVICE_PORT_HTTPS": port})
        # envFrom first, so `env` wins, as in a kubelet; keys that are no variable name are
        # left out.
        for src in container.get("envFrom") or []:
            if "configMapRef" in src:
                ref, kind = src["configMapRef"], "configmaps"
            elif "secretRef" in src:
                ref, kind = src["secretRef"], "secrets"
            else:
                continue
            for k, v in self.source(ns, kind, ref.get("name", ""), ref.get("optional")).items():
                name = src.get("prefix", "") + k
                if ENV_NAME.match(name):
                    env[name] = v.decode(errors="replace")
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
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                cm = self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")
                data = (cm or {}).get("data") or {}
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]]
            elif "fieldRef" in src:
                env[e["name"]] = self.field(pod, src["fieldRef"]["fieldPath"])
        return env

    # --- volumes -------------------------------------------------------------------------

    def token(self, ns, pod_name, pod_uid, account, audience, seconds):
        """A token for `account` bound to the pod, from the TokenRequest API, and when to renew
        it (at 80% of its life, as a kubelet does)."""
        spec = {"expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name,
                                   "uid": pod_uid}}
        if audience:
            spec["audiences"] = [audience]
        r = self.api.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": spec})
        if r is None:
            raise Waiting(f"service account \"{account}\" not found")
        life = seconds
        try:
            exp = datetime.datetime.strptime(r["status"]["expirationTimestamp"],
                                             "%Y-%m-%dT%H:%M:%SZ")
            life = exp.replace(tzinfo=datetime.timezone.utc).timestamp() - time.time()
        except (KeyError, ValueError):
            pass
        return r["status"]["token"].encode(), time.time() + 0.8 * max(life, 0)

    @staticmethod
    def write(root, rel, data, mode):
        parts = os.path.normpath(rel).split(os.sep)
        if os.path.isabs(rel) or ".." in parts:
            raise Waiting(f"path {rel!r} must be relative and must not contain '..'")
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".fakelet-tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return path

    def keys(self, root, data, items, mode, optional, what):
        """A ConfigMap's or Secret's keys as files: all of them, or `items` (key -> path)."""
        if items is None:
            for k, v in data.items():
                self.write(root, k, v, mode)
            return
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise Waiting(f"{what} has no key \"{it['key']}\"")
            self.write(root, it["path"], data[it["key"]], it.get("mode", mode))

    def volume(self, ns, pod, vol, root, p):
        """Materialises one volume at `root` (its directory); returns the path to mount."""
        mode = 0o644
        if "emptyDir" in vol:
            os.makedirs(root, exist_ok=True)
        elif "hostPath" in vol:
            hp = vol["hostPath"]
            if hp.get("type") == "DirectoryOrCreate":
                os.makedirs(hp["path"], exist_ok=True)
            return hp["path"]
        elif "configMap" in vol or "secret" in vol:
            os.makedirs(root, exist_ok=True)
            if "configMap" in vol:
                src, kind, name = vol["configMap"], "configmaps", vol["configMap"].get("name", "")
            else:
                src, kind, name = vol["secret"], "secrets", vol["secret"].get("secretName", "")
            data = self.source(ns, kind, name, src.get("optional"))
            self.keys(root, data, src.get("items"), src.get("defaultMode", mode),
                      src.get("optional"), f"{kind[:-1]} \"{name}\"")
        elif "downwardAPI" in vol:
            os.makedirs(root, exist_ok=True)
            src = vol["downwardAPI"]
            for it in src.get("items") or []:
                value = self.field(pod, (it.get("fieldRef") or {}).get("fieldPath", ""))
                self.write(root, it["path"], value.encode(),
                           it.get("mode", src.get("defaultMode", mode)))
        elif "projected" in vol:
            os.makedirs(root, exist_ok=True)
            proj = vol["projected"]
            mode = proj.get("defaultMode", mode)
            for s in proj.get("sources") or []:
                if "configMap" in s or "secret" in s:
                    kind = "configmaps" if "configMap" in s else "secrets"
                    src = s.get("configMap") or s.get("secret")
                    data = self.source(ns, kind, src.get("name", ""), src.get("optional"))
                    self.keys(root, data, src.get("items"), mode, src.get("optional"),
                              f"{kind[:-1]} \"{src.get('name', '')}\"")
                elif "downwardAPI" in s:
                    for it in s["downwardAPI"].get("items") or []:
                        value = self.field(pod, (it.get("fieldRef") or {}).get("fieldPath", ""))
                        self.write(root, it["path"], value.encode(), it.get("mode", mode))
                elif "serviceAccountToken" in s:
                    t = s["serviceAccountToken"]
                    req = (ns, pod["metadata"]["name"], pod["metadata"]["uid"],
                           pod["spec"].get("serviceAccountName") or "default",
                           t.get("audience"), t.get("expirationSeconds", 3600))
                    tok, renew = self.token(*req)
                    p.tokens.append([self.write(root, t["path"], tok, mode), req, renew])
        else:
            # A claim, an NFS share...: there is no storage here, only a directory.
            os.makedirs(root, exist_ok=True)
        return root

    def automounts_token(self, ns, pod, c):
        """Whether the pod gets a service account token no volume provides (see the docstring)."""
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return False
        mounts = c.get("volumeMounts") or []
        if any(os.path.normpath(m.get("mountPath", "")) == SA_DIR for m in mounts):
            return False
        account = spec.get("serviceAccountName") or "default"
        sa = self.api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}")
        return not (sa and sa.get("automountServiceAccountToken") is False)

    def prologue(self, ns, pod, c, p, token):
        """Materialises the pod's volumes (and, with `token`, fakelet's service account
        directory) and returns the shell script that mounts them in the pod's own mount
        namespace, enters workingDir, says "ready" on its stdin and execs "$@"."""
        uid = pod["metadata"]["uid"]
        base = os.path.join(self.dir, "volumes", uid)
        p.cleanup.append(base)
        os.makedirs(base, exist_ok=True)
        paths = {}
        for vol in pod["spec"].get("volumes") or []:
            paths[vol["name"]] = (self.volume(ns, pod, vol, os.path.join(base, vol["name"]), p),
                                  next((k for k in API_DATA if k in vol), None))
        mounts = [dict(m) for m in c.get("volumeMounts") or []]
        if token:
            root = os.path.join(base, "fakelet-serviceaccount")
            req = (ns, pod["metadata"]["name"], uid,
                   pod["spec"].get("serviceAccountName") or "default", None, 3607)
            tok, renew = self.token(*req)
            p.tokens.append([self.write(root, "token", tok, 0o644), req, renew])
            with open(self.ca, "rb") as f:
                self.write(root, "ca.crt", f.read(), 0o644)
            self.write(root, "namespace", ns.encode(), 0o644)
            paths["fakelet-serviceaccount"] = (root, "projected")
            mounts.append({"name": "fakelet-serviceaccount", "mountPath": SA_DIR})
        lines = ["set -e"]
        # Parents before children: a file mounted under an emptyDir lands in it.
        mounts.sort(key=lambda m: len(os.path.normpath(m["mountPath"]).split(os.sep)))
        for m in mounts:
            if m["name"] not in paths:
                raise Waiting(f"volume mount {m['name']!r} names no volume")
            src, kind = paths[m["name"]]
            sub = m.get("subPath") or ""
            if sub:
                parts = os.path.normpath(sub).split(os.sep)
                if os.path.isabs(sub) or ".." in parts:
                    raise Waiting(f"subPath {sub!r} must be relative and must not contain '..'")
                src = os.path.join(src, sub)
                if not os.path.exists(src):
                    os.makedirs(src)
            target = shlex.quote(os.path.normpath(m["mountPath"]))
            if os.path.isdir(src):
                lines.append(f"mkdir -p {target}")
            else:
                lines.append(f'mkdir -p "$(dirname {target})"; [ -e {target} ] || : >{target}')
            lines.append(f"mount --bind {shlex.quote(src)} {target}")
            if m.get("readOnly") or kind:
                lines.append(f"mount -o remount,bind,ro {target}")
        wd = c.get("workingDir")
        if wd:
            lines.append(f"mkdir -p {shlex.quote(wd)}; cd {shlex.quote(wd)}")
        lines += [
            'command -v "$1" >/dev/null ||',
            '  { echo "fakelet: cannot start $1: not found" >&2; exit 127; }',
            "echo ready >&0; exec </dev/null",
            'exec "$@"',
        ]
        return "\n".join(lines) + "\n"

    def renew_tokens(self):
        """Rewrites tokens at 80% of their life (a file mounted by subPath keeps its old one,
        as with a kubelet)."""
        with self.lock:
            due = [(p, t) for p in self.pods.values() if not p.done
                   for t in p.tokens if t[2] <= time.time()]
        for p, t in due:
            try:
                tok, t[2] = self.token(*t[1])
                self.write(os.path.dirname(t[0]), os.path.basename(t[0]), tok,
                           os.stat(t[0]).st_mode & 0o777)
            except (Waiting, RuntimeError, OSError) as e:
                t[2] = time.time() + 10
                print(f"fakelet: cannot renew a token of pod {p.uid}: {e}", file=sys.stderr,
                      flush=True)

    def wait(self, pod, why):
        """The pod cannot start yet: Pending, ContainerCreating, said once; tried again soon."""
        meta, c = pod["metadata"], pod["spec"]["containers"][0]
        first = self.waiting.get(meta["uid"], (None,))[0] != why
        self.waiting[meta["uid"]] = (why, time.time() + 1)
        if first:
            print(f"fakelet: pod {meta['namespace']}/{meta['name']} waits: {why}",
                  file=sys.stderr, flush=True)
            self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                           {"status": {"phase": "Pending", "hostIP": "127.0.0.1",
                                       "containerStatuses": [{
                                           "name": c["name"], "image": c.get("image", ""),
                                           "imageID": "", "ready": False, "restartCount": 0,
                                           "started": False, "state": {"waiting": {
                                               "reason": "ContainerCreating", "message": why}}}]}})

    def forget(self, p):
        """A pod gone from the API: its processes end and its directories go."""
        self.kill(p)
        for d in p.cleanup:
            shutil.rmtree(d, ignore_errors=True)

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
        if time.time() < self.waiting.get(uid, (None, 0))[1]:
            return
        work = os.path.join(self.dir, "pods", uid)
        p = Pod(uid)
        script = None
        try:
            token = self.automounts_token(ns, pod, c)
            p.contained = bool(spec.get("volumes") or c.get("volumeMounts")
                               or c.get("workingDir") or token)
            p.env = self.env_of(ns, pod, c, p.contained)
            if p.contained:
                script = self.prologue(ns, pod, c, p, token)
        except BaseException as e:
            for d in p.cleanup:
                shutil.rmtree(d, ignore_errors=True)
            if isinstance(e, Waiting):
                self.wait(pod, str(e))
                return
            raise
        self.waiting.pop(uid, None)
        os.makedirs(work, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path(ns, name)), exist_ok=True)
        p.log = open(self.log_path(ns, name), "ab")
        p.argv, p.script, p.work = argv, script, work
        if script is not None:
            p.cleanup.append(work)
            p.workdir = c.get("workingDir") or work
        self.pods[uid] = p
        self.launch(pod, p)

    def launch(self, pod, p):
        """Starts the container's process (again, after a restart) and reports it running."""
        meta, c = pod["metadata"], pod["spec"]["containers"][0]
        argv, stdin, ready = p.argv, subprocess.DEVNULL, None
        if p.script is not None:
            argv = [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", p.script,
                    "fakelet-pod"] + argv
            # The prologue says "ready" on its stdin (a pipe's write end, swapped for /dev/null
            # before the command runs) once mounted, so no exec enters a half-made namespace.
            ready, stdin = os.pipe()
        p.restart_at = None
        try:
            p.proc = subprocess.Popen(argv, cwd=p.work, env=p.env, stdout=p.log,
                                      stderr=subprocess.STDOUT, stdin=stdin,
                                      start_new_session=True)
        except OSError as e:
            p.proc = None
            p.log.write(f"fakelet: cannot start {argv[0]}: {e}\n".encode())
            p.log.flush()
            self.exited(pod, p, 127, "StartError")
            return
        finally:
            if ready is not None:
                os.close(stdin)
        p.started = (time.time(), now())
        if ready is not None:
            said = self.await_ready(ready)
            if said is None:
                self.kill(p)
                p.log.write(b"fakelet: the pod's mounts were not made in 15 s\n")
                p.log.flush()
            elif said is False:
                # The prologue failed (a mount, or no such command): not started.
                code = p.proc.wait()
                self.exited(pod, p, code if code >= 0 else 128 - code, "StartError")
                return
        status = {
            "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
            "restartCount": p.restarts, "started": True,
            "state": {"running": {"startedAt": p.started[1]}},
        }
        if p.last:
            status["lastState"] = p.last
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        self.api.patch(path, {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now(),
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [status],
        }})

    def exited(self, pod, p, code, reason=None):
        """The container ended: the pod ends with it (restartPolicy Never, or OnFailure and
        0), or, as a kubelet does, the container starts again, at once the first time and then
        after a back-off (--backoff seconds, doubling to 30 times that; it resets after 10
        minutes of running). Its processes, exec'd ones too, end first; the log goes on."""
        meta, c = pod["metadata"], pod["spec"]["containers"][0]
        policy = pod["spec"].get("restartPolicy") or "Always"
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            p.done = True
            p.log.close()
            self.finish(pod, code, reason, restarts=p.restarts)
            return
        self.kill(p)
        if p.started and time.time() - p.started[0] >= 600:
            p.crashes = 0
        p.crashes += 1
        delay = 0 if p.crashes == 1 else min(self.backoff * 2 ** (p.crashes - 2), 30 * self.backoff)
        p.proc, p.restarts = None, p.restarts + 1
        p.restart_at = time.time() + delay
        p.last = {"terminated": {
            "exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": p.started[1] if p.started else now(), "finishedAt": now()}}
        if delay > 0:
            self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                           {"status": {
                               "phase": "Running",
                               "conditions": [{"type": t, "status": "False",
                                               "lastTransitionTime": now()}
                                              for t in ("ContainersReady", "Ready")],
                               "containerStatuses": [{
                                   "name": c["name"], "image": c.get("image", ""),
                                   "imageID": "", "ready": False, "started": False,
                                   "restartCount": p.restarts, "lastState": p.last,
                                   "state": {"waiting": {
                                       "reason": "CrashLoopBackOff",
                                       "message": f"back-off {delay:g}s restarting failed "
                                                  f"container={c['name']} pod={meta['name']}"}},
                               }]}})

    @staticmethod
    def await_ready(fd):
        """True when the prologue says "ready", False when it ends first (its exit is reported
        as the container's), None when it says nothing in 15 s."""
        got, deadline = b"", time.time() + 15
        try:
            while b"ready" not in got:
                left = deadline - time.time()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
                chunk = os.read(fd, 64)
                if not chunk:
                    return False
                got += chunk
            return True
        finally:
            os.close(fd)

    def finish(self, pod, code, reason=None, phase=None, restarts=0):
        meta, c = pod["metadata"], pod["spec"]["containers"][0]
        phase = phase or ("Succeeded" if code == 0 else "Failed")
        status = {
            "phase": phase,
            "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                "restartCount": restarts, "started": False,
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
                self.forget(self.pods.pop(uid))
            for uid in [u for u in self.waiting if u not in seen]:
                del self.waiting[uid]
        self.renew_tokens()

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
            if p.done:
                return
            if p.proc is None:
                if p.restart_at is not None and time.time() >= p.restart_at:
                    self.launch(pod, p)
                return
            if p.proc.poll() is not None:
                code = p.proc.returncode
                self.exited(pod, p, code if code >= 0 else 128 - code)

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
            self.finish(pod, 137, reason="Evicted", phase="Failed",
                        restarts=p.restarts if p else 0)
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
        pod's directory with the pod's environment (in the pod's mount namespace and
        workingDir when it has one), over a websocket speaking v4.channel.k8s.io (0 stdin,
        1 stdout, 2 stderr, 3 the exit status)."""
        fl = self.server.fakelet
        key = self.headers.get("Sec-WebSocket-Key")
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if not key or "v4.channel.k8s.io" not in offered:
            self.send_error(400, "a websocket speaking v4.channel.k8s.io is needed")
            return
        pod = fl.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        p = fl.pods.get(pod["metadata"]["uid"]) if pod else None
        if p is None:
            self.send_error(404, "no such running pod here")
            return
        if p.contained and (p.proc is None or p.proc.poll() is not None):
            # Its mount namespace went with its last process.
            self.send_error(404, "the pod's container is not running")
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
        if p.contained:
            # Into the pod's mount namespace, where its volumes are, starting in workingDir.
            argv = [NSENTER, "--mount", f"--target={p.proc.pid}", "--", "/bin/sh", "-c",
                    'cd "$1" && shift && exec "$@"', "fakelet-exec", p.workdir] + argv
        # The apiserver asks its kubelets with input=1 (stdin=true from clients).
        stdin = query.get("input") == ["1"] or query.get("stdin") == ["true"]
        try:
            env = p.env if p.env is not None else fl.env_of(ns, pod, c)
            proc = subprocess.Popen(argv, cwd=work, env=env,
                                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except (OSError, Waiting, RuntimeError) as e:
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
    ap.add_argument("--images", help="where \"pushed\" images are (see the docstring)")
    ap.add_argument("--backoff", type=float, default=10.0,
                    help="seconds before a container's second restart (doubling after)")
    a = ap.parse_args()
    with open(a.token_file) as f:
        api = Api(a.server, a.ca, f.read().strip())
    nodes = [Node(api, *parse_node(n), a.dir) for n in a.node]
    fl = Fakelet(api, nodes, a.dir, ca=a.ca, images=a.images, backoff=a.backoff)
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
            fl.forget(p)
        # The nodes go with their agent, so the next test's offers do not include them.
        for n in nodes:
            try:
                api.call("DELETE", f"/api/v1/nodes/{n.name}")
            except (RuntimeError, OSError) as e:
                print(f"fakelet: cannot delete node {n.name}: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
