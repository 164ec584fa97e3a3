#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit, golden, property and
# end-to-end tests. Everything the tests need is built by cargo or found on a stock machine
# (sh, python3, curl, the local backend's real processes) or started here on loopback: moto's
# S3 and EC2 server for the remote state and AWS backend tests (installed from PyPI by
# scripts/moto.sh when missing; the AWS tests put scripts/ec2-proxy.py in front of it),
# Azurite for state in Azure Blob Storage (from npm, by scripts/azurite.sh), and
# three OpenSSH servers on loopback plus one in a network namespace where the machine allows
# (scripts/sshd.sh; openssh-server from apt if missing), and two Kubernetes control planes
# (scripts/kube.sh: kube-apiserver, controller manager and scheduler 1.20.2 from
# $SKYFORM_K8S_BIN_DIR, a cache or ../shared; etcd-server from apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CI:-}" = "true" ]; then
  # A CI machine builds once from a fresh clone, on a disk it shares: incremental caches
  # (about 3.5 GB for this crate's lib and 27 test binaries) and line tables (a third of
  # each test binary) buy nothing there. A panic still names its file and line without them.
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=false
fi
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
echo "== disk: $(df -h "$target_dir" | awk 'NR==2 {print $4}') free where the build goes ($target_dir)"

echo "== rustfmt"
cargo fmt --check

echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings

if [ ! -f ../shared/catalogs/skypilot/gcp/vms.csv ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "NOTE: ../shared/catalogs/skypilot is not here, and CI=true: the tests over the full SkyPilot"
    echo "      catalogs (tests/optimizer_agreement.rs) will FAIL; CI machines have ../shared beside the clone."
  else
    echo "NOTE: ../shared/catalogs/skypilot is not here: the tests over the full SkyPilot catalogs"
    echo "      (tests/optimizer_agreement.rs) are SKIPPED; the small fixture in testdata/catalogs still runs."
  fi
fi

echo "== servers"
eval "$(scripts/moto.sh start)"
trap 'scripts/moto.sh stop' EXIT
echo "moto (S3, EC2) at $SKYFORM_TEST_MOTO_ENDPOINT"
# Azure Blob Storage's emulator, for the state tests (installed from npm when missing).
eval "$(scripts/azurite.sh start)"
trap 'scripts/moto.sh stop; scripts/azurite.sh stop' EXIT
echo "Azurite (Azure Blob Storage) at $SKYFORM_TEST_AZURE_ENDPOINT"
eval "$(scripts/sshd.sh start 3)"
trap 'scripts/moto.sh stop; scripts/azurite.sh stop; scripts/sshd.sh stop' EXIT
# Machines that moto's instances become (the AWS tests' proxy maps instances onto them).
eval "$(scripts/sshd.sh cloud 3)"
stop_cloud() { SKYFORM_TEST_SSH_DIR=$SKYFORM_TEST_CLOUD_DIR scripts/sshd.sh stop; }
trap 'scripts/moto.sh stop; scripts/azurite.sh stop; scripts/sshd.sh stop; stop_cloud' EXIT
echo "cloud machines (for moto's and the GCE fake's instances) on $(cut -d' ' -f1 "$SKYFORM_TEST_CLOUD_DIR/machines" | paste -sd' ')"
# Google's discovery document for compute v1, which the GCE fake (scripts/gce-fake.py,
# started by each test of tests/gcp*.rs) is checked against: pip fetches it once into a cache.
if discovery_env=$(scripts/compute-discovery.sh); then
  eval "$discovery_env"
  echo "compute v1 discovery document at $SKYFORM_TEST_COMPUTE_DISCOVERY"
elif [ "${CI:-}" = "true" ]; then
  echo "FAIL: cannot fetch compute.v1.json (google-api-python-client from PyPI); CI=true needs it for tests/gcp_fake.rs" >&2
  exit 1
else
  echo "NOTE: no compute.v1.json: the GCE fake's schema test (tests/gcp_fake.rs) is SKIPPED."
fi
echo "sshd on $(cut -d' ' -f1 "$SKYFORM_TEST_SSH_DIR/hosts" | paste -sd' ')"
if [ -f "$SKYFORM_TEST_SSH_DIR/netns-hosts" ]; then
  echo "sshd in network namespace $(cut -d' ' -f3 "$SKYFORM_TEST_SSH_DIR/netns-hosts") at $(cut -d' ' -f1 "$SKYFORM_TEST_SSH_DIR/netns-hosts")"
else
  echo "NOTE: no network namespace here: the ssh test across namespaces is SKIPPED (it says so in its output)."
fi

# Two Kubernetes control planes (1.20.2) on one etcd; the tests bring their own fake kubelets.
kube_env=$(scripts/kube.sh start)
eval "$kube_env"
trap 'scripts/moto.sh stop; scripts/azurite.sh stop; scripts/sshd.sh stop; stop_cloud; scripts/kube.sh stop' EXIT
if [ -n "${SKYFORM_TEST_KUBE_DIR:-}" ]; then
  echo "kube-apiserver a at 127.0.0.1:$(cat "$SKYFORM_TEST_KUBE_DIR/a/port"), b at 127.0.0.1:$(cat "$SKYFORM_TEST_KUBE_DIR/b/port")"
else
  echo "NOTE: no kube-apiserver binaries: the Kubernetes tests (tests/kubernetes/) are SKIPPED (they say so in their output)."
fi

echo "== tests"
cargo test --lib --bins --tests --locked -- --include-ignored

echo "== disk: the build holds $(du -sh "$target_dir" | cut -f1); $(df -h "$target_dir" | awk 'NR==2 {print $4}') free"
echo "All tests passed."
