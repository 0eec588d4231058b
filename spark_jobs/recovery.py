"""Where Redis stands against Kafka, and what the job does about it.

Kafka is the record; Redis is a fold of it. Every commit stores, with the state
it changes, the next offset of each partition it has applied (``Position``), so
Redis always says exactly which events it contains. The job trusts that, not its
checkpoint:

* A record below Redis's offset (the next one to apply) is in the state
  already: it is left out (a lost, older or second checkpoint reads it again;
  nothing is applied twice).
* A batch that starts past Redis's offset means Redis lost state (an older
  snapshot, a failover to a lagging replica, a flush): :class:`Rewind` stops the
  query, and it starts again with a fresh checkpoint from Redis's offsets, so
  Kafka applies what Redis lacks, exactly once.
* Records Kafka deleted (retention) before the job read them are counted as
  ``expired`` (the earliest retained offset past Redis's offset).
* Offsets compare within one life of a topic: Redis keeps the topic's id (Kafka's
  topic UUID) beside them, and a topic deleted and created again starts afresh.

One job writes: :class:`Lease` is an owner token in Redis, renewed by the
job's heartbeat and checked under ``WATCH`` in each commit; a second copy waits
until it expires.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from reco_plugin import keys

logger = logging.getLogger("spark_jobs.recovery")

TopicPartition = tuple[str, int]


def field(tp: TopicPartition) -> str:
    return f"{tp[0]}:{tp[1]}"


def parse_field(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition(":")
    return topic, int(partition)


# -- what Redis holds ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """The next offset Redis holds of each partition, and the id of the topic's
    life those offsets belong to (absent for a state written before ids were kept)."""

    offsets: Mapping[TopicPartition, int]
    topic_ids: Mapping[str, str]

    def without(self, topics: Iterable[str]) -> Position:
        """This position with no offsets of ``topics`` (a new life of them)."""
        gone = set(topics)
        return Position(
            {tp: o for tp, o in self.offsets.items() if tp[0] not in gone},
            {t: i for t, i in self.topic_ids.items() if t not in gone},
        )


def position(r: redis.Redis) -> Position:
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.pipeline_offsets())
    pipe.hgetall(keys.pipeline_topic_ids())
    offsets, topic_ids = pipe.execute()
    return Position({parse_field(k): int(v) for k, v in offsets.items()}, topic_ids)


# -- what Kafka holds --------------------------------------------------------------


class KafkaLog:
    """The driver's view of the event topics in Kafka: their partitions, ids and
    earliest retained offsets. Asked only when a batch does not follow on from
    Redis (and once when the job starts), never on the hot path."""

    def __init__(self, bootstrap: str, topics: Iterable[str], timeout: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.topics = sorted(set(topics))
        self.timeout = timeout

    def _config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "log_level": 0}

    def topic_ids(self) -> dict[str, str]:
        """Topic -> its id (Kafka's topic UUID), for the topics that exist."""
        from confluent_kafka import KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config())
        futures = admin.describe_topics(TopicCollection(self.topics), request_timeout=self.timeout)
        found = {}
        for topic, future in futures.items():
            try:
                found[topic] = str(future.result(self.timeout).topic_id)
            except KafkaException as exc:
                logger.warning("topic %s is not described: %s", topic, exc)
        return found

    def partitions(self) -> dict[str, list[int]]:
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(self._config()).list_topics(timeout=self.timeout)
        return {
            topic: sorted(metadata.topics[topic].partitions)
            for topic in self.topics
            if topic in metadata.topics and metadata.topics[topic].error is None
        }

    def first_record(self, tp: TopicPartition, start: int, end: int) -> int | None:
        """The offset of the first record Kafka holds in [start, end) of a
        partition; None if there is none (transaction markers only)."""
        from confluent_kafka import Consumer
        from confluent_kafka import TopicPartition as KafkaTopicPartition

        consumer = Consumer(
            {**self._config(), "group.id": "reco-recovery", "enable.auto.commit": False}
        )
        try:
            consumer.assign([KafkaTopicPartition(tp[0], tp[1], start)])
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    return message.offset() if message.offset() < end else None
            return None
        finally:
            consumer.close()

    def earliest(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The earliest offset Kafka still holds of each partition."""
        from confluent_kafka import Consumer
        from confluent_kafka import TopicPartition as KafkaTopicPartition

        consumer = Consumer({**self._config(), "group.id": "reco-recovery"})
        try:
            return {
                tp: consumer.get_watermark_offsets(
                    KafkaTopicPartition(*tp), timeout=self.timeout, cached=False
                )[0]
                for tp in tps
            }
        finally:
            consumer.close()


# -- judging a batch against Redis ----------------------------------------------------


class Rewind(Exception):
    """Redis lacks events the query has passed: start it again from ``offsets``."""

    def __init__(self, offsets: Mapping[TopicPartition, int], reapplied: int, reason: str):
        super().__init__(reason)
        self.offsets = dict(offsets)
        self.reapplied = reapplied
        self.reason = reason


class LeaseLost(Exception):
    """Another copy of the job holds the lease: this one stops writing."""


class Moved(Exception):
    """Redis's offsets changed while the batch was scored (a restore, a failover):
    the batch is judged again against them."""


@dataclasses.dataclass
class Verdict:
    """What a scored batch means for Redis: records Kafka deleted before they
    were read, per partition (committed as ``expired``)."""

    expired: dict[TopicPartition, int]


def judge(
    first_offsets: Mapping[TopicPartition, int],
    held: Position,
    log: KafkaLog,
    *,
    planned: Mapping[TopicPartition, int] | None = None,
    absent: Mapping[TopicPartition, int] | None = None,
    from_earliest: bool = True,
) -> Verdict:
    """Compare a batch's first offset of each partition with Redis's.

    Raises :class:`Rewind` when Redis lacks records Kafka still holds before the
    batch. ``planned``: where the query stood before this batch (its last
    progress), to count what a rewind applies again. ``absent``: offsets the
    query was just rewound to which Kafka does not hold (transaction markers,
    compaction); a batch that starts past them is not a gap. ``from_earliest``:
    a partition Redis holds nothing of is read from Kafka's earliest offset
    (else from wherever the query started: ``--starting-offsets latest``).
    """
    # (nothing can be missing before a partition's offset 0)
    ahead = {tp: first for tp, first in first_offsets.items() if first > held.offsets.get(tp, 0)}
    if not ahead:
        return Verdict({})
    earliest = log.earliest(sorted(ahead))
    expired: dict[TopicPartition, int] = {}
    rewind: dict[TopicPartition, int] = {}
    for tp, first in sorted(ahead.items()):
        low = earliest[tp]
        start = held.offsets.get(tp)
        if start is None:
            # Redis has nothing of this partition: it starts at what Kafka holds.
            if first > low and from_earliest:
                rewind[tp] = low
            continue
        if low > start:
            expired[tp] = min(low, first) - start
        resume = max(start, low)
        if first > resume and (absent or {}).get(tp) != resume:
            rewind[tp] = resume
    if not rewind:
        return Verdict(expired)
    # Everything starts again from where Redis stands (or, where Redis holds
    # nothing of a partition, from Kafka's earliest).
    offsets = {**held.offsets, **rewind}
    stood = {**(planned or {}), **first_offsets}
    reapplied = sum(max(0, stood.get(tp, offset) - offset) for tp, offset in offsets.items())
    raise Rewind(
        offsets,
        reapplied,
        "Redis holds less than the query has read (" + _where(first_offsets, held, rewind) + ")",
    )


def _where(
    read: Mapping[TopicPartition, int], held: Position, partitions: Iterable[TopicPartition]
) -> str:
    """Where the query and Redis stand on (the first few of) these partitions."""
    listed = sorted(partitions)
    text = ", ".join(
        f"{field(tp)} at {read[tp]}, Redis at {held.offsets.get(tp, 'nothing')}"
        for tp in listed[:4]
    )
    return text + (f" and {len(listed) - 4} more partitions" if len(listed) > 4 else "")


def behind(
    held: Position, planned: Mapping[TopicPartition, int], log: KafkaLog
) -> tuple[Rewind | None, dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Whether Redis holds less than the query's last batch ended at (every
    batch that ended committed its offsets), without waiting for a batch to
    show it: a shop with no traffic gets its state back too.

    Returns the rewind (None if nothing Kafka holds is missing), and the
    partitions whose offsets Redis may move forward as nothing is there to read
    (partition -> the query's offset), with what expired there before it was read.
    """
    lost = {tp: end for tp, end in planned.items() if end > held.offsets.get(tp, 0)}
    if not lost:
        return None, {}, {}
    earliest = log.earliest(sorted(lost))
    forward: dict[TopicPartition, int] = {}
    expired: dict[TopicPartition, int] = {}
    missing: dict[TopicPartition, int] = {}
    for tp, end in sorted(lost.items()):
        start = held.offsets.get(tp)
        low = earliest[tp]
        resume = max(start or 0, low)
        if low >= end or log.first_record(tp, resume, end) is None:
            # retention deleted them, or only transaction markers are there
            forward[tp] = end
            if start is not None and low > start:
                expired[tp] = min(low, end) - start
        else:
            missing[tp] = resume
    if not missing:
        return None, forward, expired
    rewind = Rewind(
        {**held.offsets, **forward, **missing},
        sum(lost[tp] - offset for tp, offset in missing.items()),
        "Redis holds less than the query's last batch ended at ("
        + _where(lost, held, missing)
        + ")",
    )
    return rewind, forward, expired


def starting_offsets(
    held: Position,
    partitions: Mapping[str, Iterable[int]],
    topic_ids: Mapping[str, str],
    from_earliest: bool = True,
) -> str:
    """Spark's ``startingOffsets`` JSON for every partition of the topics:
    Redis's offset, or where Redis holds none of this life of the topic, the
    earliest (-2; ``from_earliest``) or the latest (-1)."""
    unknown = -2 if from_earliest else -1
    result: dict[str, dict[str, int]] = {}
    for topic, parts in sorted(partitions.items()):
        known = topic_ids.get(topic)  # (None: Kafka did not say; Redis is trusted)
        same_life = known is None or held.topic_ids.get(topic) in (None, known)
        result[topic] = {
            str(p): held.offsets.get((topic, p), unknown) if same_life else unknown for p in parts
        }
    return json.dumps(result)


# -- the record of recoveries ----------------------------------------------------------


def record_rewind(r: redis.Redis, reason: str, reapplied: int, offsets: Mapping) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.hincrby(keys.pipeline_recovery(), "rewinds", 1)
    pipe.hincrby(keys.pipeline_recovery(), "records_reapplied", reapplied)
    pipe.hset(
        keys.pipeline_recovery(),
        "last_rewind",
        json.dumps(
            {
                "at": time.time(),
                "reason": reason,
                "records_reapplied": reapplied,
                "from": {field(tp): o for tp, o in sorted(offsets.items())},
            }
        ),
    )
    pipe.execute()


# -- one writer --------------------------------------------------------------------------


class Lease:
    """The right to write the pipeline's state: ``keys.pipeline_lease`` holds the
    owner's token for ``ttl`` seconds, renewed by its heartbeat. A second copy of
    the job waits (:meth:`acquire` returns False) and says who holds it."""

    def __init__(self, r: redis.Redis, ttl: float = 15.0) -> None:
        self.r = r
        self.ttl_ms = int(ttl * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.since: float | None = None

    # SET NX and a new epoch in one step; renewing and giving up only by the owner
    _ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
"""
    _RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""
    _RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (or keep it); True if this job holds it."""
        taken = self.r.eval(
            self._ACQUIRE,
            2,
            keys.pipeline_lease(),
            keys.pipeline_lease_epoch(),
            self.token,
            self.ttl_ms,
        )
        if int(taken):
            self.since = time.time()
            self.r.set(
                keys.pipeline_lease_info(),
                json.dumps({"owner": self.token, "since": self.since}),
                px=self.ttl_ms * 4,
            )
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease if this job holds it; False if it does not. (Not a
        change a commit's WATCH sees: the epoch stays.)"""
        held = int(
            self.r.eval(
                self._RENEW,
                2,
                keys.pipeline_lease(),
                keys.pipeline_lease_info(),
                self.token,
                self.ttl_ms,
                self.ttl_ms * 4,
            )
        )
        if not held:
            self.since = None
        return bool(held)

    def holder(self) -> dict[str, Any]:
        """Who holds the lease now (owner, since), as far as Redis says."""
        owner, info = self.r.mget(keys.pipeline_lease(), keys.pipeline_lease_info())
        details = json.loads(info) if info else {}
        return {
            "owner": owner,
            "since": details.get("since") if details.get("owner") == owner else None,
        }

    def standby(self, info: Mapping[str, Any]) -> None:
        """Say in Redis that this copy waits for the lease (``reco_status`` shows it)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.pipeline_standby(), self.token, json.dumps({**info, "at": time.time()}))
        pipe.expire(keys.pipeline_standby(), 60)
        pipe.execute()

    def leave_standby(self) -> None:
        self.r.hdel(keys.pipeline_standby(), self.token)

    def release(self) -> None:
        """Give the lease up (a clean stop): a waiting copy takes over at once."""
        self.r.eval(self._RELEASE, 2, keys.pipeline_lease(), keys.pipeline_lease_info(), self.token)
