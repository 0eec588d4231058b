"""The job's transforms and one micro-batch end to end, on a real local Spark
session and a real Redis (batches given as DataFrames of Kafka records)."""

import json
import logging
import zlib

import pytest
import redis as redis_lib

from reco_plugin import keys, rules, schema
from reco_plugin.scoring import PipelineSettings
from spark_jobs import recovery, state
from spark_jobs.batch import BatchProcessor
from spark_jobs.transforms import parse
from stack.pipeline import redis_state

pytestmark = pytest.mark.spark

KAFKA_ROWS = "topic string, partition int, offset long, value binary"
NOW = schema.now_ms()


def event(type="page_view", visitor="s:a", product="1", ts=None, event_id=None):
    return schema.make_event(type, visitor, product, ts=ts or NOW - 60_000, event_id=event_id)


# The next offset of each partition: a test's batches follow on like Kafka's.
NEXT_OFFSET: dict[tuple[str, int], int] = {}


@pytest.fixture(autouse=True)
def new_topics():
    NEXT_OFFSET.clear()


def records(spark, values, topic="page_views"):
    """Kafka records of these values in three partitions, each following on
    from the test's batches before. As Kafka places them, a visitor's events
    (the key) are in one partition; records that are not events go round."""
    rows = []
    for n, v in enumerate(values):
        partition = zlib.crc32(v["visitor_id"].encode()) % 3 if isinstance(v, dict) else n % 3
        offset = NEXT_OFFSET.get((topic, partition), 0)
        NEXT_OFFSET[(topic, partition)] = offset + 1
        rows.append((topic, partition, offset, v if isinstance(v, bytes) else schema.encode(v)))
    return spark.createDataFrame(rows, KAFKA_ROWS)


def test_parse_keeps_every_record_with_its_core_fields(spark):
    values = [
        event("page_view"),
        event("purchase", product="2"),
        b"not json",
        json.dumps({**event(), "schema": 2}).encode(),
    ]
    rows = parse(records(spark, values)).collect()
    # the two events of visitor s:a in one partition, in order; the others round
    partition = zlib.crc32(b"s:a") % 3
    assert [tuple(r)[:3] for r in rows] == [
        ("page_views", partition, 0),
        ("page_views", partition, 1),
        ("page_views", 2, 0 if partition != 2 else 2),
        ("page_views", 0, 0 if partition != 0 else 2),
    ]
    assert (rows[0].type, rows[0].product_id, rows[1].type) == ("page_view", "1", "purchase")
    assert rows[2].event_id is None and rows[3].schema == 2


def test_rows_sent_to_python_as_json_are_the_rows_spark_gives(spark):
    """The executors' path reads each row as one JSON string
    (``spread.as_json``): the same values as the pickled rows, bytes that are
    not UTF-8 included, but for a double that is not a finite number."""
    import math

    from spark_jobs import spread
    from spark_jobs.transforms import PARSED_COLUMNS

    odd = {
        **event("click", visitor="s:é中", product="7"),
        "ts": 2**62,
        "context": {"strategy": "similar", "position": "2", "propensity": "NaN"},
    }
    values = [
        event("page_view"),
        json.dumps(odd).encode(),
        b'{"schema": 1, "type": "page_view", "visitor_id": "s:a\xff", "event_id": "x"}',
        b"\xff\xfe not json",
        json.dumps({**event(), "context": {"propensity": "0.1"}}).encode(),
    ]
    parsed = parse(records(spark, values))
    pickled = [tuple(row) for row in parsed.select(*PARSED_COLUMNS).collect()]
    as_json = spread._rows(parsed.selectExpr(spread.as_json(*PARSED_COLUMNS)).collect())
    assert len(as_json) == len(pickled) == len(values)
    for from_json, from_pickle in zip(as_json, pickled, strict=True):
        assert from_json[:-1] == from_pickle[:-1]
        if isinstance(from_pickle[-1], float) and math.isnan(from_pickle[-1]):
            assert from_json[-1] == "NaN"  # read by no step of the scoring
        else:
            assert from_json[-1] == from_pickle[-1]
    assert any(row[8] == 2**62 for row in as_json)
    assert any(row[-1] == 0.1 for row in as_json)


