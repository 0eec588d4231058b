"""The production topology (``make cluster``: three Kafka brokers, a Spark
standalone master and two workers, Redis with a replica and three Sentinels),
one part failing at a time while events flow at ~100/s through the plugin's
producer and pages and API calls are served (stack/chaos.py).

For each fault the test proves it happened (the broker gone from the metadata,
the executor gone from the job, the Sentinels naming another primary...), then
measures: requests served, failed and degraded, their p99 against the same
run's baselines (the undisturbed 30 s before each fault so far); and the time
until the pipeline is fresh again: a view made after the fault pushed to the
shopper's websocket, and every record Kafka held before the fault applied.
Then it checks what Redis holds is exactly once: every record counted read and
applied once, none twice (the counters and offsets are committed together).
The last test stops the traffic, checks every event the brokers acknowledged
is in Kafka and applied, and compares the whole state with an undisturbed run
of the same records.

Run with ``make test-cluster`` (``.ci/run`` runs it after ``make test``); the
figures of each case are written to tests/artifacts/cluster-report.json.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from reco_plugin import keys, strategies
from stack.chaos import Probe, Requests, Traffic
from stack.cluster import Cluster, ClusterPorts
from stack.pipeline import JobRun, compare_folds, end_offsets, read_all, totals

pytestmark = pytest.mark.cluster

REPORT = Path(__file__).parent / "artifacts" / "cluster-report.json"
# long enough for a p99 of some 240 requests. A fault's p99 is held to the
# run's baselines so far, pooled: one window's p99 ranged 42-111 ms between the
# windows of one run with nothing failing, so against its own window alone a
# case could fail (or pass) by the chance of its baseline.
BASELINE_SECONDS = 30
# SIGSTOP lasts longer than the brokers' session timeout (6 s) and the
# clients' request timeouts, so the broker is declared dead while its sockets
# stay open
STOPPED_SECONDS = 20
# The aims: fresh again within 30 s of a broker or the Redis primary being
# killed, 60 s of a Spark worker or the driver. A broker that hangs is measured
# while it still hangs: each task on a partition it led waits out its
# consumer's request timeout (2 s) first; measured 31-42 s here for 21-33
# partitions, held to 90 s.
FRESH_AIM = {"broker": 30, "redis": 30, "worker": 60, "driver": 60, "stopped": 90}
# records per batch of the undisturbed run: about what the cluster's job reads
# in two seconds at 100 events/s (its batches took ~1 s; the undisturbed
# fold of ~35,000 records takes half the batches it took at 200)
LIVE_BATCH = 400
# the lists' and the bandit's bounds against the undisturbed run (measured:
# lists overlapping 0.84 on average, hit rates 0.007 apart; folded 20,000
# records at a time, the undisturbed run's lists overlapped 0.69-0.72 and its
# hit rates were up to 0.05 apart)
LIST_OVERLAP_MEAN = 0.7
HIT_RATE_DIFFERENCE = 0.03
CATALOG_DB = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = time.monotonic()
    c = Cluster(tmp_path_factory.mktemp("cluster"), ClusterPorts.free())
    try:
        c.start_kafka()
        c.start_redis()
        c.prepare_shop()
        # the catalog as synced, for the undisturbed run to fold beside
        primary = c.redis()
        for key in primary.scan_iter(match=f"{keys.PREFIX}:*"):
            primary.copy(key, key, destination_db=CATALOG_DB, replace=True)
        c.start_spark()
        c.start_push()
        c.start_celery()
        c.start_web()
        c.log(f"cluster up in {time.monotonic() - started:.0f} s")
        yield c
    except BaseException:
        print(c.dump_logs(60))
        raise
    finally:
        c.stop()


class Harness:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.traffic = Traffic(cluster.bootstrap, rate=100)
        self.requests = Requests(cluster.web_url, rate=8)
        self.probe = Probe(cluster.web_url)
        self.report: dict[str, dict] = {}
        # the undisturbed windows before each fault
        self.baselines: list[tuple[float, float]] = []

    def start(self) -> None:
        self.traffic.start()
        self.requests.start()

    def stop(self) -> dict[str, int]:
        self.requests.stop()
        self.probe.close()
        return self.traffic.stop()


@pytest.fixture(scope="module")
def harness(cluster):
    h = Harness(cluster)
    h.start()
    assert h.probe.until_fresh(120) is not None, cluster.dump_logs()
    yield h
    h.stop()
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(h.report, indent=1))


def applied_exactly_once(cluster: Cluster) -> dict[str, int]:
    """What Redis holds, read in one round trip: each record read once and
    applied (the offsets say how many records; a copy, a malformed or
    late record would be counted apart)."""
    pipe = cluster.redis().pipeline(transaction=True)
    pipe.hgetall(keys.pipeline_counters())
    pipe.hgetall(keys.pipeline_offsets())
    counters, offsets = pipe.execute()
    counted = totals({k: int(v) for k, v in counters.items()})
    records = sum(int(v) for v in offsets.values())
    assert counted.get("read") == counted.get("applied") == records, (counted, records)
    assert not {k: v for k, v in counted.items() if k not in ("read", "applied") and v}
    return {"records_applied": records}


def redis_slow(cluster: Cluster, since: float, until: float) -> list[list]:
    """The primary's slow log (commands over 10 ms, Redis's default; it keeps
    the latest 128) from ``since`` until ``until`` (epoch seconds): [seconds
    after ``since``, ms, command]."""
    try:
        client = cluster.redis()
        try:
            entries = client.slowlog_get(128)
        finally:
            client.close()
    except Exception as exc:  # a report, not a verdict
        return [["unread", str(exc)]]
    return [
        [e["start_time"] - round(since), round(e["duration"] / 1000), str(e["command"])[:60]]
        for e in sorted(entries, key=lambda e: e["start_time"])
        if since <= e["start_time"] < until
    ]


def wait_fresh(cluster: Cluster, probe: Probe, before: dict[str, int], since: float, aim: float):
    """Seconds from ``since`` until a view made after it reached the websocket
    and every record Kafka held just before it is applied; None past 3x the aim."""
    deadline = since + 3 * aim
    pushed = None
    while time.monotonic() < deadline:
        if pushed is None and probe.fresh():
            pushed = time.monotonic()
        if pushed is not None:
            try:
                applied = {
                    k: int(v) for k, v in cluster.redis().hgetall(keys.pipeline_offsets()).items()
                }
            except Exception:
                applied = {}
            if all(applied.get(tp, 0) >= end for tp, end in before.items()):
                return round(time.monotonic() - since, 1)
        time.sleep(0.2)
    return None


def run_case(name: str, kind: str, cluster: Cluster, harness: Harness, fault, heal) -> dict:
    """Baseline, ``fault()`` (which proves the fault happened), wait until
    fresh, ``heal()`` (the part started again and whole), then the figures."""
    base_start, base_wall = time.monotonic(), time.time()
    time.sleep(BASELINE_SECONDS)
    harness.baselines.append((base_start, time.monotonic()))
    baseline = harness.requests.between(*harness.baselines[-1])
    pooled = harness.requests.within(harness.baselines)
    before = end_offsets(cluster.bootstrap)
    sent_before = harness.traffic.sent
    fault_at, fault_wall = time.monotonic(), time.time()
    try:
        proof = fault()
        fresh = wait_fresh(cluster, harness.probe, before, fault_at, FRESH_AIM[kind])
    finally:
        # the part is started again whatever happened: the next case needs it
        healed = heal()
    # at least 5 s after the part is whole again, and as long as a baseline
    # window: a p99 of as many requests as each baseline's (a fault healed in
    # seconds left ~140, whose p99 is their second slowest: one CI run's
    # Spark worker case, 2.02 with no request failing)
    time.sleep(max(5.0, BASELINE_SECONDS - (time.monotonic() - fault_at)))
    during_end, during_wall = time.monotonic(), time.time()
    during = harness.requests.between(fault_at, during_end)
    exactly = applied_exactly_once(cluster)
    figures = {
        "fault": proof,
        "healed": healed,
        "fresh_again_s": fresh,
        "fresh_aim_s": FRESH_AIM[kind],
        "baseline": baseline,
        "baselines_so_far": pooled,
        "during": during,
        "p99_ratio": round(during["p99_ms"] / pooled["p99_ms"], 2) if pooled["p99_ms"] else None,
        # where a high p99 came from: when the slowest requests were made, and
        # what Redis itself took long over (seconds after the window began)
        "slowest_in_baseline": harness.requests.slowest(*harness.baselines[-1], base_start),
        "redis_slow_in_baseline": redis_slow(cluster, base_wall, fault_wall),
        "slowest_during": harness.requests.slowest(fault_at, during_end, fault_at),
        "redis_slow_during": redis_slow(cluster, fault_wall, during_wall),
        "events_sent_during": harness.traffic.sent - sent_before,
        "producer": harness.traffic.backend.stats(),
        "websocket_pushes": harness.probe.pushes,
        "websocket_reconnects": harness.probe.reconnects,
        **exactly,
    }
    harness.report[name] = figures
    print(f"{name}: {json.dumps(figures)}")
    assert during["failed"] == 0, figures
    assert fresh is not None and fresh <= FRESH_AIM[kind], figures
    assert figures["producer"]["failed"] == figures["producer"]["dropped"] == 0, figures
    assert figures["p99_ratio"] is not None and figures["p99_ratio"] < 2, figures
    return figures


def leaders(cluster: Cluster) -> dict[int, int]:
    """Broker id -> how many of the event topics' partitions it leads."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0}).list_topics(
        timeout=10
    )
    counted: dict[int, int] = {}
    for name, topic in metadata.topics.items():
        if name.startswith("__"):
            continue
        for partition in topic.partitions.values():
            counted[partition.leader] = counted.get(partition.leader, 0) + 1
    return counted


