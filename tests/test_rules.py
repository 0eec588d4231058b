"""Merchandising rules: the rules themselves, the admin, the serving path,
the pipeline, and the preview that shows what they touched."""

import json
import time

import pytest

from reco_plugin import keys, rules, store
from reco_plugin.models import Rule
from spark_jobs.merchandise import Merchandise

from .conftest import put_catalog, put_list, put_policy
from .test_batch import Batches

pytestmark = pytest.mark.django_db
NOW = int(time.time() * 1000)


def rule(id, action, product, scope="global", value="", **more):
    return rules.Rule(
        id=id, action=action, product_id=product, scope=scope, scope_value=value, **more
    )


def publish(r, *items):
    r.set(keys.rules(), rules.dumps(items))
    store.reset()


def ids(items):
    return [i["product_id"] for i in items]


def test_a_rule_holds_where_and_when_it_says():
    in_drama = rule(1, "block", "5", "category", "Drama", starts_ms=NOW - 1000, ends_ms=NOW + 1000)
    assert rules.in_effect([in_drama], NOW, "1", "Drama") == [in_drama]
    assert rules.in_effect([in_drama], NOW, "1", "Comedy") == []
    assert rules.in_effect([in_drama], NOW + 2000, "1", "Drama") == []  # ended
    on_page = rule(2, "pin", "9", "product", "1", position=1)
    assert rules.in_effect([on_page], NOW, "1", None) == [on_page]
    assert rules.in_effect([on_page], NOW, "2", None) == []
    for bad, message in [
        (rule(3, "pin", "9"), "position"),
        (rule(4, "boost", "9", factor=0), "factor"),
        (rule(5, "block", "9", "category"), "needs the category"),
        (rule(6, "block", "9", starts_ms=NOW, ends_ms=NOW), "end after it starts"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad.check()


def test_boosts_move_items_up_by_their_factor_and_pins_take_their_place():
    items = [{"product_id": str(n)} for n in range(1, 9)]
    moved = rules.boosted(items, [rule(1, "boost", "7", factor=2.0)])
    assert ids(moved)[:5] == ["1", "2", "3", "7", "4"] and moved[3]["rules"] == [1]
    placed = rules.pinned(items, [(0, {"product_id": "42"}, 9), (2, {"product_id": "3"}, 8)], 5)
    assert ids(placed) == ["42", "1", "3", "2", "4"]
    assert placed[0]["strategy"] == "pinned" and placed[0]["rules"] == [9]


def test_the_serving_path_applies_blocks_pins_and_boosts_on_their_pages(r, redis_url):
    put_catalog(r, range(1, 30))
    put_catalog(r, [99], category="Comedy")
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_policy(r, "similar")
    before = ids(store.recommend("s:v", "1", 6).items)
    assert before[:3] == ["2", "3", "4"]
    publish(
        r,
        rule(1, "block", "3"),
        rule(2, "pin", "99", "product", "1", position=1),
        rule(3, "boost", "7", "category", "Drama", factor=3.0),
        rule(4, "block", "2", "product", "8"),  # another page
        rule(5, "pin", "25", starts_ms=NOW + 3_600_000, position=2),  # not yet
    )
    after = store.recommend("s:v", "1", 6).items
    # 3 blocked; 7 boosted x3 from 5th to 2nd of the blend; 99 pinned first;
    # the block of 2 holds on another page, the pin of 25 not yet
    assert ids(after) == ["99", "2", "7", "4", "5", "6"]
    assert after[0]["strategy"] == "pinned" and after[2]["strategy"] == "similar"
    assert "rules" not in after[0]  # the public answer does not name rules
    # the same rules on the other endpoints
    assert "3" not in ids(store.similar_to("1", 6)) and ids(store.similar_to("1", 6))[0] == "99"
    put_list(r, keys.trending(), [3, 4, 5])
    assert ids(store.trending(limit=3)) == ["4", "5"]


def test_a_boost_lifts_an_item_from_beyond_the_limit_into_a_short_list(r, redis_url):
    put_catalog(r, range(1, 30))
    put_list(r, keys.product_similar("1"), range(2, 20))
    put_policy(r, "similar")
    assert "12" not in ids(store.similar_to("1", 3))
    publish(r, rule(1, "boost", "12", factor=4.0))
    # 12 is 11th: 11 / 4 ranks it between the 2nd and the 3rd, whatever the limit
    assert ids(store.similar_to("1", 3)) == ["2", "3", "12"]
    assert ids(store.recommend("s:v", "1", 3).items) == ["2", "3", "12"]
    assert ids(store.similar_to("1", 6)) == ["2", "3", "12", "4", "5", "6"]


def test_a_global_block_is_kept_out_of_what_the_pipeline_writes(redis_url, r):
    r.set(keys.rules(), rules.dumps([rule(1, "block", "2")]))
    batches = Batches(redis_url)
    batches.run([batches.row("purchase", f"s:{n}", p) for n in range(3) for p in ("1", "2", "3")])
    written = batches.list(keys.trending())
    assert "2" not in written and {"1", "3"} <= set(written)


def test_a_shortlist_leaves_out_what_is_blocked_for_good_and_holds_the_rest():
    ranked = [{"product_id": str(n), "score": 10 - n} for n in range(1, 10)]
    found = rules.Shortlist(removed=frozenset({"1"}), held=frozenset({"2", "9"}))
    assert ids(found.cut(ranked, 3)) == ["2", "3", "4", "5"]  # 2 kept beyond the three
    assert found.depth(3) == 3 + 3 + 1
    assert ids(rules.Shortlist().cut(ranked, 3)) == ["1", "2", "3"]


def test_the_pipeline_cuts_each_list_under_the_blocks_of_where_it_is_shown(redis_url, r):
    from reco_plugin.scoring import PipelineSettings

    put_catalog(r, range(1, 10))
    put_policy(r, "similar")
    publish(
        r,
        rule(1, "block", "2", "product", "1"),  # on 1's page, for good
        rule(2, "block", "3", ends_ms=NOW + 3_600_000),  # everywhere, for an hour
        rule(3, "block", "4", "category", "Drama"),  # in 1's category, for good
        rule(4, "block", "5", "category", "Comedy"),  # not where 1 is shown
        rule(5, "block", "8"),  # everywhere, for good
        rule(6, "boost", "7", factor=3.0),  # acts when served
    )
    batches = Batches(redis_url, settings=PipelineSettings(list_length=3))
    rows = []
    # k is viewed with 1 by 10 - k visitors: 1's neighbours rank 2, 3, 4, ..., 8
    for k in range(2, 9):
        for n in range(10 - k):
            visitor = f"s:k{k}n{n}"
            rows += [
                batches.row("page_view", visitor, "1", seconds_ago=90, category="Drama"),
                batches.row("page_view", visitor, str(k), seconds_ago=60, category="Drama"),
            ]
    batches.run(rows)
    # 8 never listed; 2, 3 and 4 kept beyond the three, as only 1's page, only
    # for an hour, only Drama holds them back: the list is full once served
    assert batches.list(keys.product_similar("1")) == ["2", "3", "4", "5", "6", "7"]
    assert ids(store.similar_to("1", 3)) == ["5", "7", "6"]  # 7 boosted x3: 3 / 3 ties 5
    # the global trending counts 2 and 4 (blocked on a page, in a category) as
    # items, and holds 3 (blocked everywhere for an hour) beyond them
    assert batches.list(keys.trending_list("long", "")) == ["1", "2", "3", "4"]
    # a visitor's own list (shown anywhere) still has 2, which only 1's page blocks
    assert "2" in batches.personal("s:k3n0") and "8" not in batches.personal("s:k3n0")


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("merch", password="x")
    client.force_login(user)
    return user


def test_staff_add_rules_in_the_admin_and_they_are_published(
    client, staff, r, redis_url, make_product, django_capture_on_commit_callbacks
):
    from demo_shop.catalog.models import Product

    for pk in (5, 1):
        if not Product.objects.filter(pk=pk).exists():
            make_product(pk)
    add = "/admin/reco_plugin/rule/add/"
    form = {
        "enabled": "on",
        "action": "pin",
        "product_id": "5",
        "position": "2",
        "scope": "product",
    }
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(add, {**form, "scope_value": "1"})
    assert answer.status_code == 302
    saved = Rule.objects.get()
    assert saved.created_by == staff
    assert json.loads(r.get(keys.rules())) == [
        {
            "id": saved.pk,
            "action": "pin",
            "product_id": "5",
            "position": 2,
            "scope": "product",
            "scope_value": "1",
        }
    ]
    refused = client.post(add, {**form, "scope_value": "1", "position": ""}).content.decode()
    assert "a pin needs a position" in refused
    refused = client.post(add, {**form, "scope_value": "777"}).content.decode()
    assert "no product with the id &#x27;777&#x27;" in refused
    refused = client.post(add, {**form, "scope_value": "1", "position": "51"}).content.decode()
    assert "a pin at 51 is never seen: lists are at most 50 long" in refused
    past = {"ends_at_0": "2020-01-01", "ends_at_1": "00:00:00"}
    refused = client.post(add, {**form, "scope_value": "1", **past}).content.decode()
    assert "it ends in the past" in refused
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            "/admin/reco_plugin/rule/",
            {"action": "disable", "_selected_action": [saved.pk]},
            follow=True,
        )
    assert "1 rule disabled; 0 already disabled." in answer.content.decode()
    assert json.loads(r.get(keys.rules())) == []  # disabled: no longer published
    history = client.get(f"/admin/reco_plugin/rule/{saved.pk}/history/").content.decode()
    assert "Changed enabled." in history


def test_the_preview_shows_each_strategy_the_blend_and_the_rules(client, staff, r, redis_url):
    put_catalog(r, range(1, 30))
    put_list(r, keys.product_similar("1"), range(2, 12))
    put_list(r, keys.trending(), range(12, 20))
    put_list(r, keys.visitor_recommendations("s:seen"), range(20, 26))
    r.zadd(keys.visitor_seen("s:seen"), {"2": 1})
    publish(r, rule(7, "pin", "29", position=1), rule(8, "block", "4"))
    page = client.get(
        "/admin/reco_plugin/tuning/preview/", {"visitor": "s:seen", "product": "1", "limit": 5}
    ).content.decode()
    assert 'id="reco-served"' in page and "pinned" in page and "#7" in page
    assert 'data-strategy="similar"' in page and 'data-strategy="personal"' in page
    assert "seen, bought, or on the page" in page and "blocked by a rule" in page
    assert "#8: block 4 everywhere" in page and "has no list of their own" not in page
    odd = client.get(
        "/admin/reco_plugin/tuning/preview/", {"visitor": "s:new", "product": "999999"}
    ).content.decode()
    assert "Product &#x27;999999&#x27; is not in the catalog" in odd
    assert "s:new has no list of their own" in odd
    assert (
        "neither a visitor id"
        in client.get("/admin/reco_plugin/tuning/preview/", {"visitor": "???"}).content.decode()
    )
    assert "Preview recommendations" in client.get("/admin/reco_plugin/rule/").content.decode()


def test_the_preview_is_for_staff_only(client, django_user_model, redis_url):
    client.force_login(django_user_model.objects.create_user("shopper", password="x"))
    answer = client.get("/admin/reco_plugin/tuning/preview/", {"product": "1"})
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]


