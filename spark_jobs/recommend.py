"""Streaming job: shop events in Kafka -> recommendation lists in Redis.

Reads the shop's event topics, drops malformed and duplicate events (by
``event_id``, within a watermark), and for every micro-batch:

* adds co-visitation weights for items a visitor interacted with close together,
* adds per-bucket weights for trending (event-time buckets, summed over a window),
* rebuilds the similar-items lists of the touched products,
* rebuilds the personal lists of the touched visitors and notifies their websockets.

Usage::

    python -m spark_jobs.recommend --bootstrap 127.0.0.1:9092 \\
        --redis redis://127.0.0.1:6379/0 --checkpoint var/checkpoints/recommend

or, on a cluster::

    spark-submit --jars "$(ls jvm/lib/spark-kafka/*.jar | paste -sd,)" \\
        --py-files reco_plugin.zip spark_jobs/recommend.py --bootstrap ... --redis ... --checkpoint ...
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from reco_plugin import keys, schema, scoring

from . import redis_writer
from .session import build_session
from .transforms import (
    RECENT_STRUCT,
    covisitation_pairs,
    deduplicate,
    interactions,
    parse_events,
    product_weights,
    recent_items,
    trending_buckets,
)

logger = logging.getLogger("spark_jobs.recommend")
QUERY_NAME = "reco_recommend"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--redis", required=True, help="Redis URL the lists are written to")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument(
        "--topics",
        default=",".join(schema.DEFAULT_TOPICS.values()),
        help="comma-separated event topics",
    )
    parser.add_argument("--starting-offsets", default="earliest")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=20000)
    parser.add_argument("--dedup-delay", default="10 minutes", help="watermark delay for dedup")
    parser.add_argument("--recent-items", type=int, default=scoring.RECENT_ITEMS)
    parser.add_argument("--covisit-window", type=int, default=scoring.COVISIT_WINDOW_SECONDS)
    parser.add_argument("--trending-window", type=int, default=scoring.TRENDING_WINDOW_SECONDS)
    parser.add_argument("--trending-bucket", type=int, default=scoring.TRENDING_BUCKET_SECONDS)
    parser.add_argument("--weights", default=None, help="JSON event type -> weight")
    parser.add_argument("--shuffle-partitions", type=int, default=None)
    return parser.parse_args(argv)


class BatchWriter:
    """The foreachBatch function: one micro-batch of events -> Redis."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis_url = args.redis

    def __call__(self, batch, batch_id: int) -> None:
        started = time.monotonic()
        spark = batch.sparkSession
        new = interactions(batch).persist()
        try:
            visitor_ids = [row.visitor_id for row in new.select("visitor_id").distinct().collect()]
            if not visitor_ids:
                return
            r = redis_writer.connect(self.redis_url)
            recent = spark.createDataFrame(redis_writer.load_recent(r, visitor_ids), RECENT_STRUCT)

            pairs = covisitation_pairs(
                new,
                recent,
                recent_items=self.args.recent_items,
                window_seconds=self.args.covisit_window,
            ).persist()
            redis_url = self.redis_url
            pairs.foreachPartition(lambda rows: redis_writer.write_pairs(rows, redis_url))
            redis_writer.write_popularity(r, product_weights(new).collect())
            redis_writer.write_trending(
                r,
                trending_buckets(new, bucket_seconds=self.args.trending_bucket).collect(),
                bucket_seconds=self.args.trending_bucket,
                window_seconds=self.args.trending_window,
            )
            touched = [row.product_id for row in pairs.select("product_id").distinct().collect()]
            pairs.unpersist()
            redis_writer.refresh_similar(r, touched)

            visitors = [
                (row.visitor_id, [(item.ts, item.product_id, item.weight) for item in row["items"]])
                for row in recent_items(new, recent, limit=self.args.recent_items).collect()
            ]
            updated = redis_writer.refresh_visitors(r, visitors)
            redis_writer.notify(r, updated)
            r.close()
            logger.info(
                "batch %d: %d visitors, %d products in %.2fs",
                batch_id,
                len(updated),
                len(touched),
                time.monotonic() - started,
            )
        finally:
            new.unpersist()


def build_query(spark, args: argparse.Namespace):
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topics)
        .option("startingOffsets", args.starting_offsets)
        .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
        .option("failOnDataLoss", "false")
        .load()
    )
    weights = json.loads(args.weights) if args.weights else None
    events = deduplicate(parse_events(raw, weights), args.dedup_delay)
    return (
        events.writeStream.queryName(QUERY_NAME)
        .option("checkpointLocation", args.checkpoint)
        .foreachBatch(BatchWriter(args))
        .start()
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    spark = build_session("reco-recommend", shuffle_partitions=args.shuffle_partitions)
    query = build_query(spark, args)
    r = redis_writer.connect(args.redis)
    stopping = threading.Event()

    def stop(signum, frame):  # noqa: ARG001
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    redis_writer.record_progress(r, {"batchId": None})
    logger.info("query %s started; writing to %s", QUERY_NAME, args.redis)
    last_batch = None
    last_beat = 0.0
    try:
        while query.isActive and not stopping.is_set():
            progress = query.lastProgress
            now = time.monotonic()
            if progress and (progress.get("batchId") != last_batch or now - last_beat > 5):
                # Offsets are recorded once the batch is fully written, so a
                # reader that sees them can rely on the lists being there.
                redis_writer.record_progress(r, progress)
                last_batch, last_beat = progress.get("batchId"), now
            elif now - last_beat > 5:
                redis_writer.record_progress(r, {"batchId": None})
                last_beat = now
            query.awaitTermination(0.05)
        if query.exception():
            logger.error("query failed: %s", query.exception())
            return 1
    finally:
        if query.isActive:
            query.stop()
        r.delete(keys.pipeline_heartbeat())
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
