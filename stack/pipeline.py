"""Driving the streaming job alone against a stack's Kafka and Redis: for the
pipeline tests and the throughput benchmark.

A :class:`JobRun` is one job process writing to its own Redis database with its
own checkpoint, started, killed and started again by the process group it was
given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from reco_plugin import keys, redis_url, schema, strategies
from reco_plugin.pipeline import RETRY_CODES, high_watermark

from .services import PYTHON, REPO, Stack, stop_process

DAY_MS = 24 * 3600 * 1000
# librdkafka's codes: a partition a broker does not know (yet), a request timed out
UNKNOWN_TOPIC_OR_PART, TIMED_OUT = 3, -185


def produce(
    bootstrap: str, events: Iterable[Mapping[str, Any] | tuple[str, int | None, bytes, bytes]]
) -> int:
    """Send events (dicts, or raw ``(topic, partition, key, value)`` records) to
    Kafka and wait for delivery. Returns how many were delivered."""
    from confluent_kafka import Producer

    delivered = 0
    failed: list[str] = []

    def on_delivery(err, msg):
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failed.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "queue.buffering.max.messages": 500_000,
        }
    )
    for item in events:
        if isinstance(item, Mapping):
            topic = schema.topic_for(item["type"])
            record = (topic, None, item["visitor_id"].encode(), schema.encode(item))
        else:
            record = item
        topic, partition, key, value = record
        while True:
            try:
                if partition is None:
                    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                else:
                    producer.produce(
                        topic, key=key, value=value, partition=partition, on_delivery=on_delivery
                    )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(120)
    if failed:
        raise RuntimeError(f"{len(failed)} events not delivered: {failed[:3]}")
    return delivered


def create_topic(bootstrap: str, topic: str, partitions: int = 12) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(30)


def end_offsets(
    bootstrap: str, topics: Iterable[str] | None = None, timeout: float = 30.0
) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reco-tests-offsets"})
    try:
        metadata = consumer.list_topics(timeout=10)
        deadline = time.monotonic() + timeout
        result = {}
        for topic in topics or schema.DEFAULT_TOPICS.values():
            for partition in metadata.topics[topic].partitions:
                # asked again while a partition's leadership moves (a broker
                # just killed or back), as the plugin's own reader does, and
                # while a broker back answers it does not know the partition
                # yet, or does not answer in time
                tp = TopicPartition(topic, partition)
                result[f"{topic}:{partition}"] = high_watermark(
                    consumer, tp, deadline, RETRY_CODES | {UNKNOWN_TOPIC_OR_PART, TIMED_OUT}
                )
        return result
    finally:
        consumer.close()


def read_all(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> list[tuple]:
    """Every record now on ``topics`` as (topic, key, decoded JSON value), read
    from the beginning up to the current end offsets."""
    from confluent_kafka import Consumer, TopicPartition

    ends = {k: v for k, v in end_offsets(bootstrap, topics).items() if v > 0}
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reco-tests-read", "enable.auto.commit": False}
    )
    records: list[tuple] = []
    try:
        consumer.assign(
            [TopicPartition(tp.rpartition(":")[0], int(tp.rpartition(":")[2]), 0) for tp in ends]
        )
        remaining = dict(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            tp = f"{message.topic()}:{message.partition()}"
            records.append((message.topic(), message.key().decode(), json.loads(message.value())))
            if message.offset() + 1 >= remaining.get(tp, 0):
                remaining.pop(tp, None)
        if remaining:
            raise TimeoutError(f"could not read {sorted(remaining)} to the end in {timeout} s")
        return records
    finally:
        consumer.close()


def bookkeeping() -> tuple[str, ...]:
    """The job's keys about its own runs, not about the events: the batch's
    wall clock, timings and their history, heartbeat, lease, the numbers of
    batches and commits, the record of recoveries, and which product lists
    are owed (by the commits that changed them)."""
    return (
        *(keys.pipeline_owed(kind) for kind in strategies.STREAMED_PRODUCT_LISTS),
        keys.pipeline_last_batch(),
        keys.pipeline_heartbeat(),
        keys.pipeline_batch_time(),
        keys.pipeline_history(),
        keys.pipeline_lease(),
        keys.pipeline_lease_info(),
        keys.pipeline_lease_epoch(),
        keys.pipeline_standby(),
        keys.pipeline_committed_batch(),
        keys.pipeline_commit_seq(),
        keys.pipeline_recovery(),
    )


def totals(counters: Mapping[str, int]) -> dict[str, int]:
    """``topic:status`` counters summed by status over the topics."""
    result: dict[str, int] = {}
    for field, n in counters.items():
        status = field.rpartition(":")[2]
        result[status] = result.get(status, 0) + n
    return result


def redis_state(client: redis.Redis, match: str | None = None) -> dict[str, Any]:
    """Every list, count and counter in a Redis database (of the keys that
    ``match`` a pattern); the de-duplication ids and the job's
    :func:`bookkeeping` are left out."""
    result: dict[str, Any] = {}
    skipped = set(bookkeeping())
    for key in sorted(client.scan_iter(match=match, count=1000)):
        if ":pipeline:seen:" in key or key in skipped:
            continue
        kind = client.type(key)
        if kind == "string":
            value = client.get(key)
            if key == keys.pipeline_pending():
                value = {k: v for k, v in json.loads(value).items() if k != "query"}
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        else:
            value = sorted(client.smembers(key))
        result[key] = value
    return result


class JobRun:
    """One streaming job on ``stack``'s Kafka, writing to Redis database ``db``."""

    def __init__(
        self,
        stack: Stack,
        name: str,
        db: int,
        config: Mapping[str, Any] | None = None,
        topics: Iterable[str] | None = None,
        redis_port: int | None = None,
        spark_args: Iterable[str] = (),
    ):
        self.stack = stack
        # e.g. --master spark://... --spark-conf KEY=VALUE (default: local mode)
        self.spark_args = list(spark_args)
        self.topics = list(topics or schema.DEFAULT_TOPICS.values())
        self.name = name
        self.redis_url = (
            redis_url.with_db(stack.redis_url, db)
            if redis_port is None
            else f"redis://127.0.0.1:{redis_port}/{db}"
        )
        self.checkpoint = stack.state_dir / "jobs" / name / "checkpoint"
        self.log = stack.logs / f"job-{name}.log"
        self.config = dict(config or {})
        self.process: subprocess.Popen | None = None
        self.redis = redis_url.connect(self.redis_url, decode_responses=True, socket_timeout=5)

    def start(self, wait: bool = True) -> None:
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            PYTHON,
            "-m",
            "spark_jobs.recommend",
            "--bootstrap",
            self.stack.bootstrap,
            "--redis",
            self.redis_url,
            "--checkpoint",
            str(self.checkpoint),
            "--config",
            json.dumps(self.config),
            "--topics",
            ",".join(self.topics),
            *self.spark_args,
        ]
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.stack.env(), "PYTHONPATH": str(REPO)},
                cwd=REPO,
                start_new_session=True,
            )
        if wait:
            self.wait_until(lambda: self.redis.exists(keys.pipeline_heartbeat()), 120, "start")

    def kill(self) -> None:
        """SIGKILL the job and its JVM: no chance to finish anything."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.redis.delete(keys.pipeline_heartbeat())

    def stop(self) -> None:
        """SIGTERM: the job finishes its batch and stops."""
        if self.process and self.process.poll() is None:
            stop_process(self.process, 60)

    def commits(self) -> int:
        """How many batches have committed (a rewind's new query counts on)."""
        return int(self.redis.get(keys.pipeline_commit_seq()) or 0)

    def processed(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(keys.pipeline_offsets()).items()}

    def recovery(self) -> dict[str, str]:
        return self.redis.hgetall(keys.pipeline_recovery())

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log).read_text(errors="replace")
        return ""

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(keys.pipeline_counters()).items()}

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(
                    f"job {self.name} exited while waiting for {what}: {self.tail()}"
                )
            with contextlib.suppress(redis.RedisError):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {self.name}: no {what} after {timeout:.0f} s: {self.tail()}"
                )
            time.sleep(0.1)

    def wait_processed(self, targets: Mapping[str, int], timeout: float = 300) -> None:
        """Until the job has applied every record up to ``targets`` and
        written the lists they change (once the traffic has stopped: under
        steady traffic some product lists are always owed)."""

        def done():
            processed = self.processed()
            return all(
                processed.get(tp, 0) >= end for tp, end in targets.items()
            ) and not strategies.lists_owed(self.redis)

        self.wait_until(done, timeout, "catch-up")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        return ""


