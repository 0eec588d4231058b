"""``manage.py reco_import``: the shop's order history and CSV exports sent as
events with their original times, once, resumable."""

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from reco_plugin import importing
from reco_plugin.models import ImportProgress

pytestmark = pytest.mark.django_db(transaction=True)

DAY = dt.timedelta(days=1)


@pytest.fixture
def shop(db, django_user_model):
    """Three customers' orders over the last weeks, a guest's, and one older
    than the horizon (90 days)."""
    from demo_shop.catalog.models import Order, OrderLine, Product

    Product.objects.bulk_create(
        Product(id=pk, name=f"Lamp {pk}", category="Lamps", price=Decimal("9.50"))
        for pk in range(1, 7)
    )
    users = [django_user_model.objects.create(username=f"c{n}") for n in range(3)]
    now = timezone.now()
    lines = []

    def order(user, days_ago, *products):
        o = Order.objects.create(user=user, total=1)
        Order.objects.filter(pk=o.pk).update(placed=now - days_ago * DAY)
        for n, product in enumerate(products):
            lines.append(
                OrderLine.objects.create(
                    order=o, product_id=product, quantity=n + 1, unit_price=Decimal("9.50")
                )
            )
        return o

    order(users[0], 30, 1, 2)
    order(users[1], 20, 1, 2, 3)
    order(users[2], 10, 4)
    order(None, 5, 5, 6)  # a guest
    order(users[0], 120, 3)  # before the horizon
    return lines


def imported(backend):
    """What was sent, in the order it was sent."""
    return backend.events()


