"""The admin dashboard: its data from the job's history and the roll-up samples."""

import json
import time

import pytest

from reco_plugin import dashboard, keys, tasks
from reco_plugin.schedule import beat_schedule

from .conftest import put_policy

pytestmark = pytest.mark.django_db


def history(r, *batches):
    for batch in batches:
        r.lpush(keys.pipeline_history(), json.dumps(batch))


def test_the_data_turns_the_batch_history_into_rates(r, redis_url):
    now = time.time()
    history(
        r,
        {
            "finished_at": now - 4,
            "seconds": 0.3,
            "rows": 10,
            "freshness_ms": 900,
            "applied_by_topic": {"page_views": 10},
        },
        {
            "finished_at": now - 2,
            "seconds": 0.5,
            "rows": 30,
            "freshness_ms": 700,
            "applied_by_topic": {"page_views": 20, "impressions": 10},
        },
    )
    r.hset(
        keys.bandit_stats(),
        mapping={
            "similar:impressions": 200,
            "similar:clicks": 10,
            "similar:carts": 4,
            "similar:purchases": 2,
        },
    )
    r.hset(keys.bandit(), mapping={"similar": "5.0 50.0", "similar:click": "10.0 200.0"})
    put_policy(r, "similar", "trending")  # the bandit prefers similar
    r.set(keys.tuning(), json.dumps({"version": 1, "strategies": {"popular": "off"}}))
    found = dashboard.data()
    assert found["topics"] == ["impressions", "page_views"]
    first, second = found["batches"]
    assert first["rows_per_second"] is None  # no interval before the first
    assert second["rows_per_second"] == pytest.approx(15.0, rel=0.01)
    assert second["events_per_second"] == {
        "impressions": pytest.approx(5.0, rel=0.01),
        "page_views": pytest.approx(10.0, rel=0.01),
    }
    assert second["freshness_ms"] == 700
    assert found["strategies"]["similar"]["ctr"] == 0.05
    assert found["strategies"]["similar"]["conversion"] == 0.2  # purchases per click
    assert found["strategies"]["similar"]["carts_per_click"] == 0.4
    # the blend's current weights: similar wins every draw but the exploration's
    shares = dashboard.blend_shares(r)
    assert "popular" not in shares and sum(shares.values()) == pytest.approx(1.0)
    assert shares["similar"] == max(shares.values()) and found["strategies"]["similar"]["share"]
    assert found["lag"] and found["sampled_at"] >= now  # sampled now: nothing was
    assert r.llen(keys.stats_history()) == 1
    assert dashboard.data()["sampled_at"] == found["sampled_at"]  # fresh enough: not again


def test_the_roll_up_task_is_scheduled_and_samples(r, redis_url):
    assert beat_schedule()["reco-roll-up"]["task"] == tasks.roll_up.name
    sample = tasks.roll_up()
    assert "lag" in sample and json.loads(r.lindex(keys.stats_history(), 0))["at"] == sample["at"]


def test_staff_see_the_dashboard_and_others_do_not(client, django_user_model, redis_url):
    page = "/admin/reco_plugin/dashboard/"
    assert client.get(page).status_code == 302
    client.force_login(django_user_model.objects.create_user("clerk", password="x", is_staff=True))
    html = client.get(page).content.decode()
    assert "reco_plugin/vendor/chart.umd.min.js" in html and 'id="reco-chart-lag"' in html
    assert client.get(page + "data/").json()["batches"] == []
    index = client.get("/admin/").content.decode()
    assert "/admin/reco_plugin/dashboard/" in index  # listed in the app's section


def test_with_redis_down_the_data_says_so(client, django_user_model, settings):
    from stack.services import free_port

    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    answer = client.get("/admin/reco_plugin/dashboard/data/")
    assert answer.status_code == 503 and "Redis did not answer" in answer.json()["error"]


def test_the_dashboard_has_no_pages_of_the_model_it_stands_on(client, django_user_model, redis_url):
    from reco_plugin.metrics import ShopCollector
    from reco_plugin.models import Tuning

    version = Tuning.objects.create(note="x")
    client.force_login(django_user_model.objects.create_user("clerk", password="x", is_staff=True))
    assert client.get(f"/admin/reco_plugin/dashboard/{version.pk}/change/").status_code == 404
    assert ShopCollector().describe() == []  # registering it reads nothing