def skewed_history(now_ms: int, seed: int = 11):
    """A month of traffic, each partition of page_views holding a different stretch
    of it (partition p: days p*2 .. p*2+8 ago), the way a backlog after downtime or
    a replay of old history arrives. Plus re-sent copies, malformed records and
    one event stamped years ahead.

    Returns (records, expected counters).
    """
    rng = random.Random(seed)
    records = []
    sent_events = []
    for partition in range(12):
        start = now_ms - (partition * 2 + 8) * DAY_MS - 2 * 3600 * 1000  # ends 2 h ago or more
        for n in range(1200):
            visitor = f"s:v{partition}-{rng.randint(0, 80)}"
            product = str(rng.choice([rng.randint(1, 40), rng.randint(1, 400)]))
            ts = start + n * 8 * DAY_MS // 1200 + rng.randint(0, 5000)
            event = schema.make_event(schema.PAGE_VIEW, visitor, product, ts=ts)
            if rng.random() < 0.1:
                event = schema.make_event(schema.ADD_TO_CART, visitor, product, ts=ts, quantity=1)
            sent_events.append((partition, event))
    # Producer retries and double beacons: copies of 300 events, sent after all
    # the originals (so in later batches).
    copies = rng.sample(sent_events, 300)
    records.extend(
        (
            schema.topic_for(event["type"]),
            partition,
            event["visitor_id"].encode(),
            schema.encode(event),
        )
        for partition, event in sent_events + copies
    )
    malformed = [b"{not json", b'{"schema": 1, "type": "page_view"}', b"[]"]
    for value in malformed:
        records.append(("page_views", 3, b"s:x", value))
    future = schema.make_event(schema.PAGE_VIEW, "s:clock", "7", ts=now_ms + 3 * 365 * DAY_MS)
    records.append(("page_views", 5, b"s:clock", schema.encode(future)))
    # A burst of current traffic after the far-future event: it must still be learnt.
    for n in range(200):
        event = schema.make_event(
            schema.PAGE_VIEW, f"s:now-{n % 20}", str(500 + n % 7), ts=now_ms - 60_000 + n
        )
        records.append(("page_views", 5, event["visitor_id"].encode(), schema.encode(event)))
    applied = len(sent_events) + 200
    expected = {
        "applied": applied,
        "duplicate": len(copies),
        "malformed": 3,
        "future": 1,
        "too_old": 0,
    }
    return records, expected


