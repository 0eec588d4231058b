"""Forgotten visitors, from the record Kafka keeps of them.

``reco_forget`` (and the admin, and the Celery task) deletes a visitor's keys,
leaves a tombstone in Redis and writes a record of the forget (the visitor's
digest and when) to a compacted topic. Redis holds the next offset of that
topic it has the tombstones of, like the offsets of the events: before every
batch the job reads the records Redis lacks. In normal running that is the
forgets made since the last batch, whose tombstones are there already. After
Redis came back from an older snapshot it is the forgets the snapshot
predates: their tombstones are written again and the visitors' keys the
snapshot brought back are deleted again, before any of their events can be
learnt again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from reco_plugin import keys, schema

from . import state

logger = logging.getLogger("spark_jobs.forgotten")

# forget records applied (and their offset kept) at a time
CHUNK = 1000


class ForgetLog:
    """The topic of forget records, read on the driver."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout = timeout
        self._consumer: Any = None
        self._missing_said = 0.0
        # the batches and the supervisor's idle check both catch up
        self._lock = threading.Lock()

    def _open(self) -> Any:
        from confluent_kafka import Consumer

        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": "reco-forgotten",
                    "enable.auto.commit": False,
                    "log_level": 0,
                }
            )
        return self._consumer

    def catch_up(self, r: redis.Redis, settings: Any, wait: bool = True) -> int:
        """Write the tombstones of the records Redis lacks; how many it lacked
        (their visitors' keys deleted again). ``wait=False``: return at once if
        a batch is catching up already."""
        if not self._lock.acquire(blocking=wait):
            return 0
        try:
            return self._catch_up(r, settings)
        finally:
            self._lock.release()

    def _catch_up(self, r: redis.Redis, settings: Any) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        consumer = self._open()
        partition = TopicPartition(self.topic, 0)
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=self.timeout)
        except KafkaException as exc:
            if time.monotonic() - self._missing_said > 600:
                self._missing_said = time.monotonic()
                logger.warning(
                    "the forget records' topic %s is not readable (%s): run "
                    "manage.py reco_topics; a Redis restored from an older snapshot would "
                    "not forget visitors again",
                    self.topic,
                    exc,
                )
            return 0
        held = int(r.get(keys.pipeline_forgotten_offset()) or 0)
        start = max(held, low)
        if start >= high:
            return 0
        lacked = 0
        consumer.assign([TopicPartition(self.topic, 0, start)])
        try:
            position = start
            while position < high:
                # what was read is applied, and its offset kept, as it goes
                records, position = self._read(consumer, position, high)
                lacked += self._apply(r, records, position, settings)
        finally:
            consumer.unassign()
        return lacked

    def _read(self, consumer: Any, position: int, high: int) -> tuple[dict[str, int], int]:
        """Up to ``CHUNK`` records from ``position``: digest -> when, and where it stopped."""
        records: dict[str, int] = {}
        deadline = time.monotonic() + self.timeout
        while position < high and len(records) < CHUNK:
            if time.monotonic() > deadline:
                raise redis.TimeoutError(  # retried like an outage
                    f"the forget records of {self.topic} were not read to {high}"
                )
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            position = message.offset() + 1
            found = schema.parse_forget_record(message.value())
            if found is not None:
                records[found[0]] = max(found[1], records.get(found[0], 0))
        return records, position

    def _apply(self, r: redis.Redis, records: dict[str, int], upto: int, settings: Any) -> int:
        digests = sorted(records)
        current = r.mget([keys.visitor_forgotten(d) for d in digests]) if digests else []
        lacked = {
            d for d, value in zip(digests, current, strict=True) if int(value or 0) < records[d]
        }
        now = schema.now_ms()
        pipe = r.pipeline(transaction=True)
        for d in sorted(lacked):
            # the tombstone lives as long as events before the forget can be applied
            ttl_ms = records[d] + (settings.horizon + settings.future_tolerance) * 1000 - now
            if ttl_ms > 0:
                pipe.set(keys.visitor_forgotten(d), records[d], px=ttl_ms)
        pipe.set(keys.pipeline_forgotten_offset(), upto)
        pipe.execute()
        if lacked:
            deleted = sweep(r, lacked)
            logger.warning(
                "%d forgotten visitors were missing from Redis (restored from an older "
                "snapshot?): forgotten again, %d of their keys deleted",
                len(lacked),
                deleted,
            )
        return len(lacked)


def sweep(r: redis.Redis, digests: set[str]) -> int:
    """Delete every visitor key whose visitor has one of these digests (a scan
    of the visitors' keys: only after Redis lost tombstones)."""
    deleted = 0
    batch: list[str] = []
    for key in r.scan_iter(match=f"{keys.PREFIX}:visitor:*", count=1000):
        visitor = keys.visitor_of(key)
        if visitor is not None and state.digest(visitor) in digests:
            batch.append(key)
        if len(batch) >= 500:
            deleted += r.delete(*batch)
            batch = []
    if batch:
        deleted += r.delete(*batch)
    return deleted
