"""Watching the pipeline from the Django side: how far has it processed Kafka?

Used by warm-up and replay to wait until the events they sent are reflected in
Redis, and by the system status shown to operators.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import keys, schema, strategies
from .compat import confluent_kafka
from .conf import reco_settings
from .redis_client import get_work_redis as get_redis

Offsets = dict[str, int]  # "topic:partition" -> next offset

# Kafka's answers that mean "ask again in a moment" (a partition's leadership
# moving): OFFSET_NOT_AVAILABLE, LEADER_NOT_AVAILABLE, NOT_LEADER_FOR_PARTITION
RETRY_CODES = frozenset({78, 5, 6})


def end_offsets(timeout: float = 10.0) -> Offsets:
    """The current end offset of every partition of the plugin's topics."""
    if confluent_kafka is None:
        raise ImportError("pip install 'django-reco-plugin[kafka]'")
    config = {
        # a broker that cannot be reached is the caller's to report, once:
        # librdkafka would log each failed connection to stderr (a shop's own
        # log_level in KAFKA wins)
        "log_level": 0,
        **reco_settings.KAFKA,
        "group.id": "reco-plugin-offsets",
        "enable.auto.commit": False,
    }
    consumer = confluent_kafka.Consumer(config)
    deadline = time.monotonic() + timeout
    try:
        metadata = consumer.list_topics(timeout=timeout)
        result: Offsets = {}
        for topic in sorted(set(reco_settings.TOPICS.values())):
            if topic not in metadata.topics:
                continue
            for partition in metadata.topics[topic].partitions:
                tp = confluent_kafka.TopicPartition(topic, partition)
                result[f"{topic}:{partition}"] = high_watermark(consumer, tp, deadline)
        return result
    finally:
        consumer.close()


def high_watermark(
    consumer: Any, tp: Any, deadline: float, retry_codes: frozenset[int] = RETRY_CODES
) -> int:
    """A partition's end offset. Asked again (until ``deadline``) while Kafka
    says to retry (or answers one of ``retry_codes``): right after a broker's
    death its partitions' new leaders answer "high watermark not caught up"
    or "not leader" for a moment."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                tp, timeout=max(0.1, deadline - time.monotonic())
            )[1]
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = (
                getattr(error, "retriable", lambda: False)()
                or getattr(error, "code", lambda: None)() in retry_codes
            )
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def processed_offsets() -> Offsets:
    raw = get_redis().hgetall(keys.pipeline_offsets())
    return {k: int(v) for k, v in raw.items()}


def remaining(targets: Offsets, processed: Offsets) -> int:
    return sum(max(0, end - processed.get(tp, 0)) for tp, end in targets.items())


def wait_until_processed(
    targets: Offsets,
    timeout: float = 300.0,
    progress: Callable[[int], None] | None = None,
    interval: float = 0.05,
) -> bool:
    """Block until the pipeline has processed every partition up to ``targets``
    and written the product lists they change (under steady traffic some are
    always owed: this is for a backlog, once it is all sent).

    ``progress`` is called with the number of events still to process.
    Returns False on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = remaining(targets, processed_offsets())
        if progress:
            progress(left)
        if left == 0:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return wait_until_lists_written(max(0.0, deadline - time.monotonic()), interval)


def wait_until_lists_written(timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Block until the job owes no list (a batch writes at most
    ``product_lists_per_batch`` product lists of a kind, and a batch catching
    up a backlog leaves its visitors' lists owed; an idle job writes the
    rest). Returns False on timeout."""
    deadline = time.monotonic() + timeout
    while strategies.lists_owed(get_redis()):
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class ForgetNotRecorded(OSError):
    """Kafka did not take the record of a forget (the forget in Redis stands)."""


def record_forget(digest: str, at_ms: int, timeout: float = 10.0) -> bool:
    """Write the record of a forget to Kafka (``FORGOTTEN_TOPIC``) and wait
    until Kafka has it, so that a Redis restored from an older snapshot
    forgets the visitor again. True when written; False when the shop's events
    do not go to Kafka (a test backend keeps it). Raises ForgetNotRecorded."""
    from .backends import get_backend

    backend = get_backend()
    topic = reco_settings.FORGOTTEN_TOPIC
    if not hasattr(backend, "producer"):  # not Kafka
        backend.send(topic, digest, {"digest": digest, "at": at_ms})
        return False
    outcome: list[Any] = []
    producer = confluent_kafka.Producer(
        {
            **reco_settings.KAFKA,
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout * 1000),
        }
    )
    producer.produce(
        topic,
        schema.forget_record(digest, at_ms),
        digest.encode(),
        on_delivery=lambda err, msg: outcome.append(err),
    )
    left = producer.flush(timeout + 1)
    if left or not outcome or outcome[0] is not None:
        raise ForgetNotRecorded(
            f"Kafka did not take the record of the forget in {topic}: "
            f"{outcome[0] if outcome else 'no answer'}"
        )
    return True