def in_sync(cluster: Cluster) -> bool:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0}).list_topics(
        timeout=10
    )
    return len(metadata.brokers) == 3 and all(
        len(p.isrs) == len(p.replicas)
        for name, t in metadata.topics.items()
        for p in t.partitions.values()
    )


def wait(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return round(time.monotonic() - started, 1)
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout} s")


def status(cluster: Cluster) -> tuple[int, dict]:
    result = cluster.run_manage("reco_status", "--json", timeout=120)
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_status_shows_every_part_of_the_cluster(cluster, harness):
    code, report = status(cluster)
    assert code == 0, report["problems"]
    assert [b["up"] for b in report["kafka"]["brokers"]] == [True, True, True]
    assert report["kafka"]["partitions"]["under_replicated"] == 0
    redis_part = report["redis"]
    assert redis_part["role"] == "primary"
    assert redis_part["primary"] == f"127.0.0.1:{cluster.primary_port()}"
    assert [s["up"] for s in redis_part["sentinels"]] == [True, True, True]
    assert [r["state"] for r in redis_part["replicas"]] == ["online"]
    assert len(report["spark"]["workers"]) == 2
    assert report["spark"]["master"] == cluster.spark_master
    assert len(report["job"]["spark"]["executors"]) == 2
    assert report["lease"]["owner"]


