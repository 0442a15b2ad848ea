#!/usr/bin/env bash
# Wall time of `taskctl validate` on the shipped profiles (release build),
# median of repeated runs, beside `taskctl version` (process start alone) so
# the figure can be read as a ratio on a noisy machine.
# Usage: bench/validate.sh [runs]   (needs hyperfine: apt-get install hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
command -v hyperfine >/dev/null || { echo "bench/validate.sh: hyperfine is missing (apt-get install hyperfine)" >&2; exit 1; }
cargo build --release -q -p taskctl
bin=${CARGO_TARGET_DIR:-target}/release/taskctl
out=$(mktemp)
hyperfine -N --warmup 10 --runs "$runs" --export-json "$out" \
  -n "taskctl version (process start)" "$bin version" \
  -n "validate -p profiles/production.yaml" "$bin validate -q -p profiles/production.yaml" \
  -n "validate -p profiles/staging.yaml -e development" "$bin validate -q -p profiles/staging.yaml -e development" >/dev/null
python3 - "$out" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base = results[0]["median"]
print(f"{'command':<60} {'median':>9} {'mean':>9} {'vs start':>9}")
for r in results:
    cmd = r["command"]
    print(f"{cmd:<60} {r['median']*1000:>7.2f}ms {r['mean']*1000:>7.2f}ms {r['median']/base:>8.2f}x")
PY
/usr/bin/time -f "peak RSS of validate -p profiles/production.yaml: %M KiB" "$bin" validate -q -p profiles/production.yaml
rm -f "$out"
