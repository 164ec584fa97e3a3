#!/usr/bin/env bash
# Starts N OpenSSH servers on loopback (127.0.0.2, 127.0.0.3, …, each on a free port), for
# the ssh backend's tests. Installs openssh-server with apt-get if sshd is missing (the
# system's own sshd stays off). Prints `export SKYFORM_TEST_SSH_DIR=DIR` for the caller to
# eval. DIR holds:
#   id_ed25519          the client key every server accepts (authorized_keys)
#   hosts               one `ADDRESS PORT` line per server, in order
#   host-I/             each server's config, host key, pid, log, and `gpus` (the GPU
#                       inventory skyform reads there, through SKYFORM_GPUS_FILE)
#   eval "$(scripts/sshd.sh start 3)"   ...   scripts/sshd.sh stop
set -euo pipefail
case "${1:-start}" in
start)
  n="${2:-3}"
  if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then
    echo "installing openssh-server..." >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server >&2; }
    # Package lists may be missing or stale on a fresh machine: refresh them once if needed.
    install || { $sudo apt-get update >&2 && install; }
  fi
  sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sky-sshd.XXXXXX")
  mkdir -p /run/sshd 2>/dev/null || true
  ssh-keygen -q -t ed25519 -N "" -C skyform-test -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  : >"$dir/hosts"
  for i in $(seq 1 "$n"); do
    addr="127.0.0.$((i + 1))"
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr',0)); print(s.getsockname()[1])")
    h="$dir/host-$i"
    mkdir -p "$h"
    ssh-keygen -q -t ed25519 -N "" -f "$h/ssh_host_ed25519_key"
    cat >"$h/sshd_config" <<CFG
Port $port
ListenAddress $addr
HostKey $h/ssh_host_ed25519_key
PidFile $h/pid
AuthorizedKeysFile $dir/authorized_keys $h/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel ERROR
# A GPU inventory per host (tests write NAME COUNT lines into it), a directory of skyform's
# own and the keys a cluster's head links with, per host: these servers share one filesystem.
SetEnv SKYFORM_GPUS_FILE=$h/gpus SKYFORM_HOST_DIR=$h/skyform SKYFORM_AUTHORIZED_KEYS=$h/authorized_keys
CFG
    "$sshd_bin" -t -f "$h/sshd_config"
    "$sshd_bin" -D -f "$h/sshd_config" -E "$h/log" </dev/null >/dev/null 2>&1 &
    echo "$addr $port" >>"$dir/hosts"
  done
  # Wait until every server accepts connections.
  while read -r addr port; do
    for _ in $(seq 1 100); do
      if python3 -c "import socket; socket.create_connection(('$addr', $port), 0.2)" 2>/dev/null; then
        break
      fi
      sleep 0.05
    done
  done <"$dir/hosts"
  echo "export SKYFORM_TEST_SSH_DIR=$dir"
  ;;
stop)
  if [ -n "${SKYFORM_TEST_SSH_DIR:-}" ] && [ -d "$SKYFORM_TEST_SSH_DIR" ]; then
    for p in "$SKYFORM_TEST_SSH_DIR"/host-*/pid; do
      [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
    done
    rm -rf "$SKYFORM_TEST_SSH_DIR"
  fi
  ;;
*)
  echo "usage: $0 start [N] | stop" >&2
  exit 2
  ;;
esac
