"""Experiments: the split, the job's counts per arm, serving by arm, the
admin, and the report's statistics."""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from reco_plugin import experiments, keys, ranker, store, strategies, tuning
from reco_plugin.models import Experiment, Tuning

from .conftest import commit_ranker, put_catalog, put_list, put_policy, ranker_trials
from .test_batch import Batches

pytestmark = pytest.mark.django_db
NOW = int(time.time() * 1000)


def trial(id=3, second=None, shares=(50.0, 50.0), **more):
    arms = (
        experiments.Arm("control", shares[0]),
        experiments.Arm("treatment", shares[1], strategies=second or {}),
    )
    return experiments.Experiment(id=id, arms=arms, starts_ms=NOW - 60_000, **more)


def test_a_visitor_keeps_their_arm_and_the_traffic_splits_by_share():
    experiment = trial(shares=(20.0, 80.0))
    arms = [experiment.arm_of(f"s:{n}") for n in range(20_000)]
    assert arms == [experiment.arm_of(f"s:{n}") for n in range(20_000)]
    assert 0.18 < arms.count(0) / len(arms) < 0.22
    assert trial(id=4).arm_of("s:1") in (0, 1)
    for bad in (
        dict(arms=(experiments.Arm("a", 100.0),)),
        dict(arms=(experiments.Arm("a", 60.0), experiments.Arm("b", 30.0))),
        dict(arms=(experiments.Arm("a", 50.0), experiments.Arm("b", 50.0, strategies={"x": 1}))),
    ):
        with pytest.raises(ValueError):
            experiments.Experiment(id=1, starts_ms=0, **bad).check()


def test_the_report_gives_intervals_and_says_whether_a_difference_is_significant():
    p, low, high = experiments.wilson(50, 1000)
    assert (
        p == 0.05
        and low == pytest.approx(0.0381, abs=1e-4)
        and high == pytest.approx(0.0653, abs=1e-4)
    )
    counts = {"0:impressions": 10_000, "0:clicks": 300, "1:impressions": 10_000, "1:clicks": 420}
    sets = {
        (0, "exposed"): 2000,
        (0, "clicked_exposed"): 200,
        (0, "purchased_exposed"): 40,
        (1, "exposed"): 2000,
        (1, "clicked_exposed"): 280,
        (1, "purchased_exposed"): 44,
    }
    result = experiments.report(trial(), counts, sets)
    versus = result["arms"][1]["versus_control"]
    assert versus["click_rate"]["statement"].startswith("significantly higher")
    assert versus["conversion"]["statement"].startswith("not significantly different")
    assert result["arms"][0]["ctr"] == 0.03 and result["arms"][1]["conversion"][0] == 0.022
    assert result["arms"][1]["click_rate"][0] == 0.14
    # more clicks than impressions (a browser that reports no impressions) is clamped
    assert experiments.wilson(5, 3)[0] == 1.0 and experiments.z_test((5, 3), (1, 3)) is not None
    assert experiments.arm_in("x3.-1.abc", 3) is None


def test_the_job_counts_each_arms_impressions_clicks_and_conversions(redis_url, r):
    experiment = trial()
    batches = Batches(redis_url, experiment=experiment)
    visitors = [f"s:e{n}" for n in range(40)]
    rows = []
    for v in visitors:
        arm = experiment.arm_of(v)
        reco_id = experiments.tag(experiment.id, arm) + "abc"
        rows.append(batches.row("impression", v, "1", strategy="similar", reco_id=reco_id))
        rows.append(batches.row("impression", v, "2", strategy="similar", reco_id=reco_id))
        if arm == 1:
            rows.append(batches.row("click", v, "2", strategy="similar", reco_id=reco_id))
            rows.append(batches.row("purchase", v, "2"))
    # an impression of another experiment's list, or of no experiment, is not counted
    rows.append(batches.row("impression", "s:other", "1", strategy="similar", reco_id="x99.0.abc"))
    rows.append(batches.row("impression", "s:other", "1", strategy="similar", reco_id="abc"))
    batches.run(rows)
    treated = sum(experiment.arm_of(v) for v in visitors)
    result = experiments.read_report(r, experiment)
    control, treatment = result["arms"]
    assert (control["impressions"], control["clicks"]) == (2 * (40 - treated), 0)
    assert (treatment["impressions"], treatment["clicks"]) == (2 * treated, treated)
    assert (control["exposed"], treatment["exposed"]) == (40 - treated, treated)
    assert (control["purchased"], treatment["purchased"]) == (0, treated)
    assert (control["clickers"], treatment["clickers"]) == (0, treated)
    assert treatment["conversion"][0] == 1.0 and treatment["click_rate"][0] == 1.0
    # the sets hold digests, never the visitor ids
    members = r.smembers(keys.experiment_visitors(experiment.id, 1, "exposed"))
    assert members and not any(m.startswith("s:") for m in members)


