"""The widget's script in headless Chromium against a live Django server and a
real Redis, without the rest of the stack: what a visitor sees while Redis
cannot be read."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.template import engines
from django.urls import include, path

from reco_plugin import keys, store

from .conftest import put_catalog, put_list
from .test_browser import CHROMIUM

pytestmark = pytest.mark.browser

PAGE = """{% load reco %}<!doctype html>
<html lang="en"><head><title>Shop</title></head>
<body><main><h1>Shop</h1>{% recommendations kind="trending" title="Trending" %}</main></body></html>
"""


def shop_page(request):
    return HttpResponse(engines["django"].from_string(PAGE).render(request=request))


urlpatterns = [
    path("reco/", include("reco_plugin.urls")),
    path("shop/", shop_page),
]


def polls(page) -> int:
    return page.evaluate(
        "performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/reco/api/trending/')).length"
    )


@pytest.fixture
def page():
    """Started after the test's other fixtures: Playwright's sync API runs an
    event loop in this thread, where Django's database calls then refuse to run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_widget_is_hidden_while_redis_cannot_be_read_not_shown_empty(
    live_server, redis_url, r, settings, request
):
    healthy = {**settings.RECO_PLUGIN, "POLL_INTERVAL_SECONDS": 1, "API_CACHE_SECONDS": 0}
    settings.ROOT_URLCONF = __name__
    settings.RECO_PLUGIN = {**healthy, "REDIS_URL": "redis://127.0.0.1:1/0"}
    store.reset()  # no trending list served before in this process to fall back on
    page = request.getfixturevalue("page")
    page.goto(live_server.url + "/shop/")
    widget = page.locator(".reco-widget")
    # rendered hidden, and polled answers that say "degraded" keep it so
    assert widget.get_attribute("hidden") is not None
    page.wait_for_function(
        "() => performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/reco/api/trending/')).length >= 2",
        timeout=10_000,
    )
    assert not widget.is_visible()
    assert page.locator("main").inner_text().strip() == "Shop"
    # Redis answers, the shop has no list yet: the block says so
    settings.RECO_PLUGIN = healthy
    page.wait_for_selector(".reco-widget:not([hidden])", timeout=10_000)
    assert widget.is_visible() and "No recommendations yet." in widget.inner_text()
    # and a list, once there is one
    put_catalog(r, [2, 3])
    put_list(r, keys.trending(), [2, 3])
    page.wait_for_selector(".reco-widget [data-product-id='3']", timeout=10_000)
    assert "No recommendations yet." not in widget.inner_text()
    # Redis away again: the list read stays (the fallback does not replace it)
    before = polls(page)
    settings.RECO_PLUGIN = {**healthy, "REDIS_URL": "redis://127.0.0.1:1/0"}
    page.wait_for_function(
        f"() => performance.getEntriesByType('resource')"
        f".filter(e => e.name.includes('/reco/api/trending/')).length >= {before + 2}",
        timeout=10_000,
    )
    assert widget.is_visible()
    assert page.eval_on_selector_all(
        ".reco-widget [data-product-id]", "nodes => nodes.map(n => n.dataset.productId)"
    ) == ["2", "3"]
