"""The streaming job on real Kafka, Redis and Spark: exactly-once state across
SIGKILLs, a skewed backlog applied in full, and outages of Redis and Kafka."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import uuid

import pytest

from reco_plugin import keys, schema, strategies
from stack.pipeline import JobRun, create_topic, end_offsets, redis_state, totals
from tests.conftest import JOB_CONFIG

pytestmark = pytest.mark.stack


def test_a_skewed_backlog_is_applied_in_full(uninterrupted, backlog):
    _, expected = backlog
    counted = totals(uninterrupted.counters())
    assert {k: counted.get(k, 0) for k in expected} == expected
    assert counted["read"] == sum(expected.values())
    r = uninterrupted.redis
    # the far-future event did not stop the clock or trending
    assert int(r.get(keys.pipeline_clock())) <= schema.now_ms()
    trending = {item["product_id"] for item in json.loads(r.get(keys.trending()))}
    assert trending <= {str(p) for p in range(500, 507)} and len(trending) == 7
    # a month-old stretch (partition 11) was learnt too
    assert r.exists(keys.visitor_recommendations("s:v11-1"))


def test_sigkill_mid_stream_gives_the_same_state_as_an_uninterrupted_run(
    services, backlog, uninterrupted
):
    targets, _ = backlog
    job = JobRun(services, "killed", db=2, config=JOB_CONFIG)
    kills = 0
    job.start()
    try:
        for _ in range(3):
            # Kill shortly after a batch commits: the next batch is running.
            seen = job.commits()
            job.wait_until(lambda seen=seen: job.commits() > seen, 120, "a batch")
            time.sleep(random.uniform(0.2, 0.8))
            job.kill()
            kills += 1
            job.start()
        job.wait_processed(targets, timeout=300)
    finally:
        job.stop()
    assert kills == 3
    killed, whole = redis_state(job.redis), redis_state(uninterrupted.redis)
    assert killed.keys() == whole.keys()
    different = [key for key in whole if whole[key] != killed[key]]
    assert not different, f"{len(different)} keys differ, e.g. {different[:5]}"


OUTAGE_SECONDS = 15


def test_the_job_weathers_redis_and_kafka_outages(services):
    """Redis paused, then Kafka, while events keep coming: each pause
    (``OUTAGE_SECONDS``) outlasts the job's Redis socket timeout (10 s), its
    lease in Redis (``lease_ttl``, 4 s here: the job takes it again after), and its
    Kafka request and API timeouts (2 s, 10 s)."""
    bootstrap = f"127.0.0.1:{services.ports.kafka}"
    topic = "outage_views"
    create_topic(bootstrap, topic)
    job = JobRun(services, "outages", db=3, topics=[topic], config={"lease_ttl": 4})
    job.start()
    stop = threading.Event()
    sent = []

    def traffic():
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 300_000,
            }
        )
        n = 0
        while not stop.is_set():
            event = schema.make_event(
                schema.PAGE_VIEW, f"s:o{n % 50}", str(n % 30), event_id=str(uuid.uuid4())
            )
            producer.produce(topic, key=event["visitor_id"].encode(), value=schema.encode(event))
            sent.append(event["event_id"])
            producer.poll(0)
            n += 1
            time.sleep(0.02)
        assert producer.flush(120) == 0

    thread = threading.Thread(target=traffic)
    thread.start()
    redis_pid = next(s.process.pid for s in services.services if s.name == "redis")
    kafka_pid = next(s.process.pid for s in services.services if s.name == "kafka")
    try:
        job.wait_until(lambda: totals(job.counters()).get("applied", 0) > 50, 60, "first events")
        for pid in (redis_pid, kafka_pid):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(OUTAGE_SECONDS)
            os.kill(pid, signal.SIGCONT)
            time.sleep(5)
    finally:
        for pid in (redis_pid, kafka_pid):
            os.kill(pid, signal.SIGCONT)
        stop.set()
        thread.join(180)
    try:
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=180)
        assert job.process.poll() is None, "the job exited"
        counted = job.counters()
        # every event sent was new, and each was applied exactly once
        assert counted[f"{topic}:applied"] == len(sent)
        assert counted[f"{topic}:read"] == len(sent)
        assert job.redis.exists(keys.visitor_recommendations("s:o1"))
        # the job met the Redis outage, and waited it out
        assert "Redis unavailable (Timeout reading" in job.log_text()
    finally:
        job.stop()


def test_product_lists_owed_by_the_batches_are_written_by_the_idle_job(services, backlog):
    """Batches of a backlog that write 5 product lists of a kind each leave
    most owed; the job writes them once idle, each the list of its pair
    weights as they stand."""
    from reco_plugin.scoring import PipelineSettings
    from spark_jobs import lists

    targets, _ = backlog
    # batches on the driver (a large one, on the executors, writes all it owes)
    config = {
        **JOB_CONFIG,
        "product_lists_per_batch": 5,
        "max_offsets_per_trigger": 5000,
        "driver_batch_rows": 5000,
    }
    job = JobRun(services, "owing", db=9, config=config)
    job.start()
    try:
        job.wait_processed(targets, timeout=300)  # offsets, then nothing owed
        log = open(job.log, errors="replace").read()
    finally:
        job.stop()
    r = job.redis
    assert strategies.product_lists_owed(r) == dict.fromkeys(strategies.STREAMED_PRODUCT_LISTS, 0)
    # the batches wrote 5 of a kind each; the idle job the rest, in rounds of 5
    written = [int(n) for n in re.findall(r"wrote (\d+) owed product lists between batches", log)]
    batches = re.findall(r"on the (?:driver|executors), (\d+) product lists \((\d+) owed\)", log)
    assert batches and all(int(n) <= 5 * len(strategies.STREAMED_PRODUCT_LISTS) for n, _ in batches)
    assert int(batches[-1][1]) > 100 and sum(written) >= int(batches[-1][1])
    settings = PipelineSettings.from_mapping(config)
    # (a similar list is also divided by popularities, which every batch
    # changes; it is written again only when its own co-visits change)
    compared = 0
    for kind in (strategies.NEXT, strategies.AFTER, strategies.SESSION):
        source, _, target = lists.PRODUCT_LISTS[kind]
        # every product with pair weights of the kind has its list written
        products = [k.split(":")[-2] for k in r.scan_iter(match=source("*"), count=1000)]
        found = {p: r.get(target(p)) for p in products}
        assert None not in found.values(), [p for p, v in found.items() if v is None][:5]
        lists.refresh_products(products, redis_url=job.redis_url, settings=settings, kind=kind)
        assert {p: r.get(target(p)) for p in products} == found
        compared += len(found)
    assert compared > 100


def test_status_reports_the_job_down_with_kafka_and_redis_up(services, backlog):
    result = services.run_manage("reco_status", "--json", timeout=60)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["redis"]["ok"] and report["kafka"]["ok"]
    # five event topics of 12 partitions, and the record of forgotten visitors
    assert report["kafka"]["partitions"] == {"total": 61, "offline": 0, "under_replicated": 0}
    assert report["kafka"]["brokers"] == [
        {"id": 1, "address": f"127.0.0.1:{services.ports.kafka}", "up": True}
    ]
    # nothing has processed the backlog into this database (0) either
    waiting = sum(backlog[0].values())
    assert report["lag"]["total"] == waiting > 10_000
    assert report["problems"] == [
        "the streaming job is down (no heartbeat in Redis)",
        f"the pipeline is behind: {waiting} events not processed (STATUS_MAX_LAG is 10000)",
        # the shop has a Celery broker, and no worker runs here
        "no Celery worker answers: catalog syncs and retraining do not run",
    ]
    assert report["channel_layer"]["ok"] and report["celery"]["workers"] == 0
