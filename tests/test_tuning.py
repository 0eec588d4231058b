"""Tuning in the admin: versions, validation, publishing, roll-back, and what
the serving path and the job make of a published version."""

import json

import pytest

from reco_plugin import keys, ranker, store, strategies, tuning
from reco_plugin.models import Tuning
from reco_plugin.scoring import PipelineSettings

from .conftest import commit_ranker, put_catalog, put_list, put_policy, ranker_trials

pytestmark = pytest.mark.django_db

ADD = "/admin/reco_plugin/tuning/add/"
LIST = "/admin/reco_plugin/tuning/"


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_user("merchandiser", password="x", is_staff=True)
    for codename in ("add_tuning", "view_tuning", "change_tuning"):
        user.user_permissions.add(_permission(codename))
    client.force_login(user)
    return user


def _permission(codename):
    from django.contrib.auth.models import Permission

    return Permission.objects.get(codename=codename, content_type__app_label="reco_plugin")


def form(**values):
    """The add form's fields as a browser posts them: every strategy learnt, the rest empty."""
    data = {"note": "", **{f"strategy_{s}": "learnt" for s in strategies.STRATEGIES}}
    data.update(values)
    return data


def published(r):
    raw = r.get(keys.tuning())
    return json.loads(raw) if raw else None


def test_staff_save_a_version_which_is_published_at_once(client, staff, r):
    assert client.get(LIST).status_code == 200
    assert client.get(ADD).status_code == 200
    answer = client.post(
        ADD,
        form(
            note="purchases matter less",
            weight_purchase="2",
            covisit_window="600",
            strategy_trending="off",
            strategy_similar="2.5",
        ),
        follow=True,
    )
    assert answer.status_code == 200
    version = Tuning.objects.get()
    assert "is active" in answer.content.decode()
    assert version.created_by == staff
    assert published(r) == {
        "version": version.pk,
        "pipeline": {"covisit_window": 600, "event_weights": {"purchase": 2.0}},
        "strategies": {"similar": 2.5, "trending": "off"},
    }
    assert "weight purchase: default → 2.0" in version.changes
    merged = tuning.effective_settings()
    assert merged.covisit_window == 600 and merged.event_weights["purchase"] == 2.0
    assert merged.event_weights["click"] == 1.5  # the rest keeps the shop's or the default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"weight_click": "-1"}, "greater than or equal to 0"),
        ({"weight_purchase": "1e308"}, "At most 100 (a purchase weighs 5 by default)."),
        ({"trending_window": "30"}, "trending window must be at least one trending bucket (60 s)"),
        ({"exploration": "1.5"}, "less than or equal to 1"),
        ({"half_life": "3600"}, "half life must be at least 17281 seconds"),
        (
            {"strategy_personal": "sometimes"},
            "personal: expected &#x27;learnt&#x27;, &#x27;off&#x27; or a weight",
        ),
        ({"strategy_popular": "-2"}, "popular: a weight must be a number &gt;= 0"),
        ({"ranking": "sometimes"}, "Select a valid choice. sometimes is not one of the available"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_and_nothing_is_published(
    client, staff, r, values, message
):
    answer = client.post(ADD, form(**values))
    assert answer.status_code == 200  # the form again, with the message
    page = answer.content.decode()
    assert message in page
    assert page.count('class="errorlist') == 1  # said once, where it belongs
    assert not Tuning.objects.exists() and published(r) is None


def test_a_new_version_starts_from_the_active_one_and_saved_ones_are_read_only(client, staff, r):
    client.post(ADD, form(weight_click="4", strategy_content="off"))
    first = Tuning.objects.get()
    page = client.get(ADD).content.decode()
    assert 'name="weight_click" value="4.0"' in page and 'name="strategy_content"' in page
    assert 'value="off"' in page
    view = client.get(f"{LIST}{first.pk}/change/")
    assert view.status_code == 200 and 'name="weight_click"' not in view.content.decode()
    client.post(f"{LIST}{first.pk}/change/", form(weight_click="9"))
    first.refresh_from_db()
    assert first.weight_click == 4.0  # a saved version never changes
    assert client.post(f"{LIST}{first.pk}/delete/").status_code == 403


def test_roll_back_adds_a_copy_of_the_older_version_and_publishes_it(client, staff, r):
    client.post(ADD, form(note="first", weight_click="4"))
    client.post(ADD, form(note="second", weight_click="6", half_life="86400"))
    first, second = Tuning.objects.order_by("pk")
    assert published(r)["version"] == second.pk
    answer = client.post(LIST, {"action": "roll_back", "_selected_action": [first.pk]}, follow=True)
    assert "is active" in answer.content.decode()
    copy = Tuning.objects.latest()
    assert copy.note == f"rolled back to version {first.pk}" and copy.created_by == staff
    assert (copy.weight_click, copy.half_life) == (4.0, None)
    assert published(r) == {**first.published(), "version": copy.pk}
    assert (
        "weight click: 6.0 → 4.0" in copy.changes and "half life: 86400 → default" in copy.changes
    )
    history = client.get(LIST).content.decode()
    assert history.count("merchandiser") >= 3  # who made each version
    again = client.post(LIST, {"action": "roll_back", "_selected_action": [copy.pk]}, follow=True)
    assert f"Version {copy.pk} is the active one already." in again.content.decode()
    assert Tuning.objects.latest() == copy  # no "no change" version


def test_a_draft_is_kept_for_an_experiment_and_applied_only_when_activated(client, staff, r):
    client.post(ADD, form(note="live", weight_click="4"))
    live = Tuning.objects.get()
    answer = client.post(
        ADD, form(note="to try", draft="on", strategy_trending="off"), follow=True
    ).content.decode()
    draft = Tuning.objects.latest("pk")
    assert draft.draft and "saved as a draft: not applied" in answer
    assert tuning.active() == live and published(r)["version"] == live.pk
    # activated later: a copy, no longer a draft
    client.post(LIST, {"action": "roll_back", "_selected_action": [draft.pk]})
    active = tuning.active()
    assert active.pk > draft.pk and not active.draft and published(r)["version"] == active.pk
    assert active.strategies == {"trending": "off"} and active.weight_click is None


def test_people_who_are_not_staff_cannot_reach_the_tuning(client, django_user_model):
    assert client.get(LIST).status_code == 302  # to the admin's login
    shopper = django_user_model.objects.create_user("shopper", password="x")
    client.force_login(shopper)
    answer = client.post(ADD, form(weight_click="9"))
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]
    assert not Tuning.objects.exists()
    staff_without_rights = django_user_model.objects.create_user(
        "clerk", password="x", is_staff=True
    )
    client.force_login(staff_without_rights)
    assert client.get(ADD).status_code == 403


