"""The widget in real headless Chromium against the running demo shop."""

import json
import shutil

import pytest

from reco_plugin.strategies import STRATEGIES
from stack.visitor import ShopVisitor

from .conftest import ARTIFACTS

pytestmark = [pytest.mark.stack, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the visitor's own list (the product page also has a "similar" one)
FOR_YOU = ".reco-widget[data-reco-kind='for_you']"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def widget_ids(page, widget=FOR_YOU):
    return page.eval_on_selector_all(
        f"{widget} [data-product-id]", "nodes => nodes.map(n => n.dataset.productId)"
    )


def test_first_paint_shows_recommendations(live_stack, browser):
    # JavaScript off: what is on the page came from the server.
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_stack.web_url + "/products/1/")
    assert len(widget_ids(page)) >= 4
    similar = widget_ids(page, ".reco-widget[data-reco-kind='similar']")
    assert len(similar) >= 4 and "1" not in similar
    assert page.locator(".reco-item__title").first.inner_text().strip()
    context.close()


def test_widget_updates_live_while_the_visitor_browses(live_stack, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
    first = widget_ids(page)
    assert first
    page.evaluate("window.__notReloaded = true")
    page.screenshot(path=str(ARTIFACTS / "widget-before.png"), full_page=True)

    # The same visitor browses in another tab (same session cookie): two of the
    # films this list offers them, and two more.
    visited = [*first[:2], "172", "174"]
    other = context.new_page()
    for product in visited:
        other.goto(f"{live_stack.web_url}/products/{product}/")

    # until the pushed list reflects every view (a first push may come from a
    # batch that held only some of them)
    page.wait_for_function(
        '([ids, seen]) => { const now = [...document.querySelectorAll("'
        + FOR_YOU
        + ' [data-product-id]")].map(n => n.dataset.productId);'
        " return now.length && now.join(',') !== ids && !now.some(id => seen.includes(id)); }",
        arg=[",".join(first), visited],
        timeout=15_000,
    )
    assert page.evaluate("window.__notReloaded") is True
    assert widget_ids(page) != first
    strategies = page.eval_on_selector_all(
        f"{FOR_YOU} [data-strategy]", "nodes => nodes.map(n => n.dataset.strategy)"
    )
    # the list follows the visitor: blended by the bandit, and without what
    # they have just seen
    assert set(strategies) <= set(STRATEGIES)
    assert not set(visited) & set(widget_ids(page))
    page.screenshot(path=str(ARTIFACTS / "widget-after.png"), full_page=True)

    # A click on a recommendation is reported with the list it came from: what
    # the clicked item showed is noted as it is clicked (a push may replace the
    # list between reading it and the click), in the tab's session storage,
    # which outlives the link's navigation.
    page.evaluate(
        """() => document.addEventListener("click", (event) => {
            const link = event.target.closest("a[data-reco-id]");
            const item = link && link.closest("[data-strategy]");
            if (item) sessionStorage.setItem("clicked", JSON.stringify(
                {reco_id: link.dataset.recoId, strategy: item.dataset.strategy}));
        }, true)"""
    )
    with (
        page.expect_navigation(),
        page.expect_request(
            lambda r: r.url.endswith("/reco/api/events/") and '"click"' in (r.post_data or "")
        ) as request,
    ):
        page.locator(f"{FOR_YOU} a[data-reco-id]").first.click()
    beacon = request.value.post_data_json
    clicked = json.loads(page.evaluate("() => sessionStorage.getItem('clicked')"))
    assert beacon["type"] == "click" and clicked["strategy"] in STRATEGIES
    assert beacon["context"]["reco_id"] == clicked["reco_id"]
    assert beacon["context"]["strategy"] == clicked["strategy"]
    assert request.value.headers["x-csrftoken"]
    context.close()


def test_widget_reports_the_items_seen_as_impressions(live_stack, browser):
    from .test_stack import find_in_kafka

    context = browser.new_context(viewport={"width": 1200, "height": 300})
    page = context.new_page()
    beacons = []
    page.on("request", lambda r: beacons.append(r) if r.url.endswith("/reco/api/events/") else None)
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
    page.wait_for_timeout(2500)
    assert beacons == [], "items below the fold were reported as seen"
    # the list as it stands once this page view has reached it (pushed)
    shown = widget_ids(page)

    with page.expect_response(lambda r: r.url.endswith("/reco/api/events/")) as response:
        page.locator(FOR_YOU).scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    assert response.value.status == 202
    events = response.value.request.post_data_json["events"]
    assert events and {e["type"] for e in events} == {"impression"}
    assert {e["product_id"] for e in events} <= set(shown) | set(widget_ids(page))
    reco_id = events[0]["context"]["reco_id"]
    assert all(e["context"]["reco_id"] == reco_id and e["context"]["strategy"] for e in events)
    positions = [int(e["context"]["position"]) for e in events]
    assert len(set(positions)) == len(positions) and set(positions) <= set(range(len(shown)))
    assert response.value.json() == {"accepted": len(events)}
    found = find_in_kafka(
        live_stack,
        "impressions",
        lambda key, event: event["context"].get("reco_id") == reco_id,
        timeout=20,
    )
    assert found is not None and found[1]["visitor_id"].startswith("s:")
    # Scrolling away and back does not report them again.
    page.evaluate("window.scrollTo(0, 0)")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_timeout(2500)
    assert len(beacons) == 1
    context.close()


def test_widget_falls_back_to_polling_without_websocket(live_stack, browser):
    context = browser.new_context()
    context.route("**/ws/reco/", lambda route: route.abort())
    page = context.new_page()
    page.add_init_script("window.WebSocket = undefined; delete window.WebSocket;")
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='polling']", timeout=10_000)
    context.close()
    visitor = ShopVisitor(live_stack.web_url)
    assert visitor.get_json("/reco/api/recommendations/?product=1")["items"]


