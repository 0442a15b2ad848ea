#!/usr/bin/env bash
# Full deploy of profiles/production.yaml (target aws): the infrastructure on
# moto with an injected per-call latency (a delaying proxy in front of moto),
# then the in-cluster layers on kube-double as the cluster's API server (the
# same latency per request), against the critical path of the step graph: the
# longest chain of step durations, from the plan's dependencies and the
# deploy's own step timings. The release's verification (a fixed watch
# window) is timed apart. Then a no-op redeploy.
# Goals: wall <= 1.2x critical path; no-op redeploy <= 2 s.
# Usage: bench/infra.sh [delay_ms]   (needs scripts/test-env.sh up)
#        BUILD=debug bench/infra.sh   (skips the long release build of the AWS
#        SDK; the figures are dominated by the injected latency either way)
set -euo pipefail
cd "$(dirname "$0")/.."
delay=${1:-100}
eval "$(scripts/test-env.sh env)"
build=${BUILD:-release}
if [ "$build" = release ]; then cargo build --release -q -p taskctl -p kube-double; else cargo build -q -p taskctl -p kube-double; fi
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$build
bin=$target/taskctl
moto_port=${TASKCTL_TEST_AWS_ENDPOINT##*:}
proxy_port=$((20000 + RANDOM % 10000))
python3 bench/latency_proxy.py "$proxy_port" 127.0.0.1 "$moto_port" "$delay" &
proxy=$!
double_port=$((30000 + RANDOM % 10000))
"$target/kube-double" --listen "127.0.0.1:$double_port" --ready-delay-ms 20 --latency-ms "$delay" >/dev/null &
double=$!
work=$(mktemp -d)
# A private copy: another checkout building into the same target directory
# must not swap the binary under the benchmark.
cp "$bin" "$work/taskctl" && bin=$work/taskctl
trap 'kill $proxy $double 2>/dev/null || true; if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi' EXIT
sleep 0.5
name="bench-$(date +%s)-$RANDOM"
cat > "$work/env.yaml" <<YAML
apiVersion: taskctl.dev/v1
kind: Profile
include: [$PWD/profiles/production.yaml]
metadata: { name: $name }
target:
  aws: { region: us-west-2, api_server: "http://127.0.0.1:$double_port" }
YAML
export TASKCTL_TEMPLATES=$PWD/templates TASKCTL_WATCH_WINDOW=${WATCH:-2s}
export AWS_ENDPOINT_URL=http://127.0.0.1:$proxy_port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-west-2 AWS_EC2_METADATA_DISABLED=true
cd "$work"
"$bin" plan -p env.yaml -o json > plan.ndjson
start=$(date +%s.%N)
"$bin" deploy -p env.yaml --yes -o json > deploy.ndjson
end=$(date +%s.%N)
nstart=$(date +%s.%N)
"$bin" deploy -p env.yaml --yes -o json > noop.ndjson
nend=$(date +%s.%N)
python3 - "$start" "$end" "$nstart" "$nend" "$delay" <<'PY'
import json, sys
start, end, nstart, nend, delay = map(float, sys.argv[1:6])
deps = {}
for line in open("plan.ndjson"):
    e = json.loads(line)
    if e["event"] == "step_planned":
        deps[e["step"]] = e["depends_on"]
from datetime import datetime
def ts(e):
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
dur = {}
verify = 0.0
for line in open("deploy.ndjson"):
    e = json.loads(line)
    if e["event"] == "step_finished":
        dur[e["step"]] = e["duration_ms"] / 1000.0
    elif e["event"] == "verification_started":
        vstart = ts(e)
    elif e["event"] == "verification_finished":
        verify = ts(e) - vstart
finish = {}
def f(s):
    if s not in finish:
        finish[s] = max((f(d) for d in deps.get(s, [])), default=0.0) + dur.get(s, 0.0)
    return finish[s]
critical = max(f(s) for s in deps)
wall = end - start - verify
kube = sum(1 for s in deps if s.startswith("kubernetes/"))
print(f"per-call latency         {delay:.0f} ms (AWS and Kubernetes API)")
print(f"steps                    {len(deps)} ({len(deps) - kube} aws, {kube} kubernetes)")
print(f"verification             {verify:.2f} s (watch window; not counted below)")
print(f"deploy wall time         {wall:.2f} s (includes preflight and plan)")
print(f"critical path            {critical:.2f} s (longest chain of step durations)")
print(f"wall / critical path     {wall / critical:.2f}x")
print(f"no-op redeploy           {nend - nstart:.2f} s")
PY
"$bin" destroy -p env.yaml --yes -q >/dev/null 2>&1 || true
