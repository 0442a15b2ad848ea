#!/usr/bin/env bash
# The Kubernetes provider's throughput against kube-double (the test double
# of the API server; no real cluster runs here): a fresh install of the
# production profile with each apply level's objects applied in parallel vs
# one object at a time, in the same run, with no added latency and with a
# remote API server's round trip; and the wall time of render + schema check.
# Usage: bench/kube-apply.sh [runs] [latency_ms]   (defaults: 5 runs, 10 ms)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
latency=${2:-10}
cargo build --release -q -p taskctl-kube --example apply_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/apply_bench
"$bin" "$runs" 0
"$bin" "$runs" "$latency" | tail -n 4
