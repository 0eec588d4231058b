"""End to end on the real stack: Kafka, Spark, Redis, the relay, Celery and the ASGI shop."""

import json
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer

from reco_plugin import keys
from stack.services import PYTHON, REPO
from stack.visitor import ShopVisitor

pytestmark = pytest.mark.stack


def ids(items):
    return [item["product_id"] for item in items]


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return None


def find_in_kafka(stack, topic, match, timeout):
    """The first (key, event) on ``topic`` for which ``match(key, event)`` holds, or None."""
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{stack.ports.kafka}",
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            key, event = message.key().decode(), json.loads(message.value())
            if match(key, event):
                return key, event
    finally:
        consumer.close()
    return None


def test_product_views_reach_the_visitors_websocket_and_change_their_list(live_stack):
    visitor = ShopVisitor(live_stack.web_url)
    status, html = visitor.get("/products/1/")
    assert status == 200 and 'class="reco-item"' in html  # warmed: similar items on first paint

    def processed():
        # the pipeline has the view: the film is no longer served to the visitor
        items = visitor.get_json("/reco/api/recommendations/?limit=50")["items"]
        return items[:8] if items and "1" not in ids(items) else None

    before = wait_for(processed, 20)
    assert before, "the first product view never reached the visitor's list"
    viewed = {"50", "181", "172"}  # Star Wars, Return of the Jedi, Empire Strikes Back
    with visitor.websocket() as ws:
        ws.send(json.dumps({"type": "subscribe", "limit": 8}))
        assert json.loads(ws.recv(timeout=5))["type"] == "recommendations"
        started = time.monotonic()
        for product in sorted(viewed):
            assert visitor.get(f"/products/{product}/")[0] == 200
        pushed = None
        while pushed is None and time.monotonic() - started < 10:
            message = json.loads(ws.recv(timeout=max(0.1, 10 - (time.monotonic() - started))))
            if (
                message["type"] == "recommendations"
                and ids(message["items"]) != ids(before)
                and not viewed & set(ids(message["items"]))
            ):
                pushed = message
        assert pushed is not None, "no list reflecting the three views was pushed within 10 s"
    after = visitor.get_json("/reco/api/recommendations/?limit=8")["items"]
    assert ids(after) != ids(before)
    assert not viewed & set(ids(after)), "already-viewed items are not recommended"


def test_click_beacon_lands_in_kafka_with_the_session_visitor(live_stack):
    visitor = ShopVisitor(live_stack.web_url)
    visitor.get("/products/1/")
    marker = uuid.uuid4().hex
    status, body = visitor.post_json(
        "/reco/api/events/", {"type": "click", "product_id": "2", "context": {"reco_id": marker}}
    )
    assert status == 202, body
    found = find_in_kafka(
        live_stack,
        "user_clicks",
        lambda key, event: event.get("context", {}).get("reco_id") == marker,
        timeout=20,
    )
    assert found is not None
    key, event = found
    assert key == event["visitor_id"] and event["visitor_id"].startswith("s:")
    assert event["type"] == "click" and event["product_id"] == "2"


def test_malformed_beacon_on_the_real_stack_is_a_400(live_stack):
    visitor = ShopVisitor(live_stack.web_url)
    visitor.get("/products/1/")
    status, body = visitor.post_json(
        "/reco/api/events/", {"type": "click", "product_id": "2", "visitor_id": "u:1"}
    )
    assert status == 400 and "visitor_id" in body["detail"]


def test_product_change_is_synced_to_redis_by_the_celery_worker(live_stack):
    r = live_stack.redis()
    assert r.hget(keys.catalog_product("5"), "title") == "Copycat"
    subprocess.run(
        [
            PYTHON,
            str(REPO / "manage.py"),
            "shell",
            "-c",
            "from demo_shop.catalog.models import Product; p = Product.objects.get(pk=5); "
            "p.name = 'Copycat (restored)'; p.in_stock = False; p.save()",
        ],
        env=live_stack.env(),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if r.hget(keys.catalog_product("5"), "title") == "Copycat (restored)":
            break
        time.sleep(0.2)
    fields = r.hgetall(keys.catalog_product("5"))
    assert fields["title"] == "Copycat (restored)" and fields["in_stock"] == "0"


def test_beat_resyncs_a_catalog_hash_lost_from_redis(live_stack):
    r = live_stack.redis()
    r.delete(keys.catalog_product("7"))
    deadline = time.monotonic() + 20  # the test stack's beat period is 5 s
    while time.monotonic() < deadline and not r.exists(keys.catalog_product("7")):
        time.sleep(0.5)
    assert r.hget(keys.catalog_product("7"), "title") == "Twelve Monkeys"


def test_pipeline_reports_its_progress(live_stack):
    r = live_stack.redis()
    assert r.exists(keys.pipeline_heartbeat())
    offsets = r.hgetall(keys.pipeline_offsets())
    assert sum(int(v) for k, v in offsets.items() if k.startswith("page_views:")) >= 20000
    # the warm-up is older than the short trending window; popularity has it
    assert len(json.loads(r.get(keys.popular()))) > 10
    assert json.loads(r.get(keys.trending()))


def test_reco_status_on_the_running_stack(live_stack):
    def status():
        result = live_stack.run_manage("reco_status", "--json", timeout=60)
        return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])

    def healthy():
        code, report = status()
        return report if code == 0 else None

    report = wait_for(healthy, 30) or status()[1]
    assert report["ok"], report["problems"]
    assert report["job"]["ok"] and report["lag"]["total"] == 0
    streaming = report["queries"][0]
    assert (streaming["name"], streaming["kind"], streaming["ok"]) == (
        "reco_recommend",
        "streaming",
        True,
    )
    assert streaming["id"] == report["job"]["query"] and streaming["run_id"]
    assert streaming["last_batch"] == report["last_batch"]["batch"] and streaming["lag"] == 0
    views = report["counters"]["page_views"]
    # the warm-up's views: every one read was applied (its ids are all new)
    assert views["read"] == views["applied"] >= 20000
    assert report["last_batch"]["batch"] >= 1
    human = live_stack.run_manage("reco_status", timeout=60).stdout
    assert "job        ok" in human and "all good" in human
    assert "query      ok    reco_recommend (streaming, id " in human


