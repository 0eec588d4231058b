"""Kafka is the record, Redis a fold of it: the streaming job recovers exactly
from a Redis restored from an older snapshot, a flushed Redis, a lost or an
older checkpoint, a second copy of itself, and counts what Kafka deleted
before it read it.

Each case runs the backlog of the restart-equality test (``test_pipeline``)
with the fault mid-stream, proves the fault happened, and compares the state
with the uninterrupted run of the same events (``stack.pipeline.compare_folds``):
the state to the bit (floats to 1e-6), the counters (applied = sent - copies);
the lists and the bandit depend on where batches begin, and are bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from reco_plugin import keys, schema
from stack.pipeline import JobRun, compare_folds, create_topic, end_offsets, produce, totals
from stack.services import PYTHON, REPO
from tests.conftest import JOB_CONFIG, start_redis_server

pytestmark = pytest.mark.stack

# Bounds of what depends on where the batches began (measured between two
# uninterrupted runs cut at 1,500 and 700 records: 7 of 303 products' pair
# weights up to 7.5% apart, lists overlapping 0.96 on average and 0.69 at
# least, hit rates 0.004 apart). After a rewind from an older snapshot, one run
# in about eight here had ~1% of the similar lists written from another state
# than the uninterrupted run's last (the state itself equal): bounded, not
# explained yet.
PAIRS_DIFFER = 0.05
PAIR_WEIGHT_DIFFERENCE = 0.5
LIST_OVERLAP_MEAN = 0.85
LISTS_UNLIKE = 0.03
HIT_RATE_DIFFERENCE = 0.03
# Where visitors went next depends on the cut when an event reaches the job
# after events stamped later (here: a cart event whose topic is read ahead
# of page views): measured 13 of 210 products (6%) between the runs cut
# at 1,500 and 700.
NEXT_DIFFER = 0.1


def after_commits(job: JobRun, n: int) -> int:
    """Wait until ``n`` more batches have committed; the commit number then."""
    start = job.commits()
    job.wait_until(lambda: job.commits() >= start + n, 180, f"{n} more commits")
    return job.commits()


def applied_offsets(job: JobRun) -> int:
    return sum(job.processed().values())


def assert_same_fold(job: JobRun, uninterrupted: JobRun, expected: dict[str, int]) -> None:
    """After the job has stopped (its last lists written), as the uninterrupted run."""
    job.stop()
    counted = totals(job.counters())
    assert {k: counted.get(k, 0) for k in expected} == expected
    diff = compare_folds(job.redis, uninterrupted.redis)
    print(f"{job.name}: {diff.describe()}; recovery {job.recovery()}; counted {counted}")
    assert not diff.state, diff.describe()
    assert len(diff.pairs_differ) <= PAIRS_DIFFER * diff.pair_keys, diff.describe()
    assert diff.pair_weight_difference <= PAIR_WEIGHT_DIFFERENCE, diff.describe()
    assert diff.lists > 1000, diff.describe()
    assert diff.list_overlap_mean >= LIST_OVERLAP_MEAN, diff.describe()
    assert diff.lists_unlike <= LISTS_UNLIKE * diff.lists, diff.describe()
    assert diff.hit_rate_difference <= HIT_RATE_DIFFERENCE, diff.describe()
    assert diff.next_keys > 100, diff.describe()
    assert len(diff.next_differ) <= NEXT_DIFFER * diff.next_keys, diff.describe()


def status_of(job: JobRun) -> tuple[int, dict]:
    """``reco_status --json`` of the shop whose Redis the job writes."""
    result = subprocess.run(
        [PYTHON, str(REPO / "manage.py"), "reco_status", "--json"],
        env={**job.stack.env(), "RECO_REDIS_URL": job.redis_url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_uninterrupted_runs_cut_differently_agree(services, backlog, uninterrupted):
    """The yardstick of the cases below: the same events cut into batches of
    700 instead of 1,500 reach the same state."""
    targets, expected = backlog
    job = JobRun(services, "cut-700", db=7, config={**JOB_CONFIG, "max_offsets_per_trigger": 700})
    job.start()
    try:
        job.wait_processed(targets, timeout=300)
    finally:
        job.stop()
    assert_same_fold(job, uninterrupted, expected)


def test_redis_restored_from_an_older_snapshot_is_rebuilt_from_kafka(
    services, backlog, uninterrupted, tmp_path
):
    targets, expected = backlog
    server, port = start_redis_server(tmp_path)
    job = JobRun(services, "snapshot", db=0, config=JOB_CONFIG, redis_port=port)
    job.start()
    try:
        after_commits(job, 2)
        saved = job.redis.lastsave()
        job.redis.bgsave()
        job.wait_until(lambda: job.redis.lastsave() != saved, 60, "the snapshot")
        after_commits(job, 3)
        before = applied_offsets(job)
        server.kill()
        server.wait(10)
        server, _ = start_redis_server(tmp_path, port)
        # the fault: Redis came back behind what the job had applied
        restored = applied_offsets(job)
        assert 0 < restored < before
        job.wait_processed(targets, timeout=300)
        recovered = job.recovery()
        assert int(recovered["rewinds"]) >= 1 and "rewinding: Redis holds less" in job.log_text()
        assert int(recovered["records_reapplied"]) >= before - restored - 1500
        assert_same_fold(job, uninterrupted, expected)
    finally:
        job.stop()
        server.kill()
        server.wait(10)


def test_a_flushed_redis_is_rebuilt_from_the_earliest_offsets(services, backlog, uninterrupted):
    targets, expected = backlog
    job = JobRun(services, "flushed", db=3, config=JOB_CONFIG)
    job.start()
    try:
        after_commits(job, 3)
        job.redis.flushdb()
        assert not job.processed()
        job.wait_processed(targets, timeout=300)
        last = json.loads(job.recovery()["last_rewind"])
        assert "Redis at " in last["reason"] and "nothing" in last["reason"]
        assert_same_fold(job, uninterrupted, expected)
    finally:
        job.stop()


def test_a_deleted_checkpoint_starts_from_the_offsets_redis_holds(services, backlog, uninterrupted):
    """The backlog holds events a month old: only offsets, not ids kept for a
    while, can tell what was applied."""
    targets, expected = backlog
    job = JobRun(services, "no-checkpoint", db=4, config=JOB_CONFIG)
    job.start()
    try:
        after_commits(job, 3)
        job.kill()
        shutil.rmtree(job.checkpoint)
        job.start()
        job.wait_processed(targets, timeout=300)
        assert "no checkpoint at" in job.log_text()
        # nothing read twice: the query started where Redis stood
        assert int(job.recovery().get("records_skipped", 0)) == 0
        assert_same_fold(job, uninterrupted, expected)
    finally:
        job.stop()


def test_an_older_checkpoint_reads_again_what_redis_holds_and_leaves_it_out(
    services, backlog, uninterrupted, tmp_path
):
    targets, expected = backlog
    job = JobRun(services, "old-checkpoint", db=5, config=JOB_CONFIG)
    job.start()
    try:
        after_commits(job, 2)
        job.kill()
        shutil.copytree(job.checkpoint, tmp_path / "old")
        job.start()
        after_commits(job, 3)
        job.kill()
        shutil.rmtree(job.checkpoint)
        shutil.copytree(tmp_path / "old", job.checkpoint)
        job.start()
        job.wait_processed(targets, timeout=300)
        # the fault: the older checkpoint planned batches Redis held already
        assert int(job.recovery()["records_skipped"]) > 0
        assert_same_fold(job, uninterrupted, expected)
    finally:
        job.stop()


def test_a_second_copy_of_the_job_waits_for_the_lease_then_takes_over(
    services, backlog, uninterrupted
):
    targets, expected = backlog
    copies = [JobRun(services, name, db=6, config=JOB_CONFIG) for name in ("one", "other")]
    # Started together, so that the copy that takes the lease has most of the
    # backlog still to read when the other waits for it (started one after the
    # other, the first could read all of it while the second's JVM starts).
    for copy in copies:
        copy.start(wait=False)
    try:
        copies[0].wait_until(
            lambda: copies[0].redis.exists(keys.pipeline_heartbeat()), 120, "a copy's start"
        )
        holder = json.loads(copies[0].redis.get(keys.pipeline_heartbeat()))["pid"]
        first, second = sorted(copies, key=lambda copy: copy.process.pid != holder)
        assert first.process.pid == holder
        second.wait_until(
            lambda: "another copy of the job holds the lease" in second.log_text(), 120, "waiting"
        )
        _, report = status_of(first)
        owner = json.loads(first.redis.get(keys.pipeline_heartbeat()))["lease"]
        assert report["lease"]["owner"] == owner
        assert [w["pid"] for w in report["lease"]["waiting"]] == [second.process.pid]
        after_commits(first, 2)
        first.kill()
        second.wait_until(
            lambda: "the lease is this job's now" in second.log_text(), 60, "the lease"
        )
        second.wait_processed(targets, timeout=300)
        assert_same_fold(second, uninterrupted, expected)
    finally:
        for copy in copies:
            copy.stop()


def test_records_deleted_by_retention_before_the_job_read_them_are_counted_as_expired(
    services,
):
    bootstrap = f"127.0.0.1:{services.ports.kafka}"
    topic = "expiring_views"
    create_topic(bootstrap, topic, partitions=2)

    def traffic(n: int, start: int):
        return [
            (
                topic,
                i % 2,
                f"s:e{i}".encode(),
                schema.encode(schema.make_event(schema.PAGE_VIEW, f"s:e{i}", str(i % 50))),
            )
            for i in range(start, start + n)
        ]

    assert produce(bootstrap, traffic(400, 0)) == 400
    job = JobRun(services, "expiring", db=8, topics=[topic], config=JOB_CONFIG)
    job.start()
    try:
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=120)
        job.stop()
        assert produce(bootstrap, traffic(400, 400)) == 400
        # retention deletes the oldest segments: the log starts at 300 of 400
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_records(
            [TopicPartition(topic, p, 300) for p in (0, 1)]
        ).values():
            assert future.result(30).low_watermark == 300
        job.start()
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=120)
        counted = job.counters()
        # 200 of each partition's 400 read first; 100 deleted unread
        assert counted[f"{topic}:expired"] == 200
        assert counted[f"{topic}:applied"] == 600 == counted[f"{topic}:read"]
        assert "deleted by Kafka's retention before the job read them" in job.log_text()
        code, report = status_of(job)
        assert code == 1
        assert any(
            "deleted by Kafka's retention before the job read them: 200 in all" in p
            for p in report["problems"]
        )
        assert report["counters"][topic]["expired"] == 200
    finally:
        job.stop()


def test_duplicate_detection_costs_a_fixed_budget_per_partition(uninterrupted):
    """The ids kept to find copies: bytes per id, and at most ``dedup_records``
    per partition whatever the age of the backlog."""
    r = uninterrupted.redis
    buckets = r.zrange(keys.seen_index(), 0, -1)
    ids = sum(r.scard(key) for key in buckets)
    used = sum(r.memory_usage(key, samples=0) or 0 for key in buckets)
    per_id = used / ids
    print(f"duplicate detection: {ids} ids in {len(buckets)} sets, {per_id:.1f} bytes per id")
    assert ids == totals(uninterrupted.counters())["applied"]  # within the window: all of them
    assert 40 < per_id < 120


def test_a_forgotten_visitor_stays_forgotten_after_redis_comes_back_from_an_older_snapshot(
    services, tmp_path
):
    bootstrap = f"127.0.0.1:{services.ports.kafka}"
    topic = "forgetting_views"
    create_topic(bootstrap, topic, partitions=2)
    now = schema.now_ms()

    def views(visitor: str, products: range, minutes_ago: int):
        return [
            schema.make_event(
                schema.PAGE_VIEW, visitor, str(p), ts=now - minutes_ago * 60_000 + p * 1000
            )
            for p in products
        ]

    def send(events):
        records = [(topic, None, e["visitor_id"].encode(), schema.encode(e)) for e in events]
        assert produce(bootstrap, records) == len(records)

    services.manage("migrate", "--noinput", quiet=True)  # reco_forget keeps its record
    # reco_topics made the forget records' topic compacted: kept for good
    from confluent_kafka.admin import AdminClient, ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, schema.FORGOTTEN_TOPIC)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = admin.describe_configs([resource])[resource].result(30)
    assert config["cleanup.policy"].value == "compact"
    server, port = start_redis_server(tmp_path)
    job = JobRun(services, "forgetting", db=0, topics=[topic], config=JOB_CONFIG, redis_port=port)
    try:
        send(views("s:gone", range(1, 6), 30) + views("s:kept", range(1, 6), 30))
        job.start()
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=120)
        saved = job.redis.lastsave()
        job.redis.bgsave()
        job.wait_until(lambda: job.redis.lastsave() != saved, 60, "the snapshot")
        later = views("s:gone", range(6, 9), 20)
        send(later)
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=120)
        forgot = subprocess.run(
            [PYTHON, str(REPO / "manage.py"), "reco_forget", "s:gone", "--json"],
            env={**services.env(), "RECO_REDIS_URL": job.redis_url},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert forgot.returncode == 0, forgot.stderr
        assert json.loads(forgot.stdout.strip().splitlines()[-1])["recorded_in_kafka"] is True
        traces = lambda: sorted(job.redis.scan_iter(match=f"{keys.PREFIX}:visitor:s:gone:*"))  # noqa: E731
        assert traces() == []
        server.kill()
        server.wait(10)
        server, _ = start_redis_server(tmp_path, port)
        job.wait_until(lambda: job.redis.exists(keys.visitor_recent("s:kept")), 60, "restored")
        job.wait_processed(end_offsets(bootstrap, [topic]), timeout=120)
        job.wait_until(lambda: traces() == [], 60, "the visitor forgotten again")
        # the fault: the snapshot predates the forget (no tombstone, the keys back)
        assert "1 forgotten visitors were missing from Redis" in job.log_text()
        assert len(job.redis.keys(f"{keys.PREFIX}:forgotten:*")) == 1
        # the events read again after the snapshot were not learnt again
        assert job.counters()[f"{topic}:forgotten"] == len(later)
        job.stop()
        assert traces() == [] and job.redis.exists(keys.visitor_recent("s:kept"))
    finally:
        job.stop()
        server.kill()
        server.wait(10)
