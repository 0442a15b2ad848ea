#!/usr/bin/env bash
# Throughput and peak RSS of three workers doing the same job on the same
# RabbitMQ: N persistent noop tasks, each answered with a persistent result
# (publisher confirm) before the ack.
#   agent: task-executor (release build), MAX_CONCURRENT_TASKS=$CONCURRENCY,
#       unsigned tasks (ALLOW_UNSIGNED_TASKS=true)
#   signed: the same agent with signed tasks: every task verified (Ed25519),
#       checked for expiry and replay; issue 14 asks for >= 0.9x of (a).
#       Signed as producers sign: the signature line before the body.
#   signedheaders: the same with the signature in AMQP headers, the earlier format
#       (agents still accept it)
#   celery: Celery prefork, -c $CELERY_CONCURRENCY, acks_late, rpc:// results
#   raw: a raw lapin loop (agent/examples/bench_raw_loop.rs), 100 in flight:
#       the ceiling for any worker that publishes results.
#   rawsigned: the same raw loop over signed messages: it verifies nothing, so it
#       shows what the signed format alone costs the broker and the client.
#   rawheaders: the same over messages signed in headers.
# Tasks are published before each worker starts; tasks/s is measured from
# the first result to the last, so start-up time is not counted. Peak RSS is
# the sum over the worker's process tree, sampled every 20 ms.
#
# PIN=1 puts the broker (the RabbitMQ node, every thread) and the bench driver
# on CPU 0 and the worker on CPU 1, as in a deployment where agents run on
# their own nodes; the affinity is restored on exit. Without it everything
# shares every core, and a worker's CPU is taken from the broker's.
#
# usage: bench/agent/run.sh [N] [which...]
#        (which: agent signed signedheaders celery raw rawsigned rawheaders;
#        default: all but the two header rows)
# env:   BENCH_AMQP_URL (default $TASKCTL_TEST_AMQP_URL, else guest@127.0.0.1)
#        CONCURRENCY (default 100), CELERY_CONCURRENCY (default $CONCURRENCY)
#        REPEAT (default 1): runs per worker, interleaved (agent, raw, celery,
#        agent, ...) so load from other processes hits all alike; the summary
#        gives the median tasks/s and the highest peak RSS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${1:-20000}
shift || true
which=${*:-agent signed celery raw rawsigned}
want() { [[ " $which " == *" $1 "* ]]; }
URL=${BENCH_AMQP_URL:-${TASKCTL_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}}
C=${CONCURRENCY:-100}
REPEAT=${REPEAT:-1}
CC=${CELERY_CONCURRENCY:-$C}
out="$here/results"
rm -rf "$out"
mkdir -p "$out"
export BENCH_AMQP_URL=$URL

echo "building release binaries" >&2
# (bench_verify, beside: the cost of admitting a signed task without a broker.)
(cd "$root" && cargo build -q --release -p task-executor --bins --examples)
# CARGO_TARGET_DIR (or the build's own config) may put the build elsewhere.
bin="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
driver="$bin/examples/bench_driver"

if want celery && [[ ! -x $here/.venv/bin/celery ]]; then
    echo "installing celery into $here/.venv" >&2
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q "celery==5.*"
fi

worker_cpu=()
driver_cpu=()
if [[ ${PIN:-0} == 1 ]]; then
    (($(nproc) >= 2)) || { echo "PIN=1 needs two CPUs" >&2; exit 2; }
    beam=$(pgrep -f 'beam.smp.*rabbit' | head -1)
    [[ -n $beam ]] || { echo "PIN=1: no RabbitMQ node (beam.smp) runs here" >&2; exit 2; }
    mask=$(taskset -p "$beam" | awk '{print $NF}')
    trap 'taskset -a -p "$mask" "$beam" >/dev/null' EXIT
    taskset -a -p 0x1 "$beam" >/dev/null
    worker_cpu=(taskset -c 1)
    driver_cpu=(taskset -c 0)
    echo "pinned: RabbitMQ (pid $beam) and the driver on CPU 0, workers on CPU 1" >&2