def run(*argv):
    out, err = StringIO(), StringIO()
    call_command("reco_import", *argv, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_order_lines_are_sent_as_purchases_with_their_times(backend, shop):
    backend.clear()  # the signals' live events of the fixture's lines
    out, _ = run("--orders")
    events = imported(backend)
    assert [(e["visitor_id"], e["product_id"], e["quantity"]) for e in events] == [
        (f"u:{shop[0].order.user_id}", "1", 1),
        (f"u:{shop[0].order.user_id}", "2", 2),
        (f"u:{shop[2].order.user_id}", "1", 1),
        (f"u:{shop[2].order.user_id}", "2", 2),
        (f"u:{shop[2].order.user_id}", "3", 3),
        (f"u:{shop[5].order.user_id}", "4", 1),
        (f"s:order-{shop[6].order_id}", "5", 1),
        (f"s:order-{shop[6].order_id}", "6", 2),
    ]
    assert {e["type"] for e in events} == {"purchase"}
    assert {e["price"] for e in events} == {9.5}
    placed = shop[0].order.__class__.objects.get(pk=shop[0].order_id).placed
    assert events[0]["ts"] == int(placed.timestamp() * 1000)
    assert "8 events sent, 1 older than the horizon" in out
    record = ImportProgress.objects.get(source="orders:catalog.orderline")
    assert record.finished and record.events_sent == 8
    assert record.counts == {importing.TOO_OLD: 1}


def test_an_import_and_the_live_signal_give_an_order_line_the_same_id(backend, shop):
    # the customers' lines (the guest's have no visitor outside a request)
    live = {e["event_id"] for e in backend.events("purchase")}
    assert len(live) == 7
    backend.clear()
    run("--orders")
    again = {e["event_id"] for e in backend.events()}
    # each with its live event's id, but the line older than the horizon
    old = importing.order_line_event_id("catalog.OrderLine", shop[-1].pk)
    guest = {importing.order_line_event_id("catalog.OrderLine", line.pk) for line in shop[6:8]}
    assert again == live - {old} | guest


def test_a_second_run_sends_nothing_and_later_orders_come_from_the_signals(backend, shop):
    from demo_shop.catalog.models import Order, OrderLine

    run("--orders")
    backend.clear()
    o = Order.objects.create(user=shop[0].order.user, total=1)
    OrderLine.objects.create(order=o, product_id=6, quantity=1, unit_price=1)
    live = backend.events()
    assert len(live) == 1  # the signal's
    backend.clear()
    _, err = run("--orders")
    assert backend.events() == []
    assert "imported before" in err and "nothing to send" in err
    assert "importing" not in err  # no progress bar for nothing


class FlakyBackend:
    """Kafka that stops acknowledging after ``ok`` events."""

    def __init__(self, inner, ok):
        self.inner, self.ok = inner, ok

    def send(self, topic, key, event):
        self.inner.send(topic, key, event)

    def flush(self, timeout=10.0):
        return max(0, len(self.inner.sent) - self.ok)

    def stats(self):
        return {}


def chunks_of_three_to(monkeypatch, kafka) -> None:
    monkeypatch.setattr(importing, "CHUNK", 3)
    monkeypatch.setattr("reco_plugin.backends.get_backend", lambda: kafka)


def test_an_interrupted_import_goes_on_after_what_kafka_acknowledged(backend, shop, monkeypatch):
    backend.clear()
    chunks_of_three_to(monkeypatch, FlakyBackend(backend, 3))
    with pytest.raises(CommandError, match="did not acknowledge 3 of the last 3 events"):
        run("--orders")
    first = [e["event_id"] for e in imported(backend)]
    record = ImportProgress.objects.get()
    assert not record.finished and record.events_sent == 3
    monkeypatch.undo()
    backend.clear()
    run("--orders")
    rest = [e["event_id"] for e in imported(backend)]
    # every line once over the two runs, but the three events Kafka did not
    # acknowledge, sent again with the same ids
    assert len(rest) == 5 and len(set(first) | set(rest)) == 8
    record.refresh_from_db()
    assert record.finished and record.events_sent == 8


def test_a_lost_record_sends_the_same_ids_again(backend, shop):
    backend.clear()
    run("--orders")
    first = sorted(e["event_id"] for e in backend.events())
    ImportProgress.objects.all().delete()  # e.g. a database restored from before
    backend.clear()
    run("--orders")
    assert sorted(e["event_id"] for e in backend.events()) == first


def test_until_bounds_the_history_and_cannot_change_later(backend, shop):
    backend.clear()
    cut = (timezone.now() - 15 * DAY).isoformat()
    out, _ = run("--orders", "--until", cut)
    assert "5 events sent" in out  # the orders of 30 and 20 days ago
    with pytest.raises(CommandError, match="--until cannot change it"):
        run("--orders", "--until", timezone.now().isoformat())
    with pytest.raises(CommandError, match="not an ISO 8601 time"):
        run("--orders", "--until", "yesterday")


def test_csv_events_are_sent_with_stable_ids(backend, tmp_path, db):
    now = timezone.now().timestamp()
    path = tmp_path / "export.csv"
    path.write_text(
        "visitor_id,product_id,type,ts,category\n"
        f"v1,1,page_view,{now - 300},Lamps\n"
        f"v1,2,page_view,{now - 200},Lamps\n"
        f"v1,2,page_view,{now - 200},Lamps\n"
        f"v2,2,purchase,{now - 100},\n"
        f"v3,3,page_view,{now - 200 * 86400},\n"
    )
    out, _ = run("--csv", str(path))
    events = imported(backend)
    assert [(e["visitor_id"], e["product_id"], e["type"]) for e in events] == [
        ("u:v1", "1", "page_view"),
        ("u:v1", "2", "page_view"),
        ("u:v1", "2", "page_view"),
        ("u:v2", "2", "purchase"),
    ]
    assert len({e["event_id"] for e in events}) == 4  # identical rows are two views
    assert events[0]["category"] == "Lamps"
    assert "4 events sent, 1 older than the horizon" in out
    # a file given in milliseconds is refused, not read as the far future
    millis = tmp_path / "millis.csv"
    millis.write_text(f"visitor_id,product_id,type,ts\nv1,1,page_view,{int(now * 1000)}\n")
    with pytest.raises(CommandError, match="line 2: .* give epoch seconds, not milliseconds"):
        run("--csv", str(millis))
    ids = sorted(e["event_id"] for e in events)
    # the same file under another name is the same source: nothing sent
    backend.clear()
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    run("--csv", str(copy))
    assert backend.events() == []
    ImportProgress.objects.all().delete()
    run("--csv", str(copy))
    assert sorted(e["event_id"] for e in backend.events()) == ids


def test_bad_input_is_refused_with_a_reason(backend, tmp_path, db, settings):
    with pytest.raises(CommandError, match="nothing to import"):
        run()
    bad = tmp_path / "bad.csv"
    bad.write_text("visitor_id,product_id,type,ts\nv1,1,teleport,1\n")
    with pytest.raises(CommandError, match="line 2: type 'teleport'"):
        run("--csv", str(bad))
    config = dict(settings.RECO_PLUGIN["ORDER_LINE_MODEL"])
    del config["TIME"]
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "ORDER_LINE_MODEL": config}
    with pytest.raises(CommandError, match="has no TIME"):
        run("--orders")
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "ORDER_LINE_MODEL": {**config, "TIME": "when"}}
    with pytest.raises(CommandError, match="'when' does not lead to a date or time"):
        run("--orders")
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "ORDER_LINE_MODEL": {**config, "TIME": "order.placed", "MODEL": "catalog.Nothing"},
    }
    with pytest.raises(CommandError, match="names a model that is not installed"):
        run("--orders")


