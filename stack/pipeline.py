"""Driving the streaming job alone against a stack's Kafka and Redis: for the
pipeline tests and the throughput benchmark.

A :class:`JobRun` is one job process writing to its own Redis database with its
own checkpoint, started, killed and started again by the process group it was
given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from reco_plugin import keys, schema

from .services import PYTHON, REPO, Stack, stop_process


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


def end_offsets(bootstrap: str, topics: Iterable[str] | None = None) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reco-tests-offsets"})
    try:
        metadata = consumer.list_topics(timeout=10)
        result = {}
        for topic in topics or schema.DEFAULT_TOPICS.values():
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                result[f"{topic}:{partition}"] = high
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
    batches and commits, the record of recoveries."""
    return (
        keys.pipeline_last_batch(),
        keys.pipeline_heartbeat(),
        keys.pipeline_batch_time(),
        keys.pipeline_history(),
        keys.pipeline_lease(),
        keys.pipeline_lease_info(),
        keys.pipeline_standby(),
        keys.pipeline_committed_batch(),
        keys.pipeline_commit_seq(),
        keys.pipeline_recovery(),
    )


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Every list, count and counter in a Redis database; the de-duplication
    ids (their buckets depend on where batches begin) and the job's
    :func:`bookkeeping` are left out."""
    result: dict[str, Any] = {}
    skipped = set(bookkeeping())
    for key in sorted(client.scan_iter(count=1000)):
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
    ):
        self.stack = stack
        self.topics = list(topics or schema.DEFAULT_TOPICS.values())
        self.name = name
        self.redis_url = f"redis://127.0.0.1:{stack.ports.redis}/{db}"
        self.checkpoint = stack.state_dir / "jobs" / name / "checkpoint"
        self.log = stack.logs / f"job-{name}.log"
        self.config = dict(config or {})
        self.process: subprocess.Popen | None = None
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)

    def start(self, wait: bool = True) -> None:
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            PYTHON,
            "-m",
            "spark_jobs.recommend",
            "--bootstrap",
            f"127.0.0.1:{self.stack.ports.kafka}",
            "--redis",
            self.redis_url,
            "--checkpoint",
            str(self.checkpoint),
            "--config",
            json.dumps(self.config),
            "--topics",
            ",".join(self.topics),
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

    def committed_batch(self) -> int:
        values = self.redis.hvals(keys.pipeline_committed_batch())
        return max((int(v) for v in values), default=-1)

    def processed(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(keys.pipeline_offsets()).items()}

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
        def done():
            processed = self.processed()
            return all(processed.get(tp, 0) >= end for tp, end in targets.items())

        self.wait_until(done, timeout, "catch-up")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        return ""
