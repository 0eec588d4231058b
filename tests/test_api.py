import json

import pytest
from django.test import Client

from reco_plugin import keys

from .conftest import put_catalog, put_list

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_client(backend):
    """A client that, like a browser, must send the CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.get("/reco/api/recommendations/")  # a first request, as a page load would be
    return client


def post_events(client, body, token=True):
    headers = {}
    if token:
        from django.middleware.csrf import _get_new_csrf_string

        secret = _get_new_csrf_string()
        client.cookies["csrftoken"] = secret
        headers["HTTP_X_CSRFTOKEN"] = secret
    return client.post(
        "/reco/api/events/",
        data=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        **headers,
    )


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        {},
        {"type": "purchase", "product_id": "1"},  # only the server reports purchases
        {"type": "click"},
        {"type": "click", "product_id": ""},
        {"type": "click", "product_id": "1", "context": "x"},
        {"type": "click", "product_id": "1", "context": {"page": {"nested": 1}}},
        {"type": "click", "product_id": "1", "visitor_id": "u:1"},
        {"events": []},
        {"events": [{"type": "click", "product_id": "1"}] * 51},
        {"events": [{"type": "click", "product_id": "1"}, {"type": "bogus", "product_id": "2"}]},
    ],
)
def test_malformed_beacon_is_a_400_with_a_json_error_and_emits_nothing(
    browser_client, backend, body
):
    response = post_events(browser_client, body)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert "error" in response.json()
    assert backend.sent == []


def test_beacon_without_csrf_token_is_refused(browser_client, backend):
    response = post_events(browser_client, {"type": "click", "product_id": "1"}, token=False)
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert backend.sent == []


def test_click_beacon_is_emitted_for_the_session_visitor(browser_client, backend):
    body = {
        "type": "click",
        "product_id": "42",
        "context": {"reco_id": "abc", "strategy": "similar"},
    }
    response = post_events(browser_client, body)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    [(topic, key, event)] = backend.sent
    assert topic == "user_clicks"
    assert event["type"] == "click" and event["product_id"] == "42"
    assert event["context"] == {"reco_id": "abc", "strategy": "similar"}
    opaque = browser_client.session["reco_visitor"]
    assert key == event["visitor_id"] == f"s:{opaque}"


def test_batch_beacon_emits_each_event(browser_client, backend):
    body = {"events": [{"type": "impression", "product_id": str(i)} for i in range(5)]}
    assert post_events(browser_client, body).status_code == 202
    assert [e["product_id"] for e in backend.events("impression")] == [str(i) for i in range(5)]
    assert {e["visitor_id"] for e in backend.events()} == {backend.events()[0]["visitor_id"]}


def test_recommendations_blend_personal_similar_and_trending(client, r):
    put_catalog(r, range(1, 10))
    client.get("/reco/api/recommendations/")
    put_list(r, keys.trending(), [7, 8, 9])
    put_list(r, keys.product_similar("1"), [4, 5, 1])
    response = client.get("/reco/api/recommendations/?product=1&limit=5")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["product_id"] for i in items] == ["4", "5", "7", "8", "9"]
    assert [i["strategy"] for i in items] == [
        "similar",
        "similar",
        "trending",
        "trending",
        "trending",
    ]
    first = items[0]
    assert (
        first["title"] == "Film 4" and first["url"] == "/products/4/" and first["price"] == "9.99"
    )
    assert first["reco_id"] and first["position"] == 0


def test_personal_list_comes_first_and_skips_unknown_or_out_of_stock(client, r, make_product):
    make_product(1)
    put_catalog(r, [2, 3, 4])
    r.hset(keys.catalog_product("3"), "in_stock", "0")
    client.get("/products/1/")  # starts the session
    visitor = f"s:{client.session['reco_visitor']}"
    put_list(r, keys.visitor_recommendations(visitor), [99, 3, 2, 4])
    items = client.get("/reco/api/recommendations/").json()["items"]
    assert [(i["product_id"], i["strategy"]) for i in items] == [
        ("2", "personal"),
        ("4", "personal"),
    ]


def test_similar_and_trending_endpoints(client, r):
    put_catalog(r, [1, 2, 3], category="Drama")
    put_catalog(r, [4], category="Comedy")
    put_list(r, keys.product_similar("1"), [2, 3])
    put_list(r, keys.trending(), [4, 3, 2])
    assert [
        i["product_id"] for i in client.get("/reco/api/products/1/similar/").json()["items"]
    ] == ["2", "3"]
    drama = client.get("/reco/api/trending/?category=Drama").json()["items"]
    assert [i["product_id"] for i in drama] == ["3", "2"]
    assert [i["product_id"] for i in client.get("/reco/api/trending/?limit=1").json()["items"]] == [
        "4"
    ]


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=51", "product=" + "x" * 65])
def test_bad_query_is_a_400(client, redis_url, query):
    response = client.get(f"/reco/api/recommendations/?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid request"


def test_openapi_schema_lists_the_routes(client, redis_url):
    response = client.get("/reco/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert {"/reco/api/recommendations/", "/reco/api/events/", "/reco/api/trending/"} <= set(paths)


@pytest.fixture
def logged_in(backend, django_user_model):
    user = django_user_model.objects.create_user("shopper", password="x")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/reco/api/recommendations/")
    return client, user


def test_a_logged_in_users_beacon_events_carry_their_user_id(logged_in, backend):
    client, user = logged_in
    response = post_events(client, {"type": "click", "product_id": "42"})
    assert response.status_code == 202
    [(_, key, event)] = backend.sent
    assert key == event["visitor_id"] == f"u:{user.pk}"


def test_a_logged_in_user_gets_their_own_list_from_the_api(logged_in, r):
    client, user = logged_in
    put_catalog(r, [7, 8])
    put_list(r, keys.visitor_recommendations(f"u:{user.pk}"), [7, 8])
    items = client.get("/reco/api/recommendations/?limit=2").json()["items"]
    assert [(i["product_id"], i["strategy"]) for i in items] == [
        ("7", "personal"),
        ("8", "personal"),
    ]
