#!/usr/bin/env bash
# Starts two real Kubernetes control planes on loopback for the Kubernetes backend's tests
# (issue 8): one etcd (Debian's etcd-server, installed with apt if missing) and, per
# cluster, kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2. There is no
# kubelet: tests run scripts/fakelet.py, which registers nodes and runs their pods as local
# processes. Prints `export SKYFORM_TEST_KUBE_DIR=DIR`
# for the caller to eval, or nothing (and a NOTE on stderr) when the binaries cannot be had.
#
# The binaries come from, in order: $SKYFORM_K8S_BIN_DIR; the cache
# ~/.cache/skyform-test/k8s-1.20.2; ../shared/k8s-1.20.2/*.xz (checked, unpacked into the
# cache); else they are built from Debian's source package into the cache (no package
# registry ships them; about 5 minutes, once; SKYFORM_K8S_BUILD=0 skips the build and with
# it the Kubernetes tests).
#
# DIR holds:
#   kubeconfig          contexts `a` and `b` (one per control plane), admin token, CA
#   ca.crt              the CA that signed the apiservers' certificates
#   token               the admin bearer token
#   pids                every process started, for `stop`
#   a/, b/              each control plane's logs, port (`a/port`) and own kubeconfig
#
#   eval "$(scripts/kube.sh start)"   ...   scripts/kube.sh stop
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

find_binaries() {
  local cache="${HOME}/.cache/skyform-test/k8s-1.20.2"
  local names="kube-apiserver kube-controller-manager kube-scheduler"
  if [ -n "${SKYFORM_K8S_BIN_DIR:-}" ]; then
    echo "$SKYFORM_K8S_BIN_DIR"
    return
  fi
  local have=1
  for n in $names; do [ -x "$cache/$n" ] || have=0; done
  if [ "$have" = 1 ]; then
    echo "$cache"
    return
  fi
  local shared="$here/../../shared/k8s-1.20.2"
  if [ -f "$shared/SHA256SUMS" ]; then
    (cd "$shared" && sha256sum -c --quiet SHA256SUMS) >&2
    mkdir -p "$cache"
    for n in $names; do
      xz -dc "$shared/$n.xz" >"$cache/$n.tmp" && chmod +x "$cache/$n.tmp" && mv "$cache/$n.tmp" "$cache/$n"
    done
    echo "$cache"
    return
  fi
  if [ "${SKYFORM_K8S_BUILD:-1}" != 0 ] && build_from_source "$cache" >&2; then
    echo "$cache"
    return
  fi
  return 1
}

# Builds kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 from Debian's
# source package (no registry ships the binaries): about 5 minutes on 2 cores and 2 GB of
# scratch space, once; the result is cached. Needs apt (Debian 12); the system's apt
# configuration is left alone (a private source list reads deb-src).
build_from_source() {
  local cache="$1"
  command -v apt-get >/dev/null || return 1
  echo "kube.sh: building Kubernetes 1.20.2 from Debian's source package (once, ~5 min)..."
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  local pkgs="golang-go golang-github-modern-go-reflect2-dev rsync jq make"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs ||
    { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; } ||
    return 1
  local w
  w=$(mktemp -d "${TMPDIR:-/tmp}/sky-k8s-build.XXXXXX")
  mkdir -p "$w/apt/parts" "$w/apt/lists/partial"
  cat >"$w/apt/parts/src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local o="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$w/apt/parts -o Dir::State::Lists=$w/apt/lists"
  # `set -e` does not hold inside a function called from a condition: every step is chained.
  (
    cd "$w" &&
      # shellcheck disable=SC2086
      apt-get $o update &&
      # shellcheck disable=SC2086
      apt-get $o source --download-only kubernetes &&
      tar xzf kubernetes_*.orig.tar.gz &&
      cd kubernetes-1.20.2 &&
      # Debian's reflect2 builds with the Go it ships; the vendored one does not.
      rm -rf vendor/github.com/modern-go/reflect2 &&
      cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/ &&
      KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
        KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 CGO_ENABLED=0 \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" &&
      mkdir -p "$cache" &&
      for n in kube-apiserver kube-controller-manager kube-scheduler; do
        cp "_output/bin/$n" "$cache/$n.tmp" && mv "$cache/$n.tmp" "$cache/$n" || exit 1
      done
  ) >"$w.log" 2>&1
  local rc=$?
  rm -rf "$w"
  if [ "$rc" != 0 ]; then
    echo "kube.sh: the build failed; its log is $w.log" >&2
    return 1
  fi
  rm -f "$w.log"
}

free_port() {
  python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"
}

wait_for() { # what, tries, command...
  local what="$1" tries="$2"
  shift 2
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "kube.sh: $what did not come up" >&2
  return 1
}

