import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient

pytestmark = pytest.mark.django_db


def test_product_page_view_emits_a_page_view(client, backend, make_product):
    make_product(7)
    response = client.get("/products/7/", HTTP_REFERER="http://testserver/")
    assert response.status_code == 200
    [(topic, key, event)] = backend.sent
    assert topic == "page_views"
    assert event["type"] == "page_view" and event["product_id"] == "7"
    assert key == event["visitor_id"] == f"s:{client.session['reco_visitor']}"
    assert event["context"] == {"page": "/products/7/", "referrer": "http://testserver/"}


def test_events_carry_the_ip_user_agent_or_email_only_when_a_setting_asks(
    client, backend, make_product, settings
):
    from reco_plugin.backends import get_backend

    def last_context():
        # (a settings change starts a new backend)
        return get_backend().events()[-1]["context"]

    make_product(7)
    user = get_user_model().objects.create_user("bea", email="bea@example.org", password="x")
    client.force_login(user)
    headers = {"HTTP_USER_AGENT": "Mozilla/5.0 (X11)", "REMOTE_ADDR": "203.0.113.9"}
    client.get("/products/7/", HTTP_REFERER="https://search.example/?q=bea+smith#top", **headers)
    # by default none of them, and the referrer without what was typed into it
    assert last_context() == {
        "page": "/products/7/",
        "referrer": "https://search.example/",
    }
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "EVENT_REQUEST_FIELDS": ["ip", "user_agent"]}
    client.get("/products/7/", **headers)
    assert last_context() == {
        "page": "/products/7/",
        "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0 (X11)",
    }
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "EVENT_REQUEST_FIELDS": ["email"]}
    client.get("/products/7/", **headers)
    assert last_context() == {"page": "/products/7/", "email": "bea@example.org"}


def test_logged_in_visitor_is_the_user(client, backend, make_product):
    make_product(7)
    user = get_user_model().objects.create_user("ann", password="x")
    client.force_login(user)
    client.get("/products/7/")
    assert backend.events()[0]["visitor_id"] == f"u:{user.pk}"


def test_other_pages_missing_products_and_posts_emit_nothing(client, backend, make_product):
    make_product(7)
    client.get("/")
    client.get("/products/8/")  # 404
    client.get("/cart/")
    client.post("/cart/add/7/")
    assert backend.sent == []


def test_same_visitor_across_requests(client, backend, make_product):
    make_product(1)
    make_product(2)
    client.get("/products/1/")
    client.get("/products/2/")
    assert len({e["visitor_id"] for e in backend.events()}) == 1


async def test_async_stack_emits_too(backend, make_product):
    from asgiref.sync import sync_to_async

    await sync_to_async(make_product)(5)
    response = await AsyncClient().get("/products/5/")
    assert response.status_code == 200
    assert [e["product_id"] for e in backend.events("page_view")] == ["5"]


def test_kafka_outage_never_fails_the_request(client, settings, make_product):
    # A real Kafka backend pointed at a closed port: the page still renders.
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "EVENT_BACKEND": {"BACKEND": "reco_plugin.backends.kafka.KafkaBackend", "OPTIONS": {}},
        "KAFKA": {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1000},
    }
    make_product(3)
    assert client.get("/products/3/").status_code == 200