class RefusingBackend(FlakyBackend):
    """Kafka that refuses the ``refused``-th event, reported while the chunk is
    still being sent (librdkafka's delivery callback), not while it is flushed."""

    def __init__(self, inner, refused):
        super().__init__(inner, ok=10**9)
        self.refused, self.failed = refused, 0

    def send(self, topic, key, event):
        self.inner.send(topic, key, event)
        if len(self.inner.sent) == self.refused:
            self.failed += 1

    def flush(self, timeout=10.0):
        return 0

    def stats(self):
        return {"failed": self.failed}


def test_an_event_refused_while_its_chunk_is_sent_stops_the_import(backend, shop, monkeypatch):
    backend.clear()
    chunks_of_three_to(monkeypatch, RefusingBackend(backend, 5))
    with pytest.raises(CommandError, match="did not acknowledge 1 of the last 3 events"):
        run("--orders")
    record = ImportProgress.objects.get()
    assert record.events_sent == 3 and not record.finished  # the first chunk only


class InterruptedBackend(FlakyBackend):
    """Ctrl-C while the ``after``-th event is sent."""

    def __init__(self, inner, after):
        super().__init__(inner, ok=10**9)
        self.after = after

    def send(self, topic, key, event):
        if len(self.inner.sent) == self.after:
            raise KeyboardInterrupt
        self.inner.send(topic, key, event)

    def flush(self, timeout=10.0):
        return 0


def test_ctrl_c_stops_with_a_message_and_the_next_run_goes_on(backend, shop, monkeypatch):
    backend.clear()
    chunks_of_three_to(monkeypatch, InterruptedBackend(backend, 4))
    with pytest.raises(
        CommandError,
        match="interrupted: the import is recorded up to the last events Kafka acknowledged",
    ):
        run("--orders")
    record = ImportProgress.objects.get()
    assert record.events_sent == 3 and not record.finished  # the first chunk
    first = [e["event_id"] for e in imported(backend)]
    monkeypatch.undo()
    backend.clear()
    out, err = run("--orders")
    assert "going on after" in err
    rest = [e["event_id"] for e in imported(backend)]
    # the fourth event (sent, not acknowledged) is sent again, with its id
    assert rest[0] == first[3] and len(set(first) | set(rest)) == 8
    assert "5 events sent" in out


def test_csv_rows_at_or_after_until_are_counted_not_sent(backend, tmp_path, db):
    now = timezone.now()
    path = tmp_path / "late.csv"
    path.write_text(
        "visitor_id,product_id,type,ts\n"
        f"v1,1,page_view,{(now - 3 * DAY).timestamp()}\n"
        f"v1,2,page_view,{(now - DAY).timestamp()}\n"
    )
    out, err = run("--csv", str(path), "--until", (now - 2 * DAY).isoformat())
    assert [e["product_id"] for e in imported(backend)] == ["1"]
    assert "2 rows to import" in err
    assert "1 events sent, 1 at or after --until" in out