fi
driver_run() { "${driver_cpu[@]}" "$driver" "$@"; }

# publish_signed FORMAT: N tasks to bench.FORMAT.tasks, signed with a fresh
# key (the signature in AMQP headers for the *headers formats, the earlier
# format); prints the public key the worker is given.
publish_signed() {
    local format=$1 private public
    local headers=()
    [[ $format == *headers ]] && headers=(BENCH_SIGNATURE_HEADERS=1)
    read -r private public < <("$driver" keygen)
    env "${headers[@]}" BENCH_SIGNING_KEY="$private" "${driver_cpu[@]}" "$driver" \
        publish "$URL" "bench.$format.tasks" "bench.$format.results" "$N" >&2
    echo "$public"
}

describe() {
    case $1 in
    *headers) echo "tasks signed in AMQP headers" ;;
    *) echo "signed tasks (signature line before the body)" ;;
    esac
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run_worker NAME RESULT_QUEUE -- worker command...
# Starts the collector, then the worker under the RSS sampler; stops the
# worker when all results arrived.
run_worker() {
    local name=$1 results=$2
    shift 3
    driver_run collect "$URL" "$results" "$N" >"$out/$name.json" &
    local collector=$!
    sleep 0.5
    "${worker_cpu[@]}" "$@" >"$out/$name.log" 2>&1 &
    local worker=$!
    python3 "$here/rss_peak.py" "$worker" >"$out/$name.rss" &
    local sampler=$!
    wait "$collector"
    kill -TERM "$worker" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
    wait "$sampler"
}

for run in $(seq 1 "$REPEAT"); do
if want agent; then
    echo "(agent) task-executor, MAX_CONCURRENT_TASKS=$C, unsigned tasks" >&2
    driver_run publish "$URL" bench.agent.tasks bench.agent.results "$N"
    run_worker "agent.$run" bench.agent.results -- env -i PATH="$PATH" \
        BROKER_URL="$URL" TASK_QUEUE=bench.agent.tasks GPU_TASK_QUEUE=bench.agent.gpu \
        RESULT_QUEUE=bench.agent.results DEAD_LETTER_QUEUE=bench.agent.dead \
        MAX_CONCURRENT_TASKS="$C" LOG_LEVEL=warn BIND_ADDRESS=127.0.0.1 \
        HEALTH_PORT="$(free_port)" METRICS_PORT="$(free_port)" ALLOW_UNSIGNED_TASKS=true \
        "$bin/task-executor"
fi

for format in signed signedheaders; do
want $format || continue
echo "($format) task-executor, MAX_CONCURRENT_TASKS=$C, $(describe $format)" >&2
public=$(publish_signed $format)
run_worker "$format.$run" "bench.$format.results" -- env -i PATH="$PATH" \
    BROKER_URL="$URL" TASK_QUEUE="bench.$format.tasks" GPU_TASK_QUEUE="bench.$format.gpu" \
    RESULT_QUEUE="bench.$format.results" DEAD_LETTER_QUEUE="bench.$format.dead" \
    MAX_CONCURRENT_TASKS="$C" LOG_LEVEL=warn BIND_ADDRESS=127.0.0.1 \
    HEALTH_PORT="$(free_port)" METRICS_PORT="$(free_port)" TASK_SIGNING_PUBLIC_KEYS="$public" \
    ${SIG_BATCH:+TASK_SIGNATURE_BATCH=$SIG_BATCH} "$bin/task-executor"
done

if want raw; then
    echo "(raw) raw loop, 100 in flight" >&2
    driver_run publish "$URL" bench.raw.tasks bench.raw.results "$N"
    run_worker "raw.$run" bench.raw.results -- "$bin/examples/bench_raw_loop" "$URL" bench.raw.tasks
fi