# -- comparing the state of two runs of the same events ------------------------------


# Keys whose value depends on where the batches began, by design (named, and
# bounded by ``compare_folds``): the lists are derived from the state as it
# stood when each was last written; the bandit judges each batch's next items
# against the lists as they stood, and fades its evidence per batch.
BANDIT_KEYS = ("bandit", "bandit:stats", "bandit:policy", "bandit:policy-version")
# The ranker learns from the same trials, with their candidates as the lists
# stood: its weights depend on the cut too (a batch run again from the same
# cut leaves them bit-identical: ``test_pipeline``'s whole-state equality).
RANKER_KEYS = ("ranker:model", "ranker:weights", "ranker:version", "ranker:metrics")
# Floats summed in another order, or decayed in other steps, agree to this much.
RELATIVE_TOLERANCE = 1e-6


@dataclasses.dataclass
class FoldDiff:
    """How the state of a run differs from an uninterrupted run of the same events."""

    # state keys (everything but the lists, the bandit and bookkeeping) that differ
    state: list[str]
    # the lists: how many were compared, the mean and the least share of their
    # products both runs list (Jaccard)
    lists: int
    list_overlap_mean: float
    list_overlap_min: float
    # the bandit: the largest difference of a strategy's next-item hit rate
    hit_rate_difference: float
    # co-visitation and basket weights: how many products have them, which
    # differ (a visitor's repeated views of one product pair once per batch),
    # and by how much at most (relative; a pair only one run has counts 1)
    pair_keys: int = 0
    pairs_differ: list[str] = dataclasses.field(default_factory=list)
    pair_weight_difference: float = 0.0
    # the lists that overlap least, with their overlap, and a few that overlap
    # less than half (key, the products of each)
    least_overlapping: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    unlike: list[tuple[str, list[str], list[str]]] = dataclasses.field(default_factory=list)
    # how many lists overlap less than half
    lists_unlike: int = 0
    # the sequence weights (``followed-by``, ``then``, ``session-with``):
    # how many products' there are, and which differ (a pair only one run
    # has, or a weight apart)
    next_keys: int = 0
    next_differ: list[str] = dataclasses.field(default_factory=list)
    # the ranker: the examples each run learnt from, and the largest
    # difference of a weight
    ranker_examples: tuple[int, int] = (0, 0)
    ranker_weight_difference: float = 0.0

    def describe(self) -> str:
        return (
            f"{len(self.state)} state keys differ (e.g. {self.state[:5]}); "
            f"{len(self.pairs_differ)} of {self.pair_keys} products' pair weights differ "
            f"(e.g. {self.pairs_differ[:3]}), by {self.pair_weight_difference:.4f} at most; "
            f"{self.lists} lists "
            f"overlap {self.list_overlap_mean:.3f} on average, {self.list_overlap_min:.3f} at "
            f"least (e.g. {self.least_overlapping[:3]}), {self.lists_unlike} less than half "
            f"(e.g. {self.unlike}); hit rates "
            f"differ by {self.hit_rate_difference:.4f} at most; {len(self.next_differ)} of "
            f"{self.next_keys} products' next, after and session weights differ "
            f"(e.g. {self.next_differ[:3]}); "
            "the ranker learnt from "
            f"{self.ranker_examples[0]} and {self.ranker_examples[1]} examples, its weights "
            f"differ by {self.ranker_weight_difference:.4f} at most"
        )