def test_the_logins_filter_takes_well_formed_logins_of_an_anonymous_visitor(spark):
    """``spread.LOGS_IN``: an identify event whose earlier visitor is
    anonymous (``s:``) and whose visitor is a visitor id
    (``schema.is_visitor_id``); a null anywhere is no login."""
    from spark_jobs import spread

    longest = schema.MAX_ID_LENGTH
    cases = [
        (schema.IDENTIFY, "u:1", "s:1", True),
        (schema.IDENTIFY, "s:2", "s:1", True),
        (schema.IDENTIFY, "u:" + "x" * (longest - 2), "s:1", True),
        (schema.IDENTIFY, "u:" + "x" * (longest - 1), "s:1", False),
        (schema.IDENTIFY, "u:", "s:1", False),
        (schema.IDENTIFY, "x:1", "s:1", False),
        (schema.IDENTIFY, None, "s:1", False),
        (schema.IDENTIFY, "u:1", "u:2", False),
        (schema.IDENTIFY, "u:1", None, False),
        (schema.PAGE_VIEW, "u:1", "s:1", False),
        (None, "u:1", "s:1", False),
    ]
    rows = spark.createDataFrame(
        [(n, *case[:3]) for n, case in enumerate(cases)],
        "n int, type string, visitor_id string, previous string",
    )
    found = {row.n for row in rows.where(spread.LOGS_IN).collect()}
    assert found == {n for n, case in enumerate(cases) if case[3]}
    assert all(
        schema.is_visitor_id(visitor) == (n in found)
        for n, (_, visitor, previous, _) in enumerate(cases[:7])
    )


def test_every_record_is_counted_by_what_the_batch_does_with_it(spark, processor, r):
    values = [
        event("page_view"),
        event("purchase", product="2"),
        event("impression", product="3"),  # applied, weighs nothing
        b"not json",
        json.dumps({**event(), "schema": 2}).encode(),
        json.dumps({**event(), "visitor_id": None}).encode(),
        json.dumps({**event(), "visitor_id": "admin"}).encode(),
        json.dumps({**event(), "ts": "yesterday"}).encode(),
        event(ts=NOW - 100 * 24 * 3600 * 1000),
        event(ts=NOW + 3600 * 1000),
    ]
    processor()(records(spark, values), 0)
    counters = r.hgetall(keys.pipeline_counters())
    assert counters == {
        "page_views:read": "10",
        "page_views:applied": "3",
        "page_views:malformed": "5",
        "page_views:too_old": "1",
        "page_views:future": "1",
    }
    assert r.zscore(keys.popularity(), "2") == pytest.approx(5.0, rel=1e-3)
    assert r.zscore(keys.popularity(), "3") is None


def state_of(url):
    """Every list, count and counter (not the job's bookkeeping: seen ids,
    batch time, timings and their history, the lease, the records of recovery)."""
    return redis_state(redis_lib.Redis.from_url(url, decode_responses=True))


def traffic(n=1500, seed=3):
    """Page views mostly, with purchases (baskets), and impressions and clicks
    attributed to a strategy; products in four categories."""
    import random

    rng = random.Random(seed)
    kinds = ["page_view"] * 14 + ["purchase"] * 3 + ["impression", "click"]
    events = []
    for i in range(n):
        kind = rng.choice(kinds)
        product = rng.randint(1, 60)
        events.append(
            schema.make_event(
                kind,
                f"s:{rng.randint(1, 120)}",
                str(product),
                ts=NOW - 3_600_000 + 2_000 * i,
                category=f"cat{product % 4}",
                context={"strategy": rng.choice(["similar", "trending"])}
                if kind in ("impression", "click")
                else None,
            )
        )
    return events


class Earliest:
    """Kafka as these hand-made batches have it: every partition starts at
    offset 0, and the topics have no ids."""

    def earliest(self, tps):
        return dict.fromkeys(tps, 0)

    def topic_ids(self):
        return {}


