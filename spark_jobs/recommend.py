"""Streaming job: shop events in Kafka -> recommendation lists in Redis.

Reads the shop's event topics and, per micro-batch (``spark_jobs.batch``),
counts every record by what happens to it, applies each new event to the state
in Redis exactly once (a transaction per batch with the Kafka offsets it
reaches), and rewrites the lists of the touched products and visitors.

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

Redis, not the checkpoint, says what has been applied (``spark_jobs.recovery``):
with no checkpoint the query starts from the offsets Redis holds, and when
Redis has lost state the query is rewound to them with a fresh checkpoint. Only
the copy of the job that holds the lease in Redis runs its query; another waits.
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
from typing import Any

import redis

from reco_plugin import keys, schema
from reco_plugin.scoring import PipelineSettings
from spark_jobs import recovery, state
from spark_jobs.batch import BatchProcessor
from spark_jobs.forgotten import ForgetLog
from spark_jobs.session import (
    REDIS_URL_ENV,
    STREAMING_JAVA_OPTIONS,
    add_spark_arguments,
    build_session,
    spark_options,
)

logger = logging.getLogger("spark_jobs.recommend")
QUERY_NAME = "reco_recommend"
# the product lists batches leave owed are written once no batch has ended for this long
IDLE_SECONDS = 1.0

# Options of Spark's Kafka source. failOnDataLoss=false: records Kafka deleted
# (retention) before the job read them do not stop the job; the batch after
# them counts them as expired against the offsets Redis holds (recovery.judge),
# and reco_status reports it. A task reads a known offset range, but its
# consumer's last fetch asks for more than the range holds, and the broker then
# waits fetch.max.wait.ms (500 ms by default) for data that is not coming: half a
# second per partition per batch, which was most of the freshness delay and
# capped the catch-up rate at ~13,000 records/s on two cores.
KAFKA_SOURCE_OPTIONS = {
    "kafka.fetch.max.wait.ms": "5",
    "kafka.max.poll.records": "20000",
    "kafka.max.partition.fetch.bytes": str(8 << 20),
    "failOnDataLoss": "false",
    # A broker that hangs (a long GC pause, a network cut) keeps its sockets
    # open, and accepts new ones: with Kafka's defaults each request to it waits
    # 30 s, and the driver's offset lookups 60 s, before the client asks the
    # cluster who leads now. The leaders move in ~6 s (the brokers' session
    # timeout), but each executor keeps a consumer per partition, connected to
    # that partition's leader only: each of a batch's tasks on a partition the
    # hung broker led waits out its own request timeout (asking the same broker
    # who leads now, the one it is connected to), one task after another. A
    # request here reads at most 8 MB and is answered in milliseconds: give up
    # on it after 2 s (4 s took 67 s for 37 partitions on two executors), on an
    # offsets lookup after 10 s (docs/production.md).
    "kafka.request.timeout.ms": "2000",
    "kafka.default.api.timeout.ms": "10000",
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
    parser.add_argument(
        "--starting-offsets",
        default="earliest",
        choices=["earliest", "latest"],
        help="where a partition Redis holds nothing of is read from: earliest (an empty "
        "Redis is rebuilt from all Kafka retains) or latest (history is not read)",
    )
    parser.add_argument(
        "--forgotten-topic",
        default=schema.FORGOTTEN_TOPIC,
        help="the topic of forget records (the shop's FORGOTTEN_TOPIC)",
    )
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


def build_query(
    spark, args: argparse.Namespace, processor: BatchProcessor, starting: str | None = None
):
    """The streaming query; ``starting``: its startingOffsets when its checkpoint is new."""
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topics)
        .option("startingOffsets", starting or args.starting_offsets)
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


def _end_offsets(progress: Any, field: str = "endOffset") -> dict[tuple[str, int], int]:
    """Where a query's last progress left its Kafka source (``field``; or
    ``latestOffset``: the latest Kafka had then): (topic, partition) -> offset."""
    try:
        sources = (progress or {}).get("sources") or []
        end = sources[0].get(field) if sources else None
        if isinstance(end, str):
            end = json.loads(end)
        return {(t, int(p)): int(o) for t, parts in (end or {}).items() for p, o in parts.items()}
    except (ValueError, TypeError, AttributeError, IndexError):
        return {}


def caught_up(progress: Any) -> bool:
    """Whether a query's last progress read its Kafka source up to the
    latest offsets Kafka had then (False before its first trigger)."""
    end = _end_offsets(progress)
    return bool(end) and end == _end_offsets(progress, "latestOffset")


class Checkpoint:
    """The query's checkpoint directory, on any file system Spark's Hadoop knows."""

    def __init__(self, spark, location: str) -> None:
        jvm = spark.sparkContext._jvm
        self.location = location
        self.path = jvm.org.apache.hadoop.fs.Path(location)
        self.fs = self.path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self._offsets = jvm.org.apache.hadoop.fs.Path(location + "/offsets")

    def exists(self) -> bool:
        """Whether a query has planned a batch in it."""
        return bool(self.fs.exists(self._offsets)) and len(self.fs.listStatus(self._offsets)) > 0

    def remove(self) -> None:
        if not self.fs.delete(self.path, True) and self.fs.exists(self.path):
            raise OSError(f"the checkpoint {self.location} could not be removed")


class Supervisor:
    """Keeps the query running and the heartbeat fresh until told to stop;
    holds the lease, and rewinds the query when Redis has lost state."""

    def __init__(self, spark, args: argparse.Namespace) -> None:
        self.spark = spark
        self.args = args
        self.stopping = threading.Event()
        self.lease_lost = threading.Event()
        self.redis = state.connect(args.redis)
        self.lease = recovery.Lease(self.redis, ttl=args.settings.lease_ttl)
        self.kafka = recovery.KafkaLog(args.bootstrap, args.topics.split(","))
        self.processor = BatchProcessor(
            args.redis,
            args.settings,
            kafka=self.kafka,
            lease=self.lease,
            forgets=ForgetLog(args.bootstrap, args.forgotten_topic),
            stopping=self.stopping,
        )
        self.processor.from_earliest = args.starting_offsets == "earliest"
        self.checkpoint = Checkpoint(spark, args.checkpoint)
        self.query = None
        self.processor.planned = lambda: _end_offsets(
            self.query.lastProgress if self.query is not None else None
        )
        self.restarts = 0
        self.rewinds = 0
        self.process_space = keys.process_space()
        # when writing owed lists between batches last failed (monotonic)
        self.lists_failed_at = float("-inf")
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.waiting_since: float | None = None

    def beat(self, query) -> None:
        status = query.status if query is not None and query.isActive else {}
        progress = (query.lastProgress if status else None) or {}
        sources = progress.get("sources") or [{}]
        behind = (sources[0].get("metrics") or {}).get("maxOffsetsBehindLatest")
        info = {
            "pid": os.getpid(),
            "process_space": self.process_space,
            "name": QUERY_NAME,
            "query": self.processor.query_id,
            "run_id": str(query.runId) if status else None,
            "active": bool(status),
            "message": status.get("message", "restarting"),
            "waiting_for_redis": self.processor.waiting_for_redis,
            "restarts": self.restarts,
            "rewinds": self.rewinds,
            "lease": self.lease.token,
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
            "spark": self.spark_cluster(),
        }
        try:
            state.heartbeat(self.redis, info)
        except redis.RedisError:
            pass  # the batch's own retries report the outage

    def spark_cluster(self) -> dict:
        """Where the job runs: its master, and the ids of the executors it has
        now (a lost worker's executors leave the list; local mode has none)."""
        context = self.spark.sparkContext
        if context.master.startswith("local"):
            # (and asked, Spark would log a warning every second: "Requesting
            # executors is not supported by current scheduler")
            return {"master": context.master, "executors": []}
        try:
            ids = context._jsc.sc().getExecutorIds()
            executors = sorted(str(ids.apply(i)) for i in range(ids.size()))
        except Exception:  # the JVM is going away
            return {"master": context.master}
        return {"master": context.master, "executors": executors}

    def hold_lease(self) -> bool:
        """Take the lease, or wait for it (saying so) until the job is stopped."""
        said = 0.0
        while not self.stopping.is_set():
            try:
                if self.lease.acquire():
                    if self.waiting_since is not None:
                        logger.info("the lease is this job's now (%s)", self.lease.token)
                        self.lease.leave_standby()
                    self.waiting_since = None
                    return True
                holder = self.lease.holder()
                if self.waiting_since is None:
                    self.waiting_since = time.time()
                self.lease.standby(
                    {"pid": os.getpid(), "waiting_since": self.waiting_since, "holder": holder}
                )
                if time.monotonic() - said > 30:
                    said = time.monotonic()
                    logger.warning(
                        "another copy of the job holds the lease (%s, since %s): this one "
                        "waits until it is released or expires",
                        holder.get("owner"),
                        time.strftime("%H:%M:%S", time.localtime(holder["since"]))
                        if holder.get("since")
                        else "unknown",
                    )
            except redis.RedisError as exc:
                logger.warning("waiting for Redis to take the lease: %s", exc)
            self.stopping.wait(1.0)
        return False

    def starting_offsets(self) -> str | None:
        """With no checkpoint, where Redis stands (None: the query's own checkpoint,
        or Redis holds nothing yet, and ``--starting-offsets`` applies)."""
        if self.checkpoint.exists():
            return None
        held = recovery.position(self.redis)
        if not held.offsets:
            return None
        partitions = self.kafka.partitions()
        starting = recovery.starting_offsets(
            held, partitions, self.kafka.topic_ids(), self.processor.from_earliest
        )
        logger.warning(
            "no checkpoint at %s: starting from the offsets Redis holds", self.args.checkpoint
        )
        return starting

    def rewind(self, rewind: recovery.Rewind) -> str:
        """A fresh checkpoint, and the startingOffsets of the rewound query."""
        self.rewinds += 1
        logger.error(
            "rewinding: %s; starting again from Redis's offsets with a fresh checkpoint, "
            "%d records to apply again",
            rewind.reason,
            rewind.reapplied,
        )
        recovery.record_rewind(self.redis, rewind.reason, rewind.reapplied, rewind.offsets)
        state.continue_commits(self.redis, self.processor.last_seq)
        self.checkpoint.remove()
        held = recovery.Position(rewind.offsets, recovery.position(self.redis).topic_ids)
        self.processor.rewound_to = dict(rewind.offsets)
        return recovery.starting_offsets(
            held, self.kafka.partitions(), self.kafka.topic_ids(), self.processor.from_earliest
        )

    def run(self) -> int:
        threading.Thread(target=self.keep_lease, name="reco-lease", daemon=True).start()
        threading.Thread(target=self.keep_beating, name="reco-heartbeat", daemon=True).start()
        backoff = 1.0
        starting: str | None = None
        while not self.stopping.is_set():
            if not self.hold_lease():
                break
            query = None
            started = time.monotonic()
            self.processor.rewind = None
            self.processor.lease_lost = False
            try:
                self.processor.topic_ids = self.kafka.topic_ids()
                self.processor.write_owed_at_start()
                starting = starting or self.starting_offsets()
                self.processor.query_id = None  # a fresh checkpoint is a new query
                query = self.query = build_query(self.spark, self.args, self.processor, starting)
                starting = None
                logger.info("query %s (%s) started", QUERY_NAME, query.id)
                while query.isActive and not self.stopping.is_set():
                    if self.lease_lost.is_set():
                        self.lease_lost.clear()
                        self.processor.lease_lost = True
                        query.stop()
                        break
                    if self._redis_behind(query):
                        query.stop()
                        break
                    self._forgets_when_idle()
                    self._lists_when_idle(query)
                    query.awaitTermination(1.0)
                error = query.exception()
            except Exception as exc:  # the query could not even start (Kafka down...)
                error = exc
            if self.stopping.is_set():
                self._stop(query)
                break
            if self.processor.rewind is not None:
                try:
                    starting = self.rewind(self.processor.rewind)
                    continue
                except Exception as exc:  # Kafka or Redis away: the failure path retries
                    error = exc
            if self.processor.lease_lost:
                logger.error("this job lost the lease: it stops writing and waits for it")
                self.beat(None)
                continue
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

    def _redis_behind(self, query) -> bool:
        """Whether Redis lost what the query's batches committed (then
        ``processor.rewind`` says from where to start again). Partitions where
        Kafka holds nothing to read again have their offsets moved forward."""
        if query.status.get("isTriggerActive"):
            return False  # a batch is being committed: judged by the batch itself
        planned = _end_offsets(query.lastProgress)
        if query.status.get("isTriggerActive"):
            return False  # a batch began after the progress was read
        try:
            read = recovery.position(self.redis)
            held = self.processor._this_life(read)
            rewind, forward, expired = recovery.behind(held, planned, self.kafka)
            if forward:
                state.advance(self.redis, self.lease.token, read.offsets, forward, expired)
                if expired:
                    logger.error(
                        "records deleted by Kafka's retention before the job read them: %s",
                        ", ".join(f"{recovery.field(tp)} {n}" for tp, n in sorted(expired.items())),
                    )
        except Exception as exc:  # Redis or Kafka away: the batches wait them out
            logger.debug("Redis's offsets not compared with the query's: %s", exc)
            return False
        self.processor.rewind = rewind
        return rewind is not None

    def _forgets_when_idle(self) -> None:
        """The tombstones Redis lacks, between batches too: a shop with no
        traffic forgets again at once after a restore."""
        # (a batch reads them itself; ForgetLog's lock keeps the two apart)
        if self.processor.in_batch or self.processor.forgets is None:
            return
        try:
            self.processor.forgets.catch_up(self.redis, self.processor.settings, wait=False)
        except Exception as exc:  # Kafka or Redis away: the next batch tries again
            logger.debug("forget records not read: %s", exc)

    def _lists_when_idle(self, query) -> None:
        """The lists the batches left owed (product lists past
        ``product_lists_per_batch`` of a kind, the visitors' lists of batches
        catching up a backlog), written once no batch has run
        for ``IDLE_SECONDS``: when the traffic stops, none is left behind its
        weights (under steady traffic the batches write them, and this would
        only compete with them for the driver)."""

        # a second at a time: the loop beats, and sees a stop or a lost lease
        until = time.monotonic() + IDLE_SECONDS
        ended = self.processor.ended

        def busy() -> bool:
            # a batch started, or ran meanwhile (not the trigger looking for
            # new records, which it does most of the time it waits: asked
            # that, the writer wrote one round a call, 15 lists every 1-8 s)
            return (
                time.monotonic() > until
                or self.stopping.is_set()
                or self.lease_lost.is_set()
                or self.processor.in_batch
                or self.processor.ended != ended
            )

        if ended is not None and time.monotonic() - ended < IDLE_SECONDS:
            return
        if busy():
            return
        try:
            # the visitors' only once the query has read all Kafka had: one
            # started again mid-backlog leaves them to the batches, as a job
            # left alone would (the same lists, from the same state)
            written = self.processor.write_owed_lists(busy, visitors=caught_up(query.lastProgress))
        except (state.StaleWriter, recovery.LeaseLost):
            return  # a batch committed meanwhile, or the lease went: it owes them again
        except redis.RedisError as exc:  # Redis away: the next batch or second tries again
            logger.debug("owed lists not written: %s", exc)
            return
        except Exception:
            # a fault of the lists' code: said once a minute, not every second
            if time.monotonic() - self.lists_failed_at > 60:
                self.lists_failed_at = time.monotonic()
                logger.exception("owed lists not written")
            return
        if written:
            logger.info("wrote %d owed product lists between batches", written)

    def keep_beating(self) -> None:
        """Write the heartbeat every second once a query has started, while
        this copy holds the lease, on a thread of its own: whatever the loop
        that supervises the query waits on (a rewind, a backoff, a slow Kafka
        or Redis), a live job beats, so a heartbeat that stops says the
        process died or hangs (``reco_status``)."""
        while not self.stopping.wait(1.0):
            query = self.query
            if query is None or self.lease.since is None:
                continue
            try:
                self.beat(query)
            except Exception:  # the JVM gone while stopping: the next beat tells
                logger.debug("no heartbeat this second", exc_info=True)

    def keep_lease(self) -> None:
        """Renew the lease every second while this job holds it, on a thread of
        its own (nothing the query or Kafka does can delay it past its TTL);
        ``lease_lost`` says when another copy has it."""
        while not self.stopping.wait(1.0):
            if self.lease.since is None:
                continue  # not holding it: hold_lease takes it
            try:
                # (taken again if it expired while Redis was away and nobody took it)
                if not self.lease.acquire():
                    self.lease_lost.set()
            except redis.RedisError:
                pass  # an outage: the batches wait it out, and the commit checks

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
        java_options=STREAMING_JAVA_OPTIONS,
        **args.spark,
    )
    supervisor = Supervisor(spark, args)

    def stop(signum, frame):  # noqa: ARG001
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("writing to %s with %s", args.redis, args.settings.to_json())
    if not os.environ.get(keys.FORGET_SECRET_ENV):
        logger.warning(
            "%s is not set: forgotten visitors are looked up by digests under no secret, "
            "which match the shop's only if it runs without one too (reco_stream sets it; "
            "docs/production.md)",
            keys.FORGET_SECRET_ENV,
        )
    try:
        return supervisor.run()
    finally:
        try:
            if supervisor.lease.since is not None:
                supervisor.redis.delete(keys.pipeline_heartbeat())
            supervisor.lease.leave_standby()
            supervisor.lease.release()
        except redis.RedisError:
            pass
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
