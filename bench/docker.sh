#!/usr/bin/env bash
# bench/docker.sh: the local stack (the agent image, 3 agents, the same env
# and health check) brought up by docker compose and by `taskctl deploy`;
# then, on the running stack, a `taskctl deploy` of a changed env value (a
# rolling update) and a `taskctl rollback` to the release before it. Median
# wall times of several rounds, all measured in the same run.
#
#   bench/docker.sh [ROUNDS]        default 5
#
# For each taskctl command two figures: "healthy" is the time from launching
# the command to its `verification_started` event (every replica is healthy
# by Docker's health check, the engine run is over and the release is
# recorded: the point compose's figure stops at), "verified" is the whole
# command, with the profile's verification gates (TCP, /ready, Prometheus
# up == 1 for every agent, a real task through RabbitMQ). The watch window of
# the automatic-rollback conditions is a fixed wait by design, so the bench
# sets TASKCTL_WATCH_WINDOW=0s unless told otherwise.
#
# Needs: the test env (scripts/test-env.sh up: the broker on loopback), the
# Docker engine, docker compose (v2 plugin or docker-compose v1), a built
# taskctl (TASKCTL, default $CARGO_TARGET_DIR/debug/taskctl) and a static
# agent (TASKCTL_AGENT_BINARY, default the static release build). Copy both
# elsewhere first when other builds share the target directory.
# Compose v1 has no `up --wait`, so its time includes polling `docker
# inspect` until all three containers are healthy (every 100 ms), which is
# what `--wait` does.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
TARGET=${CARGO_TARGET_DIR:-target}
TASKCTL=${TASKCTL:-$TARGET/debug/taskctl}
export TASKCTL_AGENT_BINARY=${TASKCTL_AGENT_BINARY:-$TARGET/x86_64-unknown-linux-gnu/release/task-executor}
[[ -x $TASKCTL ]] || { echo "bench/docker.sh: no taskctl at $TASKCTL (cargo build --bin taskctl)" >&2; exit 1; }
[[ -x $TASKCTL_AGENT_BINARY ]] || { echo "bench/docker.sh: no static agent at $TASKCTL_AGENT_BINARY (see scripts/test.sh)" >&2; exit 1; }
TASKCTL=$(realpath "$TASKCTL")
export TASKCTL_AGENT_BINARY=$(realpath "$TASKCTL_AGENT_BINARY")
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    echo "bench/docker.sh: neither docker compose nor docker-compose is installed" >&2
    exit 1
fi
eval "$(scripts/test-env.sh env)"
export TASKCTL_WATCH_WINDOW=${TASKCTL_WATCH_WINDOW:-0s}

