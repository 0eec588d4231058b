"""Streaming job: shop events in Kafka -> recommendation lists in Redis.

Reads the shop's event topics and, per micro-batch (``spark_jobs.batch``),
counts every record by what happens to it, applies each new event to the state
in Redis exactly once (a fenced transaction per batch), and rewrites the lists
of the touched products and visitors.

Usage::

    python -m spark_jobs.recommend --bootstrap 127.0.0.1:9092 \\
        --redis redis://127.0.0.1:6379/0 --checkpoint var/checkpoints/recommend \\
        [--config '{"half_life": 604800, "shuffle_partitions": 4}']

or, on a cluster::

    spark-submit --jars "$(ls jvm/lib/spark-kafka/*.jar | paste -sd,)" \\
        --py-files reco_plugin.zip spark_jobs/recommend.py --bootstrap ... --redis ... --checkpoint ...

The job does not exit when Redis or Kafka go away: a batch waits for Redis with
backoff, and a query that fails (Kafka unreachable, for instance) is started
again from its checkpoint with backoff. SIGTERM lets the running batch finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence

import redis

from reco_plugin import keys, schema
from reco_plugin.scoring import PipelineSettings
from spark_jobs import state
from spark_jobs.batch import BatchProcessor
from spark_jobs.session import REDIS_URL_ENV, add_spark_arguments, build_session, spark_options

logger = logging.getLogger("spark_jobs.recommend")
QUERY_NAME = "reco_recommend"

# Options of Spark's Kafka source. A task reads a known offset range, but its
# consumer's last fetch asks for more than the range holds, and the broker then
# waits fetch.max.wait.ms (500 ms by default) for data that is not coming: half a
# second per partition per batch, which was most of the freshness delay and
# capped the catch-up rate at ~13,000 records/s on two cores.
KAFKA_SOURCE_OPTIONS = {
    "kafka.fetch.max.wait.ms": "5",
    "kafka.max.poll.records": "20000",
    "kafka.max.partition.fetch.bytes": str(8 << 20),
    "failOnDataLoss": "false",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument(
        "--redis",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"Redis URL the lists are written to (default ${REDIS_URL_ENV}: a URL with a "
        "password is better kept out of the command line)",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument(
        "--topics",
        default=",".join(schema.DEFAULT_TOPICS.values()),
        help="comma-separated event topics",
    )
    parser.add_argument("--starting-offsets", default="earliest")
    parser.add_argument(
        "--config",
        default=None,
        help="pipeline settings as JSON (reco_plugin.scoring.PipelineSettings; partial)",
    )
    parser.add_argument(
        "--weights", default=None, help="JSON event type -> weight (merged over the defaults)"
    )
    parser.add_argument(
        "--key-prefix",
        default=None,
        help="Redis key prefix (default reco:v1; the shop's KEY_PREFIX)",
    )
    add_spark_arguments(parser)
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error(f"the Redis URL: --redis or ${REDIS_URL_ENV}")
    args.spark = spark_options(parser, args)
    try:
        values = json.loads(args.config) if args.config else {}
        if args.weights:
            values["event_weights"] = {
                **values.get("event_weights", {}),
                **json.loads(args.weights),
            }
        if args.key_prefix:
            values["key_prefix"] = args.key_prefix
        args.settings = PipelineSettings.from_mapping(values)
        keys.use_prefix(args.settings.key_prefix)
    except (ValueError, TypeError) as exc:
        parser.error(f"invalid pipeline settings: {exc}")
    return args


def build_query(spark, args: argparse.Namespace, processor: BatchProcessor):
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topics)
        .option("startingOffsets", args.starting_offsets)
        .option("maxOffsetsPerTrigger", args.settings.max_offsets_per_trigger)
        .options(**KAFKA_SOURCE_OPTIONS)
        .load()
    )
    query = (
        raw.writeStream.queryName(QUERY_NAME)
        .option("checkpointLocation", args.checkpoint)
        .foreachBatch(processor)
        .start()
    )
    processor.query_id = str(query.id)
    return query


# The line of a Python traceback that names the exception ("ValueError: ...").
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)): .*$", re.MULTILINE)


def cause(error: BaseException | None) -> str:
    """What a failed query died of, in one line: Spark wraps a Python error
    raised in the batch function in its own message, whose first line only says
    a traceback follows; the exception's own line is the last of those."""
    if error is None:
        return "query stopped"
    text = str(error)
    named = [match.group(0) for match in _RAISED.finditer(text)]
    first = (text.splitlines() or [type(error).__name__])[0]
    return (named[-1] if named else first).strip()[:500]


