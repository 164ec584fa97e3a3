#!/usr/bin/env bash
# Makes the goldens of `skyform fmt`: Terraform's own `terraform fmt` output for every input
# under testdata/fmt/in/. The inputs are the hand-written messy files there plus copies of the
# examples, the modules and the test configurations (refreshed by this script). Inputs that
# Terraform cannot parse (the deliberately broken test configurations) are left out.
#
#   scripts/fmt-goldens.sh        # needs `terraform` (v1.11) on PATH
#
# The test (src/cli/fmt.rs, `terraform_goldens`) needs no Terraform: it checks that
# skyform's formatter turns each input into its golden byte for byte, and leaves the golden as is.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v terraform >/dev/null || { echo "terraform is not installed" >&2; exit 1; }
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1
in=testdata/fmt/in
out=testdata/fmt/out
mkdir -p "$in" "$out"

# Copies of the repository's configurations, named after their path.
rm -f "$in"/repo--*
find examples modules testdata/config testdata/plan testdata/services \
  \( -name '*.sky.hcl' -o -name '*.skyvars.hcl' \) 2>/dev/null | sort | while read -r f; do
  cp "$f" "$in/repo--$(echo "$f" | tr / -)"
done

rm -f "$out"/*
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$in"/*; do
  name=$(basename "$f")
  cp "$f" "$tmp/x.tf"
  if terraform fmt -no-color -list=false "$tmp/x.tf" >/dev/null 2>"$tmp/err"; then
    cp "$tmp/x.tf" "$out/$name"
  else
    case "$name" in
      repo--*) rm "$f" ;; # a broken test configuration: not an input
      *) echo "terraform cannot format $f:" >&2; cat "$tmp/err" >&2; exit 1 ;;
    esac
  fi
done
echo "$(ls "$out" | wc -l) goldens in $out"