def test_a_strategy_turned_off_is_never_served_and_a_fixed_weight_takes_its_share(r, redis_url):
    store.reset()
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_list(r, keys.product_content("1"), range(20, 39))
    put_policy(r, "similar", "content")  # the bandit prefers similar
    served = store.recommend("s:tuned", "1", 8).items
    assert {i["strategy"] for i in served} == {"similar"}
    r.set(keys.tuning(), json.dumps({"version": 3, "strategies": {"similar": "off"}}))
    served = store.recommend("s:tuned", "1", 8).items
    assert len(served) == 8 and {i["strategy"] for i in served} == {"content"}
    policy = strategies.Policy(None, {"similar": 3.0, "content": "learnt", "trending": "off"})
    chances = policy.chances(["similar", "content", "popular"])
    assert chances == pytest.approx([3 / 5, 1 / 5, 1 / 5]) and not policy.enabled("trending")


def test_a_tuning_the_serving_path_cannot_read_is_ignored(r, redis_url):
    store.reset()
    put_catalog(r, range(1, 10))
    put_list(r, keys.product_similar("1"), range(2, 10))
    r.set(keys.tuning(), json.dumps({"version": 4, "strategies": {"similar": "sometimes"}}))
    assert len(store.recommend("s:x", "1", 4).items) == 4


def test_a_tuning_naming_a_strategy_this_version_lacks_keeps_the_rest(r, redis_url, caplog):
    # saved by a newer version's admin while this web process runs the older one
    store.reset()
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_list(r, keys.product_content("1"), range(20, 39))
    put_policy(r, "similar", "content")
    newer = {"similar": "off", "from_a_newer_version": 2.0}
    r.set(keys.tuning(), json.dumps({"version": 5, "strategies": newer}))
    served = store.recommend("s:newer", "1", 8).items
    assert len(served) == 8 and {i["strategy"] for i in served} == {"content"}
    assert "from_a_newer_version" in caplog.text
    # an experiment arm's choices likewise
    arm = {"strategies": newer, "pipeline": {}}
    policy = store._policy(r, r.get(keys.bandit_policy_version()), None, arm)
    assert not policy.enabled("similar") and policy.enabled("content")


def test_the_shops_pipeline_setting_is_under_the_tuning(settings):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "PIPELINE": {"half_life": 172800, "list_length": 30},
    }
    Tuning.objects.create(list_length=10)
    tuning.effective_settings.cache_clear()
    merged = tuning.effective_settings()
    assert (merged.half_life, merged.list_length) == (172800, 10)
    assert merged.trending_window == PipelineSettings().trending_window


def test_the_periodic_task_publishes_the_active_version_again(r, redis_url):
    from reco_plugin import tasks
    from reco_plugin.schedule import beat_schedule

    assert beat_schedule()["reco-publish-tuning"]["task"] == tasks.publish_tuning.name
    version = tuning.save_version(Tuning(weight_click=2.0, note="x"))
    assert published(r) is None  # saved outside the admin: not yet published
    r.flushdb()  # as a Redis restarted empty
    assert tasks.publish_tuning() is True
    assert published(r) == version.published()


def test_a_version_choosing_the_blend_is_served_the_blend_though_the_ranker_is_warm(
    client, staff, r, redis_url
):
    store.reset()
    put_catalog(r, range(1, 40))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_policy(r, "similar")
    # the job's setting is the ranker, and it has learnt enough to be served
    trials = -(-ranker.WARM_EXAMPLES // (ranker.NEGATIVES + 1))
    commit_ranker(redis_url, ranker_trials(trials))
    assert json.loads(r.get(keys.ranker_weights()))["ranking"] == "ranker"
    assert store.strategy_lists("s:shopper", "1").model is not None
    page = client.get(ADD).content.decode()
    assert 'name="ranking"' in page and "the shop&#x27;s setting" in page

    client.post(ADD, form(note="blend again", ranking="blend"))
    blend = Tuning.objects.get()
    assert published(r)["pipeline"] == {"ranking": "blend"}
    assert "ranking: default → blend" in blend.changes
    assert tuning.effective_settings().ranking == "blend"
    assert store.strategy_lists("s:shopper", "1").model is None
    served = store.recommend("s:shopper", "1", 6).items
    assert len(served) == 6 and {i["strategy"] for i in served} == {"similar"}

    # a version choosing nothing leaves it to the shop's setting: the ranker again
    client.post(ADD, form(note="the shop's", ranking=""))
    assert published(r)["pipeline"] == {}
    assert "ranking: blend → default" in Tuning.objects.latest().changes
    assert store.strategy_lists("s:shopper", "1").model is not None
    assert tuning.check({"ranking": "sometimes"}, {}) == ["ranking must be one of ranker, blend"]
