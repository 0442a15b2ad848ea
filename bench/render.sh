#!/usr/bin/env bash
# Wall time of rendering the production profile's manifests and checking
# every object against the Kubernetes schema (release build), median of
# repeated runs. The baseline loads and validates the profile only, so the
# difference between the two lines is render + schema check.
# Usage: bench/render.sh [runs]   (needs hyperfine: apt-get install hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
command -v hyperfine >/dev/null || { echo "bench/render.sh: hyperfine is missing (apt-get install hyperfine)" >&2; exit 1; }
cargo build --release -q -p taskctl-kube --example render
bin=${CARGO_TARGET_DIR:-target}/release/examples/render
"$bin" profiles/production.yaml production templates --quiet   # fails loudly if a check fails
out=$(mktemp)
hyperfine -N --warmup 5 --runs "$runs" --export-json "$out" \
  -n "load production profile (baseline)" "$bin profiles/production.yaml production templates --load-only" \
  -n "load + render + schema check" "$bin profiles/production.yaml production templates --quiet" >/dev/null
python3 - "$out" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
print(f"{'command':<40} {'median':>9} {'mean':>9} {'stddev':>9}")
for r in results:
    print(f"{r['command']:<40} {r['median']*1000:>7.2f}ms {r['mean']*1000:>7.2f}ms {r['stddev']*1000:>7.2f}ms")
base, full = results[0]["median"], results[1]["median"]
print(f"{'render + schema check (difference)':<40} {(full-base)*1000:>7.2f}ms")
PY
echo "phases of one run:"
"$bin" profiles/production.yaml production templates --quiet --timings
/usr/bin/time -f "peak RSS of load + render + check: %M KiB" "$bin" profiles/production.yaml production templates --quiet
rm -f "$out"
