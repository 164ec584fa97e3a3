#!/usr/bin/env python3
"""Apply and failover figures for the AWS backend against moto on loopback.

  1. apply of N single-node clusters (default 100) at parallelism 1 and 32: wall time, the
     speed-up, skyform's CPU time per resource, and at parallelism 1 its own time per
     resource beyond the API calls (wall minus the time the proxy spent waiting for moto).
     Once against moto as it is (moto serialises requests, so parallelism cannot help),
     once with 50 ms added to every call, as a distant region would;
  2. the time to fail over past 5 blocked zones (capacity errors on every us-east-1 zone,
     then success in us-west-2), from the first RunInstances to the one that works.

Every run goes through scripts/ec2-proxy.py with a fresh moto account, whose instances are
made real machines (`scripts/sshd.sh cloud`, unless $SKYFORM_TEST_CLOUD_DIR is set): a
cluster's figures include setting its machine up (ssh, the agent). Uses $SKYFORM_BIN, else
target/release/skyform, else target/debug/skyform; starts moto unless
$SKYFORM_TEST_MOTO_ENDPOINT is set.

usage: scripts/bench-aws.py [--clusters N]
"""
import argparse
import atexit
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parser = argparse.ArgumentParser()
parser.add_argument("--clusters", type=int, default=100)
args = parser.parse_args()


def binary():
    if os.environ.get("SKYFORM_BIN"):
        return os.environ["SKYFORM_BIN"]
    # The newest build, so a stale release binary is never measured.
    built = [p for p in (os.path.join(ROOT, "target", k, "skyform") for k in ("release", "debug"))
             if os.path.exists(p)]
    if not built:
        sys.exit("build skyform first: cargo build --release")
    return max(built, key=os.path.getmtime)


def moto():
    if os.environ.get("SKYFORM_TEST_MOTO_ENDPOINT"):
        return os.environ["SKYFORM_TEST_MOTO_ENDPOINT"], None
    out = subprocess.run([os.path.join(ROOT, "scripts/moto.sh"), "start"], check=True,
                         capture_output=True, text=True).stdout
    env = dict(kv.split("=", 1) for kv in out.replace("export ", "").split())
    return env["SKYFORM_TEST_MOTO_ENDPOINT"], env["MOTO_DIR"]


def machines():
    """The servers moto's instances become: `ADDRESS DIR` lines."""
    if os.environ.get("SKYFORM_TEST_CLOUD_DIR"):
        return os.path.join(os.environ["SKYFORM_TEST_CLOUD_DIR"], "machines")
    out = subprocess.run([os.path.join(ROOT, "scripts/sshd.sh"), "cloud", "3"], check=True,
                         capture_output=True, text=True).stdout
    cloud = out.strip().split("=", 1)[1]
    atexit.register(lambda: subprocess.run([os.path.join(ROOT, "scripts/sshd.sh"), "stop"],
                                           env=dict(os.environ, SKYFORM_TEST_SSH_DIR=cloud)))
    return os.path.join(cloud, "machines")


MACHINES = None


