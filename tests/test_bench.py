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
