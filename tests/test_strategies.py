"""The bandit's serving policy and the slot-by-slot blend (plain Python)."""

import random
from collections import Counter

import pytest

from reco_plugin import strategies
from reco_plugin.scoring import PipelineSettings
from spark_jobs import state


def test_a_policy_is_the_same_for_the_same_seed_and_follows_the_evidence():
    evidence = {"similar": (90.0, 100.0), "personal": (10.0, 100.0)}
    one = strategies.policy(evidence, exploration=0.1, seed=7)
    assert one == strategies.policy(evidence, exploration=0.1, seed=7)
    chances = strategies.Policy(one).chances(["personal", "similar"])
    assert chances[1] == pytest.approx(0.95)  # wins every draw; 0.1 explores half each way
    assert chances[0] == pytest.approx(0.05)


def test_an_unproven_strategy_is_drawn_around_the_others_and_ties_split_evenly():
    evidence = {"similar": (20.0, 100.0), "personal": (20.0, 100.0)}
    policy = strategies.Policy(strategies.policy(evidence, exploration=0.0, seed=3))
    # fbt has no evidence: drawn around the pooled 0.2, it wins some draws, not most
    fbt = policy.chances(["similar", "fbt"])[1]
    assert 0.1 < fbt < 0.6
    tied = strategies.Policy(
        {
            "strategies": list(strategies.STRATEGIES),
            "exploration": 0.0,
            "draws": [[0.0] * len(strategies.STRATEGIES)],
        }
    )
    assert tied.chances(["personal", "affinity"]) == [0.5, 0.5]


def test_a_strategy_the_policy_does_not_know_yet_has_only_the_exploration_share():
    # a policy written by a job of an older version, which had no trending_long
    older = strategies.policy(
        {"similar": (90.0, 100.0), "popular": (10.0, 100.0)}, exploration=0.1, seed=7
    )
    older["strategies"] = [s for s in older["strategies"] if s != "trending_long"]
    column = strategies.STRATEGIES.index("trending_long")
    older["draws"] = [draw[:column] + draw[column + 1 :] for draw in older["draws"]]
    chances = strategies.Policy(older).chances(["similar", "popular", "trending_long"])
    assert chances == pytest.approx([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    # knowing none of them: as likely each
    assert strategies.Policy(older).chances(["trending_long"]) == [1.0]


def test_the_propensity_served_is_the_chance_the_slot_was_filled_that_way():
    beliefs = {"similar": (5.0, 8.0), "trending": (4.0, 8.0)}
    policy = strategies.Policy(strategies.policy(beliefs, exploration=0.2, seed=1))
    expected = dict(
        zip(["similar", "trending"], policy.chances(["similar", "trending"]), strict=True)
    )
    rng = random.Random(3)
    firsts = Counter()
    n = 20_000
    for _ in range(n):
        slot = strategies.blend(
            [("similar", ["a", "b"]), ("trending", ["c", "d"])], policy, 1, rng
        )[0]
        firsts[slot[1]] += 1
        assert slot[2] == pytest.approx(expected[slot[1]], abs=1e-6)
    for strategy, chance in expected.items():
        assert firsts[strategy] / n == pytest.approx(chance, abs=0.015)


def test_the_blend_never_repeats_an_item_and_fills_from_what_is_left():
    policy = {
        "strategies": list(strategies.STRATEGIES),
        "exploration": 0.0,
        "draws": [[1.0 if s == "similar" else 0.0 for s in strategies.STRATEGIES]],
    }
    chosen = strategies.blend(
        [("similar", ["a", "b"]), ("trending", ["b", "c", "d"])], policy, 4, random.Random(0)
    )
    assert [(p, s) for p, s, _ in chosen] == [
        ("a", "similar"),
        ("b", "similar"),
        ("c", "trending"),
        ("d", "trending"),
    ]
    # once similar has nothing left, trending is certain
    assert [round(c, 3) for _, _, c in chosen] == [1.0, 1.0, 1.0, 1.0]


def test_without_a_policy_every_strategy_is_as_likely():
    chosen = strategies.blend([("similar", ["a"]), ("popular", ["b"])], None, 2, random.Random(0))
    assert sorted(p for p, _, _ in chosen) == ["a", "b"]
    assert chosen[0][2] == 0.5


def test_discounted_evidence_update():
    settings = PipelineSettings.from_mapping({"bandit_discount": 0.9})
    updated = state.updated_evidence(
        {"similar": (10.0, 30.0), "fbt": (5.0, 5.0)},
        {"similar": [1, 2], "fbt": [0, 1], "popular:click": [1, 3]},
        settings,
    )
    fade = 0.9**2  # two occasions: the most trials any strategy had
    assert updated["similar"] == pytest.approx((10 * fade + 1, 30 * fade + 2))
    assert updated["fbt"] == pytest.approx((5 * fade, 5 * fade + 1))
    assert updated["popular:click"] == (1.0, 3.0)
    assert "trending" not in updated


@pytest.mark.parametrize(
    "values", [{"exploration": 1.5}, {"bandit_discount": 0}, {"trials_per_visitor": 0}]
)
def test_bad_bandit_settings_are_refused(values):
    with pytest.raises(ValueError):
        PipelineSettings.from_mapping(values)


def test_a_list_value_read_again_is_parsed_once_and_reads_the_same():
    import json

    from reco_plugin import store

    raw = json.dumps(
        [{"product_id": 3, "score": 0.5}, "junk", {"product_id": "7", "score": 0.25}, {}]
    )
    first = store._load_list(raw)
    assert store._load_list(raw) is first  # parsed once per value
    assert first.ids == ("3", "7", "") and first.scores["7"] == 0.25
    assert list(first)[:2] == [
        {"product_id": "3", "score": 0.5},
        {"product_id": "7", "score": 0.25},
    ]
    assert strategies.top(first, {"3"}) == ["7"]  # the empty id is never a candidate
    assert store._load_list("{not json") is store.EMPTY
    assert len(store._load_list('{"a": 1}')) == 0
    merged = store.Ranked.merged(
        [first, store._load_list('[{"product_id": "9"}, {"product_id": "3", "score": 9}]')]
    )
    assert merged.ids == ("3", "7", "", "9") and merged.scores["3"] == 0.5  # first list wins
