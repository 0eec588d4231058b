"""How a large batch is partitioned the direct way (``spark_jobs.spread``),
and when it must be the exact way: plain values, no Spark."""

from spark_jobs import spread
from spark_jobs.score import later_copies


def test_the_visitors_a_login_joins_have_one_owner():
    logins = [
        ("u:1", "s:a"),
        ("u:1", "s:a"),
        # one anonymous visitor, two users
        ("u:2", "s:b"),
        ("u:3", "s:b"),
        # a chain: s:c as s:d, then s:d as u:4, met in either order
        ("u:4", "s:d"),
        ("s:d", "s:c"),
    ]
    assert spread.owners(logins) == {
        "u:1": "s:a",
        "s:a": "s:a",
        "u:2": "s:b",
        "u:3": "s:b",
        "s:b": "s:b",
        "u:4": "s:c",
        "s:d": "s:c",
        "s:c": "s:c",
    }
    assert spread.owners([]) == {}


def test_a_large_group_of_visitors_joined_by_logins_is_logged(caplog):
    spread._log_largest(spread.owners([(f"u:{n}", "s:shared") for n in range(spread.LARGE_GROUP)]))
    assert f"{spread.LARGE_GROUP + 1} visitors are joined by logins" in caplog.text
    caplog.clear()
    spread._log_largest(spread.owners([("u:1", "s:a")]))
    assert not caplog.text


def row(topic, partition, offset, event_id):
    return (topic, partition, offset, 1, "page_view", event_id, "s:a", "1", 0)


def test_a_later_copy_is_one_after_the_first_record_of_its_event_id_in_kafka_order():
    rows = [
        row("page_views", 1, 7, "b"),
        row("page_views", 0, 9, "a"),
        row("cart_events", 0, 3, "a"),  # first: topics sort before partitions
        row("page_views", 1, 2, "b"),  # first of b, met after a later copy
        row("page_views", 0, 1, None),
        row("page_views", 0, 4, None),  # no event id: never a copy
        row("page_views", 0, 5, ""),
        row("page_views", 0, 6, ""),
    ]
    assert later_copies(rows) == {
        ("page_views", 0, 9),
        ("page_views", 1, 7),
        ("page_views", 0, 6),
    }