class Supervisor:
    """Keeps the query running and the heartbeat fresh until told to stop."""

    def __init__(self, spark, args: argparse.Namespace) -> None:
        self.spark = spark
        self.args = args
        self.stopping = threading.Event()
        self.processor = BatchProcessor(args.redis, args.settings, stopping=self.stopping)
        self.redis = state.connect(args.redis)
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def beat(self, query) -> None:
        status = query.status if query is not None and query.isActive else {}
        progress = (query.lastProgress if status else None) or {}
        sources = progress.get("sources") or [{}]
        behind = (sources[0].get("metrics") or {}).get("maxOffsetsBehindLatest")
        info = {
            "pid": os.getpid(),
            "name": QUERY_NAME,
            "query": self.processor.query_id,
            "run_id": str(query.runId) if status else None,
            "active": bool(status),
            "message": status.get("message", "restarting"),
            "waiting_for_redis": self.processor.waiting_for_redis,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_batch": self.processor.last.get("batch"),
            # Spark's own view of the last trigger: input rate, and where the time went
            "input_rows_per_second": progress.get("inputRowsPerSecond"),
            "processed_rows_per_second": progress.get("processedRowsPerSecond"),
            "trigger_ms": progress.get("durationMs"),
            # Spark's own reading of the Kafka source: records not yet read
            # behind the latest offset, at its last trigger
            "behind_latest": None if behind is None else int(float(behind)),
        }
        try:
            state.heartbeat(self.redis, info)
        except redis.RedisError:
            pass  # the batch's own retries report the outage

    def run(self) -> int:
        backoff = 1.0
        while not self.stopping.is_set():
            query = None
            started = time.monotonic()
            try:
                query = build_query(self.spark, self.args, self.processor)
                logger.info("query %s (%s) started", QUERY_NAME, query.id)
                while query.isActive and not self.stopping.is_set():
                    self.beat(query)
                    query.awaitTermination(1.0)
                error = query.exception()
            except Exception as exc:  # the query could not even start (Kafka down...)
                error = exc
            if self.stopping.is_set():
                self._stop(query)
                break
            self.restarts += 1
            self.last_error = cause(error)
            self.last_error_at = time.time()
            if time.monotonic() - started > 60:
                backoff = 1.0
            logger.error(
                "query failed (%s); starting it again from its checkpoint in %.0f s",
                self.last_error,
                backoff,
            )
            self.beat(None)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        return 0

    def _stop(self, query, grace: float = 30.0) -> None:
        if query is None or not query.isActive:
            return
        # Let the running batch finish: stopping cancels it (it would be run
        # again on the next start, which is safe but slower).
        deadline = time.monotonic() + grace
        while query.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.05)
        query.stop()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    spark = build_session(
        "reco-recommend",
        shuffle_partitions=args.settings.shuffle_partitions,
        local_checkpoint="://" not in args.checkpoint
        or args.checkpoint.startswith(("file:", "hdfs:")),
        **args.spark,
    )
    supervisor = Supervisor(spark, args)

    def stop(signum, frame):  # noqa: ARG001
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("writing to %s with %s", args.redis, args.settings.to_json())
    try:
        return supervisor.run()
    finally:
        try:
            supervisor.redis.delete(keys.pipeline_heartbeat())
        except redis.RedisError:
            pass
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