@pytest.fixture
def processor(redis_url):
    def make(**values):
        lease = recovery.Lease(state.connect(redis_url))
        assert lease.acquire()
        p = BatchProcessor(
            redis_url, PipelineSettings.from_mapping(values), kafka=Earliest(), lease=lease
        )
        p.query_id = "test-query"
        return p

    return make


def assert_both_paths_agree(batch, processor, redis_url, r):
    """The batch scored on the driver, then (state emptied) on the executors:
    the same state to the bit, once the visitors' lists the executors' batch
    left owed (it is larger than driver_batch_rows: catching up) are written.
    The executors read it in more partitions than they score it in, as a
    Kafka topic's many partitions are read (the read is coalesced)."""
    processor(driver_batch_rows=10_000)(batch, 0)
    on_driver = state_of(redis_url)
    r.flushdb()
    spread = processor(driver_batch_rows=100)
    spread(batch.repartition(6), 0)
    assert spread.last["path"] == "executors"
    assert spread.last["visitors_owed"] == spread.last["visitors"] > 0
    spread.write_owed_lists(busy=lambda: False)
    assert state_of(redis_url) == on_driver


def test_driver_and_executor_paths_reach_the_same_state_to_the_bit(spark, processor, redis_url, r):
    assert_both_paths_agree(records(spark, traffic()), processor, redis_url, r)
    similar = json.loads(r.get(keys.product_similar("1")))
    assert similar and all(i["product_id"] != "1" for i in similar)
    assert json.loads(r.get(keys.trending()))
    # the state compared covers baskets, category trending and the bandit
    assert json.loads(r.get(keys.product_fbt("1")))
    assert json.loads(r.get(keys.trending_list("long", "cat1")))
    stats = r.hgetall(keys.bandit_stats())
    assert int(stats["similar:impressions"]) > 0 and int(stats["trending:clicks"]) > 0
    assert r.get(keys.bandit_policy())


def test_logins_in_a_batch_merge_the_same_on_both_paths(spark, processor, redis_url, r, caplog):
    values = traffic(600)
    # Visitors 1-40 log in as users during the batch, after browsing in it.
    for n in range(1, 41):
        values.append(
            schema.make_event(
                schema.IDENTIFY,
                f"u:{n}",
                None,
                ts=NOW - 3_600_000 + 2_000 * 600,
                context={schema.PREVIOUS_VISITOR: f"s:{n}"},
            )
        )
    with caplog.at_level(logging.INFO, logger="spark_jobs.spread"):
        assert_both_paths_agree(records(spark, values), processor, redis_url, r)
    # partitioned once, by the logins' owners
    assert "scored again" not in caplog.text
    merged = json.loads(r.get(keys.visitor_recent("u:7")))
    assert merged and merged == json.loads(r.get(keys.visitor_recent("s:7")))[: len(merged)]
    assert r.hget(keys.pipeline_counters(), "page_views:applied") == str(len(values))


def login(user, anonymous, ts=NOW - 1000):
    return schema.make_event(
        schema.IDENTIFY, user, None, ts=ts, context={schema.PREVIOUS_VISITOR: anonymous}
    )


def test_chains_of_logins_merge_the_same_on_both_paths(spark, processor, redis_url, r):
    values = [
        *traffic(300),
        # s:1 logs in as s:200, who logs in as u:1; s:2 logs in as u:2 and u:3
        login("s:200", "s:1"),
        event(visitor="s:200", product="5"),
        login("u:1", "s:200"),
        login("u:2", "s:2"),
        event(visitor="u:2", product="6"),
        login("u:3", "s:2"),
    ]
    assert_both_paths_agree(records(spark, values), processor, redis_url, r)
    # s:1's items of this batch reached u:1 through s:200
    assert {item[0] for item in json.loads(r.get(keys.visitor_recent("s:1")))} <= {
        item[0] for item in json.loads(r.get(keys.visitor_recent("u:1")))
    }