# The pair weights that depend on the order events reached the job: where
# visitors went next (an event that reaches the job after events stamped
# later than it follows them in one cut and not in another), and what they
# viewed within minutes (a visitor's memory keeps each product's latest time,
# so whether a view pairs with an item depends on which of that item's events
# the job had applied: in a window of minutes, that makes a pair or none).
CUT_DEPENDENT = frozenset({":followed-by", ":then", ":session-with"})


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b), 1e-12)


def _same_scores(a: list, b: list, scale_a: float = 1.0, scale_b: float = 1.0) -> bool:
    return _score_difference(a, b, scale_a, scale_b) <= RELATIVE_TOLERANCE


def _score_difference(a: list, b: list, scale_a: float = 1.0, scale_b: float = 1.0) -> float:
    """The largest relative difference of two sorted sets' scores (1: a member only one has)."""
    mine, theirs = dict(a), dict(b)
    worst = 0.0
    for member in mine.keys() | theirs.keys():
        if member not in mine or member not in theirs:
            return 1.0
        x, y = mine[member] * scale_a, theirs[member] * scale_b
        worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return worst


def _hit_rates(stats: Mapping[str, str]) -> dict[str, float]:
    rates = {}
    for field, trials in stats.items():
        if field.endswith(":trials") and int(trials):
            name = field.rpartition(":")[0]
            rates[name] = int(stats.get(f"{name}:successes", 0)) / int(trials)
    return rates


