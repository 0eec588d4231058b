"""The job's transforms on a real local Spark session."""

import json

import pytest

from reco_plugin import schema
from spark_jobs.transforms import (
    RECENT_STRUCT,
    covisitation_pairs,
    deduplicate,
    parse_events,
    recent_items,
    trending_buckets,
)

pytestmark = pytest.mark.spark


def event(type="page_view", visitor="s:a", product="1", ts=1_000_000, event_id=None):
    return schema.make_event(type, visitor, product, ts=ts, event_id=event_id)


def test_parse_drops_malformed_rows_and_weighs_types(spark):
    rows = [
        (schema.encode(event("page_view")),),
        (schema.encode(event("purchase", product="2")),),
        (schema.encode(event("impression", product="3")),),
        (b"not json",),
        (json.dumps({**event(), "schema": 2}).encode(),),
        (json.dumps({**event(), "visitor_id": None}).encode(),),
    ]
    parsed = parse_events(spark.createDataFrame(rows, "value binary")).collect()
    assert sorted((r.type, r.weight) for r in parsed) == [
        ("impression", 0.0),
        ("page_view", 1.0),
        ("purchase", 5.0),
    ]
    assert all(r.event_time is not None for r in parsed)


def test_streaming_dedup_drops_resent_events(spark, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    first = event(event_id="00000000-0000-0000-0000-000000000001")
    second = event(product="2", ts=1_000_500, event_id="00000000-0000-0000-0000-000000000002")
    (source / "a.json").write_text("\n".join(json.dumps(e) for e in [first, second, first]) + "\n")
    (source / "b.json").write_text(json.dumps(second) + "\n")
    stream = spark.readStream.format("text").load(str(source))
    query = (
        deduplicate(parse_events(stream))
        .writeStream.format("memory")
        .queryName("dedup_test")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .start()
    )
    try:
        query.processAllAvailable()
        ids = sorted(r.event_id for r in spark.sql("select event_id from dedup_test").collect())
    finally:
        query.stop()
    assert ids == [first["event_id"], second["event_id"]]


def frame(spark, rows):
    return spark.createDataFrame(rows, RECENT_STRUCT)


def test_covisitation_pairs_respect_the_window_and_both_directions(spark):
    new = frame(
        spark,
        [
            ("s:a", "1", 1_000, 1.0),
            ("s:a", "2", 2_000, 3.0),
            ("s:a", "3", 10_000_000, 1.0),  # hours later: pairs with nothing
            ("s:b", "1", 1_000, 1.0),
        ],
    )
    recent = frame(spark, [("s:b", "9", 500, 1.0)])
    pairs = {
        (r.product_id, r.other_id): r.weight
        for r in covisitation_pairs(new, recent, recent_items=20, window_seconds=1800).collect()
    }
    assert pairs == {("1", "2"): 1.0, ("2", "1"): 1.0, ("9", "1"): 1.0, ("1", "9"): 1.0}


def test_covisitation_pairs_only_with_the_last_n_items(spark):
    new = frame(spark, [("s:a", str(i), 1_000 + i, 1.0) for i in range(5)])
    pairs = covisitation_pairs(new, frame(spark, []), recent_items=1, window_seconds=1800)
    assert sorted(
        (r.product_id, r.other_id) for r in pairs.collect() if r.product_id < r.other_id
    ) == [
        ("0", "1"),
        ("1", "2"),
        ("2", "3"),
        ("3", "4"),
    ]


def test_recent_items_newest_first_without_repeats(spark):
    new = frame(spark, [("s:a", "1", 3_000, 1.0), ("s:a", "2", 2_000, 1.0)])
    recent = frame(spark, [("s:a", "1", 100, 1.0), ("s:a", "3", 50, 1.0), ("s:z", "4", 1, 1.0)])
    [row] = recent_items(new, recent, limit=2).collect()
    assert row.visitor_id == "s:a"
    assert [(i.product_id, i.ts) for i in row["items"]] == [("1", 3_000), ("2", 2_000)]


def test_trending_buckets(spark):
    new = frame(
        spark, [("s:a", "1", 1_000, 1.0), ("s:b", "1", 299_000, 2.0), ("s:a", "1", 301_000, 1.0)]
    )
    buckets = sorted(
        (r.bucket, r.product_id, r.weight)
        for r in trending_buckets(new, bucket_seconds=300).collect()
    )
    assert buckets == [(0, "1", 3.0), (300, "1", 1.0)]