def test_event_ids_repeated_across_partitions_are_scored_again_with_their_copies_marked(
    spark, processor, redis_url, r, caplog
):
    values = traffic(300)
    # twelve events each sent again under another visitor: some of the copies
    # are bound to be owned in another partition than their first record
    for n in range(12):
        first = event(visitor=f"s:{n}", product=str(n), event_id=f"00000000-0000-0000-0000-{n:012}")
        values += [first, {**first, "visitor_id": f"s:{n + 50}"}]
    with caplog.at_level(logging.INFO, logger="spark_jobs.spread"):
        assert_both_paths_agree(records(spark, values), processor, redis_url, r)
    assert "an event id in two partitions" in caplog.text
    assert "the batch is scored again, its copies marked" in caplog.text
    assert r.hget(keys.pipeline_counters(), "page_views:duplicate") == "12"


@pytest.mark.parametrize("driver_batch_rows", [10_000, 2])
def test_a_copy_after_a_malformed_first_record_is_a_duplicate_on_both_paths(
    spark, processor, r, driver_batch_rows
):
    first = {**event(event_id="00000000-0000-0000-0000-0000000000bb"), "ts": "yesterday"}
    copy = event(event_id="00000000-0000-0000-0000-0000000000bb")
    p = processor(driver_batch_rows=driver_batch_rows)
    # the record that is not JSON goes to partition 0 at offset 0: first in Kafka order
    p(records(spark, [json.dumps(first).encode(), copy, event(product="2")]), 0)
    assert p.last["path"] == ("driver" if driver_batch_rows > 3 else "executors")
    counters = r.hgetall(keys.pipeline_counters())
    assert (counters["page_views:malformed"], counters["page_views:duplicate"]) == ("1", "1")
    assert counters["page_views:applied"] == "1"


def test_a_batch_run_again_changes_nothing(spark, processor, redis_url, r):
    batch = records(spark, traffic(300))
    p = processor()
    p(batch, 0)
    once = state_of(redis_url)
    p(batch, 0)  # Spark runs a batch again after a crash: same id
    assert state_of(redis_url) == once
    # left out by their offsets, and only counted as such
    assert r.hgetall(keys.pipeline_recovery()) == {"records_skipped": "300"}
    assert r.hget(keys.pipeline_counters(), "page_views:applied") == "300"


def test_duplicates_across_batches_count_once(spark, processor, r):
    first = event(product="1", event_id="00000000-0000-0000-0000-000000000001")
    second = event(product="2", event_id="00000000-0000-0000-0000-000000000002")
    p = processor()
    p(records(spark, [first, second, first]), 0)
    p(records(spark, [second, event(product="3")]), 1)
    counters = r.hgetall(keys.pipeline_counters())
    assert counters["page_views:applied"] == "3"
    assert counters["page_views:duplicate"] == "2"
    assert counters["page_views:read"] == "5"
    assert r.zscore(keys.popularity(), "2") == pytest.approx(1.0, rel=1e-3)


def test_old_and_far_future_events_are_counted(spark, processor, r):
    p = processor(horizon=24 * 3600, future_tolerance=60)
    values = [event(ts=NOW - 2 * 24 * 3600 * 1000), event(ts=NOW + 3600 * 1000), event()]
    p(records(spark, values), 0)
    counters = r.hgetall(keys.pipeline_counters())
    assert (counters["page_views:too_old"], counters["page_views:future"]) == ("1", "1")
    assert counters["page_views:applied"] == "1"


def test_a_far_future_event_is_counted_and_does_not_move_the_clock(spark, processor, r):
    p = processor(trending_window=600, trending_bucket=300)
    p(records(spark, [event(product="9", ts=NOW + 10 * 365 * 24 * 3600 * 1000)]), 0)
    assert r.hget(keys.pipeline_counters(), "page_views:future") == "1"
    assert int(r.get(keys.pipeline_clock()) or 0) <= NOW
    p(records(spark, [event(product="5", ts=NOW - 1000), event(product="6", ts=NOW - 900)]), 1)
    assert int(r.get(keys.pipeline_clock())) == NOW - 900
    assert {i["product_id"] for i in json.loads(r.get(keys.trending()))} == {"5", "6"}


