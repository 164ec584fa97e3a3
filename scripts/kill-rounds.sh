#!/usr/bin/env bash
# Random SIGKILL rounds, end to end, on one backend: skyform is killed with `kill -9` at a
# random moment of an apply and then of a destroy, ROUNDS times, each followed by the same
# command; after apply exactly the declared machines (hosts, instances, pods, sandboxes)
# must exist, after destroy none, with no process, agent, reservation or state left. Starts
# the backend's server on loopback (sshd, moto, a kube-apiserver) and runs the backend's
# crash test (tests/support/crash.rs) with its fixed crash points left out. A failure
# prints the seed; SKYFORM_KILL_SEED=SEED replays the same moments.
# `controller` kills the managed jobs' controller instead (local backend): at random moments
# of its launches and recoveries, then started again; each job must end with exactly one
# live placement and nothing leaked (tests/controller_local.rs).
#   scripts/kill-rounds.sh local|ssh|aws|gcp|k8s|controller [ROUNDS]      (ROUNDS: 20 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-}"
export SKYFORM_KILL_ROUNDS="${2:-20}" SKYFORM_CRASH_POINTS=0
case "$backend" in
local)
  test=provider_local name=local_backend_survives_a_crash_at_every_point
  ;;
ssh)
  eval "$(scripts/sshd.sh start 3)"
  trap 'scripts/sshd.sh stop' EXIT
  test=ssh_crash name=a_pool_survives_a_crash_at_every_point
  ;;
aws)
  eval "$(scripts/moto.sh start)"
  # moto's instances are real machines: sshd hosts on loopback (scripts/test.sh does the same).
  eval "$(scripts/sshd.sh cloud 2)"
  trap 'scripts/moto.sh stop; SKYFORM_TEST_SSH_DIR=$SKYFORM_TEST_CLOUD_DIR scripts/sshd.sh stop' EXIT
  test=aws_ec2 name=clusters::a_crash_at_every_point_converges
  ;;
gcp)
  # The GCE fake starts per test; its instances are sshd hosts on loopback.
  eval "$(scripts/sshd.sh cloud 2)"
  trap 'SKYFORM_TEST_SSH_DIR=$SKYFORM_TEST_CLOUD_DIR scripts/sshd.sh stop' EXIT
  test=gcp name=a_crash_at_every_point_converges
  ;;
k8s)
  eval "$(scripts/kube.sh start)"
  trap 'scripts/kube.sh stop' EXIT
  test=kubernetes name=clusters::a_crash_at_every_point_converges
  ;;
controller)
  test=controller_local name=a_controller_killed_at_random_moments_ends_with_one_placement_per_job
  ;;
*)
  echo "usage: scripts/kill-rounds.sh local|ssh|aws|gcp|k8s|controller [ROUNDS]" >&2
  exit 2
  ;;
esac
echo "== $SKYFORM_KILL_ROUNDS rounds of kill -9 on $backend"
out=$(mktemp)
status=0
cargo test --test "$test" -- --include-ignored --exact "$name" --nocapture 2>&1 | tee "$out" || status=$?
ran=$(grep -c "^running 1 test" "$out" || true)
rm -f "$out"
[ "$status" = 0 ] || exit "$status"
# A renamed test would match nothing and pass: say so instead.
if [ "$ran" = 0 ]; then
  echo "FAIL: no test named $name in tests/$test" >&2
  exit 1
fi
