#!/usr/bin/env bash
# bench/stack.sh: the whole local stack of profiles/local.yaml (OpenBao
# initialized and unsealed, RabbitMQ, PostgreSQL, Prometheus, Alertmanager,
# three agents) deployed from nothing, then redeployed with nothing to
# change, as a user runs them. Prints:
#   - the cold deploy (images present, volumes new): seconds until every
#     container is healthy (the `verification_started` event) and until the
#     command ends (every gate passed, a signed task through the broker);
#   - the no-op redeploy and the no-op plan: min/median/max of N runs by
#     farm-bench (whole process, start-up included);
# then destroys it with --purge.
#
#   bench/stack.sh [RUNS]        default 5
#
# Needs: the Docker engine, the service images (scripts/images.sh), a built
# taskctl (TASKCTL, default $CARGO_TARGET_DIR/debug/taskctl) and the static
# agent (TASKCTL_AGENT_BINARY); farm-bench. The automatic-rollback watch
# window is a fixed wait by design: TASKCTL_WATCH_WINDOW=0s unless told.
# Compose is not compared here: compose cannot initialize and unseal
# OpenBao, create the broker's users or generate the secrets, so there is
# no equivalent compose file of this stack (bench/docker.sh compares the
# agents alone with compose).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-5}
TARGET=${CARGO_TARGET_DIR:-target}
TASKCTL=$(realpath "${TASKCTL:-$TARGET/debug/taskctl}")
export TASKCTL_AGENT_BINARY=$(realpath "${TASKCTL_AGENT_BINARY:-$TARGET/x86_64-unknown-linux-gnu/release/task-executor}")
export TASKCTL_WATCH_WINDOW=${TASKCTL_WATCH_WINDOW:-0s}
unset VAULT_ADDR VAULT_TOKEN TASKCTL_AMQP_ADMIN TASKCTL_AMQP_URL TASKCTL_PROFILE TASKCTL_ENV
command -v farm-bench >/dev/null || { echo "bench/stack.sh: farm-bench is missing" >&2; exit 1; }
scripts/images.sh rabbitmq postgres prometheus alertmanager openbao >/dev/null

WORK=$(mktemp -d)
NAME=bench-stack
# Ports below the kernel's ephemeral range, away from the test servers'.
cat >"$WORK/profile.yaml" <<YAML
apiVersion: taskctl.dev/v1
kind: Profile
include: [$PWD/profiles/local.yaml]
metadata:
  name: $NAME
target:
  kind: docker
  docker:
    network: $NAME-net
    publish:
      vault: 21200
      rabbitmq: 21672
      rabbitmq_management: 21673
      prometheus: 21090
      alertmanager: 21093
      postgres: 21432
services:
  vault:
    cluster:
      nodes: ["http://127.0.0.1:21200"]
      key_shares: 1
      key_threshold: 1
      keys_file: .taskctl/vault-keys.json
  prometheus:
    alertmanager:
      enabled: true
      webhook_url: http://127.0.0.1:9/alerts
agents:
  - name: automated-task-executor
    ports:
      - { name: http, port: 21080 }
      - { name: metrics, port: 21100 }
    probes:
      liveness: { path: /health, port: 21080, period_seconds: 10 }
      readiness: { path: /ready, port: 21080, period_seconds: 1 }
YAML
cleanup() {
    (cd "$WORK" && "$TASKCTL" destroy -p profile.yaml --yes --purge -q >/dev/null 2>&1) || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
t0=$(now)
(cd "$WORK" && "$TASKCTL" deploy -p profile.yaml --yes -o json >"$WORK/events.jsonl" 2>"$WORK/stderr") || {
    echo "bench/stack.sh: the cold deploy failed:" >&2
    tail -n 5 "$WORK/events.jsonl" >&2; tail -n 5 "$WORK/stderr" >&2
    exit 1
}
t1=$(now)
python3 - "$t0" "$t1" "$WORK/events.jsonl" <<'PY'
import json, sys
from datetime import datetime
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
healthy = None
for line in open(sys.argv[3]):
    e = json.loads(line)
    if e.get("event") == "verification_started":
        healthy = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() - t0
        break
print(f"cold deploy of the whole stack: {healthy:.2f} s until every container is healthy, "
      f"{t1 - t0:.2f} s with every gate passed")
PY

cd "$WORK"
echo "no-op deploy (nothing to change), $RUNS runs:"
farm-bench -n "$RUNS" --timeout 600 -- "$TASKCTL" deploy -p profile.yaml --yes -q
echo "no-op plan, $RUNS runs:"
farm-bench -n "$RUNS" --timeout 300 -- "$TASKCTL" plan -p profile.yaml -q