WORK=$(mktemp -d)
NAME=bench-docker
HTTP=31080
METRICS=32090
cleanup() {
    (cd "$WORK" && "$TASKCTL" destroy -p profile.yaml --yes >/dev/null 2>&1) || true
    "${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" down -t 5 >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

profile() { # profile MAX_CONCURRENT_TASKS
    cat >"$WORK/profile.yaml" <<EOF
apiVersion: taskctl.dev/v1
kind: Profile
include: [$PWD/profiles/local-external.yaml]
metadata:
  name: $NAME
target:
  kind: docker
  docker:
    network: $NAME-net
agents:
  - name: automated-task-executor
    env:
      - name: MAX_CONCURRENT_TASKS
        value: "$1"
    ports:
      - { name: http, port: $HTTP }
      - { name: metrics, port: $METRICS }
    probes:
      liveness: { path: /health, port: $HTTP, period_seconds: 10 }
      readiness: { path: /ready, port: $HTTP, period_seconds: 2 }
EOF
}

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

# Warm-up: builds the image (once; later deploys reuse it by tag).
profile 50
(cd "$WORK" && "$TASKCTL" deploy -p profile.yaml --yes -q >/dev/null 2>&1)
IMAGE=$(docker inspect --format '{{.Config.Image}}' "automated-task-executor-1.$NAME.development")
(cd "$WORK" && "$TASKCTL" destroy -p profile.yaml --yes -q >/dev/null 2>&1)

# The same three containers for compose: image, env, host network, ports,
# limits, health check (the agent's own probe), restart policy.
{
    echo "version: '2.4'"
    echo "services:"
    for i in 1 2 3; do
        h=$((HTTP + 2 * (i - 1)))
        m=$((METRICS + 2 * (i - 1)))
        cat <<EOF
  agent-$i:
    image: $IMAGE
    network_mode: host
    restart: unless-stopped
    cpus: 1
    mem_limit: 512m
    mem_reservation: 256m
    environment:
      BROKER_URL: "amqp://127.0.0.1:5672/%2f"
      MAX_CONCURRENT_TASKS: "50"
      EXECUTION_TIMEOUT: "300000"
      LOG_LEVEL: DEBUG
      BIND_ADDRESS: 127.0.0.1
      HEALTH_PORT: "$h"
      METRICS_PORT: "$m"
      AGENT_ID: agent-$i
      # The agents refuse to start without a task-signing key; compose's
      # agents get one (any valid key: the bench sends no task to them).
      TASK_SIGNING_PUBLIC_KEYS: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    healthcheck:
      test: ["CMD", "/task-executor", "probe", "http://127.0.0.1:$h/ready"]
      interval: 2s
      timeout: 1s
      retries: 3
EOF
    done
} >"$WORK/compose.yaml"

all_healthy() {
    local ids
    ids=$("${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" ps -q)
    [[ $(wc -w <<<"$ids") -eq 3 ]] || return 1
    ! docker inspect --format '{{.State.Health.Status}}' $ids | grep -qv '^healthy$'
}

# timed OUT CMD...: runs taskctl CMD in the work dir with JSON events, and
# appends "healthy verified" seconds to OUT (healthy: when the
# verification_started event was printed).
timed() {
    local out=$1
    shift
    local t0 events
    events=$WORK/events.jsonl
    t0=$(now)
    if ! (cd "$WORK" && "$TASKCTL" "$@" -o json >"$events" 2>"$WORK/stderr"); then
        echo "bench/docker.sh: taskctl $* failed:" >&2
        tail -5 "$events" "$WORK/stderr" >&2
        exit 1
    fi
    local t1
    t1=$(now)
    python3 - "$t0" "$t1" "$events" >>"$out" <<'PY'
import json, sys
from datetime import datetime
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
healthy = None
for line in open(sys.argv[3]):
    e = json.loads(line)
    if e.get("event") == "verification_started":
        ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
        healthy = ts - t0
        break
if healthy is None:
    sys.exit("no verification_started event: nothing was deployed")
print(f"{healthy:.3f} {t1 - t0:.3f}")
PY
}

compose_times=()
: >"$WORK/deploy" && : >"$WORK/rolling" && : >"$WORK/rollback"
for round in $(seq "$ROUNDS"); do
    t0=$(now)
    "${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" up -d >/dev/null 2>&1
    until all_healthy; do sleep 0.1; done
    compose_times+=("$(echo "$(now) - $t0" | bc)")
    "${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" down -t 5 >/dev/null 2>&1

    profile 50
    timed "$WORK/deploy" deploy -p profile.yaml --yes
    profile $((40 + round))
    timed "$WORK/rolling" deploy -p profile.yaml --yes
    timed "$WORK/rollback" rollback -p profile.yaml --yes --approve bench
    (cd "$WORK" && "$TASKCTL" destroy -p profile.yaml --yes -q >/dev/null 2>&1)
    echo "round $round: compose ${compose_times[-1]}s; taskctl (healthy verified) deploy $(tail -1 "$WORK/deploy"), rolling update $(tail -1 "$WORK/rolling"), rollback $(tail -1 "$WORK/rollback")" >&2
done

col() { awk -v c="$1" '{print $c}' "$2" | median; }
compose=$(printf '%s\n' "${compose_times[@]}" | median)
deploy=$(col 1 "$WORK/deploy")
printf 'median of %s rounds (healthy: every agent healthy; verified: the whole command, gates included, watch window %s):\n' "$ROUNDS" "$TASKCTL_WATCH_WINDOW"
printf '  %-44s %6ss\n' "${COMPOSE[*]} up -d + wait healthy" "$compose"
printf '  %-44s %6ss healthy, %6ss verified\n' "taskctl deploy, 3 new agents (image cached)" "$deploy" "$(col 2 "$WORK/deploy")"
printf '  %-44s %6ss healthy, %6ss verified\n' "taskctl deploy of a changed env value" "$(col 1 "$WORK/rolling")" "$(col 2 "$WORK/rolling")"
printf '  %-44s %6ss healthy, %6ss verified\n' "taskctl rollback to the previous release" "$(col 1 "$WORK/rollback")" "$(col 2 "$WORK/rollback")"
printf '  taskctl deploy (healthy) / compose: %s\n' "$(echo "scale=2; $deploy / $compose" | bc)"