def test_a_visitor_is_served_their_arms_choices_with_the_arm_in_the_reco_id(r, redis_url):
    store.reset()
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_list(r, keys.trending(), range(20, 39))
    put_policy(r, "similar", "trending")
    experiment = trial(second={"similar": "off"})
    r.set(keys.experiment(), json.dumps(experiment.as_dict()))
    by_arm = {}
    for n in range(40):
        visitor = f"s:served{n}"
        by_arm.setdefault(experiment.arm_of(visitor), visitor)
    control = store.recommend(by_arm[0], "1", 6).items
    treated = store.recommend(by_arm[1], "1", 6).items
    assert {i["strategy"] for i in control} == {"similar"}
    assert {i["strategy"] for i in treated} == {"trending"}
    assert treated[0]["reco_id"].startswith("x3.1.") and control[0]["reco_id"].startswith("x3.0.")
    assert not store.recommend(None, "1", 6).items[0]["reco_id"].startswith("x")
    r.set(keys.experiment(), json.dumps(trial(ends_ms=NOW - 1000).as_dict()))  # over
    assert not store.recommend(by_arm[1], "1", 6).items[0]["reco_id"].startswith("x")


def test_each_arm_gets_its_own_recency_decay_and_exploration(r, redis_url):
    store.reset()
    arms = (
        experiments.Arm("control", 50.0, pipeline={"recency_decay": 1.0, "exploration": 0.3}),
        experiments.Arm("treatment", 50.0, pipeline={"recency_decay": 0.2, "exploration": 1.0}),
    )
    experiment = experiments.Experiment(id=6, arms=arms, starts_ms=NOW - 60_000)
    by_arm = {}
    for n in range(40):
        by_arm.setdefault(experiment.arm_of(f"s:own{n}"), f"s:own{n}")
    batches = Batches(redis_url, experiment=experiment)
    rows = []
    for n in range(4):  # others teach that 2 goes with 1, and 6 with 5
        rows += [batches.row("page_view", f"s:a{n}", p) for p in ("1", "2")]
        rows += [batches.row("page_view", f"s:b{n}", p) for p in ("5", "6")]
    for visitor in by_arm.values():  # each arm's visitor views 1, then 5
        rows.append(batches.row("page_view", visitor, "1", seconds_ago=120))
        rows.append(batches.row("page_view", visitor, "5", seconds_ago=60))
    batches.run(rows)
    # without decay 1's and 5's neighbours weigh alike (2 first by its id); the
    # treatment's decay of 0.2 puts 5's, the more recent, well ahead
    control, treatment = (batches.personal(by_arm[arm]) for arm in (0, 1))
    assert control == ["2", "6"] and treatment == ["6", "2"]
    scores = json.loads(r.get(keys.visitor_recommendations(by_arm[1])))
    assert scores[1]["score"] == pytest.approx(0.2 * scores[0]["score"])
    # the serving path explores as each arm's version says
    put_catalog(r, range(1, 40))
    put_policy(r, "similar")
    r.set(keys.experiment(), json.dumps(experiment.as_dict()))
    assert store.strategy_lists(by_arm[1], "1").policy.exploration == 1.0
    assert store.strategy_lists(by_arm[0], "1").policy.exploration == 0.3
    assert store.strategy_lists(None, "1").policy.exploration == 0.0  # outside: the policy's
    # an arm may not set what all arms share
    for value in ({"event_weights": {"click": 9}}, {"visitor_ttl": 60}):
        shared = experiments.Arm("b", 50.0, pipeline=value)
        with pytest.raises(ValueError, match="all arms share"):
            experiments.Experiment(id=7, arms=(arms[0], shared), starts_ms=0).check()
    # as published by an earlier release (with the visitor TTL): read without it
    earlier = experiment.as_dict()
    earlier["arms"][1]["pipeline"]["visitor_ttl"] = 60
    assert experiments.parse(json.dumps(earlier)).arms[1].pipeline == arms[1].pipeline


