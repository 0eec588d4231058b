from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis as redis_lib

from reco_plugin import keys, schema
from stack.pipeline import JobRun, end_offsets, produce, skewed_history
from stack.services import Ports, Stack, free_port

ARTIFACTS = Path(__file__).parent / "artifacts"


def start_redis_server(workdir, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """A real redis-server on ``port`` (a free one by default), answering; (process, port)."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis_lib.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process, port
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port for the whole session."""
    process, port = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server, settings):
    """Point the plugin at the session's Redis, emptied for this test."""
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_URL": redis_server}
    client = redis_lib.Redis.from_url(redis_server)
    client.flushdb()
    yield redis_server


@pytest.fixture
def r(redis_url):
    return redis_lib.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def backend(redis_url):
    from reco_plugin.backends import get_backend

    backend = get_backend()
    backend.clear()
    return backend


@pytest.fixture
def make_product(db):
    from demo_shop.catalog.models import Product

    def make(pk, name=None, category="Drama", price="9.99", **kwargs):
        return Product.objects.create(
            id=pk, name=name or f"Film {pk}", category=category, price=Decimal(price), **kwargs
        )

    return make


def put_list(client, key, product_ids, score=1.0):
    client.set(key, json.dumps([{"product_id": str(p), "score": score} for p in product_ids]))


def put_policy(client, *preferred, exploration=0.0):
    """A bandit policy under which ``preferred`` strategies win, in that order."""
    from reco_plugin import keys, strategies

    draw = [
        1.0 - preferred.index(name) / 10 if name in preferred else 0.0
        for name in strategies.STRATEGIES
    ]
    value = {"strategies": list(strategies.STRATEGIES), "exploration": exploration, "draws": [draw]}
    client.set(keys.bandit_policy(), json.dumps(value))
    client.set(keys.bandit_policy_version(), json.dumps([preferred, exploration]))


def put_catalog(client, product_ids, category="Drama"):
    from reco_plugin import keys

    for pid in product_ids:
        client.hset(
            keys.catalog_product(str(pid)),
            mapping={
                "title": f"Film {pid}",
                "url": f"/products/{pid}/",
                "price": "9.99",
                "category": category,
                "image": "",
                "in_stock": "1",
            },
        )


def ranker_trials(count, start=0):
    """The ranker's training examples (``ranker.examples``) of ``count``
    next-item trials on one page, whose similar list holds 2-13 and trending
    list 8-19: the visitor went on to 2, 3 or 19 in turn."""
    from reco_plugin import ranker

    found = ranker.candidates(
        [
            ("similar", [{"product_id": str(p), "score": 14 - p} for p in range(2, 14)]),
            ("trending", [{"product_id": str(p), "score": 20 - p} for p in range(8, 20)]),
        ],
        set(),
    )
    examples = []
    for n in range(start, start + count):
        examples += ranker.examples(f"trial{n}", ("2", "3", "19")[n % 3], found, ranker.Context())
    return examples


def commit_ranker(redis_url, *batches, settings=None):
    """Each batch of ranker examples committed as the streaming job commits a
    batch (``state.commit``, under the job's lease): the model learns from it
    and its weights and metrics are written."""
    from reco_plugin.scoring import PipelineSettings
    from spark_jobs import recovery, score, state

    settings = settings or PipelineSettings()
    r = state.connect(redis_url)
    lease = recovery.Lease(r)
    assert lease.acquire()
    try:
        for n, examples in enumerate(batches):
            clock = state.clock(r)
            now = schema.now_ms()
            state.commit(
                r,
                lease.token,
                recovery.position(r).offsets,
                ("ranker", n),
                state.BatchChanges(examples=list(examples)),
                landmark_ms=score.landmark(clock, now, settings),
                clock_ms=max(clock, now),
                previous_clock_ms=clock,
                now_ms=now,
                settings=settings,
            )
    finally:
        lease.release()


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import build_session

    session = build_session("reco-tests", shuffle_partitions=2, kafka=False)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory):
    """The whole product on free ports: Kafka, Redis, Spark, relay, Celery, web.

    Warmed with the first part of the MovieLens history so similar items exist.
    """
    state = tmp_path_factory.mktemp("stack")
    stack = Stack(state, Ports.free(), catalog_sync_seconds=5)
    stack.start(warm=True, warm_limit=int(os.environ.get("RECO_TEST_WARM_RATINGS", "20000")))
    yield stack
    failed_logs = stack.dump_logs(20)
    stack.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "stack-logs.json").write_text(failed_logs)


# -- the streaming job alone on real Kafka and Redis (test_pipeline, test_recovery) --

# Small batches, so a backlog takes many of them and faults land mid-stream;
# both paths (driver and executors) are used. A short lease: a job started again
# after a SIGKILL waits for its predecessor's lease to expire. Every batch writes
# all the product lists it changes: these runs are compared with a fold cut the
# same way, list for list, and which lists a job owes when it falls idle (and
# then writes) depends on timing (tests/test_batch.py and test_pipeline's
# test_product_lists_owed_by_the_batches_are_written_by_the_idle_job cover it).
JOB_CONFIG = {
    "max_offsets_per_trigger": 1500,
    "driver_batch_rows": 1000,
    "lease_ttl": 4,
    "product_lists_per_batch": 100_000,
}


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Kafka and Redis only, on free ports, for the streaming job's tests (each
    job gets its own Redis database), with the topics created."""
    stack = Stack(tmp_path_factory.mktemp("pipeline"), Ports.free(), log=lambda line: None)
    try:
        stack.start_kafka()
        stack.start_redis()
        stack.manage("reco_topics", quiet=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def backlog(services):
    records, expected = skewed_history(schema.now_ms())
    bootstrap = f"127.0.0.1:{services.ports.kafka}"
    assert produce(bootstrap, records) == len(records)
    return end_offsets(bootstrap), expected


@pytest.fixture(scope="session")
def uninterrupted(services, backlog):
    targets, _ = backlog
    job = JobRun(services, "uninterrupted", db=1, config=JOB_CONFIG)
    job.start()
    try:
        job.wait_processed(targets, timeout=300)
    finally:
        job.stop()
    # The other runs are compared with this one for the rest of the session,
    # up to ~20 minutes later: its trending keys (a bucket kept 12 minutes
    # after its last write, a category's list 6) are kept from expiring, so
    # they compare with what the job wrote, not with what Redis has dropped since.
    pipe = job.redis.pipeline(transaction=False)
    for key in job.redis.scan_iter(match=f"{keys.PREFIX}:trending*", count=1000):
        pipe.persist(key)
    pipe.execute()
    return job
