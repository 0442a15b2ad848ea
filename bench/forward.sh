#!/usr/bin/env bash
# What the Kubernetes gates pay for reaching pods through the API server:
# HTTP requests to a loopback server made directly and through a
# port-forward over kube-double's `portforward` subresource, in one run
# (ratios hold on a noisy machine), with no added API-server latency and
# with a remote API server's round trip.
# Usage: bench/forward.sh [requests] [latency_ms]   (defaults: 500, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-500}
latency=${2:-10}
cargo build --release -q -p taskctl-kube --example forward_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/forward_bench
"$bin" "$requests" 0
"$bin" "$requests" "$latency" | tail -n 2