def test_a_killed_broker_that_leads_partitions(cluster, harness):
    led = leaders(cluster)
    victim = max((b for b in led if b > 0), key=led.get)
    node = f"kafka-{victim}"

    def fault():
        cluster.kill(node)
        moved = wait(lambda: victim not in leaders(cluster), 60, "leaders moved")
        return {"broker": victim, "partitions_it_led": led[victim], "leaders_moved_in_s": moved}

    def heal():
        # reco_status says so while the broker is down (out of the time to fresh)
        code, report = status(cluster)
        assert code == 1 and f"Kafka broker {victim} is down" in report["problems"], report
        cluster.restart(node)
        return {"in_sync_in_s": wait(lambda: in_sync(cluster), 120, "all copies in sync")}

    run_case("broker_killed", "broker", cluster, harness, fault, heal)


def test_a_killed_spark_worker(cluster, harness):
    def executors():
        heartbeat = json.loads(cluster.redis().get(keys.pipeline_heartbeat()) or "{}")
        return (heartbeat.get("spark") or {}).get("executors") or []

    assert len(executors()) == 2, executors()

    def fault():
        cluster.kill("spark-worker-1")
        lost = wait(lambda: len(executors()) == 1, 60, "the executor lost")
        return {"executors_left": executors(), "executor_lost_in_s": lost}

    def heal():
        cluster.restart("spark-worker-1")
        return {"executors_in_s": wait(lambda: len(executors()) == 2, 120, "two executors")}

    run_case("spark_worker_killed", "worker", cluster, harness, fault, heal)


def test_a_killed_driver(cluster, harness):
    old = cluster.service("spark").process.pid

    def fault():
        cluster.kill("spark")
        # a supervisor (systemd, Kubernetes) starts it again at once
        cluster.restart("spark")
        heartbeat = json.loads(cluster.redis().get(keys.pipeline_heartbeat()) or "{}")
        return {
            "old_pid": old,
            "new_pid": cluster.service("spark").process.pid,
            "lease": heartbeat.get("lease"),
        }

    run_case("driver_killed", "driver", cluster, harness, fault, lambda: {})


def test_a_killed_redis_primary(cluster, harness):
    old = cluster.primary_port()
    name = "redis-1" if old == cluster.cluster_ports.redis[0] else "redis-2"
    recovery_before = cluster.redis().hgetall(keys.pipeline_recovery())

    def fault():
        cluster.kill(name)
        promoted = wait(
            lambda: cluster.primary_port() not in (None, old), 60, "the replica promoted"
        )
        return {
            "old_primary": old,
            "new_primary": cluster.primary_port(),
            "promoted_in_s": promoted,
        }

    def heal():
        cluster.restart(name)
        replica = cluster._redis_client(old)
        synced = wait(
            lambda: replica.info("replication")["master_link_status"] == "up", 60, "resync"
        )
        return {"old_primary_replica_in_sync_in_s": synced}

    run_case("redis_primary_killed", "redis", cluster, harness, fault, heal)
    # what the replica had not received when the primary died, applied again from Kafka
    recovery = cluster.redis().hgetall(keys.pipeline_recovery())
    harness.report["redis_primary_killed"]["recovery"] = {
        k: (int(recovery.get(k, 0)), int(recovery_before.get(k, 0)))
        for k in ("rewinds", "records_reapplied", "records_skipped")
    }


