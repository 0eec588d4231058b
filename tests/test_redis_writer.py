"""The pipeline's Redis writes, against a real Redis (no Spark needed)."""

import json

from reco_plugin import keys
from spark_jobs import redis_writer


def test_pairs_popularity_and_similar_lists(r, redis_url):
    rows = [
        {"product_id": "a", "other_id": "b", "weight": 3.0},
        {"product_id": "b", "other_id": "a", "weight": 3.0},
        {"product_id": "a", "other_id": "c", "weight": 1.0},
        {"product_id": "c", "other_id": "a", "weight": 1.0},
    ]
    redis_writer.write_pairs(rows, redis_url)
    redis_writer.write_pairs(rows[:2], redis_url)  # increments accumulate
    assert r.zscore(keys.product_covisits("a"), "b") == 6.0
    redis_writer.write_popularity(r, [{"product_id": p, "weight": 4.0} for p in "abc"])
    assert redis_writer.refresh_similar(r, ["a"]) == 1
    similar = json.loads(r.get(keys.product_similar("a")))
    assert [i["product_id"] for i in similar] == ["b", "c"]
    assert similar[0]["score"] > similar[1]["score"]
    assert r.ttl(keys.product_similar("a")) > 0


def test_visitor_lists_exclude_seen_items_and_weigh_recent_items_more(r):
    r.set(keys.product_similar("new"), json.dumps([{"product_id": "x", "score": 1.0}]))
    r.set(
        keys.product_similar("old"),
        json.dumps([{"product_id": "y", "score": 1.0}, {"product_id": "new", "score": 1.0}]),
    )
    updated = redis_writer.refresh_visitors(r, [("s:v", [(2000, "new", 1.0), (1000, "old", 1.0)])])
    assert updated == ["s:v"]
    recs = json.loads(r.get(keys.visitor_recommendations("s:v")))
    assert [i["product_id"] for i in recs] == ["x", "y"]
    assert redis_writer.load_recent(r, ["s:v", "s:nobody"]) == [
        ("s:v", "new", 2000, 1.0),
        ("s:v", "old", 1000, 1.0),
    ]


def test_trending_sums_the_buckets_inside_the_window(r):
    bucket = 300
    rows = [
        {"bucket": 0, "product_id": "old", "weight": 50.0},
        {"bucket": 3600, "product_id": "a", "weight": 2.0},
        {"bucket": 3900, "product_id": "a", "weight": 2.0},
        {"bucket": 3900, "product_id": "b", "weight": 3.0},
    ]
    items = redis_writer.write_trending(r, rows, bucket_seconds=bucket, window_seconds=600)
    assert [(i["product_id"], i["score"]) for i in items] == [("a", 4.0), ("b", 3.0)]
    assert json.loads(r.get(keys.trending())) == items


def test_notify_and_progress(r):
    pubsub = r.pubsub()
    pubsub.subscribe(keys.updates_channel())
    pubsub.get_message(timeout=1)
    redis_writer.notify(r, ["s:a", "u:1"])
    message = pubsub.get_message(timeout=2)
    assert json.loads(message["data"]) == ["s:a", "u:1"]
    redis_writer.record_progress(
        r, {"batchId": 3, "sources": [{"endOffset": {"page_views": {"0": 5, "1": 7}}}]}
    )
    assert r.hgetall(keys.pipeline_offsets()) == {"page_views:0": "5", "page_views:1": "7"}
    assert json.loads(r.get(keys.pipeline_heartbeat()))["batch"] == 3