def test_an_arm_choosing_the_blend_is_served_the_blend_though_the_ranker_is_warm(r, redis_url):
    store.reset()
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_policy(r, "similar")
    commit_ranker(redis_url, ranker_trials(-(-ranker.WARM_EXAMPLES // (ranker.NEGATIVES + 1))))
    # the published tuning says ranker too: the arm's choice comes first
    r.set(keys.tuning(), json.dumps({"version": 2, "pipeline": {"ranking": "ranker"}}))
    arms = (
        experiments.Arm("control", 50.0, pipeline={"ranking": "ranker"}),
        experiments.Arm("blend", 50.0, pipeline={"ranking": "blend"}),
    )
    experiment = experiments.Experiment(id=8, arms=arms, starts_ms=NOW - 60_000)
    r.set(keys.experiment(), json.dumps(experiment.as_dict()))
    by_arm = {}
    for n in range(40):
        by_arm.setdefault(experiment.arm_of(f"s:rank{n}"), f"s:rank{n}")
    assert store.strategy_lists(by_arm[0], "1").model is not None
    assert store.strategy_lists(by_arm[1], "1").model is None
    served = store.recommend(by_arm[1], "1", 6).items
    assert len(served) == 6 and served[0]["reco_id"].startswith("x8.1.")
    # outside the experiment: the published tuning's choice
    assert store.strategy_lists(None, "1").model is not None
    # an arm's ranking that is neither is refused, naming the arm
    odd = experiments.Arm("odd", 50.0, pipeline={"ranking": "by price"})
    with pytest.raises(ValueError, match="arm odd: ranking must be one of ranker, blend"):
        experiments.Experiment(id=9, arms=(arms[0], odd), starts_ms=0).check()
    published = experiment.as_dict()
    published["arms"][1]["pipeline"]["ranking"] = "by price"
    with pytest.raises(ValueError, match="arm blend: ranking must be one of"):
        experiments.parse(json.dumps(published))


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("analyst", password="x")
    client.force_login(user)
    return user


def arms_form(*arms, initial=0):
    data = {
        "arms-TOTAL_FORMS": str(len(arms)),
        "arms-INITIAL_FORMS": str(initial),
        "arms-MIN_NUM_FORMS": "0",
        "arms-MAX_NUM_FORMS": "1000",
    }
    for n, (name, version, share) in enumerate(arms):
        data.update(
            {
                f"arms-{n}-name": name,
                f"arms-{n}-tuning": str(version),
                f"arms-{n}-share": str(share),
            }
        )
    return data


def when(minutes):
    moment = timezone.localtime(timezone.now() + timedelta(minutes=minutes))
    return {"date": moment.strftime("%Y-%m-%d"), "time": moment.strftime("%H:%M:%S")}


def experiment_form(name, starts, ends=None, *arms):
    data = {
        "name": name,
        "hypothesis": "",
        "starts_at_0": starts["date"],
        "starts_at_1": starts["time"],
    }
    if ends:
        data.update({"ends_at_0": ends["date"], "ends_at_1": ends["time"]})
    return {**data, **arms_form(*arms)}


def test_staff_run_an_experiment_and_read_its_report(
    client, staff, r, redis_url, django_capture_on_commit_callbacks
):
    base = tuning.save_version(Tuning(note="control"))
    bold = tuning.save_version(Tuning(note="bold", strategies={"similar": "off"}))
    add = "/admin/reco_plugin/experiment/add/"
    refused = client.post(
        add, experiment_form("x", when(-1), None, ("a", base.pk, 60), ("b", bold.pk, 30))
    )
    assert "add up to 90, not 100" in refused.content.decode()
    refused = client.post(
        add, experiment_form("x", when(-1), None, ("a", base.pk, 150), ("b", bold.pk, -50))
    ).content.decode()
    assert "less than or equal to 100" in refused and "shares add up to" not in refused
    refused = client.post(
        add, experiment_form("x", when(-1), None, ("a", base.pk, 50), ("A", bold.pk, 50))
    ).content.decode()
    assert "Two arms have the same name" in refused
    # arms share what the pipeline learns, with the active version's values:
    # a version differing from it there is refused
    heavy = tuning.save_version(Tuning(note="heavy", weight_purchase=9.0, exploration=0.5))
    refused = client.post(
        add, experiment_form("x", when(-1), None, ("a", base.pk, 50), ("b", heavy.pk, 50))
    ).content.decode()
    assert f"“a” uses version {base.pk}, which differs from the active version ({heavy.pk})" in (
        refused
    )
    assert "in event weights" in refused and not Experiment.objects.exists()
    bold = tuning.save_version(
        Tuning(
            note="bold",
            strategies={"similar": "off"},
            exploration=0.5,
            recency_decay=0.5,
            ranking="blend",
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            add, experiment_form("bold", when(-1), None, ("a", base.pk, 50), ("b", bold.pk, 50))
        )
    assert answer.status_code == 302
    saved = Experiment.objects.get()
    published = json.loads(r.get(keys.experiment()))
    assert published["id"] == saved.pk and [a["share"] for a in published["arms"]] == [50.0, 50.0]
    assert published["arms"][1]["strategies"] == {"similar": "off"}
    assert published["arms"][1]["pipeline"] == {
        "exploration": 0.5,
        "recency_decay": 0.5,
        "ranking": "blend",
    }
    assert published["arms"][0]["pipeline"] == {
        "exploration": base.settings().exploration,
        "recency_decay": base.settings().recency_decay,
        "ranking": "ranker",  # the shop's setting
    }
    # the preview says which arm a visitor is in
    visitor = next(f"s:p{n}" for n in range(50) if saved.definition().arm_of(f"s:p{n}") == 1)
    page = client.get("/admin/reco_plugin/tuning/preview/", {"visitor": visitor}).content.decode()
    assert f"{visitor} is in the experiment “bold”, arm “b” (version {bold.pk})" in page
    # a version that changes what the arms share, saved while it runs, warns
    form = {"note": "", "weight_purchase": "7"}
    form.update({f"strategy_{s}": "learnt" for s in strategies.STRATEGIES})
    warned = client.post("/admin/reco_plugin/tuning/add/", form, follow=True).content.decode()
    assert "its arms now all run on this version" in warned and "event weights" in warned
    tuning.save_version(Tuning(note="back", strategies={"similar": "off"}))
    clash = client.post(
        add, experiment_form("other", when(5), None, ("a", base.pk, 50), ("b", bold.pk, 50))
    )
    assert "one experiment runs at a time" in clash.content.decode()
    r.hset(keys.experiment_counts(saved.pk), mapping={"0:impressions": 100, "0:clicks": 3})
    report = client.get(f"/admin/reco_plugin/experiment/{saved.pk}/report/").content.decode()
    assert 'id="reco-report"' in report and "3.00%" in report and "(control)" in report
    assert "no data yet" in report
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/admin/reco_plugin/experiment/", {"action": "stop", "_selected_action": [saved.pk]}
        )
    saved.refresh_from_db()
    assert saved.ends_at is not None and r.get(keys.experiment()) is None


def test_the_report_is_for_staff_only(client, django_user_model, redis_url):
    client.force_login(django_user_model.objects.create_user("shopper", password="x"))
    answer = client.get("/admin/reco_plugin/experiment/1/report/")
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]


def test_forgetting_a_visitor_takes_them_out_of_the_experiments_sets(r, redis_url):
    from reco_plugin import privacy

    base = tuning.save_version(Tuning(note="a"))
    saved = Experiment.objects.create(name="e", starts_at=timezone.now())
    saved.arms.create(name="a", tuning=base, share=50)
    saved.arms.create(name="b", tuning=base, share=50)
    experiment = saved.definition()
    arm = experiment.arm_of("s:gone")
    key = keys.experiment_visitors(saved.pk, arm, "exposed")
    r.sadd(key, experiments.member(saved.pk, "s:gone"), experiments.member(saved.pk, "s:stays"))
    privacy.forget("s:gone")
    assert r.smembers(key) == {experiments.member(saved.pk, "s:stays")}


def test_arms_are_fixed_once_the_experiment_started(client, staff, redis_url):
    base = tuning.save_version(Tuning(note="a"))
    saved = Experiment.objects.create(name="started", starts_at=timezone.now() - timedelta(hours=1))
    saved.arms.create(name="a", tuning=base, share=50)
    saved.arms.create(name="b", tuning=base, share=50)
    page = client.get(f"/admin/reco_plugin/experiment/{saved.pk}/change/").content.decode()
    assert 'name="arms-0-share"' not in page  # shown, not editable
    upcoming = Experiment.objects.create(name="later", starts_at=timezone.now() + timedelta(days=9))
    client.post(
        "/admin/reco_plugin/experiment/", {"action": "stop", "_selected_action": [upcoming.pk]}
    )
    upcoming.refresh_from_db()
    assert upcoming.ends_at is not None and upcoming.ends_at <= timezone.now()
    assert tuning.current_experiment() == saved


def test_the_cleanup_deletes_the_visitor_sets_of_experiments_long_over(r, redis_url):
    from reco_plugin import tasks
    from reco_plugin.schedule import beat_schedule

    base = tuning.save_version(Tuning(note="a"))
    old = Experiment.objects.create(
        name="old",
        starts_at=timezone.now() - timedelta(days=90),
        ends_at=timezone.now() - timedelta(days=40),
    )
    recent = Experiment.objects.create(
        name="recent",
        starts_at=timezone.now() - timedelta(days=20),
        ends_at=timezone.now() - timedelta(days=10),
    )
    for experiment in (old, recent):
        experiment.arms.create(name="a", tuning=base, share=50)
        experiment.arms.create(name="b", tuning=base, share=50)
        r.sadd(keys.experiment_visitors(experiment.pk, 1, "exposed"), "digest")
        r.hset(keys.experiment_counts(experiment.pk), "1:impressions", 5)
    assert beat_schedule()["reco-cleanup"]["task"] == tasks.cleanup.name
    assert tasks.cleanup(30) == {"experiments": 1, "sets_deleted": 1}
    assert not r.exists(keys.experiment_visitors(old.pk, 1, "exposed"))
    assert r.exists(keys.experiment_visitors(recent.pk, 1, "exposed"))
    assert r.hget(keys.experiment_counts(old.pk), "1:impressions") == "5"  # counts stay
