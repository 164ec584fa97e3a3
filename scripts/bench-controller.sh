#!/usr/bin/env bash
# The controller's figures in docs/benchmarks.md ("The controller").
#
# 1. Recovery time on the local backend, with real processes: a managed job `sleep 600` is
#    applied (the controller starts in the background) and timed until it runs (the launch);
#    then its node agent is killed with `kill -9` and timed until the job runs again on its
#    second placement (the recovery). Each round is a fresh directory, destroyed after. The
#    book (`.skyform/state.json.controller`) is polled every 10 ms; its millisecond stamps
#    split the recovery into noticing the loss, confirming it, and launching again.
#    Run with the default settings (tick 2 s, grace 20 s) and with tick 200 ms / grace 400 ms.
# 2. `cargo bench --bench controller_scale`: the controller's CPU and memory for 1,000
#    managed jobs (an in-process backend).
#
#   scripts/bench-controller.sh [recovery|scale|all]     (all by default)
# ROUNDS_DEFAULT (5) and ROUNDS_FAST (10) set the rounds; SKYFORM_BIN another skyform build.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
target="${CARGO_TARGET_DIR:-target}"

recovery() {
  if [ -z "${SKYFORM_BIN:-}" ]; then
    cargo build --release --bin skyform >&2
    SKYFORM_BIN="$target/release/skyform"
  fi
  export SKYFORM_BIN
  unset SKYFORM_CRASH_AFTER
  echo "recovery of a managed job on the local backend; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo
  echo "default settings (tick 2 s, grace 20 s):"
  (unset SKYFORM_CONTROLLER_TICK_MS SKYFORM_CONTROLLER_GRACE_MS; bench_rounds "${ROUNDS_DEFAULT:-5}")
  echo
  echo "tick 200 ms, grace 400 ms:"
  SKYFORM_CONTROLLER_TICK_MS=200 SKYFORM_CONTROLLER_GRACE_MS=400 bench_rounds "${ROUNDS_FAST:-10}"
}

bench_rounds() {
  python3 - "$1" <<'PY'
import json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

BIN = os.environ["SKYFORM_BIN"]
ROUNDS = int(sys.argv[1])
CONFIG = 'managed_job "train" {\n  run = "sleep 600"\n}\n'


def now_ms():
    return time.time() * 1000.0


def sky(d, *args):
    return subprocess.run([BIN, f"-chdir={d}", *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "NO_COLOR": "1"})


def run_of(d):
    try:
        with open(os.path.join(d, ".skyform/state.json.controller")) as f:
            runs = json.load(f).get("runs", {})
    except (OSError, ValueError):
        return None
    return next(iter(runs.values()), None)


def wait(d, what, ok, timeout=120.0):
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        r = run_of(d)
        if r is not None and ok(r):
            return now_ms(), r
        time.sleep(0.01)
    sys.exit(f"timed out waiting for {what} in {d}")


def running(attempt):
    return lambda r: r.get("phase") == "RUNNING" and r.get("attempt") == attempt


def one_round(d):
    with open(os.path.join(d, "main.sky.hcl"), "w") as f:
        f.write(CONFIG)
    t0 = now_ms()
    out = sky(d, "apply", "-auto-approve")
    if out.returncode != 0:
        sys.exit(f"apply failed: {out.stderr}")
    t_up, r = wait(d, "the first launch", running(1))
    first = r["current"]
    launch = t_up - t0
    # The launch from the controller's first write of the placement to RUNNING: what a
    # relaunch repeats.
    backend_launch = t_up - first["since_ms"]
    pid = first["private"]["agents"][0]["pid"]
    time.sleep(0.5)
    t_kill = now_ms()
    os.kill(pid, signal.SIGKILL)
    _, r = wait(d, "the loss to be noticed",
                lambda r: r.get("suspect_since") or r.get("attempt", 1) > 1)
    noticed = (r.get("suspect_since") or t_kill) - t_kill
    t_back, r = wait(d, "the job to run again", running(2))
    relaunched = r["current"]["since_ms"]
    recovery = t_back - t_kill
    st = sky(d, "status", "-json")
    rows = json.loads(st.stdout) if st.returncode == 0 else []
    row = next((x for x in rows if x.get("address") == "managed_job.train"), {})
    assert row.get("attempt") == 2 and row.get("status") == "RUNNING", row
    sky(d, "destroy", "-auto-approve")
    return {
        "launch": launch,
        "backend_launch": backend_launch,
        "recovery": recovery,
        "beyond": recovery - launch,
        "noticed": noticed,
        "decided": relaunched - t_kill - noticed,
        "relaunch": t_back - relaunched,
    }


rounds = []
base = os.environ.get("SKYFORM_BENCH_DIR") or None
for i in range(ROUNDS):
    d = tempfile.mkdtemp(prefix="skyctl", dir=base)
    try:
        rounds.append(one_round(d))
    finally:
        sky(d, "controller", "stop")
        shutil.rmtree(d, ignore_errors=True)
    r = rounds[-1]
    print(f"  round {i + 1}: launch {r['launch'] / 1000:.2f} s, recovery {r['recovery'] / 1000:.2f} s",
          flush=True)

labels = [
    ("launch", "apply -> RUNNING (attempt 1)"),
    ("backend_launch", "  of which placement recorded -> RUNNING"),
    ("recovery", "kill -9 -> RUNNING (attempt 2)"),
    ("noticed", "  kill -> loss first seen"),
    ("decided", "  first seen -> relaunch begins"),
    ("relaunch", "  relaunch begins -> RUNNING"),
    ("beyond", "recovery - launch"),
]
print(f"  {'':42} {'median':>8} {'min':>8} {'max':>8}   (seconds, {ROUNDS} rounds)")
for key, label in labels:
    v = [r[key] / 1000 for r in rounds]
    print(f"  {label:42} {statistics.median(v):8.2f} {min(v):8.2f} {max(v):8.2f}")
PY
}

scale() {
  cargo bench --bench controller_scale
}

case "$what" in
recovery) recovery ;;
scale) scale ;;
all) recovery; echo; scale ;;
*) echo "usage: $0 [recovery|scale|all]" >&2; exit 2 ;;
esac
