#!/usr/bin/env bash
# What a plugin costs: `taskctl validate` of local.yaml with one `check`
# plugin (the shipped backup-verify, Python) against the same profile
# without it, run in turn by farm-bench so the ratio survives a noisy
# machine; and the plugin process alone against a bare `python3 -c pass`,
# which shows how much of it is the interpreter starting.
# Usage: bench/plugins.sh [runs]   BIN=path/to/taskctl (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/debug/taskctl}
[[ -x $bin ]] || { echo "bench/plugins.sh: no taskctl at $bin (cargo build, or set BIN)" >&2; exit 1; }
command -v farm-bench >/dev/null || { echo "bench/plugins.sh: farm-bench is missing" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/backups"
printf 'PGDMP dump' >"$work/backups/tasks-1.dump"
cat >"$work/with-plugin.yaml" <<YAML
apiVersion: taskctl.dev/v1
kind: Profile
include: [$PWD/profiles/local.yaml]
plugins:
  - name: backup-verify
    path: $PWD/plugins/backup-verify
    provides: [check]
    args: { dir: $work/backups, pattern: "*.dump" }
deployment:
  preparation: [validate_environment, backup-verify]
YAML
request='{"protocol":1,"action":"check","plugin":"backup-verify","environment":{"name":"b","environment":"development","target":"docker"},"args":{"dir":"'"$work"'/backups","pattern":"*.dump"},"profile":{},"secrets":{},"state_dir":"'"$work"'"}'
printf '%s\n' "$request" >"$work/request.json"
echo "== validate with one check plugin (A) vs without (B), $runs pairs"
farm-bench -n "$runs" --vs "$bin validate -q -p profiles/local.yaml" -- "$bin" validate -q -p "$work/with-plugin.yaml"
echo
echo "== the plugin alone, one check (A) vs python3 starting and exiting (B), $runs pairs"
farm-bench -n "$runs" --vs "python3 -c pass" -- sh -c "exec $PWD/plugins/backup-verify <$work/request.json"
