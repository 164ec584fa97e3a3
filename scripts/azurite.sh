#!/usr/bin/env bash
# Starts Azurite's blob service (Azure Blob Storage's emulator, from npm) on loopback, for
# the remote-state tests (tests/state_azure.rs). Installs it when missing, into
# ${SKYFORM_CACHE:-$HOME/.cache/skyform}/azurite. Prints `export
# SKYFORM_TEST_AZURE_ENDPOINT=http://127.0.0.1:PORT AZURITE_DIR=…` for the caller to eval;
# its pid and log are in $AZURITE_DIR. (Why GCS has no emulator here: docs/state.md.)
#   eval "$(scripts/azurite.sh start)"   ...   scripts/azurite.sh stop
# `scripts/azurite.sh container NAME` makes a container there.
set -euo pipefail
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# Waits for an HTTP server at $1 (any answer, even an error, means it is up).
wait_http() {
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  return 1
}
case "${1:-start}" in
start)
  AZURITE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/skyform-azurite.XXXXXX")
  cache=${SKYFORM_CACHE:-$HOME/.cache/skyform}
  azurite="$cache/azurite/node_modules/.bin/azurite-blob"
  if [ ! -x "$azurite" ]; then
    command -v npm >/dev/null || { echo "npm is needed to install Azurite (apt-get install npm)" >&2; exit 1; }
    echo "installing Azurite from npm into $cache/azurite..." >&2
    mkdir -p "$cache/azurite"
    (cd "$cache/azurite" && npm install --silent --no-audit --no-fund azurite@3 >&2)
  fi
  aport=$(free_port)
  "$azurite" --blobHost 127.0.0.1 --blobPort "$aport" --inMemoryPersistence --silent \
    --disableTelemetry >"$AZURITE_DIR/azurite.log" 2>&1 &
  echo $! >"$AZURITE_DIR/azurite.pid"
  if ! wait_http "http://127.0.0.1:$aport/"; then
    echo "Azurite did not start; its log:" >&2
    cat "$AZURITE_DIR/azurite.log" >&2
    exit 1
  fi
  echo "export SKYFORM_TEST_AZURE_ENDPOINT=http://127.0.0.1:$aport AZURITE_DIR=$AZURITE_DIR"
  ;;
container)
  # Azurite wants the request signed with its well-known development account's key
  # (Shared Key), as every Azure client signs it.
  name=$2
  python3 - "$SKYFORM_TEST_AZURE_ENDPOINT" "$name" <<'PY'
import base64, hashlib, hmac, http.client, sys, urllib.parse
from email.utils import formatdate
endpoint, name = urllib.parse.urlparse(sys.argv[1]), sys.argv[2]
account = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
date, version = formatdate(usegmt=True), "2021-08-06"
# VERB, eleven standard headers (all empty here), the x-ms- headers, the resource.
sign = "\n".join(["PUT"] + [""] * 11 + [f"x-ms-date:{date}", f"x-ms-version:{version}",
                                         f"/{account}/{account}/{name}\nrestype:container"])
sig = base64.b64encode(hmac.new(key, sign.encode(), hashlib.sha256).digest()).decode()
c = http.client.HTTPConnection(endpoint.hostname, endpoint.port)
c.request("PUT", f"/{account}/{name}?restype=container", headers={
    "x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}"})
r = c.getresponse()
if r.status not in (201, 409):
    sys.exit(f"creating container {name}: {r.status} {r.read().decode()}")
PY
  ;;
stop)
  if [ -n "${AZURITE_DIR:-}" ] && [ -f "$AZURITE_DIR/azurite.pid" ]; then
    kill "$(cat "$AZURITE_DIR/azurite.pid")" 2>/dev/null || true
    rm -rf "$AZURITE_DIR"
  fi
  ;;
*)
  echo "usage: $0 start|stop|container NAME" >&2
  exit 2
  ;;
esac
