"""The benchmarks measure what they claim: the middleware benchmark's two
handlers differ only in emitting, and the producer benchmark's peer sends the
records the plugin would."""

import pytest
from django.contrib.sessions.backends.db import SessionStore

from bench import middleware_overhead, producer_throughput
from bench.__main__ import AVAILABLE, PLANNED
from reco_plugin import schema
from reco_plugin.visitor import SESSION_KEY


def test_both_benchmarks_are_registered():
    for name in ("middleware_overhead", "producer_throughput"):
        assert name in AVAILABLE and name not in PLANNED


@pytest.mark.django_db
def test_only_the_handler_with_the_middleware_emits(backend, make_product):
    for pk in (1, 2):
        make_product(pk)
    session = SessionStore()
    session[SESSION_KEY] = "bench-visitor"
    session.create()
    environs = [middleware_overhead.environ_for(pk, session.session_key, "b" * 32) for pk in (1, 2)]
    with_middleware, without = middleware_overhead.build_handlers()

    assert len(middleware_overhead.timed_requests(without, environs, 4).wall) == 4
    assert backend.sent == []
    middleware_overhead.timed_requests(with_middleware, environs, 4)
    assert [(e["visitor_id"], e["product_id"]) for e in backend.events("page_view")] == [
        ("s:bench-visitor", "1"),
        ("s:bench-visitor", "2"),
    ] * 2
    assert SessionStore(session.session_key).load() == {SESSION_KEY: "bench-visitor"}


def test_the_raw_peer_sends_the_plugins_records():
    views = producer_throughput.page_views(200)
    records = producer_throughput.encoded(views)
    assert len({visitor for visitor, _, _ in views}) > 100  # keys spread over partitions
    for (visitor, product, context), (key, value) in zip(views, records, strict=True):
        event = schema.decode(value)
        assert key == visitor.encode()
        assert (event["type"], event["visitor_id"], event["product_id"]) == (
            schema.PAGE_VIEW,
            visitor,
            product,
        )
        assert event["context"] == context
        rebuilt = schema.make_event(schema.PAGE_VIEW, visitor, product, context=context)
        assert len(schema.encode(rebuilt)) == len(value)


def test_the_second_data_set_says_how_to_fetch_it_when_missing(tmp_path):
    from bench import datasets

    with pytest.raises(datasets.DatasetMissing, match="make setup"):
        datasets.events(tmp_path / "out.csv", days=1, cache=tmp_path)


def test_the_ta_feng_baskets_become_a_replayable_file(tmp_path):
    from bench import datasets
    from reco_plugin.replay import read_rows

    try:
        datasets.wheel_path()
    except datasets.DatasetMissing:
        pytest.skip("make setup fetches the Ta Feng data")
    written = datasets.events(tmp_path / "tafeng.csv", days=2)
    rows = read_rows(tmp_path / "tafeng.csv")
    assert len(rows) == written > 1000
    assert {row.type for row in rows} == {"purchase"}
    assert all(row.category for row in rows) and rows[0].ts_ms <= rows[-1].ts_ms
    # a basket: one customer's items on a day, one second apart
    first = [row for row in rows if row.visitor_id == rows[0].visitor_id][:2]
    assert len(first) == 2 and first[1].ts_ms - first[0].ts_ms == 1000


def test_state_size_puts_each_key_in_its_family():
    from bench import state_size
    from bench.__main__ import AVAILABLE
    from reco_plugin import keys

    assert AVAILABLE["state_size"] == "bench.state_size"
    expected = {
        keys.product_covisits("7"): ("product", "covisits"),
        keys.product_similar("a:b"): ("product", "similar"),
        keys.product_bought_with("7"): ("product", "bought-with"),
        keys.product_clock(): ("product", "clock"),
        keys.popularity(): ("product", "popularity"),
        keys.visitor_seen("s:ml-1"): ("visitor", "seen"),
        keys.visitor_recommendations("u:42"): ("visitor", "recs"),
        keys.seen_events("page_views", 3, 9): ("event", "dedup-ids"),
        keys.seen_index(): ("event", "dedup-index"),
        keys.trending(): ("trending", "list"),
        keys.trending_window_bucket("long", 3600, "Drama"): ("trending", "category-bucket"),
        keys.pipeline_offsets(): ("fixed", "pipeline"),
        keys.popular(): ("fixed", "popular"),
    }
    assert {key: state_size.family_of(key) for key in expected} == expected
    assert state_size.product_of(keys.product_similar("a:b")) == "a:b"
    assert state_size.product_of(keys.product_clock()) is None


def test_state_size_replays_the_demo_history_with_genres(settings):
    from bench import state_size
    from stack.services import REPO

    # the demo shop's MovieLens reader finds the data under the shop's BASE_DIR
    settings.BASE_DIR = REPO
    events = list(state_size.movielens_events(ratings=200))
    # every rating a page view, a rating of 4 or 5 also an add-to-cart
    assert sum(e["type"] == schema.PAGE_VIEW for e in events) == 200 < len(events)
    assert all(e["category"] and e["visitor_id"].startswith("s:ml-") for e in events)


def test_the_synthetic_shop_is_mostly_page_views_of_a_few_popular_products():
    from collections import Counter

    from bench import state_size

    events = list(state_size.synthetic_events(visitors=2000, products=1000))
    assert len({e["visitor_id"] for e in events}) == 2000 and 2000 < len(events) <= 6000
    kinds = Counter(e["type"] for e in events)
    assert kinds[schema.PAGE_VIEW] > 0.8 * len(events) and kinds[schema.PURCHASE] > 0
    popular = Counter(e["product_id"] for e in events).most_common(10)
    assert sum(n for _, n in popular) > 0.2 * len(events)
    assert all(e["ts"] < schema.now_ms() for e in events)


@pytest.mark.stack
def test_state_size_measures_the_jobs_redis():
    from bench import state_size

    result = state_size.run(
        log=lambda line: None, visitors=300, products=200, data_sets=("synthetic",)
    )
    assert result["name"] == "state_size" and result["unit"] == "bytes/visitor"
    figures = result["synthetic"]
    assert result["value"] == figures["bytes_per_visitor"] > 0
    assert figures["applied"] == figures["events"] > 300 and figures["not_applied"] == {}
    families = figures["families"]
    assert sum(f["bytes"] for f in families.values()) == figures["keys_bytes"]
    for family in families.values():
        assert sum(k["bytes"] for k in family["kinds"].values()) == family["bytes"]
    # every visitor has keys of their own; a product seen once may have none
    assert figures["visitors_with_keys"] == figures["visitors"] == 300
    assert 0 < figures["products_with_keys"] <= figures["products"] <= 200
    assert figures["bytes_per_product"] > 0 and figures["bytes_per_visitor"] > 0
    # a small history: every applied event's id is held, a 36-character id in a set
    assert figures["dedup_ids_held"] == figures["applied"]
    assert 36 < figures["bytes_per_dedup_id"] < 200
    assert figures["bytes_per_event"] == figures["bytes_per_dedup_id"]
    # Redis's own memory grew by at least the keys it holds
    assert figures["used_memory_bytes"] >= 0.9 * figures["keys_bytes"]
