#!/usr/bin/env bash
# Installs moto (from PyPI) if it is missing and starts its server on loopback.
# Prints `export SKYFORM_TEST_S3_ENDPOINT=http://127.0.0.1:PORT MOTO_DIR=…` for the caller
# to eval; the server's pid is in $MOTO_DIR/pid and its log in $MOTO_DIR/log. Each start
# gets its own directory, so runs side by side never stop each other's server.
#   eval "$(scripts/moto.sh start)"   ...   scripts/moto.sh stop
set -euo pipefail
case "${1:-start}" in
start)
  MOTO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/skyform-moto.XXXXXX")
  if ! python3 -c 'import moto.server, flask_cors' >/dev/null 2>&1; then
    echo "installing moto from PyPI..." >&2
    python3 -m pip install --quiet 'moto[ec2,s3]' flask flask-cors >&2
  fi
  # A free port, chosen by the kernel.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m moto.server -H 127.0.0.1 -p "$port" >"$MOTO_DIR/log" 2>&1 &
  echo $! >"$MOTO_DIR/pid"
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
      echo "export SKYFORM_TEST_S3_ENDPOINT=http://127.0.0.1:$port SKYFORM_TEST_MOTO_ENDPOINT=http://127.0.0.1:$port MOTO_DIR=$MOTO_DIR"
      exit 0
    fi
    sleep 0.1
  done
  echo "moto did not start; its log:" >&2
  cat "$MOTO_DIR/log" >&2
  exit 1
  ;;
stop)
  if [ -n "${MOTO_DIR:-}" ] && [ -f "$MOTO_DIR/pid" ]; then
    kill "$(cat "$MOTO_DIR/pid")" 2>/dev/null || true
    rm -rf "$MOTO_DIR"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
