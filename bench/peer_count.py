"""The throughput benchmark's peer: a plain Spark query that reads the same Kafka
topics with the same source options as the job and only counts the records
(Spark's own floor).

    python -m bench.peer_count --bootstrap HOST:PORT --topics a,b --expect N --max-offsets M

Prints one JSON line: records counted and seconds from the query's start.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time

from spark_jobs.recommend import KAFKA_SOURCE_OPTIONS
from spark_jobs.session import build_session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--max-offsets", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    spark = build_session("reco-bench-peer")
    counted = 0
    done = threading.Event()

    def count(batch, batch_id):
        nonlocal counted
        counted += batch.count()
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
        seconds = time.monotonic() - started
        query.stop()
    spark.stop()
    print(json.dumps({"records": counted, "seconds": round(seconds, 3)}))
    return 0 if counted >= args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
