#!/usr/bin/env bash
# Google's discovery document for Compute Engine v1 (`compute.v1.json`, ~5 MB), which the
# fake's schema test (tests/gcp_fake.rs) checks scripts/gce-fake.py against. It ships inside the
# `google-api-python-client` wheel on PyPI; this fetches the wheel once with pip, takes the
# document out into a cache directory (not the repository) and prints
# `export SKYFORM_TEST_COMPUTE_DISCOVERY=PATH`.
#   eval "$(scripts/compute-discovery.sh)"
set -euo pipefail
cache="${SKYFORM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/skyform}"
doc="$cache/compute.v1.json"
if [ ! -s "$doc" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" google-api-python-client >&2
  python3 - "$tmp" "$doc" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/google_api_python_client-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/documents/compute.v1.json"))
    data = z.read(name)
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(data)
PY
  mv "$doc.part" "$doc"
fi
echo "export SKYFORM_TEST_COMPUTE_DISCOVERY=$doc"
