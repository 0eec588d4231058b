import json
import re

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from reco_plugin import keys

from .conftest import put_catalog, put_list

pytestmark = pytest.mark.django_db


def render(request, text):
    return Template("{% load reco %}" + text).render(Context({"request": request}))


@pytest.fixture
def request_with_session(rf: RequestFactory):
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore

    request = rf.get("/products/1/")
    request.session = SessionStore()
    request.user = AnonymousUser()
    return request


def test_renders_the_list_server_side(request_with_session, r):
    put_catalog(r, [2, 3, 4])
    put_list(r, keys.product_similar("1"), [2, 3, 4])
    html = render(
        request_with_session, '{% recommendations product=1 limit=2 title="Also liked" %}'
    )
    assert re.findall(r'data-product-id="(\d+)"', html) == ["2", "3"]
    assert "Film 2" in html and 'href="/products/2/"' in html
    assert "Also liked" in html


def test_config_is_json_not_inline_script(request_with_session, r):
    html = render(request_with_session, "{% recommendations product=1 %}")
    config_id = re.search(r'data-reco-config="([^"]+)"', html).group(1)
    block = re.search(
        rf'<script id="{config_id}" type="application/json">(.*?)</script>', html, re.S
    )
    config = json.loads(block.group(1))
    assert config["product"] == "1"
    assert config["api"] == "/reco/api/recommendations/"
    assert config["events"] == "/reco/api/events/"
    assert config["ws"] == "/ws/reco/"
    assert config["csrf"]
    # Every other script is an external file: the widget works under a CSP without 'unsafe-inline'.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert all(
        'type="application/json"' in attrs or (not body.strip() and "src=" in attrs)
        for attrs, body in scripts
    )


def test_user_text_is_escaped(request_with_session, r):
    put_catalog(r, [2])
    r.hset(keys.catalog_product("2"), "title", "<script>alert(1)</script>")
    put_list(r, keys.product_similar("1"), [2])
    html = render(request_with_session, "{% recommendations product=1 %}")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_redis_down_renders_a_hidden_widget_not_an_empty_one(request_with_session, settings):
    """Not "No recommendations yet.", as for an empty shop: nothing, until the
    widget's script reads a list (it shows an empty one too)."""
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_URL": "redis://127.0.0.1:1/0"}
    html = render(request_with_session, "{% recommendations product=1 %}")
    (section,) = re.findall(r"<section [^>]*>", html)
    assert " hidden data-reco-unavailable>" in section


def test_an_empty_shop_renders_its_empty_widget_visible(request_with_session, r):
    html = render(request_with_session, "{% recommendations product=1 %}")
    (section,) = re.findall(r"<section [^>]*>", html)
    assert "hidden" not in section and "No recommendations yet." in html


def test_redis_down_with_a_fallback_list_shows_it(request_with_session, r, settings):
    from reco_plugin import store

    put_catalog(r, [2, 3])
    put_list(r, keys.trending(), [2, 3])
    # served once: this process keeps it for when Redis is away
    assert [i["product_id"] for i in store.trending(None, 2)] == ["2", "3"]
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_URL": "redis://127.0.0.1:1/0"}
    html = render(request_with_session, '{% recommendations kind="trending" %}')
    (section,) = re.findall(r"<section [^>]*>", html)
    assert "hidden" not in section
    assert re.findall(r'data-product-id="(\d+)"', html) == ["2", "3"]


def test_a_logged_in_user_sees_their_own_list(request_with_session, r, django_user_model):
    request_with_session.user = django_user_model.objects.create_user("shopper")
    put_catalog(r, [2, 3, 4])
    put_list(r, keys.visitor_recommendations(f"u:{request_with_session.user.pk}"), [4, 3])
    html = render(request_with_session, "{% recommendations limit=2 %}")
    assert re.findall(r'data-product-id="(\d+)"', html) == ["4", "3"]
    assert "reco_visitor" not in request_with_session.session  # no anonymous id made


def test_a_bot_gets_the_list_but_no_session(request_with_session, r):
    request_with_session.META["HTTP_USER_AGENT"] = "Mozilla/5.0 (compatible; bingbot/2.0)"
    put_catalog(r, [2, 3])
    put_list(r, keys.product_similar("1"), [2, 3])
    html = render(request_with_session, "{% recommendations product=1 limit=2 %}")
    assert re.findall(r'data-product-id="(\d+)"', html) == ["2", "3"]
    assert not request_with_session.session.modified


def test_widgets_on_one_page_do_not_repeat_each_other(request_with_session, r):
    put_catalog(r, range(2, 12))
    put_list(r, keys.product_similar("1"), [2, 3, 4])
    put_list(r, keys.trending(), [2, 5, 6, 7])
    html = render(
        request_with_session,
        '{% recommendations product=1 kind="similar" limit=3 %}'
        "{% recommendations product=1 limit=3 %}",
    )
    similar, for_you = html.split('data-reco-kind="for_you"')
    assert re.findall(r'data-product-id="(\d+)"', similar) == ["2", "3", "4"]
    assert re.findall(r'data-product-id="(\d+)"', for_you) == ["5", "6", "7"]
    # the live widget keeps leaving them out, and the stylesheet is linked once
    config = json.loads(
        re.findall(r'<script id="[^"]+" type="application/json">(.*?)</script>', html)[1]
    )
    assert config["exclude"] == ["2", "3", "4"] and config["params"]["exclude"] == "2,3,4"
    assert (
        config["ws"]
        and json.loads(
            re.findall(r'<script id="[^"]+" type="application/json">(.*?)</script>', html)[0]
        )["ws"]
        is None
    )
    assert html.count("reco_plugin/widget.css") == 1


def test_an_unknown_kind_is_a_template_error(request_with_session):
    from django.template import TemplateSyntaxError

    with pytest.raises(TemplateSyntaxError, match="kind must be one of"):
        render(request_with_session, '{% recommendations kind="bestsellers" %}')
