import json

import pytest
from django.test import Client

from reco_plugin import keys

from .conftest import put_catalog, put_list, put_policy

pytestmark = pytest.mark.django_db


def test_recommendations_blend_personal_similar_and_trending(client, r):
    put_catalog(r, range(1, 10))
    client.get("/reco/api/recommendations/")
    put_list(r, keys.trending(), [7, 8, 9])
    put_list(r, keys.product_similar("1"), [4, 5, 1])
    put_policy(r, "similar", "trending")
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
    # the policy's draws all favour similar: its slots were certain
    assert [i["propensity"] for i in items] == [1.0, 1.0, 1.0, 1.0, 1.0]
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
    put_list(r, keys.trending_list("short", "Drama"), [3])
    put_list(r, keys.trending_list("long", "Drama"), [3, 2])
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


def test_a_logged_in_user_gets_their_own_list_from_the_api(logged_in, r):
    client, user = logged_in
    put_catalog(r, [7, 8])
    put_list(r, keys.visitor_recommendations(f"u:{user.pk}"), [7, 8])
    items = client.get("/reco/api/recommendations/?limit=2").json()["items"]
    assert [(i["product_id"], i["strategy"]) for i in items] == [
        ("7", "personal"),
        ("8", "personal"),
    ]


def test_every_strategy_of_a_product_page_can_fill_slots(client, r):
    put_catalog(r, range(1, 20), category="Drama")
    put_list(r, keys.product_similar("1"), [2])
    put_list(r, keys.product_fbt("1"), [3])
    put_list(r, keys.product_retrained("1"), [4])
    put_list(r, keys.trending_list("long", "Drama"), [5])
    put_list(r, keys.trending(), [6])
    put_list(r, keys.popular(), [7])
    put_policy(r, "retrained", "fbt", "similar", "category", "trending", "popular")
    items = client.get("/reco/api/recommendations/?product=1&limit=6").json()["items"]
    assert [(i["product_id"], i["strategy"]) for i in items] == [
        ("4", "retrained"),
        ("3", "fbt"),
        ("2", "similar"),
        ("5", "category"),
        ("6", "trending"),
        ("7", "popular"),
    ]


def test_what_the_visitor_has_seen_is_not_served(client, r, make_product):
    make_product(1)
    put_catalog(r, [2, 3, 4])
    client.get("/products/1/")
    visitor = f"s:{client.session['reco_visitor']}"
    r.zadd(keys.visitor_seen(visitor), {"2": 1, "4": 2})
    put_list(r, keys.popular(), [2, 3, 4])
    items = client.get("/reco/api/recommendations/").json()["items"]
    assert [i["product_id"] for i in items] == ["3"]
