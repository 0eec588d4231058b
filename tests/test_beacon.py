"""The beacon (POST /reco/api/events/): what it accepts, and that nothing else gets through."""

import json

import pytest
from django.core.cache import cache
from django.test import Client

pytestmark = pytest.mark.django_db

CATALOG = (1, 2, 3, 42)


@pytest.fixture
def catalog(make_product):
    for pk in CATALOG:
        make_product(pk)


@pytest.fixture
def browser_client(backend, catalog):
    """A client that, like a browser, must send the CSRF token."""
    cache.clear()  # the throttle's counts
    client = Client(enforce_csrf_checks=True)
    client.get("/products/1/")  # the page the widget is on: the visitor's session starts
    backend.clear()
    return client


def post_events(client, body, token=True, content_type="application/json", **headers):
    if token:
        from django.middleware.csrf import _get_new_csrf_string

        secret = _get_new_csrf_string()
        client.cookies["csrftoken"] = secret
        headers["HTTP_X_CSRFTOKEN"] = secret
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/reco/api/events/", data=data, content_type=content_type, **headers)


CLICK = {"type": "click", "product_id": "1"}
NESTED = "[" * 10_000 + "]" * 10_000  # within the size limit, beyond any parser depth

# (case, body, content type, expected status, a word the error must contain)
MALFORMED = [
    ("not JSON", "{not json", "application/json", 400, "JSON"),
    ("truncated JSON", '{"type": "click", "product_id": "1"', "application/json", 400, "JSON"),
    ("NaN", '{"type": "click", "product_id": NaN}', "application/json", 400, "JSON"),
    ("not UTF-8", b'{"type": "click", "product_id": "\xff"}', "application/json", 400, "JSON"),
    ("deeply nested array", NESTED, "application/json", 400, "JSON"),
    (
        "deeply nested context",
        '{"type": "click", "product_id": "1", "context": {"a": ' + NESTED + "}}",
        "application/json",
        400,
        "JSON",
    ),
    (
        "lone surrogate in a key",
        '{"type": "click", "product_id": "1", "\\ud800": 1}',
        "application/json",
        400,
        "surrogate",
    ),
    (
        "lone surrogate in a value",
        '{"type": "\\ud800", "product_id": "1"}',
        "application/json",
        400,
        "surrogate",
    ),
    (
        "lone surrogate in the context",
        '{"type": "click", "product_id": "1", "context": {"k": "a\\udfffb"}}',
        "application/json",
        400,
        "surrogate",
    ),
    ("a JSON array", "[]", "application/json", 400, "object"),
    ("a JSON string", '"click"', "application/json", 400, "object"),
    ("a JSON number", "1", "application/json", 400, "object"),
    ("null", "null", "application/json", 400, "object"),
    ("empty object", {}, "application/json", 400, "type"),
    ("empty body, no content type", "", "application/json", 415, "json"),
    ("blank body", " ", "application/json", 400, "JSON"),
    ("form encoded", "type=click&product_id=1", "application/x-www-form-urlencoded", 415, "json"),
    ("multipart", "x", "multipart/form-data; boundary=x", 415, "json"),
    ("text/plain JSON", json.dumps(CLICK), "text/plain", 415, "json"),
    ("purchase (server only)", {"type": "purchase", "product_id": "1"}, None, 400, "type"),
    ("page_view (server only)", {"type": "page_view", "product_id": "1"}, None, 400, "type"),
    ("identify (server only)", {"type": "identify", "product_id": "1"}, None, 400, "type"),
    ("unknown type", {"type": "bogus", "product_id": "1"}, None, 400, "type"),
    ("type not a string", {"type": ["click"], "product_id": "1"}, None, 400, "type"),
    ("no product", {"type": "click"}, None, 400, "product_id"),
    ("empty product", {"type": "click", "product_id": ""}, None, 400, "product_id"),
    ("product not a string", {"type": "click", "product_id": {"id": 1}}, None, 400, "product_id"),
    ("product a boolean", {"type": "click", "product_id": True}, None, 400, "product_id"),
    ("product too long", {"type": "click", "product_id": "1" * 65}, None, 400, "product_id"),
    ("unknown product", {"type": "click", "product_id": "999"}, None, 400, "catalog"),
    ("product id over 64 bits", {"type": "click", "product_id": "9" * 20}, None, 400, "catalog"),
    ("product id over 32 bits", {"type": "click", "product_id": str(2**31)}, None, 400, "catalog"),
    ("negative product id", {"type": "click", "product_id": "-1"}, None, 400, "catalog"),
    ("product of the wrong type", {"type": "click", "product_id": "abc"}, None, 400, "catalog"),
    ("context a string", {**CLICK, "context": "x"}, None, 400, "context"),
    ("context a list", {**CLICK, "context": ["x"]}, None, 400, "context"),
    ("nested context", {**CLICK, "context": {"page": {"nested": 1}}}, None, 400, "page"),
    ("context number value", {**CLICK, "context": {"position": 1}}, None, 400, "position"),
    ("context null value", {**CLICK, "context": {"page": None}}, None, 400, "page"),
    ("context key too long", {**CLICK, "context": {"k" * 65: "v"}}, None, 400, "keys"),
    ("context empty key", {**CLICK, "context": {"": "v"}}, None, 400, "keys"),
    ("context value too long", {**CLICK, "context": {"page": "v" * 513}}, None, 400, "page"),
    (
        "context too many keys",
        {**CLICK, "context": {str(i): "v" for i in range(17)}},
        None,
        400,
        "keys",
    ),
    ("visitor from the client", {**CLICK, "visitor_id": "u:1"}, None, 400, "visitor_id"),
    ("time from the client", {**CLICK, "ts": 1}, None, 400, "ts"),
    ("event id from the client", {**CLICK, "event_id": "x"}, None, 400, "event_id"),
    ("empty batch", {"events": []}, None, 400, "events"),
    ("batch not a list", {"events": CLICK}, None, 400, "events"),
    ("batch of 51", {"events": [CLICK] * 51}, None, 400, "at most 50"),
    (
        "one bad item in a batch",
        {"events": [CLICK, {"type": "bogus", "product_id": "2"}]},
        None,
        400,
        "type",
    ),
    (
        "one unknown product in a batch",
        {"events": [CLICK, {"type": "click", "product_id": "7"}]},
        None,
        400,
        "catalog",
    ),
    ("a field next to the batch", {"events": [CLICK], "type": "click"}, None, 400, "type"),
    (
        "body over the limit",
        {**CLICK, "context": {"page": "v" * 500, **{str(i): "v" * 500 for i in range(80)}}},
        None,
        413,
        "bytes",
    ),
    ("5 MB body", "x" * (5 * 1024 * 1024), "application/json", 413, "bytes"),
    (
        "5 MB form body",
        "a=" + "x" * (5 * 1024 * 1024),
        "application/x-www-form-urlencoded",
        413,
        "bytes",
    ),
]