def test_the_product_page_passes_an_accessibility_check(live_stack, browser):
    from axe_playwright_python.sync_playwright import Axe

    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    for path, shot in (
        ("/products/1/", "shop-product.png"),
        ("/?category=Comedy", "shop-category.png"),
    ):
        page.goto(live_stack.web_url + path)
        page.wait_for_load_state("networkidle")
        results = Axe().run(page)
        serious = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert serious == [], f"{path}: {serious}"
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    # the lists are lists, every image has an alt, the items are reachable by keyboard
    assert page.locator(".reco-widget ol.reco-widget__list > li.reco-item").count() >= 1
    page.goto(live_stack.web_url + "/products/1/")
    assert page.locator(".reco-widget img:not([alt])").count() == 0
    page.locator(f"{FOR_YOU} a[data-reco-id]").first.focus()
    assert page.evaluate("document.activeElement.closest('.reco-item') !== null")
    context.close()


def test_an_older_push_never_replaces_a_newer_list(live_stack, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
    # pushes as the server sends them, delivered out of order
    page.evaluate(
        """(selector) => {
        const widget = document.querySelector(selector).recoWidget;
        const item = (id) => ({product_id: id, title: 'Film ' + id, url: '/products/' + id + '/',
            strategy: 'similar', propensity: 1, reco_id: 'r' + id, position: 0});
        const push = (version, ids) => widget.socket.onmessage(
            {data: JSON.stringify({type: 'recommendations', version, items: ids.map(item)})});
        push(Date.now() * 1000 + 2e9, ['11', '12']);
        push(Date.now() * 1000 + 1e9, ['21', '22']);
    }""",
        FOR_YOU,
    )
    assert widget_ids(page) == ["11", "12"]
    # the live items are the shop's item.html: same markup as the server's
    assert (
        page.locator(f"{FOR_YOU} li.reco-item a.reco-item__link span.reco-item__title").count() == 2
    )
    assert page.locator(f"{FOR_YOU} [data-reco-status]").inner_text() == "Recommendations updated."
    context.close()


def test_a_socket_that_stops_answering_falls_back_to_polling(live_stack, browser):
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(
        "window.RecoWidgetOptions = {pingInterval: 500, pongTimeout: 500, poll: 1};"
        # pings vanish on the way, as on a connection that died without a close
        "const send = WebSocket.prototype.send;"
        "WebSocket.prototype.send = function (data) {"
        "  if (String(data).includes('ping')) return; return send.call(this, data); };"
    )
    polls = []
    page.on(
        "response",
        lambda r: polls.append(r.status) if "/reco/api/recommendations/" in r.url else None,
    )
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
    page.wait_for_selector(f"{FOR_YOU}[data-reco-closed='0']", timeout=5_000)
    page.wait_for_timeout(2500)
    assert polls and set(polls) <= {200, 304}, polls
    context.close()


def test_a_live_update_does_not_move_the_page(live_stack, browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    page.goto(live_stack.web_url + "/products/1/")
    page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
    shown = len(widget_ids(page))
    page.evaluate(
        """() => { window.__shift = 0; new PerformanceObserver((list) => {
            for (const e of list.getEntries()) if (!e.hadRecentInput) window.__shift += e.value;
        }).observe({type: 'layout-shift', buffered: false}); }"""
    )
    # a new list of as many items, with titles of very different lengths
    page.evaluate(
        """([selector, count]) => {
        const widget = document.querySelector(selector).recoWidget;
        const items = [...Array(count).keys()].map((n) => ({product_id: String(900 + n),
            title: n % 2 ? 'A' : 'A very long title that would take three or four lines here',
            url: '/products/' + (900 + n) + '/', price: '9.99', strategy: 'similar',
            propensity: 1, reco_id: 'shift', position: n}));
        widget.socket.onmessage({data: JSON.stringify(
            {type: 'recommendations', version: Date.now() * 1000 + 1e9, items})});
    }""",
        [FOR_YOU, shown],
    )
    page.wait_for_timeout(500)
    assert widget_ids(page)[0] == "900"
    assert page.evaluate("window.__shift") == 0
    context.close()


SCHEDULE_EXPERIMENT = """
from datetime import timedelta
from django.utils import timezone
from reco_plugin import tuning
from reco_plugin.models import Experiment, Tuning
control = tuning.save_version(Tuning(note="control"))
treatment = tuning.save_version(Tuning(note="no content lists", strategies={"content": "off"}))
tuning.publish(treatment)
experiment = Experiment.objects.create(
    name="content lists off", starts_at=timezone.now() - timedelta(minutes=1)
)
experiment.arms.create(name="control", tuning=control, share=50)
experiment.arms.create(name="no content", tuning=treatment, share=50)
assert tuning.publish_experiment()
print(experiment.pk)
"""

STOP_EXPERIMENTS = """
from django.utils import timezone
from reco_plugin import tuning
from reco_plugin.models import Experiment
Experiment.objects.filter(ends_at__isnull=True).update(ends_at=timezone.now())
assert tuning.publish_experiment()
"""


def admin_login(browser, live_stack):
    import os

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(live_stack.web_url + "/admin/login/?next=/admin/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", os.environ.get("RECO_DEMO_STAFF_PASSWORD", "reco-demo"))
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return context, page


def test_the_experiment_report_and_the_dashboard_in_chromium(live_stack, browser):
    experiment_id = live_stack.manage("shell", "-c", SCHEDULE_EXPERIMENT, quiet=True).split()[-1]
    try:
        # shoppers in both arms see lists and scroll to them (impressions)
        for n in range(6):
            shopper = browser.new_context(viewport={"width": 1200, "height": 900})
            page = shopper.new_page()
            page.goto(live_stack.web_url + f"/products/{n + 1}/")
            page.wait_for_selector(f"{FOR_YOU}[data-reco-live='websocket']", timeout=10_000)
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_timeout(2500)
            if n % 2 == 0:  # and half of them click a recommendation
                with page.expect_request(
                    lambda r: (
                        r.url.endswith("/reco/api/events/") and '"click"' in (r.post_data or "")
                    )
                ):
                    page.locator(f"{FOR_YOU} a[data-reco-id]").first.click()
            shopper.close()
        context, page = admin_login(browser, live_stack)
        report = f"{live_stack.web_url}/admin/reco_plugin/experiment/{experiment_id}/report/"
        counted = (0, 0)
        for _ in range(30):  # the job counts them from Kafka within a few batches
            page.goto(report)
            cells = page.eval_on_selector_all(
                "#reco-report tbody tr",
                "rows => rows.map(r => [Number(r.cells[2].innerText), Number(r.cells[3].innerText)])",
            )
            counted = (sum(c[0] for c in cells), sum(c[1] for c in cells))
            if counted[0] and counted[1] >= 3:
                break
            page.wait_for_timeout(1000)
        # impressions, and the three clicks, counted for the arms they were served to
        assert len(cells) == 2 and counted[0] > 0 and counted[1] == 3
        assert "(control)" in page.inner_text("#reco-report")
        page.screenshot(path=str(ARTIFACTS / "admin-experiment-report.png"), full_page=True)

        page.goto(live_stack.web_url + "/admin/reco_plugin/dashboard/")
        page.wait_for_function(
            "document.getElementById('reco-dashboard-status').textContent.includes('batches')",
            timeout=20_000,
        )
        drawn = page.evaluate(
            "Object.values(Chart.instances).map(c => [c.canvas.id, c.data.datasets.length,"
            " c.data.labels.length])"
        )
        by_id = {canvas: (sets, points) for canvas, sets, points in drawn}
        assert len(by_id) == 7  # the ranker's chart too, empty before it learnt
        assert by_id["reco-chart-events"][0] >= 1 and by_id["reco-chart-events"][1] >= 2
        assert by_id["reco-chart-experiment"][1] == 2  # the two arms
        # a catch-up's minutes and the live batches' milliseconds both readable
        assert (
            page.evaluate("Chart.getChart('reco-chart-freshness').scales.y.type") == "logarithmic"
        )
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
        context.close()
    finally:
        live_stack.manage("shell", "-c", STOP_EXPERIMENTS, quiet=True)
