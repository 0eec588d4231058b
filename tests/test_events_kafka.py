"""Every source of events, through the shop's own request handling, onto a real
Kafka broker; and a broker outage that costs the shop neither time nor events."""

import os
import statistics
import time
import uuid
from decimal import Decimal

import pytest
from django.test import Client

from reco_plugin import schema
from stack.pipeline import read_all
from stack.services import Ports, Stack, stop_process

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

TOPICS = list(schema.DEFAULT_TOPICS.values())


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("events"), Ports.free(), log=lambda line: None)
    try:
        stack.start_kafka()
        stack.manage("reco_topics", quiet=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def kafka_backend(kafka, settings, redis_url):
    """The plugin's real Kafka backend, producing to the test broker."""
    from reco_plugin.backends import get_backend

    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "EVENT_BACKEND": {"BACKEND": "reco_plugin.backends.kafka.KafkaBackend"},
        "KAFKA": {"bootstrap.servers": f"127.0.0.1:{kafka.ports.kafka}"},
    }
    backend = get_backend()
    yield backend
    backend.flush(10)


@pytest.fixture
def films(db):
    from demo_shop.catalog.models import Product

    return Product.objects.bulk_create(
        Product(id=pk, name=f"Film {pk}", category="Drama", price=Decimal("4.00"))
        for pk in range(1, 6)
    )


def post_json(client, path, body):
    from django.middleware.csrf import _get_new_csrf_string

    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    return client.post(path, body, content_type="application/json", HTTP_X_CSRFTOKEN=secret)


def shop_a_little(client):
    """One of every kind of event a shopper makes."""
    assert client.get("/products/1/").status_code == 200
    events = {
        "events": [
            {"type": "impression", "product_id": "2", "context": {"reco_id": "r", "position": "0"}},
            {
                "type": "click",
                "product_id": "2",
                "context": {"reco_id": "r", "strategy": "similar"},
            },
        ]
    }
    assert post_json(client, "/reco/api/events/", events).status_code == 202
    assert client.post("/cart/add/2/").status_code == 302
    assert client.post("/cart/add/3/").status_code == 302
    assert client.post("/cart/remove/3/").status_code == 302
    assert client.post("/checkout/").status_code == 200


def test_every_source_lands_in_its_topic_under_the_right_visitor(
    kafka, kafka_backend, films, django_user_model
):
    anonymous = Client()
    shop_a_little(anonymous)
    anonymous_id = f"s:{anonymous.session['reco_visitor']}"

    user = django_user_model.objects.create_user(f"u{uuid.uuid4().hex[:8]}", password="pw")
    member = Client()
    member.get("/products/4/")
    before_login = f"s:{member.session['reco_visitor']}"
    assert (
        member.post("/accounts/login/", {"username": user.username, "password": "pw"}).status_code
        == 302
    )
    shop_a_little(member)
    assert kafka_backend.flush(20) == 0

    records = read_all(f"127.0.0.1:{kafka.ports.kafka}", TOPICS)
    for record in records:
        schema.validate(record[2])
    expected = [
        ("page_views", "page_view", "1", None),
        ("impressions", "impression", "2", None),
        ("user_clicks", "click", "2", None),
        ("cart_events", "add_to_cart", "2", 1),
        ("cart_events", "add_to_cart", "3", 1),
        ("cart_events", "remove_from_cart", "3", 1),
        ("purchase_events", "purchase", "2", 1),
    ]

    def ordered(rows):  # topics are read in no particular order
        return sorted(rows, key=lambda row: [str(v) for v in row])

    def of(visitor_id):
        return ordered(
            (topic, e["type"], e.get("product_id"), e.get("quantity"))
            for topic, key, e in records
            if key == e["visitor_id"] == visitor_id
        )

    assert of(anonymous_id) == ordered(expected)
    member_id = f"u:{user.pk}"
    assert of(member_id) == ordered([("page_views", "identify", None, None), *expected])
    [identify] = [
        e for _, _, e in records if e["type"] == "identify" and e["visitor_id"] == member_id
    ]
    assert identify["context"] == {"previous": before_login}
    assert of(before_login) == [("page_views", "page_view", "4", None)]
    purchase = next(e for _, _, e in records if e["type"] == "purchase")
    assert purchase["price"] == 4.0


def test_kafka_stopped_pages_answer_quickly_and_every_event_arrives_after(
    kafka, kafka_backend, films
):
    bootstrap = f"127.0.0.1:{kafka.ports.kafka}"
    service = next(s for s in kafka.services if s.name == "kafka")
    client = Client()
    client.get("/products/5/")  # the visitor's session exists
    visitor = f"s:{client.session['reco_visitor']}"
    assert kafka_backend.flush(20) == 0
    stop_process(service.process)
    try:
        timings = []
        for _ in range(100):
            started = time.perf_counter()
            assert client.get("/products/1/").status_code == 200
            timings.append(time.perf_counter() - started)
        outage = {
            "p50_ms": round(statistics.median(timings) * 1000, 2),
            "p95_ms": round(statistics.quantiles(timings, n=20)[-1] * 1000, 2),
            "max_ms": round(max(timings) * 1000, 2),
        }
        assert kafka_backend.stats()["queued"] >= 100
    finally:
        kafka._launch(service)
        deadline = time.monotonic() + 90
        while not service.ready():
            assert time.monotonic() < deadline, "Kafka did not come back"
            time.sleep(0.5)
    started = time.monotonic()
    assert kafka_backend.flush(120) == 0
    delivered_after = time.monotonic() - started
    arrived = [
        e
        for _, key, e in read_all(bootstrap, ["page_views"])
        if key == visitor and e["product_id"] == "1"
    ]
    print(f"outage: 100 page views {outage}; all delivered {delivered_after:.1f} s after restart")
    with open(os.environ.get("RECO_OUTAGE_REPORT", os.devnull), "a") as report:
        report.write(f"{outage} delivered_after_s={delivered_after:.1f}\n")
    assert len(arrived) == 100
    assert len({e["event_id"] for e in arrived}) == 100
    # A page that waited on the broker would wait seconds (the producer's
    # reconnect back-off); the bounds leave room for a scheduling pause on a
    # busy two-core machine, which once made one page of a hundred 115 ms.
    assert outage["p95_ms"] < 50 and outage["max_ms"] < 1000, outage
    stats = kafka_backend.stats()
    assert stats["failed"] == 0 and stats["dropped"] == 0


def test_the_backend_hands_over_bursts_and_single_events_after_a_quiet_spell(kafka):
    from reco_plugin.backends.kafka import SLEEP_AFTER_SECONDS, KafkaBackend

    bootstrap = f"127.0.0.1:{kafka.ports.kafka}"
    topic = f"handover-{uuid.uuid4().hex[:6]}"
    backend = KafkaBackend({"bootstrap.servers": bootstrap})
    try:
        for n in range(2000):  # a burst: most are produced by the sender itself
            backend.send(topic, f"s:{n % 7}", schema.make_event("page_view", f"s:{n % 7}", n))
        assert backend.flush(30) == 0
        time.sleep(SLEEP_AFTER_SECONDS + 0.5)  # the hand-over thread is asleep now
        assert backend._asleep
        backend.send(topic, "s:late", schema.make_event("page_view", "s:late", "1"))
        assert backend.flush(30) == 0
        assert backend.stats() == {"delivered": 2001, "failed": 0, "dropped": 0, "queued": 0}
    finally:
        backend.close()
    records = read_all(bootstrap, [topic])
    assert len(records) == 2001
    assert len({e["event_id"] for _, _, e in records}) == 2001