def test_reco_status_counts_what_the_shops_processes_delivered(live_stack):
    def delivered():
        result = live_stack.run_manage("reco_status", "--json", timeout=60)
        return json.loads(result.stdout.strip().splitlines()[-1])["producers"]["delivered"]

    before = delivered()
    visitor = ShopVisitor(live_stack.web_url)
    for product in ("3", "4", "5"):
        assert visitor.get(f"/products/{product}/")[0] == 200
    # each process adds its counts every PRODUCER_STATS_SECONDS (10 s)
    assert wait_for(lambda: delivered() >= before + 3, 30), "the page views were not counted"


def test_an_event_emitted_by_a_short_lived_process_reaches_kafka(live_stack):
    visitor = f"s:exit-{uuid.uuid4().hex[:12]}"
    result = live_stack.run_manage(
        "shell",
        "-c",
        f"from reco_plugin.events import emit; emit('page_view', '{visitor}', '5')",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = find_in_kafka(live_stack, "page_views", lambda key, event: key == visitor, timeout=30)
    assert found is not None, "the event was lost when the process exited"


def test_login_carries_the_anonymous_history_over_and_the_websocket_follows(live_stack):
    username = f"shopper{uuid.uuid4().hex[:6]}"
    created = live_stack.run_manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        f"print(User.objects.create_user({username!r}, password='pw').pk)",
    )
    user = f"u:{created.stdout.strip().splitlines()[-1]}"
    r = live_stack.redis()
    visitor = ShopVisitor(live_stack.web_url)
    viewed = {"50", "181"}  # Star Wars, Return of the Jedi: the most popular films
    for product in sorted(viewed):
        assert visitor.get(f"/products/{product}/")[0] == 200

    def served():
        return ids(visitor.get_json("/reco/api/recommendations/?limit=50")["items"])

    # the pipeline has the anonymous visitor's views: they are no longer served
    assert wait_for(lambda: (lambda now: now and not viewed & set(now))(served()), 30)
    with visitor.websocket() as ws:
        ws.send(json.dumps({"type": "subscribe", "limit": 8}))
        assert json.loads(ws.recv(timeout=5))["type"] == "recommendations"
        status, page = visitor.post_form(
            "/accounts/login/", {"username": username, "password": "pw", "next": "/"}
        )
        assert status == 200 and f"Log out {username}" in page
        # The user (no history of their own) has what they did before: their
        # recent items, a personal list from them, and their views not served.
        assert wait_for(lambda: r.get(keys.visitor_recommendations(user)), 30), (
            "the user's list does not reflect the browsing before the login"
        )
        assert set(r.zrange(keys.visitor_seen(user), 0, -1)) >= viewed
        after = served()
        assert after and not viewed & set(after)
        # The open socket now serves the user: it is pushed the user's list (the
        # list the API serves the user at that moment).
        deadline = time.monotonic() + 15
        pushed = None
        while pushed is None and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message["type"] != "recommendations":
                continue
            now = ids(visitor.get_json("/reco/api/recommendations/?limit=8")["items"])
            if ids(message["items"]) == now:
                pushed = message
        assert pushed is not None, "the open websocket did not follow the login"


def test_reco_retrain_learns_from_the_lake_the_job_appends_to(live_stack):
    result = live_stack.run_manage("reco_retrain", "--days", "90", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # the warm-up's products, from the Parquet files the streaming job appended
    assert summary["products"] > 100 and summary["content_products"] > 100
    r = live_stack.redis()
    top = r.zrevrange(keys.popularity(), 0, 0)[0]
    assert json.loads(r.get(keys.product_retrained(top)))
    assert json.loads(r.get(keys.product_content(top)))
    status = live_stack.run_manage("reco_status", "--json", timeout=60)
    report = json.loads(status.stdout.strip().splitlines()[-1])
    assert report["retrain"]["products"] == summary["products"]
    retraining = [q for q in report["queries"] if q["kind"] == "batch"]
    assert retraining == [
        {
            "name": "reco-retrain",
            "kind": "batch",
            "ok": True,
            "state": "idle",
            "last_run_at": summary["finished_at"],
            "seconds": summary["seconds"],
            "products": summary["products"],
        }
    ]
    assert report["bandit"]["similar"]["trials"] > 0
