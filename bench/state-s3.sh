#!/usr/bin/env bash
# The S3 state backend on moto: lock acquire + release latency, journal
# append latency, and reading a journal of N entries (one object each) one
# object at a time vs. DEFAULT_READ_CONCURRENCY at a time, in the same run.
# Twice: straight to moto on loopback, then behind a latency proxy that adds
# a round trip like a real region's (bench/latency_proxy.py).
# Usage: bench/state-s3.sh [entries] [rounds] [delay_ms]   (defaults: 500, 5, 20)
#        BUILD=release bench/state-s3.sh   (the default, debug, skips the long
#        release build of the AWS SDK; the figures are network-bound)
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-500}
rounds=${2:-5}
delay=${3:-20}
eval "$(scripts/test-env.sh env)"
build=${BUILD:-debug}
if [ "$build" = release ]; then flag=--release; else flag=; fi
cargo build $flag -q -p taskctl-aws --example state_bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d)
# A private copy: another checkout building into the same target directory
# must not swap the binary under the benchmark.
cp "$target/$build/examples/state_bench" "$work/state_bench"
moto_port=${TASKCTL_TEST_AWS_ENDPOINT##*:}
proxy_port=$((20000 + RANDOM % 10000))
python3 bench/latency_proxy.py "$proxy_port" 127.0.0.1 "$moto_port" "$delay" &
proxy=$!
trap 'kill $proxy 2>/dev/null || true; rm -rf "$work"' EXIT
bucket="taskctl-bench-$(date +%s)-$RANDOM"
python=${TASKCTL_TEST_ENV_DIR:-$HOME/.cache/taskctl-test-env}/venv/bin/python
"$python" -c "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-west-2', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket=sys.argv[2], CreateBucketConfiguration={'LocationConstraint': 'us-west-2'})" "$TASKCTL_TEST_AWS_ENDPOINT" "$bucket"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-west-2 AWS_EC2_METADATA_DISABLED=true
sleep 0.3
echo "== moto on loopback ($TASKCTL_TEST_AWS_ENDPOINT)"
AWS_ENDPOINT_URL=$TASKCTL_TEST_AWS_ENDPOINT "$work/state_bench" "$bucket" "$entries" "$rounds"
echo "== moto behind a ${delay} ms latency proxy"
AWS_ENDPOINT_URL=http://127.0.0.1:$proxy_port "$work/state_bench" "$bucket" "$entries" "$rounds"