@pytest.mark.parametrize(
    "body, content_type, expected, word",
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_beacon_is_a_json_4xx_naming_the_problem_and_emits_nothing(
    browser_client, backend, body, content_type, expected, word
):
    response = post_events(browser_client, body, content_type=content_type or "application/json")
    assert response.status_code == expected, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert word.lower() in json.dumps(response.json()).lower()
    assert backend.sent == []


def test_answers_are_json_whatever_the_client_accepts(browser_client, backend):
    for accept in ("text/html", "*/*", "application/json"):
        response = browser_client.post(
            "/reco/api/events/?format=api",
            "{bad",
            content_type="application/json",
            HTTP_ACCEPT=accept,
        )
        assert response.status_code in (400, 403, 404)
        assert response["Content-Type"].startswith("application/json"), accept


def test_a_beacon_posted_without_the_trailing_slash_is_served(browser_client, backend):
    from django.middleware.csrf import _get_new_csrf_string

    secret = _get_new_csrf_string()
    browser_client.cookies["csrftoken"] = secret
    response = browser_client.post(
        "/reco/api/events",
        json.dumps(CLICK),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=secret,
    )
    assert response.status_code == 202


def test_a_new_session_per_request_still_meets_the_address_limit(backend, catalog, settings):
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "BEACON_RATE_PER_ADDRESS": "4/min"}
    cache.clear()
    statuses = []
    for _ in range(6):
        client = Client()
        client.get("/products/1/")  # a fresh session each time
        statuses.append(post_events(client, CLICK).status_code)
    assert statuses == [202, 202, 202, 202, 429, 429]


def test_beacon_without_csrf_token_is_refused(browser_client, backend):
    response = post_events(browser_client, CLICK, token=False)
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
    assert opaque not in browser_client.session.session_key  # opaque, not the session key


