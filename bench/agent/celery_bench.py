"""Celery side of the benchmark: the noop task, the producer and the timer.

Worker: `celery -A celery_bench worker -P prefork -c C` (see run.sh).
Producer: `python celery_bench.py N` publishes N tasks, prints READY, then
waits for the N results (rpc:// backend, persistent results) and prints one
JSON line with the span from the first result to the last.
"""
import json
import os
import sys
import time

from celery import Celery
from celery.result import ResultSet

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench.celery.tasks")

app = Celery(
    "celery_bench",
    broker=os.environ["BENCH_AMQP_URL"],
    backend="rpc://",
)
app.conf.update(
    task_acks_late=True,
    result_persistent=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop():
    return None


def main():
    n = int(sys.argv[1])
    app.control.purge()
    results = [noop.apply_async() for _ in range(n)]
    print("READY", flush=True)
    first = []
    count = [0]

    def on_result(task_id, value):
        if not first:
            first.append(time.monotonic())
        count[0] += 1

    ResultSet(results).join_native(callback=on_result, timeout=1800)
    span = time.monotonic() - first[0]
    print(json.dumps({"results": count[0], "seconds": round(span, 3),
                      "tasks_per_s": round((count[0] - 1) / span)}), flush=True)


if __name__ == "__main__":
    main()
