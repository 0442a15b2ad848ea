#!/usr/bin/env bash
# Runs every test of the workspace against the real servers: starts (and on a
# fresh machine installs) moto, OpenBao, RabbitMQ, Prometheus and two Docker
# registries (one asks for a login) on loopback through scripts/test-env.sh,
# builds the local stack's service images offline (scripts/images.sh), then
# runs the tests with cargo-nextest.
# Extra arguments go to nextest, e.g. `scripts/test.sh -p taskctl-core`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "scripts/test.sh: cargo is missing; install Rust from https://rustup.rs first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "scripts/test.sh: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The test environment prints `export NAME=value` lines for the tests.
env_lines=$(scripts/test-env.sh up)
eval "$env_lines"

# Tests that start the agent use the binary this very build makes (nextest
# builds every binary before any test runs), rather than building a second
# variant of it with other features.
target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}
export TASKCTL_TEST_AGENT_BIN=${TASKCTL_TEST_AGENT_BIN:-$target_dir/debug/task-executor}

# The docker target's tests build the agent image from a static agent (it
# runs on `scratch`); --target keeps the host artifacts of the cache intact.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -p task-executor --release --target x86_64-unknown-linux-gnu
export TASKCTL_AGENT_BINARY="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/task-executor"
case $TASKCTL_AGENT_BINARY in /*) ;; *) TASKCTL_AGENT_BINARY="$PWD/$TASKCTL_AGENT_BINARY" ;; esac

# The local stack's test (tests/cli/stack.rs) runs the service images built
# offline from Debian packages; built once, then reused by tag (about 2.5 min
# cold, 1 s when they exist).
scripts/images.sh rabbitmq postgres prometheus alertmanager openbao >&2

cargo nextest run --workspace --no-fail-fast "$@"
