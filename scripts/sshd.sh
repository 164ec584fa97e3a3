#!/usr/bin/env bash
# Starts N OpenSSH servers on loopback (127.0.0.2, 127.0.0.3, …, each on a free port), for
# the ssh backend's tests. Installs openssh-server (and rsync) with apt-get if missing (the
# system's own sshd stays off). Prints `export SKYFORM_TEST_SSH_DIR=DIR` for the caller to
# eval. DIR holds:
#   id_ed25519          the client key every server accepts (authorized_keys)
#   hosts               one `ADDRESS PORT` line per server, in order
#   host-I/             each server's config, host key, pid, log, and `gpus` (the GPU
#                       inventory skyform reads there, through SKYFORM_GPUS_FILE)
#   shared-hosts        `ADDRESS PORT` of two more servers whose hosts share one home
#                       (shared-home/), each with its own hostname and no SKYFORM_HOST_DIR
#   netns-hosts         `ADDRESS PORT NAMESPACE` of one more server in a network namespace
#                       of its own (netns-1/), when the machine allows (root, iproute2);
#                       SKYFORM_TEST_NETNS=0 leaves it out
#   eval "$(scripts/sshd.sh start 3)"   ...   scripts/sshd.sh stop
#
# `cloud N` starts N servers that play cloud machines instead (for scripts/ec2-proxy.py
# --machines): each on port 22 of its own loopback address, logging in the image's user
# `ubuntu` (made, locked, if missing) with the keys in its own authorized_keys, which starts
# empty (the proxy writes the imported key pair there, as cloud-init does). Its `shutdown`
# (with the message `… cluster TOKEN`) leaves TOKEN in DIR/poweroff/ for the proxy to power
# the instance off through EC2, as a real machine's shutdown would. Prints `export
# SKYFORM_TEST_CLOUD_DIR=DIR`; DIR/machines lists `ADDRESS DIR` per server.
#   eval "$(scripts/sshd.sh cloud 3)"   ...   SKYFORM_TEST_SSH_DIR=$SKYFORM_TEST_CLOUD_DIR scripts/sshd.sh stop
set -euo pipefail
case "${1:-start}" in
start | cloud)
  n="${2:-3}"
  # sshd for the servers; rsync, which skyform syncs workdirs with when both ends have it.
  need=""
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need="openssh-server"
  command -v rsync >/dev/null || need="$need rsync"
  if [ -n "$need" ]; then
    echo "installing$need..." >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    # shellcheck disable=SC2086
    install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >&2; }
    # Package lists may be missing or stale on a fresh machine: refresh them once if needed.
    install || { $sudo apt-get update >&2 && install; }
  fi
  sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)
  if [ "$1" = cloud ]; then
    # The image's user, as on Ubuntu images; a locked password still allows keys.
    if ! id ubuntu >/dev/null 2>&1; then
      sudo=""
      [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo useradd -m -s /bin/sh ubuntu >&2 && $sudo usermod -p '*' ubuntu >&2
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/sky-cloud.XXXXXX")
    chmod 755 "$dir"
    mkdir -p /run/sshd 2>/dev/null || true
    : >"$dir/machines"
    # Port 22 of addresses 127.B.C.D that nothing else listens on.
    base=$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1))
    for i in $(seq 1 "$n"); do
      addr="127.$base.$((i + 1))"
      h="$dir/machine-$i"
      mkdir -p "$h/skyform" "$h/bin" "$h/poweroff"
      # A machine's own `shutdown` powers it off through EC2 (the proxy sees the request
      # here and applies the instance's shutdown behaviour); `sudo` is the user itself.
      printf '#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n' >"$h/bin/sudo"
      printf '#!/bin/sh\nfor a; do t="$a"; done\ntouch "%s/poweroff/${t##* }"\n' "$h" >"$h/bin/shutdown"
      chmod 755 "$h/bin/sudo" "$h/bin/shutdown"
      ssh-keygen -q -t ed25519 -N "" -f "$h/ssh_host_ed25519_key"
      : >"$h/authorized_keys"
      cat >"$h/sshd_config" <<CFG