def compare_folds(
    mine: redis.Redis, theirs: redis.Redis, settings: Any = None, skip: Iterable[str] = ()
) -> FoldDiff:
    """Compare two Redis databases the job folded the same events into.

    The state must agree: counters, offsets, the clock, visitors' memories,
    seen and bought items, clicks, experiment counts exactly; popularity,
    purchases and trending buckets to ``RELATIVE_TOLERANCE``; co-visitation and
    basket weights to it once each is decayed to the clock (each product's is
    kept at the clock of its last batch). The weights of next, after and
    session depend on the cut (``CUT_DEPENDENT``): the products whose weights
    differ are returned for the caller to bound. ``skip``: prefixes of keys other
    processes write (the shop's catalog sync, its counters). Trending buckets before the window
    are left out (a batch writes them or not by its landmark; nothing reads
    them and they expire). The lists and the bandit depend on the cut: the
    overlap of the lists and the largest difference of hit rates are returned
    for the caller to bound.
    """
    from reco_plugin.scoring import PipelineSettings
    from spark_jobs.learn import decay, trending_buckets_in_window, trending_windows

    settings = settings or PipelineSettings()
    # the pipeline's keys only (a Celery broker may share the database)
    a, b = (redis_state(r, f"{keys.PREFIX}:*") for r in (mine, theirs))
    clock = int(a.get(keys.pipeline_clock()) or 0)
    live_buckets = {
        name: set(trending_buckets_in_window(clock, settings, name))
        for name, _, _ in trending_windows(settings)
    }
    # a product's pair weights (by the key's ending) -> the clock they fade
    # from, and their half-life
    pair_clocks = {
        ":covisits": (keys.product_clock(), settings.half_life),
        ":bought-with": (keys.fbt_clock(), settings.half_life),
        ":followed-by": (keys.next_clock(), settings.next_half_life),
        ":then": (keys.after_clock(), settings.next_half_life),
        ":session-with": (keys.session_clock(), settings.next_half_life),
    }
    clock_keys = {clock_key for clock_key, _ in pair_clocks.values()}
    clocks = {
        side: {key: {p: int(t) for p, t in (state.get(key) or {}).items()} for key in clock_keys}
        for side, state in (("a", a), ("b", b))
    }
    bandit = {f"{keys.PREFIX}:{name}" for name in (*BANDIT_KEYS, *RANKER_KEYS)}

    differ: list[str] = []
    overlaps: list[float] = []
    named: list[tuple[str, float]] = []
    examples: list[tuple[str, list[str], list[str]]] = []
    pair_keys = 0
    next_keys = 0
    next_differ: list[str] = []
    pairs_differ: list[str] = []
    pair_difference = 0.0
    skipped = tuple(skip)
    for key in sorted(set(a) | set(b)):
        if key in bandit or key in clock_keys:
            continue
        if skipped and key.startswith(skipped):
            continue
        trending = re.match(
            rf"{re.escape(keys.PREFIX)}:trending:(\w+):(?:cat:.*:)?bucket:(\d+)$", key
        )
        if trending and int(trending.group(2)) not in live_buckets.get(trending.group(1), ()):
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x or y, str) and (x or y).startswith(("[{", "[]")):
            listed = [{i["product_id"] for i in json.loads(v or "[]")} for v in (x, y)]
            union = listed[0] | listed[1]
            overlaps.append(len(listed[0] & listed[1]) / len(union) if union else 1.0)
            named.append((key, round(overlaps[-1], 3)))
            if overlaps[-1] < 0.5 and len(examples) < 3:
                examples.append((key, sorted(listed[0])[:8], sorted(listed[1])[:8]))
            continue
        ending = ":" + key.rpartition(":")[2]
        if ending in pair_clocks and (x is not None and y is not None or ending in CUT_DEPENDENT):
            clock_key, half_life = pair_clocks[ending]
            product = key.split(":")[-2]
            scale = [
                decay(clock, clocks[side][clock_key].get(product, clock), half_life)
                for side in ("a", "b")
            ]
            if ending in CUT_DEPENDENT:
                next_keys += 1
                if x is None or y is None or _score_difference(x, y, *scale) > RELATIVE_TOLERANCE:
                    next_differ.append(key)
                continue
            pair_keys += 1
            difference = _score_difference(x, y, *scale)
            if difference > RELATIVE_TOLERANCE:
                pairs_differ.append(key)
                pair_difference = max(pair_difference, difference)
        elif x is None or y is None:
            differ.append(key)
        elif isinstance(x, list) and x and isinstance(x[0], tuple):
            if not _same_scores(x, y):
                differ.append(key)
        elif x != y:
            differ.append(key)
    stats = [_hit_rates(state.get(keys.bandit_stats()) or {}) for state in (a, b)]
    models = [json.loads(state.get(keys.ranker_weights()) or "{}") for state in (a, b)]
    return FoldDiff(
        state=differ,
        lists=len(overlaps),
        list_overlap_mean=sum(overlaps) / len(overlaps) if overlaps else 1.0,
        list_overlap_min=min(overlaps, default=1.0),
        hit_rate_difference=max(
            (abs(stats[0].get(n, 0.0) - stats[1].get(n, 0.0)) for n in {*stats[0], *stats[1]}),
            default=0.0,
        ),
        pair_keys=pair_keys,
        pairs_differ=pairs_differ,
        pair_weight_difference=pair_difference,
        least_overlapping=sorted(named, key=lambda kv: kv[1])[:10],
        unlike=examples,
        lists_unlike=sum(1 for overlap in overlaps if overlap < 0.5),
        next_keys=next_keys,
        next_differ=next_differ,
        ranker_examples=(models[0].get("examples", 0), models[1].get("examples", 0)),
        ranker_weight_difference=max(
            (
                abs(x - y)
                for x, y in zip(
                    models[0].get("weights", ()), models[1].get("weights", ()), strict=False
                )
            ),
            default=0.0,
        ),
    )