def test_late_events_are_applied(spark, processor, r):
    p = processor()
    p(records(spark, [event(visitor="s:x", product="1", ts=NOW - 1000)]), 0)
    # an hour late, and still within the co-visitation window of nothing: applied and counted
    p(records(spark, [event(visitor="s:y", product="2", ts=NOW - 3_600_000)]), 1)
    p(records(spark, [event(visitor="s:x", product="3", ts=NOW - 2000)]), 2)
    assert r.hget(keys.pipeline_counters(), "page_views:applied") == "3"
    assert r.zscore(keys.product_covisits("1"), "3") > 0
    assert [i[0] for i in json.loads(r.get(keys.visitor_recent("s:x")))] == ["1", "3"]


@pytest.mark.parametrize("driver_batch_rows", [10_000, 2])
def test_an_event_id_repeated_under_another_visitor_counts_once(
    spark, processor, r, driver_batch_rows
):
    original = event(visitor="s:a", product="1", event_id="00000000-0000-0000-0000-0000000000aa")
    copy = {**original, "visitor_id": "s:b"}
    p = processor(driver_batch_rows=driver_batch_rows)
    p(records(spark, [event(visitor="s:c"), original, copy, event(visitor="s:d")]), 0)
    assert p.last["path"] == ("driver" if driver_batch_rows > 4 else "executors")
    counters = r.hgetall(keys.pipeline_counters())
    assert (counters["page_views:applied"], counters["page_views:duplicate"]) == ("3", "1")
    # the first in Kafka's order (topic, partition, offset) counts
    where = {v: (zlib.crc32(v.encode()) % 3, n) for n, v in enumerate(("s:a", "s:b"))}
    first, later = sorted(where, key=where.get)
    assert r.exists(keys.visitor_recent(first)) and not r.exists(keys.visitor_recent(later))


def test_a_batch_run_again_is_judged_by_its_first_clock(r):
    from spark_jobs import state

    assert state.batch_time(r, "q", 7, 1_000) == 1_000
    assert state.batch_time(r, "q", 7, 9_000) == 1_000  # the same batch, run again
    assert state.batch_time(r, "q", 8, 9_000) == 9_000
    assert state.batch_time(r, "other", 8, 5_000) == 5_000


def test_what_counts_as_a_redis_outage():
    import redis

    from spark_jobs.batch import is_transient

    assert is_transient(redis.ConnectionError("refused"))
    assert is_transient(redis.WatchError("A ConnectionError occurred while watching"))
    assert is_transient(RuntimeError("... redis.exceptions.TimeoutError: Timeout reading"))
    assert not is_transient(redis.AuthenticationError("invalid password"))
    assert not is_transient(ValueError("a bug"))