class Proxy:
    def __init__(self, target, rules=(), latency=0.0):
        global MACHINES
        MACHINES = MACHINES or machines()
        account = str(random.randrange(100_000_000_000, 999_999_999_999))
        self.p = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/ec2-proxy.py"), target,
                                   "--account", account, "--rules", json.dumps(list(rules)),
                                   "--latency", str(latency), "--machines", MACHINES],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        atexit.register(self.stop)
        self.url = f"http://127.0.0.1:{self.p.stdout.readline().strip()}"

    def get(self, what):
        return json.load(urllib.request.urlopen(f"{self.url}/_proxy/{what}"))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def run(bin, work, proxy, body, *flags):
    with open(os.path.join(work, "main.sky.hcl"), "w") as f:
        f.write(f'infra "aws" {{\n  endpoint = "{proxy.url}"\n  regions = ["us-east-1", "us-west-2"]\n}}\n{body}')
    env = dict(os.environ, NO_COLOR="1", HOME=os.path.join(work, "home"),
               SKYFORM_CATALOG_DIR=os.path.join(ROOT, "testdata/catalogs"),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    out = subprocess.run([bin, f"-chdir={work}", "apply", "-auto-approve", *flags], env=env,
                         capture_output=True, text=True)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"apply failed:\n{out.stdout}\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    bin = binary()
    target, moto_dir = moto()
    print(f"binary: {bin}")
    print(f"moto:   {target} (each run through scripts/ec2-proxy.py, its own account)")
    # Warm moto up (its first EC2 calls are slow) with one small apply.
    work = tempfile.mkdtemp(prefix="skyform-bench-")
    os.makedirs(os.path.join(work, "home"))
    warm = Proxy(target)
    run(bin, work, warm, 'cluster "w" {\n  resources {\n    instance_type = "m6i.large"\n  }\n}\n')
    warm.stop()
    shutil.rmtree(work, ignore_errors=True)
    n = args.clusters
    body = f'cluster "c" {{\n  count = {n}\n  resources {{\n    instance_type = "m6i.large"\n  }}\n}}\n'
    for latency in (0.0, 0.05):
        walls = {}
        where = "moto as is" if not latency else f"{latency * 1000:.0f} ms added to every call, like a distant region"
        print(f"\napply of {n} single-node clusters (m6i.large, us-east-1), {where}:")
        print(f"  {'parallelism':>11}  {'wall':>7}  {'per cluster':>11}  {'cpu/cluster':>11}  {'API calls':>9}  {'waiting on EC2':>14}  {'own time/cluster':>16}")
        for par in (1, 32):
            work = tempfile.mkdtemp(prefix="skyform-bench-")
            os.makedirs(os.path.join(work, "home"))
            proxy = Proxy(target, latency=latency)
            wall, cpu = run(bin, work, proxy, body, f"-parallelism={par}")
            stats = proxy.get("stats")
            api = stats["upstream_seconds"] + latency * stats["requests"]
            own = (wall - api) / n if par == 1 else None
            walls[par] = wall
            print(f"  {par:>11}  {wall:>6.2f}s  {wall / n * 1000:>9.1f}ms  {cpu / n * 1000:>9.1f}ms  {stats['requests']:>9}  {api:>13.2f}s  "
                  + (f"{own * 1000:>14.1f}ms" if own is not None else f"{'(overlapping)':>16}"))
            proxy.stop()
            shutil.rmtree(work, ignore_errors=True)
        print(f"  speed-up at parallelism 32: {walls[1] / walls[32]:.1f}x")

    print("\nfailover past 5 blocked zones (spot g5.xlarge; capacity errors on us-east-1a,b,c,d,f):")
    zones = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]
    rules = [{"action": "RunInstances", "zone": z, "error": "InsufficientInstanceCapacity"} for z in zones]
    body = 'cluster "train" {\n  resources {\n    accelerators = "A10G:1"\n    use_spot = true\n  }\n}\n'
    samples = []
    for _ in range(3):
        work = tempfile.mkdtemp(prefix="skyform-bench-")
        os.makedirs(os.path.join(work, "home"))
        proxy = Proxy(target, rules)
        wall, _ = run(bin, work, proxy, body)
        log = proxy.get("log")
        assert [c["zone"] for c in log[:5]] == zones, log
        samples.append((log[-1]["t"] - log[0]["t"], wall, len(log)))
        proxy.stop()
        shutil.rmtree(work, ignore_errors=True)
    best = min(samples)
    print(f"  first RunInstances to the one that worked: {best[0]:.2f}s over {best[2]} attempts "
          f"({best[0] / 5 * 1000:.0f}ms per blocked zone); whole apply {best[1]:.2f}s (best of 3)")
    if moto_dir:
        subprocess.run([os.path.join(ROOT, "scripts/moto.sh"), "stop"], env=dict(os.environ, MOTO_DIR=moto_dir))


main()
