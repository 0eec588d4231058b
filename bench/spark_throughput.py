"""spark_throughput: events per second the streaming job applies on ``local[2]``
while catching up a backlog in Kafka, sustained: from the end of its first
micro-batch (JVM and Python workers warm) until every record is committed to
Redis. The whole run from the query's start is reported beside it. Peer: a plain
Spark query that reads and counts the same topics with the same source options
and batch size in the same run (``bench.peer_count``), measured the same way.

Then the same backlog once more on a Spark standalone cluster (a master and two
workers of one core and 1 GB each, as ``make cluster`` runs them; the driver in
client mode here): ``standalone_events_per_s``. On one two-core machine the
cluster's executors share the cores with the driver, so this says what the
cluster costs (task scheduling over RPC, executors in their own JVMs), not what
more machines would add."""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from reco_plugin import schema
from stack.pipeline import JobRun, end_offsets, produce
from stack.services import PYTHON, REPO, Ports, Stack, free_ports

BATCH_LINE = re.compile(r"batch (\d+): (\d+) rows .* on the (\w+), .* in ([\d.]+)s")


def traffic(n: int, seed: int = 5):
    """Page views and add-to-carts of 5,000 visitors over 2,000 products (a few
    popular ones), spread over the last six hours."""
    rng = random.Random(seed)
    now = schema.now_ms()
    span_ms = 6 * 3600 * 1000
    for i in range(n):
        visitor = f"s:b{rng.randint(1, 5000)}"
        product = str(int(rng.paretovariate(1.2)) % 2000 + 1)
        kind = schema.ADD_TO_CART if rng.random() < 0.1 else schema.PAGE_VIEW
        yield schema.make_event(kind, visitor, product, ts=now - span_ms + i * span_ms // n)


def applied_so_far(job: JobRun) -> int:
    return sum(v for k, v in job.counters().items() if k.endswith(":applied"))


def run(events: int = 200_000, batch: int = 20_000, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="reco-bench-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        try:
            stack.start_kafka()
            stack.start_redis()
            stack.manage("reco_topics", quiet=True)
            bootstrap = f"127.0.0.1:{stack.ports.kafka}"
            log(f"producing {events} events...")
            produce(bootstrap, traffic(events))
            targets = end_offsets(bootstrap)
            topics = ",".join(schema.DEFAULT_TOPICS.values())

            log("peer: a plain Spark query counting the same records...")
            peer = subprocess.run(
                [
                    PYTHON,
                    "-m",
                    "bench.peer_count",
                    "--bootstrap",
                    bootstrap,
                    "--topics",
                    topics,
                    "--expect",
                    str(events),
                    "--max-offsets",
                    str(batch),
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=stack.env(),
                check=True,
            )
            peer_result = json.loads(peer.stdout.strip().splitlines()[-1])

            log("the streaming job...")
            job = JobRun(stack, "throughput", db=1, config={"max_offsets_per_trigger": batch})
            job.start()
            try:  # a job that makes no progress retries its query: stopped here too
                started = time.monotonic()
                job.wait_until(lambda: job.commits() >= 1, 300, "the first batch")
                first_done = time.monotonic()
                first_applied = applied_so_far(job)
                job.wait_processed(targets, timeout=900)
                finished = time.monotonic()
                applied = applied_so_far(job)
            finally:
                job.stop()
            for line in Path(job.log).read_text().splitlines():
                if "spark_jobs.batch INFO batch" in line:
                    log("  " + line.split(" INFO ", 1)[1])
            batches = [
                (int(m[2]), m[3], float(m[4]))
                for m in BATCH_LINE.finditer(Path(job.log).read_text())
                if int(m[2]) > 0
            ]
            steps = job.redis.hgetall("reco:v1:pipeline:last-batch").get("steps")
            standalone = on_standalone_cluster(stack, targets, batch, log)
        finally:
            stack.stop()
    value = (applied - first_applied) / (finished - first_done)
    peer_value = peer_result["sustained_records"] / peer_result["sustained_seconds"]
    durations = [b[2] for b in batches]
    return {
        "name": "spark_throughput",
        "value": round(value),
        "unit": "events/s",
        "peer": "plain Spark read+count of the same topics",
        "peer_value": round(peer_value),
        "ratio": round(value / peer_value, 3),
        "events": applied,
        "whole_run_events_per_s": round(applied / (finished - started)),
        "peer_whole_run_events_per_s": round(peer_result["records"] / peer_result["seconds"]),
        "seconds": round(finished - started, 2),
        "batch_size": batch,
        "batches": len(batches),
        "batch_seconds_p50": round(statistics.median(durations), 3) if durations else None,
        "batch_seconds_max": round(max(durations), 3) if durations else None,
        "paths": sorted({b[1] for b in batches}),
        "last_batch_steps": json.loads(steps) if steps else None,
        **standalone,
    }


def on_standalone_cluster(stack: Stack, targets: dict[str, int], batch: int, log) -> dict:
    """The job over the same backlog on a standalone master and two workers."""
    from stack.cluster import SparkStandalone

    master, *ui = free_ports(4)
    spark = SparkStandalone(stack, master, ui)
    log("the streaming job on a Spark standalone cluster (a master, two workers)...")
    spark.start()
    conf = [arg for k, v in spark.job_conf().items() for arg in ("--spark-conf", f"{k}={v}")]
    job = JobRun(
        stack,
        "throughput-standalone",
        db=2,
        config={"max_offsets_per_trigger": batch},
        spark_args=["--master", spark.master, *conf],
    )
    job.start()
    try:
        started = time.monotonic()
        job.wait_until(lambda: job.commits() >= 1, 300, "the first batch")
        first_done, first_applied = time.monotonic(), applied_so_far(job)
        job.wait_processed(targets, timeout=900)
        finished = time.monotonic()
        applied = applied_so_far(job)
    finally:
        job.stop()
    return {
        "standalone_events_per_s": round((applied - first_applied) / (finished - first_done)),
        "standalone_whole_run_events_per_s": round(applied / (finished - started)),
        "standalone_workers": spark.workers,
    }