Port 22
ListenAddress $addr
HostKey $h/ssh_host_ed25519_key
PidFile $h/pid
AuthorizedKeysFile $h/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding no
X11Forwarding no
LogLevel ERROR
# The machines share one filesystem: a skyform directory and authorized keys of their own.
SetEnv SKYFORM_HOST_DIR=$h/skyform SKYFORM_AUTHORIZED_KEYS=$h/authorized_keys PATH=$h/bin:/usr/local/bin:/usr/bin:/bin
CFG
      chown -R ubuntu "$h/skyform" "$h/authorized_keys" "$h/poweroff"
      chown ubuntu "$h"
      "$sshd_bin" -t -f "$h/sshd_config"
      "$sshd_bin" -D -f "$h/sshd_config" -E "$h/log" </dev/null >/dev/null 2>&1 &
      echo "$addr $h" >>"$dir/machines"
      echo "$addr 22" >>"$dir/.wait"
    done
    while read -r addr port; do
      for _ in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('$addr', $port), 0.2)" 2>/dev/null; then
          break
        fi
        sleep 0.05
      done
    done <"$dir/.wait"
    echo "export SKYFORM_TEST_CLOUD_DIR=$dir"
    exit 0
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sky-sshd.XXXXXX")
  mkdir -p /run/sshd 2>/dev/null || true
  ssh-keygen -q -t ed25519 -N "" -C skyform-test -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  : >"$dir/hosts"
  # Writes host directory $1's sshd config for address $2 and port $3.
  configure() {
    local h="$1" addr="$2" port="$3"
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
  }
  for i in $(seq 1 "$n"); do
    addr="127.0.0.$((i + 1))"
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr',0)); print(s.getsockname()[1])")
    h="$dir/host-$i"
    configure "$h" "$addr" "$port"
    "$sshd_bin" -D -f "$h/sshd_config" -E "$h/log" </dev/null >/dev/null 2>&1 &
    echo "$addr $port" >>"$dir/hosts"
  done
  # One more server in a network namespace of its own, reached through a veth pair at
  # 10.213.X.2, where the machine allows it (root and iproute2). Listed in `netns-hosts`
  # as `ADDRESS PORT NAMESPACE`; missing when not possible (tests say they skip it).
  ns="skyns-$$"
  if [ "${SKYFORM_TEST_NETNS:-1}" != 0 ] && command -v ip >/dev/null && ip netns add "$ns" 2>/dev/null; then
    x=$((RANDOM % 200 + 20))
    a="skya$$"; b="skyb$$"
    if ip link add "$a" type veth peer name "$b" && ip link set "$b" netns "$ns" &&
      ip addr add "10.213.$x.1/24" dev "$a" && ip link set "$a" up &&
      ip netns exec "$ns" ip addr add "10.213.$x.2/24" dev "$b" &&
      ip netns exec "$ns" ip link set "$b" up && ip netns exec "$ns" ip link set lo up; then
      h="$dir/netns-1"
      configure "$h" "10.213.$x.2" 2222
      ip netns exec "$ns" "$sshd_bin" -D -f "$h/sshd_config" -E "$h/log" </dev/null >/dev/null 2>&1 &
      echo "10.213.$x.2 2222 $ns" >"$dir/netns-hosts"
      echo "10.213.$x.2 2222" >>"$dir/.wait"
    else
      echo "sshd.sh: cannot wire network namespace $ns; no namespaced host" >&2
      ip netns del "$ns" 2>/dev/null || true
      ip link del "$a" 2>/dev/null || true
    fi
  else
    echo "sshd.sh: network namespaces are not available here; no namespaced host" >&2
  fi
  # Two more servers whose hosts share one home directory (as NFS homes do), each with a
  # hostname of its own (a UTS namespace) and no SKYFORM_HOST_DIR: listed in `shared-hosts`
  # as `ADDRESS PORT`; missing where unshare is not allowed.
  if command -v unshare >/dev/null && unshare --uts true 2>/dev/null; then
    mkdir -p "$dir/shared-home/.ssh"
    : >"$dir/shared-home/.ssh/authorized_keys"
    for i in 1 2; do
      addr="127.0.0.$((n + 1 + i))"
      port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr',0)); print(s.getsockname()[1])")
      h="$dir/shared-$i"
      configure "$h" "$addr" "$port"
      sed -i "s|^AuthorizedKeysFile .*|& $dir/shared-home/.ssh/authorized_keys|; s|^SetEnv .*|SetEnv HOME=$dir/shared-home SKYFORM_GPUS_FILE=$h/gpus|" "$h/sshd_config"
      unshare --uts sh -c "hostname sky-shared-$i && exec \"$sshd_bin\" -D -f \"$h/sshd_config\" -E \"$h/log\"" </dev/null >/dev/null 2>&1 &
      echo "$addr $port" >>"$dir/shared-hosts"
      echo "$addr $port" >>"$dir/.wait"
    done
  else
    echo "sshd.sh: unshare --uts is not allowed here; no hosts with a shared home" >&2
  fi
  # Wait until every server accepts connections.
  while read -r addr port; do
    for _ in $(seq 1 100); do
      if python3 -c "import socket; socket.create_connection(('$addr', $port), 0.2)" 2>/dev/null; then
        break
      fi
      sleep 0.05
    done
  done < <(cat "$dir/hosts" "$dir/.wait" 2>/dev/null)
  echo "export SKYFORM_TEST_SSH_DIR=$dir"
  ;;
stop)
  if [ -n "${SKYFORM_TEST_SSH_DIR:-}" ] && [ -d "$SKYFORM_TEST_SSH_DIR" ]; then
    for p in "$SKYFORM_TEST_SSH_DIR"/host-*/pid "$SKYFORM_TEST_SSH_DIR"/netns-*/pid "$SKYFORM_TEST_SSH_DIR"/machine-*/pid "$SKYFORM_TEST_SSH_DIR"/shared-*/pid; do
      [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
    done
    if [ -f "$SKYFORM_TEST_SSH_DIR/netns-hosts" ]; then
      while read -r _ _ ns; do
        # Agents a test left behind in the namespace go with it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
      done <"$SKYFORM_TEST_SSH_DIR/netns-hosts"
    fi
    # Agents and jobs that tests left on the hosts (their command lines name the directory).
    pkill -9 -f -- "$SKYFORM_TEST_SSH_DIR/" 2>/dev/null || true
    rm -rf "$SKYFORM_TEST_SSH_DIR"
  fi
  ;;
*)
  echo "usage: $0 start [N] | cloud [N] | stop" >&2
  exit 2
  ;;
esac