# The broker's and the client's share of the signed format: the same raw
# loop (it checks nothing) over signed messages.
for format in rawsigned rawheaders; do
want $format || continue
echo "($format) raw loop over $(describe $format)" >&2
publish_signed $format >/dev/null
run_worker "$format.$run" "bench.$format.results" -- "$bin/examples/bench_raw_loop" "$URL" "bench.$format.tasks"
done

if want celery; then
    echo "(celery) celery prefork -c $CC" >&2
    cj="$out/celery.$run.json"
    (cd "$here" && exec "$here/.venv/bin/python" celery_bench.py "$N") >"$cj" 2>"$out/celery-producer.log" &
    producer=$!
    until grep -q READY "$cj" 2>/dev/null; do sleep 0.2; done
    (cd "$here" && exec "$here/.venv/bin/celery" -A celery_bench worker -P prefork -c "$CC" -l WARNING \
        --without-gossip --without-mingle --without-heartbeat) >"$out/celery.log" 2>&1 &
    worker=$!
    python3 "$here/rss_peak.py" "$worker" >"$out/celery.$run.rss" &
    sampler=$!
    wait "$producer"
    kill -TERM "$worker" 2>/dev/null || true
    sleep 2
    pkill -KILL -P "$worker" 2>/dev/null || true
    kill -KILL "$worker" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
    wait "$sampler"
    grep -v READY "$cj" >"$cj.tmp" && mv "$cj.tmp" "$cj"
fi
done

python3 - "$out" "$N" "$C" "$CC" <<'PY'
import glob, json, statistics, sys
out, n, c, cc = sys.argv[1:5]
rows = {}
for name in ("agent", "signed", "signedheaders", "celery", "raw", "rawsigned", "rawheaders"):
    rates, rss = [], []
    for f in sorted(glob.glob(f"{out}/{name}.*.json")):
        try:
            rates.append(json.load(open(f))["tasks_per_s"])
            rss.append(float(open(f[:-5] + ".rss").read()))
        except (OSError, ValueError, KeyError):
            pass
    if rates:
        rows[name] = (statistics.median(rates), max(rss), rates)
label = {"agent": f"task-executor (c={c})", "signed": f"  same, signed tasks",
         "celery": f"celery prefork (c={cc})",
         "raw": "raw loop (100 in flight)",
         "rawsigned": "  same, signed messages",
         "signedheaders": "  same, signed in headers",
         "rawheaders": "  same, signed in headers"}
print(f"{n} persistent noop tasks with persistent confirmed results (median of runs)")
for name, (rate, rss, rates) in rows.items():
    print(f"  {label[name]:<28} {rate:>8.0f} tasks/s   peak RSS {rss:>7.1f} MB   runs: {rates}")
if "agent" in rows and "signed" in rows:
    print(f"  signed / unsigned:  {rows['signed'][0] / rows['agent'][0]:.2f} of the throughput (goal >= 0.90)")
if "agent" in rows and "signedheaders" in rows:
    print(f"  signed in headers / unsigned:  {rows['signedheaders'][0] / rows['agent'][0]:.2f}")
if "raw" in rows and "rawsigned" in rows:
    print(f"  raw loop, signed / plain messages: {rows['rawsigned'][0] / rows['raw'][0]:.2f} "
          "(the cost of the signed format alone; nothing is verified)")
if "raw" in rows and "rawheaders" in rows:
    print(f"  raw loop, signed in headers / plain: {rows['rawheaders'][0] / rows['raw'][0]:.2f}")
if "agent" in rows and "raw" in rows:
    print(f"  agent / raw loop:   {rows['agent'][0] / rows['raw'][0]:.2f} of the throughput")
if "agent" in rows and "celery" in rows:
    print(f"  agent / celery:     {rows['agent'][0] / rows['celery'][0]:.1f}x the throughput, "
          f"{rows['celery'][1] / rows['agent'][1]:.1f}x less memory")
PY
