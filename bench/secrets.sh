#!/usr/bin/env bash
# bench/secrets.sh: what Vault-backed secrets cost on target docker, all
# measured in one run against the test env's OpenBao dev server and broker.
#
#   bench/secrets.sh [ROUNDS]        default 5
#
# Two copies of the local stack (3 agents each) run side by side:
#   vault: profiles/local-external.yaml as shipped: the managed `messaging` secret,
#          the broker user and the agents' credential files from OpenBao;
#   env:   the same profile with the agents' broker credential from
#          taskctl's environment (`env:`), no managed secret, no broker
#          user step: what a deploy cost before Vault.
# Figures, median of ROUNDS (wall seconds of the whole command):
#   - `taskctl plan` of each, with nothing to change (the per-run price of
#     reading Vault and checking the broker user's password hash);
#   - a no-op `taskctl deploy --yes` of each;
#   - `taskctl secrets status`;
#   - `taskctl secrets rotate messaging --yes` (new version, broker user
#     re-passworded, three agents rolled one at a time, verification gates).
#
# Needs: eval "$(scripts/test-env.sh up)" (VAULT_ADDR, VAULT_TOKEN,
# TASKCTL_AMQP_ADMIN), the Docker engine, a built taskctl (TASKCTL, default
# $CARGO_TARGET_DIR/debug/taskctl) and the static agent (TASKCTL_AGENT_BINARY).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
TARGET=${CARGO_TARGET_DIR:-target}
TASKCTL=$(realpath "${TASKCTL:-$TARGET/debug/taskctl}")
export TASKCTL_AGENT_BINARY=$(realpath "${TASKCTL_AGENT_BINARY:-$TARGET/x86_64-unknown-linux-gnu/release/task-executor}")
: "${VAULT_ADDR:?run eval \"\$(scripts/test-env.sh up)\" first}"
: "${TASKCTL_AMQP_ADMIN:?run eval \"\$(scripts/test-env.sh up)\" first}"
export TASKCTL_WATCH_WINDOW=${TASKCTL_WATCH_WINDOW:-0s} NO_COLOR=1

work=$(mktemp -d)
id=bench-$$
export TASKCTL_SECRETS_PATH=secret/taskctl/$id
# The vault variant's agents get a virtual host of the bench's own.
export TASKCTL_AMQP_URL=amqp://127.0.0.1:5672/bench-vault-$$
# The env variant's agents log in with a broker user made here, in its own
# virtual host.
env_user=bench-env-$$ env_vhost=bench-env-$$
export BENCH_BROKER_USER=$env_user BENCH_BROKER_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
mgmt=${TASKCTL_AMQP_MANAGEMENT_URL:-http://127.0.0.1:15672}
curl -sf -u "$TASKCTL_AMQP_ADMIN" -X PUT "$mgmt/api/vhosts/$env_vhost" >/dev/null
curl -sf -u "$TASKCTL_AMQP_ADMIN" -X PUT -H 'content-type: application/json' \
    -d "{\"password\":\"$BENCH_BROKER_PASSWORD\",\"tags\":\"\"}" "$mgmt/api/users/$env_user" >/dev/null
curl -sf -u "$TASKCTL_AMQP_ADMIN" -X PUT -H 'content-type: application/json' \
    -d '{"configure":".*","write":".*","read":".*"}' "$mgmt/api/permissions/$env_vhost/$env_user" >/dev/null

python3 - "$work" "$id" "$env_vhost" <<'PY'
import re, sys
work, id, vhost = sys.argv[1:]
src = open("profiles/local-external.yaml").read()
def named(text, name, port):
    text = text.replace("name: task-local", f"name: {name}")
    text = text.replace("- { name: http, port: 8080 }", f"- {{ name: http, port: {port} }}")
    text = text.replace("- { name: metrics, port: 9090 }", f"- {{ name: metrics, port: {port + 1000} }}")
    text = re.sub(r"(liveness|readiness): \{ path: (/\w+), port: 8080", rf"\1: {{ path: \2, port: {port}", text)
    return text.replace("network: taskctl-local", f"network: {name}-net")
open(f"{work}/vault.yaml", "w").write(named(src, f"{id}-vault", 27100))
env = named(src, f"{id}-env", 27200)
env = re.sub(r"\nsecrets:\n(  .*\n|\s*#.*\n|\n)*", "\n", env)
env = re.sub(r"    # The user the agents connect as.*\n    credentials: vault:.*\n", "", env)
env = env.replace("secret: vault:${TASKCTL_SECRETS_PATH:-secret/taskctl/local}/messaging#username", "secret: env:BENCH_BROKER_USER")
env = env.replace("secret: vault:${TASKCTL_SECRETS_PATH:-secret/taskctl/local}/messaging#password", "secret: env:BENCH_BROKER_PASSWORD")
env = env.replace("${TASKCTL_AMQP_URL:-amqp://127.0.0.1:5672/taskctl-local}", f"amqp://127.0.0.1:5672/{vhost}")
open(f"{work}/env.yaml", "w").write(env)
PY

cleanup() {
    for p in vault env; do
        (cd "$work" && "$TASKCTL" -p "$p.yaml" destroy --yes >/dev/null 2>&1) || true
    done
    curl -s -u "$TASKCTL_AMQP_ADMIN" -X DELETE "$mgmt/api/vhosts/$env_vhost" >/dev/null || true
    curl -s -u "$TASKCTL_AMQP_ADMIN" -X DELETE "$mgmt/api/users/$env_user" >/dev/null || true
    curl -s -u "$TASKCTL_AMQP_ADMIN" -X DELETE "$mgmt/api/vhosts/bench-vault-$$" >/dev/null || true
    curl -s -u "$TASKCTL_AMQP_ADMIN" -X DELETE "$mgmt/api/users/taskctl-$id-vault-development" >/dev/null || true
    curl -s -H "X-Vault-Token: ${VAULT_TOKEN:-}" -X DELETE "$VAULT_ADDR/v1/secret/metadata/taskctl/$id/messaging" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
# secs PROFILE ARGS...: wall seconds of one taskctl command in the work dir;
# a failure stops the bench with its output.
secs() {
    local p=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    if ! (cd "$work" && "$TASKCTL" -p "$p.yaml" "$@" >"$work/last.log" 2>&1); then
        echo "bench/secrets.sh: taskctl -p $p.yaml $* failed:" >&2
        cat "$work/last.log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    python3 -c "print(round($t1 - $t0, 3))"
}

for p in vault env; do
    secs "$p" deploy --yes >/dev/null
done

declare -A times
for _ in $(seq "$ROUNDS"); do
    for p in vault env; do
        times[plan_$p]+="$(secs "$p" plan) "
        times[noop_$p]+="$(secs "$p" deploy --yes) "
    done
    times[status]+="$(secs vault secrets status) "
done
for _ in $(seq "$ROUNDS"); do
    times[rotate]+="$(secs vault secrets rotate messaging --yes) "
done

row() { printf '| %s | %s s |\n' "$1" "$(tr ' ' '\n' <<<"${times[$2]}" | grep . | median)"; }
echo
echo "median of $ROUNDS rounds, one run, $(nproc) cores, $("$TASKCTL" version 2>/dev/null | head -1)"
echo
echo "| command | wall |"
echo "|---|---|"
row "plan, secrets from Vault (nothing to change)" plan_vault
row "plan, secrets from taskctl's environment" plan_env
row "no-op deploy, secrets from Vault" noop_vault
row "no-op deploy, secrets from taskctl's environment" noop_env
row "secrets status (one managed secret)" status
row "secrets rotate messaging (3 agents rolled, gates)" rotate
