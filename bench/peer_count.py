"""The throughput benchmark's peer: a plain Spark query that reads the same Kafka
topics with the same source options and JVM options as the job and only counts
the records (Spark's own floor).

    python -m bench.peer_count --bootstrap HOST:PORT --topics a,b --expect N --max-offsets M

Prints one JSON line: records counted, seconds from the query's start, and
records and seconds after its first batch (the sustained rate, without start-up).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time

from spark_jobs.recommend import KAFKA_SOURCE_OPTIONS
from spark_jobs.session import STREAMING_JAVA_OPTIONS, build_session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--max-offsets", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    spark = build_session("reco-bench-peer", java_options=STREAMING_JAVA_OPTIONS)
    counted = 0
    first: list[tuple[int, float]] = []
    done = threading.Event()

    def count(batch, batch_id):
        nonlocal counted
        counted += batch.count()
        if not first:
            first.append((counted, time.monotonic()))
        if counted >= args.expect:
            done.set()

    with tempfile.TemporaryDirectory() as checkpoint:
        query = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", args.bootstrap)
            .option("subscribe", args.topics)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", args.max_offsets)
            .options(**KAFKA_SOURCE_OPTIONS)
            .load()
            .writeStream.option("checkpointLocation", checkpoint)
            .foreachBatch(count)
            .start()
        )
        started = time.monotonic()
        done.wait(args.timeout)
        finished = time.monotonic()
        query.stop()
    spark.stop()
    first_records, first_done = first[0] if first else (0, started)
    print(
        json.dumps(
            {
                "records": counted,
                "seconds": round(finished - started, 3),
                "sustained_records": counted - first_records,
                "sustained_seconds": round(finished - first_done, 3),
            }
        )
    )
    return 0 if counted >= args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
