#!/usr/bin/env bash
# bench/docker.sh: the local stack (the agent image, 3 agents, the same env
# and health check) brought up by docker compose and by `taskctl deploy`,
# and the time from a `taskctl deploy` of a changed env value to every agent
# healthy again (a rolling update). Median wall time of several rounds.
#
#   bench/docker.sh [ROUNDS]        default 5
#
# Needs: the test env (scripts/test-env.sh up: the broker on loopback), the
# Docker engine, docker compose (v2 plugin or docker-compose v1), a built
# taskctl (TASKCTL, default $CARGO_TARGET_DIR/debug/taskctl) and a static
# agent (TASKCTL_AGENT_BINARY, default the static release build).
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
include: [$PWD/profiles/local.yaml]
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

compose_times=() taskctl_times=() rolling_times=()
for round in $(seq "$ROUNDS"); do
    t0=$(now)
    "${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" up -d >/dev/null 2>&1
    until all_healthy; do sleep 0.1; done
    compose_times+=("$(echo "$(now) - $t0" | bc)")
    "${COMPOSE[@]}" -p "$NAME" -f "$WORK/compose.yaml" down -t 5 >/dev/null 2>&1

    profile 50
    t0=$(now)
    (cd "$WORK" && "$TASKCTL" deploy -p profile.yaml --yes -q >/dev/null 2>&1)
    taskctl_times+=("$(echo "$(now) - $t0" | bc)")

    profile $((40 + round))
    t0=$(now)
    (cd "$WORK" && "$TASKCTL" deploy -p profile.yaml --yes -q >/dev/null 2>&1)
    rolling_times+=("$(echo "$(now) - $t0" | bc)")
    (cd "$WORK" && "$TASKCTL" destroy -p profile.yaml --yes -q >/dev/null 2>&1)
    echo "round $round: compose ${compose_times[-1]}s, taskctl ${taskctl_times[-1]}s, rolling update ${rolling_times[-1]}s" >&2
done

printf 'up to 3 healthy agents, median of %s rounds:\n' "$ROUNDS"
printf '  %-40s %ss\n' "${COMPOSE[*]} up -d + wait healthy" "$(printf '%s\n' "${compose_times[@]}" | median)"
printf '  %-40s %ss\n' "taskctl deploy (image cached)" "$(printf '%s\n' "${taskctl_times[@]}" | median)"
printf '  %-40s %ss\n' "taskctl deploy of a changed env value" "$(printf '%s\n' "${rolling_times[@]}" | median)"