def test_the_beacon_takes_the_request_fields_from_the_request_never_the_page(
    browser_client, backend, settings
):
    from reco_plugin.backends import get_backend

    def last_context():
        # (a settings change starts a new backend)
        return get_backend().events()[-1]["context"]

    body = {"type": "click", "product_id": "42", "context": {"reco_id": "a", "ip": "10.0.0.1"}}
    assert post_events(browser_client, body, REMOTE_ADDR="203.0.113.7").status_code == 202
    assert last_context() == {"reco_id": "a"}
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "EVENT_REQUEST_FIELDS": ["ip"]}
    assert post_events(browser_client, body, REMOTE_ADDR="203.0.113.7").status_code == 202
    assert last_context() == {"reco_id": "a", "ip": "203.0.113.7"}
    # the request's fields count against the context's keys
    full = {"type": "click", "product_id": "42", "context": {f"k{n}": "v" for n in range(16)}}
    refused = post_events(browser_client, full, REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 400 and "at most 15 keys" in refused.content.decode()


def test_a_numeric_product_id_is_taken_as_its_string(browser_client, backend):
    assert post_events(browser_client, {"type": "click", "product_id": 42}).status_code == 202
    assert backend.events()[0]["product_id"] == "42"


def test_a_product_id_is_written_as_the_catalog_writes_it(browser_client, backend):
    body = {"events": [{"type": "click", "product_id": p} for p in ("42", "042", " 42", 42)]}
    assert post_events(browser_client, body).status_code == 202
    assert [e["product_id"] for e in backend.events()] == ["42"] * 4


def test_batch_beacon_emits_each_event(browser_client, backend):
    body = {
        "events": [
            {
                "type": "impression",
                "product_id": str(pk),
                "context": {"reco_id": "r1", "strategy": "similar", "position": str(i)},
            }
            for i, pk in enumerate(CATALOG)
        ]
    }
    assert post_events(browser_client, body).status_code == 202
    events = backend.events("impression")
    assert [e["product_id"] for e in events] == [str(pk) for pk in CATALOG]
    assert [e["context"]["position"] for e in events] == ["0", "1", "2", "3"]
    assert len({e["visitor_id"] for e in events}) == 1


def test_beacon_is_throttled_per_visitor_with_a_json_429(browser_client, backend, settings):
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "BEACON_RATE": "3/min"}
    from reco_plugin.backends import get_backend

    backend = get_backend()  # the settings changed: a new one
    statuses = [post_events(browser_client, CLICK).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    response = post_events(browser_client, CLICK)
    assert response.status_code == 429 and "throttled" in response.json()["error"]
    assert int(response["Retry-After"]) > 0
    assert len(backend.sent) == 3
    other = Client(enforce_csrf_checks=True)  # another visitor has their own allowance
    other.get("/products/1/")
    assert post_events(other, CLICK).status_code == 202


def test_without_a_session_cookie_the_throttle_counts_per_address(backend, catalog, settings):
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "BEACON_RATE": "3/min"}
    cache.clear()
    statuses = [post_events(Client(), CLICK).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]


def test_a_refused_beacon_starts_no_session(catalog, backend):
    from django.contrib.sessions.models import Session

    before = Session.objects.count()
    for _ in range(3):
        assert post_events(Client(), "{bad", content_type="application/json").status_code == 400
    assert Session.objects.count() == before


def test_a_bot_is_not_tracked_and_gets_no_session(backend, catalog):
    bot = Client(HTTP_USER_AGENT="Mozilla/5.0 (compatible; Googlebot/2.1)")
    assert bot.get("/products/1/").status_code == 200
    assert backend.sent == []
    assert "sessionid" not in bot.cookies


def test_an_opted_out_visitor_is_served_but_not_tracked(backend, catalog):
    for headers in ({"HTTP_SEC_GPC": "1"}, {"HTTP_COOKIE": "reco_opt_out=1"}):
        client = Client(**headers)
        assert client.get("/products/1/").status_code == 200
        assert client.get("/reco/api/recommendations/").status_code == 200
    assert backend.sent == []


def test_an_opted_out_visitors_beacon_is_accepted_and_dropped(browser_client, backend):
    browser_client.cookies["reco_opt_out"] = "1"
    response = post_events(browser_client, CLICK)
    assert response.status_code == 202 and response.json() == {"accepted": 0}
    assert backend.sent == []


def test_a_logged_in_users_beacon_events_carry_their_user_id(backend, catalog, django_user_model):
    user = django_user_model.objects.create_user("shopper", password="x")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = post_events(client, {"type": "click", "product_id": "42"})
    assert response.status_code == 202
    [(_, key, event)] = backend.sent
    assert key == event["visitor_id"] == f"u:{user.pk}"
