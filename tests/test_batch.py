"""One micro-batch's scoring and commit on plain rows against a real Redis (no Spark)."""

import json
import uuid

import pytest

from reco_plugin import keys, schema
from reco_plugin.scoring import PipelineSettings
from spark_jobs import batch, state

SETTINGS = PipelineSettings()


class Batches:
    """Feeds rows shaped like ``transforms.parse``'s through the batch's steps."""

    def __init__(self, redis_url):
        self.redis_url = redis_url
        self.r = state.connect(redis_url)
        self.batch_id = 0
        self.offset = 0
        self.now = schema.now_ms()

    def row(self, type_, visitor_id, product_id, previous=None, seconds_ago=60):
        self.offset += 1
        return (
            "page_views",
            0,
            self.offset,
            1,
            type_,
            str(uuid.uuid4()),
            visitor_id,
            product_id,
            self.now - seconds_ago * 1000,
            previous,
        )

    def run(self, rows):
        clock = state.clock(self.r)
        landmark = batch.landmark(clock, self.now, SETTINGS)
        changes = next(
            batch.score_partition(
                rows,
                redis_url=self.redis_url,
                settings=SETTINGS,
                landmark_ms=landmark,
                now_ms=self.now,
            )
        )
        clock_ms = max(clock, changes.newest_ts)
        assert state.commit(
            self.r,
            "q",
            self.batch_id,
            changes,
            landmark_ms=landmark,
            clock_ms=clock_ms,
            previous_clock_ms=clock,
            now_ms=self.now,
            settings=SETTINGS,
        )
        self.batch_id += 1
        options = {"redis_url": self.redis_url, "settings": SETTINGS}
        batch.refresh_products(changes.touched_products(), **options)
        batch.refresh_visitors(changes.touched_visitors(), **options)
        return changes

    def recent(self, visitor_id):
        return [pid for pid, _, _ in state.recent_items(self.r, [visitor_id])[visitor_id]]

    def personal(self, visitor_id):
        raw = self.r.get(keys.visitor_recommendations(visitor_id))
        return [item["product_id"] for item in json.loads(raw)] if raw else []


@pytest.fixture
def batches(redis_url):
    return Batches(redis_url)


@pytest.mark.parametrize("same_batch", [False, True], ids=["later batch", "same batch"])
def test_identify_moves_the_anonymous_history_to_the_user(batches, same_batch):
    # Others teach that 1 goes with 10 and 2 with 20.
    rows = []
    for n in range(3):
        rows += [batches.row("page_view", f"s:other{n}", p) for p in ("1", "10", "2", "20")]
    batches.run(rows)
    before = [batches.row("page_view", "s:anon", "1"), batches.row("page_view", "s:anon", "2")]
    identify = batches.row("identify", "u:7", None, previous="s:anon", seconds_ago=1)
    if same_batch:
        changes = batches.run([identify, *before])
    else:
        batches.run(before)
        assert batches.personal("u:7") == []
        changes = batches.run([identify])
    assert "u:7" in changes.touched_visitors()
    assert set(batches.recent("u:7")) == {"1", "2"}
    assert {"10", "20"} <= set(batches.personal("u:7"))
    assert "page_views:malformed" not in batches.r.hgetall(keys.pipeline_counters())


def test_identify_keeps_the_users_own_history_and_counts_once(batches):
    batches.run([batches.row("page_view", "u:8", "5", seconds_ago=600)])
    batches.run([batches.row("page_view", "s:anon8", "6")])
    identify = batches.row("identify", "u:8", None, previous="s:anon8", seconds_ago=1)
    batches.run([identify])
    assert batches.recent("u:8") == ["6", "5"]  # newest first
    batches.run([identify])  # the same event again: a duplicate
    counters = batches.r.hgetall(keys.pipeline_counters())
    assert counters["page_views:duplicate"] == "1"
    assert batches.recent("u:8") == ["6", "5"]


@pytest.mark.parametrize("previous", [None, "", "u:3", "x:1", "s:" + "a" * 70])
def test_identify_without_a_valid_anonymous_visitor_is_malformed(batches, previous):
    batches.run([batches.row("identify", "u:9", None, previous=previous)])
    counters = batches.r.hgetall(keys.pipeline_counters())
    assert counters["page_views:malformed"] == "1"
    assert "page_views:applied" not in counters