case "${1:-start}" in
start)
  if ! bin=$(find_binaries); then
    echo "NOTE: kube-apiserver 1.20.2 is not available (no \$SKYFORM_K8S_BIN_DIR, no cache, no ../shared/k8s-1.20.2, and no build from source): the Kubernetes tests are SKIPPED" >&2
    exit 0
  fi
  if ! command -v etcd >/dev/null; then
    echo "installing etcd-server..." >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server >&2; }
    install || { $sudo apt-get update >&2 && install; }
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sky-kube.XXXXXX")
  : >"$dir/pids"
  # Certificates: a CA, and a leaf for the apiservers (rustls needs a real CA and an IP SAN).
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj /CN=skyform-test-ca -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj /CN=kube-apiserver 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    python3 -c "import secrets; print(secrets.token_hex(16))" >token
    echo "$(cat token),admin,admin,\"system:masters\"" >tokens.csv
  )
  token=$(cat "$dir/token")
  etcd_port=$(free_port)
  peer_port=$(free_port)
  etcd --name skyform-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "skyform-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --quota-backend-bytes=1073741824 >"$dir/etcd.log" 2>&1 </dev/null &
  echo $! >>"$dir/pids"
  wait_for etcd 100 curl -sf "http://127.0.0.1:$etcd_port/health"
  for c in a b; do
    mkdir -p "$dir/$c"
    port=$(free_port)
    echo "$port" >"$dir/$c/port"
    "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --etcd-prefix="/registry-$c" \
      --bind-address=127.0.0.1 --secure-port="$port" --advertise-address=127.0.0.1 \
      --tls-cert-file="$dir/apiserver.crt" --tls-private-key-file="$dir/apiserver.key" \
      --client-ca-file="$dir/ca.crt" --token-auth-file="$dir/tokens.csv" --authorization-mode=Node,RBAC \
      --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
      --kubelet-client-certificate="$dir/apiserver.crt" --kubelet-client-key="$dir/apiserver.key" \
      --kubelet-preferred-address-types=InternalIP --cert-dir="$dir/$c/certs" \
      >"$dir/$c/apiserver.log" 2>&1 </dev/null &
    echo $! >>"$dir/pids"
  done
  # A kubeconfig per control plane (for its controller manager and scheduler), and one with
  # a context for each (for skyform and the tests).
  for c in a b; do
    printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster:\n    server: https://127.0.0.1:%s\n    certificate-authority: %s\nusers:\n- name: admin\n  user:\n    token: %s\ncontexts:\n- name: %s\n  context:\n    cluster: %s\n    user: admin\ncurrent-context: %s\n' \
      "$c" "$(cat "$dir/$c/port")" "$dir/ca.crt" "$token" "$c" "$c" "$c" >"$dir/$c/kubeconfig"
  done
  {
    echo "apiVersion: v1"
    echo "kind: Config"
    echo "clusters:"
    for c in a b; do
      printf -- "- name: %s\n  cluster:\n    server: https://127.0.0.1:%s\n    certificate-authority: %s\n" \
        "$c" "$(cat "$dir/$c/port")" "$dir/ca.crt"
    done
    echo "users:"
    printf -- "- name: admin\n  user:\n    token: %s\n" "$token"
    echo "contexts:"
    for c in a b; do
      printf -- "- name: %s\n  context:\n    cluster: %s\n    user: admin\n    namespace: default\n" "$c" "$c"
    done
    echo "current-context: a"
  } >"$dir/kubeconfig"
  for c in a b; do
    port=$(cat "$dir/$c/port")
    wait_for "kube-apiserver $c" 300 curl -sf --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" \
      "https://127.0.0.1:$port/readyz"
    "$bin/kube-controller-manager" --kubeconfig="$dir/$c/kubeconfig" --leader-elect=false \
      --port=0 --secure-port=0 --controllers='*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-route,-service' \
      --service-account-private-key-file="$dir/sa.key" --root-ca-file="$dir/ca.crt" \
      >"$dir/$c/controller-manager.log" 2>&1 </dev/null &
    echo $! >>"$dir/pids"
    "$bin/kube-scheduler" --kubeconfig="$dir/$c/kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
      --authentication-kubeconfig="$dir/$c/kubeconfig" --authorization-kubeconfig="$dir/$c/kubeconfig" \
      >"$dir/$c/scheduler.log" 2>&1 </dev/null &
    echo $! >>"$dir/pids"
  done
  # Ready for pods once the default service account has its token.
  for c in a b; do
    port=$(cat "$dir/$c/port")
    wait_for "the default service account of $c" 300 sh -c \
      "curl -sf --cacert '$dir/ca.crt' -H 'Authorization: Bearer $token' https://127.0.0.1:$port/api/v1/namespaces/default/serviceaccounts/default | grep -q '\"secrets\"'"
  done
  echo "export SKYFORM_TEST_KUBE_DIR=$dir"
  ;;
stop)
  if [ -n "${SKYFORM_TEST_KUBE_DIR:-}" ] && [ -d "$SKYFORM_TEST_KUBE_DIR" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$SKYFORM_TEST_KUBE_DIR/pids"
    # The apiservers take a few seconds to stop; then nothing holds the directory.
    for _ in $(seq 1 50); do
      alive=0
      while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$SKYFORM_TEST_KUBE_DIR/pids"
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    rm -rf "$SKYFORM_TEST_KUBE_DIR"
  fi
  ;;
*)
  echo "usage: $0 start | stop" >&2
  exit 2
  ;;
esac