@pytest.mark.parametrize("path", ["driver", "executors"])
def test_the_lake_feeds_the_retraining_whose_neighbours_reach_the_lists(
    spark, processor, redis_url, r, tmp_path, path, monkeypatch
):
    from spark_jobs import lake as lake_module
    from spark_jobs import retrain

    written_from = []
    append = lake_module.append_to_lake

    def recorded(parsed, where):
        written_from.append(parsed.is_cached)
        append(parsed, where)

    monkeypatch.setattr(lake_module, "append_to_lake", recorded)

    lake = str(tmp_path / "lake")
    # visitors who view a also view b; c goes with d
    values = []
    for n in range(6):
        values += [event(visitor=f"s:{n}", product=p) for p in ("a", "b")]
        values += [event(visitor=f"s:x{n}", product=p) for p in ("c", "d")]
    values.append(event(visitor="s:y", product="a"))
    values.append(
        schema.make_event(
            "impression",
            "s:y",
            "b",
            ts=NOW - 60_000,
            context={"reco_id": "r1", "strategy": "similar", "position": "0", "propensity": "0.8"},
        )
    )
    batch = records(spark, values)
    job = processor(lake_path=lake, driver_batch_rows=10_000 if path == "driver" else 2)
    job(batch, 0)
    # on the driver, its rows straight to files; on the executors, written by
    # Spark from the records the scoring read (cached), not read again
    assert written_from == ([] if path == "driver" else [True])
    job(batch, 0)  # run again: all of it applied already, nothing more written
    assert job.last["path"] == path
    assert spark.read.parquet(lake).count() == len(values)
    assert "lake" in job.last["steps"]
    titles = {"a": "Red wine glass", "b": "Wine glass set", "c": "Blue mug", "n": "Coffee mug"}
    for product, title in titles.items():
        r.hset(keys.catalog_product(product), mapping={"title": title})
        r.sadd(keys.catalog_index(), product)
    # a rule: n is never shown, anywhere
    r.set(keys.rules(), rules.dumps([rules.Rule(1, "block", "n")]))
    args = retrain.parse_args(["--lake", lake, "--redis", redis_url, "--days", "2"])
    summary = retrain.retrain(spark, args)
    assert summary["products"] == 4
    assert [i["product_id"] for i in json.loads(r.get(keys.product_retrained("a")))] == ["b"]
    assert [i["product_id"] for i in json.loads(r.get(keys.product_retrained("d")))] == ["c"]
    # the cosine: 6 visitors share a and b, 7 have a, 6 have b
    assert json.loads(r.get(keys.product_retrained("b")))[0]["score"] == round(6 / 42**0.5, 6)
    assert json.loads(r.get(keys.retrain_last()))["neighbours"] == 4
    # the lake keeps how a recommendation was shown (offline evaluation)
    shown = spark.read.parquet(lake).where("type = 'impression'").collect()
    assert {(x.reco_id, x.strategy, x.position, x.propensity) for x in shown} == {
        ("r1", "similar", "0", 0.8)
    }
    # a new product ("n": no events yet) has neighbours by its words; being
    # blocked for good, it is in nobody's list
    assert [i["product_id"] for i in json.loads(r.get(keys.product_content("n")))] == ["c"]
    assert json.loads(r.get(keys.product_content("c"))) == []
    assert [i["product_id"] for i in json.loads(r.get(keys.product_content("a")))] == ["b"]


def test_a_weight_published_by_staff_changes_the_lists_from_the_next_batch(spark, processor, r):
    def trending():
        return [i["product_id"] for i in json.loads(r.get(keys.trending()))]

    p = processor()
    p(records(spark, [event("purchase", "s:a", "1"), event("page_view", "s:b", "2")]), 0)
    assert trending()[:2] == ["1", "2"]  # a purchase weighs 5, a view 1
    r.set(
        keys.tuning(),
        json.dumps({"version": 7, "pipeline": {"event_weights": {"purchase": 0.5}}}),
    )
    p(records(spark, [event("purchase", "s:c", "3"), event("page_view", "s:d", "4")]), 1)
    listed = trending()
    assert listed.index("4") < listed.index("3")  # the purchase now weighs 0.5
    assert p.settings.event_weights["purchase"] == 0.5 and p.settings.event_weights["click"] == 1.5
    # a tuning the job cannot apply is logged and the starting settings are kept
    r.set(keys.tuning(), json.dumps({"version": 8, "pipeline": {"list_length": -1}}))
    p(records(spark, [event("purchase", "s:e", "5")]), 2)
    assert p.settings == p.base
    assert r.hget(keys.pipeline_counters(), "page_views:applied") == "5"


def test_the_job_counts_the_published_experiments_arms(spark, processor, r):
    from reco_plugin import experiments

    experiment = experiments.Experiment(
        id=5,
        arms=(experiments.Arm("control", 50.0), experiments.Arm("treatment", 50.0)),
        starts_ms=NOW - 3_600_000,
    )
    r.set(keys.experiment(), json.dumps(experiment.as_dict()))
    visitor = "s:exp"
    arm = experiment.arm_of(visitor)
    shown = {"strategy": "similar", "reco_id": experiments.tag(5, arm) + "ab"}
    values = [
        schema.make_event("impression", visitor, "1", context=shown),
        schema.make_event("click", visitor, "1", context=shown),
        schema.make_event("purchase", visitor, "1"),
    ]
    p = processor()
    p(records(spark, values), 0)
    p(records(spark, values), 0)  # the batch again: counted once
    result = experiments.read_report(r, experiment)["arms"][arm]
    assert (result["impressions"], result["clicks"], result["exposed"], result["purchased"]) == (
        1,
        1,
        1,
        1,
    )