def test_a_malformed_rule_is_left_out_and_the_others_still_hold(r, redis_url):
    good = rule(1, "block", "3").as_dict()
    r.set(keys.rules(), json.dumps([good, {"id": 2, "action": "pin", "product_id": "4"}]))
    store.reset()
    assert [x.id for x in rules.parse(r.get(keys.rules()))] == [1]
    # a block that ends is not baked into the pipeline's lists (they may outlive it)
    ending = rule(3, "block", "5", ends_ms=NOW + 60_000)
    later = rule(4, "block", "6", starts_ms=NOW + 60_000)  # held already: lists stay full
    found = Merchandise(frozenset(), [rule(1, "block", "3"), ending, later], NOW).shortlist()
    assert (found.removed, found.held) == ({"3"}, {"5", "6"})


def test_previewing_a_visitor_needs_its_own_permission(client, django_user_model, redis_url):
    from django.contrib.auth.models import Permission

    clerk = django_user_model.objects.create_user("clerk", password="x", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_tuning"))
    client.force_login(clerk)
    preview = "/admin/reco_plugin/tuning/preview/"
    assert client.get(preview, {"product": "1"}).status_code == 200
    assert client.get(preview, {"visitor": "s:someone"}).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="preview_visitor"))
    client.force_login(clerk)
    assert client.get(preview, {"visitor": "s:someone"}).status_code == 200