def test_a_broker_cut_off_by_sigstop(cluster, harness):
    led = leaders(cluster)
    victim = max((b for b in led if b > 0), key=led.get)
    node = f"kafka-{victim}"

    def fault():
        cluster.kill(node, signal.SIGSTOP)
        moved = wait(lambda: victim not in leaders(cluster), 60, "leaders moved")
        time.sleep(max(0.0, STOPPED_SECONDS - moved))
        return {"broker": victim, "partitions_it_led": led[victim], "leaders_moved_in_s": moved}

    def heal():
        cluster.kill(node, signal.SIGCONT)
        return {"in_sync_in_s": wait(lambda: in_sync(cluster), 120, "all copies in sync")}

    run_case("broker_stopped", "stopped", cluster, harness, fault, heal)


def test_every_acknowledged_event_is_applied_once_and_the_state_is_an_undisturbed_fold(
    cluster, harness
):
    produced = harness.stop()
    assert produced["failed"] == produced["dropped"] == produced["queued"] == 0, produced
    assert produced["delivered"] == produced["sent"]
    ends = end_offsets(cluster.bootstrap)
    wait(
        lambda: all(
            int(cluster.redis().hget(keys.pipeline_offsets(), tp) or 0) >= end
            for tp, end in ends.items()
            if end
        ),
        180,
        "everything applied",
    )
    topics = sorted({tp.rpartition(":")[0] for tp in ends})
    ids = {e["event_id"] for _, _, e in read_all(cluster.bootstrap, topics, timeout=120)}
    sent = harness.traffic.sent_ids
    assert sent <= ids, f"{len(sent - ids)} acknowledged events are not in Kafka"
    exactly = applied_exactly_once(cluster)
    assert exactly["records_applied"] == sum(ends.values()) == len(ids)
    # the same records folded once more, by one job that nothing disturbs, in
    # batches of about the size the cluster's job folded as events came (~1 s)
    # the lists the batches left owed, written by the idle job
    wait(lambda: not strategies.lists_owed(cluster.redis()), 120, "no list owed")
    cluster.stop_service("spark")  # its last lists written
    undisturbed = JobRun(
        cluster, "undisturbed", db=CATALOG_DB, config={"max_offsets_per_trigger": LIVE_BATCH}
    )
    undisturbed.start()
    try:
        undisturbed.wait_processed({tp: end for tp, end in ends.items() if end}, timeout=600)
    finally:
        undisturbed.stop()
    diff = compare_folds(cluster.redis(), undisturbed.redis, skip=shop_keys())
    harness.report["state"] = {
        "events_sent": produced["sent"],
        "events_acknowledged": produced["delivered"],
        "records_in_kafka": sum(ends.values()),
        "records_applied": exactly["records_applied"],
        "compared": diff.describe(),
    }
    print(harness.report["state"])
    # counters, offsets, popularity, trending, visitors' memories and seen
    # items, purchases, clicks, experiment counts: exactly the undisturbed run's
    assert not diff.state, diff.describe()
    # What depends on where batches began: the cluster's job folded ~1 s
    # batches as events came and a few large ones after each fault, the
    # undisturbed run LIVE_BATCH records at a time. The lists are refreshed
    # after each batch, and the bandit judges a view against the lists as they
    # were before it: its hit rates depend on the cuts too.
    # Co-visits pair a new view with the visitor's remembered items (distinct,
    # latest first) but with the batch's own items as they came (repeats
    # included), so a visitor who views a product again pairs differently in
    # one batch than across two (docs/architecture.md, known limits): the pair
    # weights are reported, not bounded; the lists built on them are bounded.
    assert diff.lists > 1000, diff.describe()
    assert diff.list_overlap_mean >= LIST_OVERLAP_MEAN, diff.describe()
    assert diff.hit_rate_difference <= HIT_RATE_DIFFERENCE, diff.describe()


def shop_keys() -> tuple[str, ...]:
    """Keys the shop's processes write, not the job: the catalog and its
    version, the rules, tuning and experiment published, the counters the web
    process and Celery keep."""
    return (
        keys.catalog_version(),
        keys.rules(),
        keys.tuning(),
        keys.experiment(),
        keys.producer_stats(),
        f"{keys.PREFIX}:stats:",
        f"{keys.PREFIX}:catalog",
    )
