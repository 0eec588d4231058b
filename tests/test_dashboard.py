"""The admin dashboard: its data from the job's history, the roll-up samples
and what the ranker learnt; and the preview's account of the ranker."""

import json
import math
import time

import pytest

from reco_plugin import dashboard, experiments, keys, preview, ranker, store, strategies, tasks
from reco_plugin.schedule import beat_schedule

from .conftest import commit_ranker, put_catalog, put_list, put_policy, ranker_trials

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


# next-item trials enough for the ranker to be served
WARM_TRIALS = -(-ranker.WARM_EXAMPLES // (ranker.NEGATIVES + 1))


def test_the_dashboard_charts_what_the_ranker_learnt(client, django_user_model, r, redis_url):
    client.force_login(django_user_model.objects.create_user("clerk", password="x", is_staff=True))
    page = client.get("/admin/reco_plugin/dashboard/").content.decode()
    assert 'id="reco-chart-ranker"' in page and 'id="reco-ranker-strategies"' in page
    assert page.count("The ranker has not learnt yet.") == 2  # until the data says otherwise
    assert client.get("/admin/reco_plugin/dashboard/data/").json()["ranker"] is None

    first, second, third = ranker_trials(30), ranker_trials(30, 30), ranker_trials(30, 60)
    commit_ranker(redis_url, first, second, third)
    # the same batches learnt from the start, as the job does
    learner = ranker.Learner()
    measured = []
    for batch in (first, second, third):
        measured.append(ranker.evaluate(learner.weights(), batch))
        learner.learn(batch)
    found = client.get("/admin/reco_plugin/dashboard/data/").json()["ranker"]
    assert found["examples"] == 3 * 30 * (ranker.NEGATIVES + 1) == learner.examples
    assert found["warm_examples"] == ranker.WARM_EXAMPLES and found["ranking"] == "ranker"
    # oldest first: the first batch met a model that knew nothing
    assert [m["log_loss"] for m in found["metrics"]] == pytest.approx(
        [m["log_loss"] for m in measured]
    )
    assert [m["auc"] for m in found["metrics"]] == pytest.approx([m["auc"] for m in measured])
    assert found["metrics"][0]["log_loss"] == pytest.approx(math.log(2))
    assert found["metrics"][0]["auc"] == 0.5 and found["metrics"][2]["auc"] > 0.5
    assert all(m["examples"] == 330 and m["at"] for m in found["metrics"])
    # each strategy's three weights, then the other features'
    weights = dict(zip(ranker.FEATURES, learner.weights(), strict=True))
    assert [s["strategy"] for s in found["strategies"]] == list(strategies.STRATEGIES)
    similar = next(s for s in found["strategies"] if s["strategy"] == "similar")
    assert similar == {
        "strategy": "similar",
        "listed": pytest.approx(weights["similar"]),
        "rank": pytest.approx(weights["similar:rank"]),
        "score": pytest.approx(weights["similar:score"]),
    }
    assert similar["rank"] > 0  # its first items were where visitors went
    others = {f["feature"]: f for f in found["features"]}
    assert list(others) == [
        ranker.BIAS,
        ranker.SOURCES,
        ranker.PAGE_CATEGORY,
        ranker.CHEAPER,
        ranker.PRICE_RATIO,
        ranker.CHEAPEST,
        ranker.PERSONAL_HISTORY,
        ranker.SIMILAR_HISTORY,
    ]
    assert others[ranker.SOURCES]["weight"] == pytest.approx(weights[ranker.SOURCES])
    assert others[ranker.SOURCES]["label"] == "number of lists holding it"


def preview_page(client, **asked):
    return client.get("/admin/reco_plugin/tuning/preview/", asked).content.decode()


def test_the_preview_says_whether_the_ranker_ordered_the_list_and_why(
    client, django_user_model, r, redis_url
):
    store.reset()
    client.force_login(django_user_model.objects.create_superuser("merch", password="x"))
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_list(r, keys.trending(), range(8, 30))
    put_policy(r, "similar", "trending")
    page = preview_page(client, product="1")
    assert 'data-ranked="false"' in page and "ranker score" not in page
    assert "the ranker has not learnt yet (no model in Redis)" in page

    commit_ranker(redis_url, ranker_trials(10))
    page = preview_page(client, product="1")
    assert "until the ranker is warm: it has learnt from 110 of the 2,000 examples it needs" in page

    commit_ranker(redis_url, ranker_trials(WARM_TRIALS, 10))
    examples = 110 + WARM_TRIALS * (ranker.NEGATIVES + 1)
    page = preview_page(client, product="1", limit="5")
    assert 'data-ranked="true"' in page and "ranker score" in page
    assert f"learnt from {examples:,} examples (served from 2,000)" in page
    assert "ranking is “ranker” by the shop&#x27;s setting" in page
    result = preview.preview("", "1", "", 5)
    weights = json.loads(r.get(keys.ranker_weights()))["weights"]
    assert len(result["served"]) == 5 and result["ranking"]["ranked"]
    for item in result["served"]:
        explained = item["ranker"]
        assert explained["explored"] is False  # the policy explores nothing
        # the features' shares and the bias make the score
        logit = weights[0] + sum(explained["features"].values())
        assert explained["score"] == pytest.approx(ranker.probability(logit), abs=1e-3)
        top = explained["top"]
        shares = [share for share in explained["features"].values() if share]
        assert [f["contribution"] for f in top] == sorted(shares, key=abs, reverse=True)[
            : preview.FEATURES_SHOWN
        ]
        assert len(top) == min(len(shares), preview.FEATURES_SHOWN) >= 3
    best = result["served"][0]
    assert best["ranker"]["score"] == max(i["ranker"]["score"] for i in result["served"])
    shown = best["ranker"]["top"][0]
    assert f"{shown['label']} {shown['contribution']:+.3f}" in page
    assert "high in similar&#x27;s list" in page and "number of lists holding it" in page
    # a policy that explores every slot: the preview says which slots it drew
    put_policy(r, "similar", "trending", exploration=1.0)
    explored = [i["ranker"]["explored"] for i in preview.preview("", "1", "", 5)["served"]]
    assert any(explored) and "yes: a random candidate" in preview_page(client, product="1")
    put_policy(r, "similar", "trending")

    # the published tuning chooses the blend
    r.set(keys.tuning(), json.dumps({"version": 7, "pipeline": {"ranking": "blend"}}))
    page = preview_page(client, product="1")
    assert "Blended by the bandit: ranking is “blend” by tuning version 7." in page
    assert 'data-ranked="false"' in page and "ranker score" not in page

    # an experiment's arm chooses the ranker again for its visitors
    arms = (
        experiments.Arm("control", 50.0, pipeline={"ranking": "blend"}),
        experiments.Arm("ranked", 50.0, pipeline={"ranking": "ranker"}),
    )
    experiment = experiments.Experiment(id=5, arms=arms, starts_ms=int(time.time() * 1000) - 1000)
    r.set(keys.experiment(), json.dumps(experiment.as_dict()))
    visitor = next(f"s:v{n}" for n in range(50) if experiment.arm_of(f"s:v{n}") == 1)
    page = preview_page(client, visitor=visitor, product="1")
    assert "Ranked by the ranker: ranking is “ranker” by the experiment&#x27;s arm “ranked”" in page
