import asyncio
import json
import threading
import time

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.test import Client
from rest_framework import serializers

import reco_plugin
from reco_plugin import keys

from .asgi_client import ASGIClient
from .conftest import put_catalog, put_list, put_policy

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["wsgi", "asgi"])
def client(request):
    """Each test through Django's test handler, then through the plugin's ASGI
    path (the reads in one thread hop)."""
    return Client() if request.param == "wsgi" else ASGIClient()


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
    schema = json.loads(response.content)
    assert {"/reco/api/recommendations/", "/reco/api/events/", "/reco/api/trending/"} <= set(
        schema["paths"]
    )
    # named, not drf-spectacular's "" and 0.0.0
    assert schema["info"]["title"] == "reco-plugin API"
    assert schema["info"]["version"] == reco_plugin.__version__


@pytest.mark.urls("tests.shop_api_urls")
def test_the_schema_lists_the_plugins_routes_not_the_shops(client, redis_url):
    response = client.get("/reco/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = set(json.loads(response.content)["paths"])
    assert "/reco/api/recommendations/" in paths
    assert not [p for p in paths if not p.startswith("/reco/")], paths


def test_a_shops_own_schema_title_and_version_are_kept(client, redis_url, settings, monkeypatch):
    from drf_spectacular.settings import spectacular_settings

    # as a shop's settings module sets them (drf-spectacular reads them once)
    settings.SPECTACULAR_SETTINGS = {"TITLE": "Our shop", "VERSION": "2.1"}
    monkeypatch.setattr(spectacular_settings, "TITLE", "Our shop")
    monkeypatch.setattr(spectacular_settings, "VERSION", "2.1")
    response = client.get("/reco/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert json.loads(response.content)["info"] == {"title": "Our shop", "version": "2.1"}


def test_the_openapi_schema_is_generated_without_warnings(client, redis_url, capsys):
    """drf-spectacular prints what it cannot describe (once per process): the
    session authenticator, the beacon's context, the beacon's second route."""
    from drf_spectacular.drainage import GENERATOR_STATS

    GENERATOR_STATS.reset()
    capsys.readouterr()
    response = client.get("/reco/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert capsys.readouterr().err == "" and not GENERATOR_STATS
    schema = json.loads(response.content)
    # what the warnings were about, described instead
    assert schema["components"]["securitySchemes"]["shopSession"]["in"] == "cookie"
    assert schema["paths"]["/reco/api/trending/"]["get"]["security"] == [{"shopSession": []}, {}]
    context = schema["components"]["schemas"]["BeaconEvent"]["properties"]["context"]
    assert context["type"] == "object" and context["additionalProperties"]["type"] == "string"
    assert "/reco/api/events" not in schema["paths"]  # the route without its slash: the same view


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
    put_list(r, keys.trending_list("long"), [8])
    put_policy(r, "retrained", "fbt", "similar", "category", "trending", "trending_long", "popular")
    items = client.get("/reco/api/recommendations/?product=1&limit=7").json()["items"]
    assert [(i["product_id"], i["strategy"]) for i in items] == [
        ("4", "retrained"),
        ("3", "fbt"),
        ("2", "similar"),
        ("5", "category"),
        ("6", "trending"),
        ("8", "trending_long"),
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


def test_trending_is_cacheable_by_anyone_and_answers_304_to_its_etag(client, r):
    put_catalog(r, [1, 2, 3])
    put_list(r, keys.trending(), [1, 2, 3])
    first = client.get("/reco/api/trending/")
    assert first["Cache-Control"] == "public, max-age=30"
    assert first["ETag"].startswith('"') and "Cookie" in first["Vary"]
    again = client.get("/reco/api/trending/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == first["ETag"] and again["Cache-Control"] == first["Cache-Control"]
    put_list(r, keys.trending(), [2, 1, 3])  # the list changed: a full answer
    changed = client.get("/reco/api/trending/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and changed["ETag"] != first["ETag"]
    assert [i["product_id"] for i in changed.json()["items"]] == ["2", "1", "3"]


def test_a_visitors_list_is_private_and_revalidated(client, r, make_product):
    make_product(1)
    put_catalog(r, [2, 3])
    client.get("/products/1/")  # a session: the visitor's own list
    visitor = f"s:{client.session['reco_visitor']}"
    put_list(r, keys.visitor_recommendations(visitor), [2, 3])
    first = client.get("/reco/api/recommendations/")
    assert first.json()["source"] == "personal"
    assert first["Cache-Control"] == "private, no-cache"
    assert (
        client.get("/reco/api/recommendations/", HTTP_IF_NONE_MATCH=first["ETag"]).status_code
        == 304
    )
    # without a session (no cookie) the list depends on the product only: shareable
    fresh = Client()
    anonymous = fresh.get("/reco/api/recommendations/?product=1")
    assert anonymous["Cache-Control"] == "public, max-age=30"


def test_exclude_category_and_limit_filter_the_list(client, r):
    put_catalog(r, [1, 2, 3, 4], category="Drama")
    put_catalog(r, [5, 6, 7], category="Comedy")
    put_list(r, keys.trending(), [1, 5, 2, 6, 3, 7, 4])
    put_list(r, keys.trending_list("long", "Comedy"), [7, 6, 5])
    body = client.get("/reco/api/trending/?exclude=1,5&limit=3").json()
    assert [i["product_id"] for i in body["items"]] == ["2", "6", "3"]
    body = client.get("/reco/api/recommendations/?category=Comedy&exclude=6").json()
    assert [i["product_id"] for i in body["items"]] == ["7", "5"]
    assert {i["category"] for i in body["items"]} == {"Comedy"}
    too_many = ",".join(str(n) for n in range(101))
    response = client.get(f"/reco/api/trending/?exclude={too_many}")
    assert response.status_code == 400 and "exclude" in response.json()["detail"]


def test_the_fallback_chain_says_which_list_a_new_visitor_got(client, r):
    put_catalog(r, range(1, 12), category="Drama")
    put_policy(r, "similar", "category", "trending")
    put_list(r, keys.trending(), [9, 10, 11])
    # the product has neighbours: those first, trending tops up
    put_list(r, keys.product_similar("1"), [2, 3])
    body = client.get("/reco/api/recommendations/?product=1&limit=4").json()
    assert body["source"] == "product"
    assert [i["product_id"] for i in body["items"]] == ["2", "3", "9", "10"]
    # no neighbours: the product's category's trending
    put_list(r, keys.trending_list("long", "Drama"), [5, 6])
    body = client.get("/reco/api/recommendations/?product=4&limit=2").json()
    assert (body["source"], [i["product_id"] for i in body["items"]]) == ("category", ["5", "6"])
    # nothing about the product at all: global trending
    r.delete(keys.trending_list("long", "Drama"))
    body = client.get("/reco/api/recommendations/?product=4&limit=2").json()
    assert (body["source"], [i["product_id"] for i in body["items"]]) == ("trending", ["9", "10"])
    # the short window empty (a quiet hour): what sold over the long window
    r.delete(keys.trending())
    put_list(r, keys.trending_list("long"), [7, 8])
    body = client.get("/reco/api/recommendations/?product=4&limit=2").json()
    assert (body["source"], [i["product_id"] for i in body["items"]]) == ("trending", ["7", "8"])
    assert {i["strategy"] for i in body["items"]} == {"trending_long"}


def test_a_list_is_filled_when_its_first_candidates_cannot_be_shown(client, r):
    # 30 listed, only the last 9 in the catalog: 8 asked, 8 served
    put_catalog(r, range(22, 31))
    put_list(r, keys.trending(), range(1, 31))
    body = client.get("/reco/api/trending/?limit=8").json()
    assert [i["product_id"] for i in body["items"]] == [str(n) for n in range(22, 30)]
    body = client.get("/reco/api/recommendations/?limit=8").json()
    assert len(body["items"]) == 8 and body["source"] == "trending"
    assert [i["position"] for i in body["items"]] == list(range(8))


class TitleOnly(serializers.Serializer):
    product_id = serializers.CharField()
    name = serializers.CharField(source="title")


def test_the_item_serializer_is_the_shops_to_choose(client, r, settings):
    put_catalog(r, [1])
    put_list(r, keys.trending(), [1])
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "ITEM_SERIALIZER": "tests.test_api.TitleOnly",
    }
    assert client.get("/reco/api/trending/").json()["items"] == [
        {"product_id": "1", "name": "Film 1"}
    ]


def test_a_product_moved_to_another_category_gets_that_categorys_list(client, r):
    put_catalog(r, [1, 2, 3], category="Drama")
    put_catalog(r, [4, 5], category="Comedy")
    put_list(r, keys.trending_list("long", "Drama"), [2, 3])
    put_list(r, keys.trending_list("long", "Comedy"), [5, 4])
    body = client.get("/reco/api/recommendations/?product=1&limit=2").json()
    assert (body["source"], [i["product_id"] for i in body["items"]]) == ("category", ["2", "3"])
    r.hset(keys.catalog_product("1"), "category", "Comedy")
    for _ in range(2):  # the first read finds the change, the next one expects it
        body = client.get("/reco/api/recommendations/?product=1&limit=2").json()
        assert [i["product_id"] for i in body["items"]] == ["5", "4"]


def test_a_weak_etag_from_a_gzipping_proxy_still_gets_a_304(client, r):
    put_catalog(r, [1])
    put_list(r, keys.trending(), [1])
    etag = client.get("/reco/api/trending/")["ETag"]
    assert client.get("/reco/api/trending/", HTTP_IF_NONE_MATCH=f"W/{etag}").status_code == 304
    assert (
        client.get("/reco/api/trending/", HTTP_IF_NONE_MATCH='"other", ' + etag).status_code == 304
    )
    assert client.get("/reco/api/trending/", HTTP_IF_NONE_MATCH='"other"').status_code == 200


class ModeRecorder:
    """A middleware that records whether each request met it in sync or async mode."""

    sync_capable = True
    async_capable = True
    seen: list[tuple[str, str]] = []

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._async_call(request)
        ModeRecorder.seen.append((request.path, "sync"))
        return self.get_response(request)

    async def _async_call(self, request):
        ModeRecorder.seen.append((request.path, "async"))
        return await self.get_response(request)


@pytest.fixture
def recorded(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_api.ModeRecorder"]
    ModeRecorder.seen = []
    return ModeRecorder.seen


def test_asgi_answers_the_reads_through_the_sync_chain(redis_url, r, recorded):
    put_catalog(r, [1, 2, 3])
    put_list(r, keys.trending(), [3, 2])
    put_list(r, keys.product_similar("1"), [2])
    client = ASGIClient()
    for path in (
        "/reco/api/trending/",
        "/reco/api/products/1/similar/",
        "/reco/api/recommendations/?product=1",
        "/reco/api/schema/",
    ):
        assert client.get(path).status_code == 200
    assert client.head("/reco/api/trending/").status_code == 200
    assert client.post("/reco/api/events/", {}, content_type="application/json").status_code in {
        400,
        403,
    }
    # the reads in one hop, through the shop's middleware run as sync; the
    # schema and the beacon through Django's async chain, as before
    assert recorded == [
        ("/reco/api/trending/", "sync"),
        ("/reco/api/products/1/similar/", "sync"),
        ("/reco/api/recommendations/", "sync"),
        ("/reco/api/schema/", "async"),
        ("/reco/api/trending/", "sync"),
        ("/reco/api/events/", "async"),
    ]


def asgi_get(path: str, query: bytes = b"", headers: tuple = (), app=None) -> tuple:
    """(status, headers, body) of one GET through ``reco_plugin.asgi``'s
    application, as an ASGI server sends it: the reads in its worker threads."""
    from reco_plugin.asgi import get_asgi_application

    from .asgi_client import http_scope, served

    scope = http_scope(path, query=query, headers=list(headers))
    status, raw, body = async_to_sync(served)(app or get_asgi_application(), scope, b"")
    return status, {k.lower(): v for k, v in raw}, body


def test_the_asgi_application_serves_the_reads(redis_url, r, recorded):
    put_catalog(r, [1, 2, 3])
    put_list(r, keys.trending(), [3, 2, 1])
    status, headers, body = asgi_get("/reco/api/trending/", b"limit=2")
    assert status == 200 and headers[b"cache-control"] == b"public, max-age=30"
    assert [i["product_id"] for i in json.loads(body)["items"]] == ["3", "2"]
    # the browser's copy is still good: a 304, without a body
    again = asgi_get("/reco/api/trending/", b"limit=2", ((b"if-none-match", headers[b"etag"]),))
    assert again[0] == 304 and again[2] == b""
    assert asgi_get("/reco/api/trending/", b"limit=0")[0] == 400
    assert asgi_get("/reco/api/nothing-here/")[0] == 404
    assert recorded == [
        ("/reco/api/trending/", "sync"),
        ("/reco/api/trending/", "sync"),
        ("/reco/api/trending/", "sync"),
        ("/reco/api/nothing-here/", "async"),
    ]


@pytest.mark.django_db(transaction=True)  # the answer is read in a worker thread
def test_the_asgi_application_reads_the_visitors_own_list(redis_url, r):
    put_catalog(r, [1, 2, 3, 4])
    client = Client()
    client.get("/reco/api/recommendations/")
    session = client.session
    session["reco_visitor"] = "asgi-visitor"
    session.save()
    put_list(r, keys.visitor_recommendations("s:asgi-visitor"), [4, 2])
    cookie = f"sessionid={session.session_key}".encode()
    status, headers, body = asgi_get("/reco/api/recommendations/", headers=((b"cookie", cookie),))
    assert status == 200 and headers[b"cache-control"] == b"private, no-cache"
    answer = json.loads(body)
    assert answer["source"] == "personal"
    assert [(i["product_id"], i["strategy"]) for i in answer["items"]] == [
        ("4", "personal"),
        ("2", "personal"),
    ]


def test_a_failing_read_is_a_500_signalled_as_by_django(redis_url, r, monkeypatch):
    from django.core.signals import got_request_exception

    from reco_plugin import store

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a read")

    monkeypatch.setattr(store, "trending", broken)
    signalled = []

    def receiver(sender, request, **kwargs):
        signalled.append((request.path, threading.current_thread().name))

    got_request_exception.connect(receiver)
    try:
        assert asgi_get("/reco/api/trending/")[0] == 500
    finally:
        got_request_exception.disconnect(receiver)
    # in one of the handler's own threads
    assert [(path, name.startswith("reco-read")) for path, name in signalled] == [
        ("/reco/api/trending/", True)
    ]


class OffLoopMiddleware:
    """An async-only middleware that waits for a thread of the event loop's
    default pool, as an async client library or ``getaddrinfo`` does."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        await asyncio.to_thread(time.sleep, 0.02)
        return await self.get_response(request)


def test_concurrent_reads_do_not_wait_for_the_default_pool(redis_url, r, settings):
    """The reads' threads are the handler's own: twelve at once, each waiting
    in an async-only middleware for the event loop's default pool (6 threads
    here), are all answered (on that pool they would wait for each other)."""
    from reco_plugin.asgi import get_asgi_application

    from .asgi_client import http_scope, served

    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_api.OffLoopMiddleware"]
    put_catalog(r, [1, 2, 3])
    put_list(r, keys.trending(), [3, 2, 1])
    app = get_asgi_application()
    scope = http_scope("/reco/api/trending/")

    async def at_once():
        return await asyncio.gather(*(served(app, dict(scope), b"") for _ in range(12)))

    answers = async_to_sync(at_once)()
    assert [status for status, _, _ in answers] == [200] * 12
    assert {json.loads(body)["items"][0]["product_id"] for _, _, body in answers} == {"3"}
