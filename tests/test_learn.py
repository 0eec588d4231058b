"""The algorithm's pure functions (no Spark, no Redis)."""

import pytest

from reco_plugin.scoring import PipelineSettings
from spark_jobs import learn
from spark_jobs.learn import Interaction

DAY_MS = 24 * 3600 * 1000


def settings(**values):
    return PipelineSettings.from_mapping(values)


def test_pairs_respect_the_window_both_directions_and_late_events():
    s = settings(covisit_window=1800, half_life=10**9)
    remembered = [("9", 10_000_000, 1.0)]  # remembered item seen *after* the late events
    new = [
        Interaction("1", 10_000_000 - 1_000, 1.0, "e1"),  # late, within 30 min of "9"
        Interaction("2", 10_000_000 - 500, 3.0, "e2"),
        Interaction("3", 1_000, 1.0, "e3"),  # hours earlier: pairs with nothing
    ]
    pairs = learn.visitor_pairs(remembered, new, s, landmark_ms=10_000_000)
    assert {k: round(v, 6) for k, v in pairs.items()} == {
        ("1", "9"): 1.0,
        ("9", "1"): 1.0,
        ("2", "9"): 1.0,
        ("9", "2"): 1.0,
        ("2", "1"): 1.0,
        ("1", "2"): 1.0,
    }


def test_each_event_pairs_with_at_most_recent_items_neighbours():
    new = [Interaction(str(i), 1_000 + i, 1.0, f"e{i}") for i in range(5)]
    pairs = learn.visitor_pairs([], new, settings(recent_items=1), landmark_ms=2_000)
    assert sorted(k for k in pairs if k[0] < k[1]) == [
        ("0", "1"),
        ("1", "2"),
        ("2", "3"),
        ("3", "4"),
    ]


def test_split_into_batches_learns_the_same_pairs():
    s = settings(half_life=7 * 24 * 3600)
    events = [
        Interaction(str(p), 1_000_000 + 60_000 * n, 1.0, f"e{n}")
        for n, p in enumerate([1, 2, 3, 1, 4])
    ]
    whole = learn.visitor_pairs([], events, s, landmark_ms=2_000_000)
    first = learn.visitor_pairs([], events[:2], s, landmark_ms=2_000_000)
    remembered = learn.remember([], events[:2], s.recent_items)
    second = learn.visitor_pairs(remembered, events[2:], s, landmark_ms=2_000_000)
    split = {k: first.get(k, 0) + second.get(k, 0) for k in {*first, *second}}
    assert {k: round(v, 9) for k, v in whole.items()} == {k: round(v, 9) for k, v in split.items()}


def test_weights_fade_with_the_half_life():
    assert learn.decay(2 * DAY_MS, 0, 2 * 24 * 3600) == pytest.approx(0.5)
    assert learn.decay(0, 60_000, 60) == pytest.approx(2.0)  # a later event, seen from before
    s = settings(half_life=24 * 3600)
    pairs = learn.visitor_pairs(
        [("a", 0, 1.0)], [Interaction("b", 1_000, 1.0, "e")], s, landmark_ms=DAY_MS + 1_000
    )
    assert pairs[("a", "b")] == pytest.approx(0.5)


def test_remember_keeps_the_latest_distinct_items_newest_first():
    items = learn.remember(
        [("1", 100, 1.0), ("3", 50, 1.0)],
        [Interaction("1", 3_000, 1.0, "a"), Interaction("2", 2_000, 3.0, "b")],
        limit=2,
    )
    assert items == [("1", 3_000, 1.0), ("2", 2_000, 3.0)]


def test_similar_list_normalises_by_popularity():
    neighbours = [("best-seller", 10.0), ("niche", 4.0), ("unknown", 9.0), ("p", 3.0)]
    pop = {"p": 10.0, "best-seller": 1000.0, "niche": 5.0}
    items = learn.similar_list("p", neighbours, pop, length=10)
    # the most co-visited item is last: everybody views it
    assert [i["product_id"] for i in items] == ["unknown", "niche", "best-seller"]


def test_personal_list_skips_seen_items_and_weighs_recent_items_more():
    similar = {"new": [("x", 1.0)], "old": [("y", 1.0), ("new", 1.0)]}
    recs = learn.personal_list([("new", 2, 1.0), ("old", 1, 1.0)], similar, 10, 0.85)
    assert [i["product_id"] for i in recs] == ["x", "y"]


def test_trending_window_buckets():
    s = settings(trending_bucket=300, trending_window=900)
    assert learn.trending_buckets_in_window(3_599_000, s) == [2700, 3000, 3300]


def test_partial_settings_keep_the_other_defaults_and_bad_ones_are_refused():
    s = PipelineSettings.from_mapping({"event_weights": {"purchase": 9}})
    assert s.event_weights["purchase"] == 9.0 and s.event_weights["page_view"] == 1.0
    with pytest.raises(ValueError, match="unknown pipeline settings: nope"):
        PipelineSettings.from_mapping({"nope": 1})
    with pytest.raises(ValueError, match="event types"):
        PipelineSettings.from_mapping({"event_weights": {"like": 1}})
    with pytest.raises(ValueError, match="click must be between 0 and 100"):
        PipelineSettings.from_mapping({"event_weights": {"click": -1}})
    with pytest.raises(ValueError, match="purchase must be between 0 and 100"):
        PipelineSettings.from_mapping({"event_weights": {"purchase": 1e308}})
    with pytest.raises(ValueError, match="half_life"):
        PipelineSettings.from_mapping({"half_life": 0})


def test_personal_list_is_not_drowned_by_one_rare_items_large_scores():
    # "rare" was seen by few: its similar scores are large; "fav" is the newest.
    similar = {"fav": [("a", 0.2), ("b", 0.1)], "rare": [("c", 9.0)]}
    recs = learn.personal_list([("fav", 2, 1.0), ("rare", 1, 1.0)], similar, 10, 0.85)
    assert [i["product_id"] for i in recs] == ["a", "c", "b"]


def test_text_neighbours_share_rare_words():
    texts = {
        "1": "Star Wars (1977)",
        "2": "Return of the Jedi: Star Wars VI",
        "3": "The Empire Strikes Back, a Star Wars film",
        "4": "Toy Story",
        "5": "Toy Story 2",
        "6": "!!!",
    }
    found = learn.text_neighbours(texts, 10)
    assert [i["product_id"] for i in found["4"]] == ["5"]
    assert {i["product_id"] for i in found["1"]} == {"2", "3"}
    assert "6" not in found
    # the more words shared (relative to length), the closer
    assert found["5"][0]["score"] > 0.9


def test_each_event_follows_the_visitors_next_steps_latest_items_before_it():
    s = settings(next_steps=2, covisit_window=1800, half_life=10**9)
    remembered = [("r", 1_000_000, 1.0), ("old", 1_000_000 - 3_600_000, 1.0)]
    new = [
        Interaction("a", 1_000_500, 1.0, "e1"),
        Interaction("b", 1_001_000, 3.0, "e2"),
        Interaction("a", 1_001_500, 1.0, "e3"),  # "a" again: its latest time counts
        Interaction("c", 1_002_000, 3.0, "e4"),
    ]
    pairs = learn.next_pairs(remembered, new, s, landmark_ms=1_002_000)
    assert {k: round(v, 6) for k, v in pairs.items()} == {
        # directed, from the earlier to the later; "old" is beyond the window
        ("r", "a"): 2.0,  # after "r" twice (the second time, "b" was between)
        ("a", "b"): 1.0,
        ("r", "b"): 1.0,
        ("b", "a"): 1.0,
        ("a", "c"): 1.0,  # the smaller of the two weights
        ("b", "c"): 3.0,
    }
    # a late event follows only what came before it in event time
    late = learn.next_pairs(remembered, [Interaction("z", 999_000, 1.0, "e5")], s, 1_002_000)
    assert set(late) == set()


def test_the_after_pairs_are_next_one_step_deep():
    s = settings(next_steps=2, covisit_window=1800, half_life=10**9)
    remembered = [("r", 1_000_000, 1.0)]
    new = [
        Interaction("a", 1_000_500, 1.0, "e1"),
        Interaction("b", 1_001_000, 3.0, "e2"),
        Interaction("a", 1_001_500, 1.0, "e3"),
        Interaction("c", 1_002_000, 3.0, "e4"),
    ]
    pairs = learn.next_pairs(remembered, new, s, landmark_ms=1_002_000, steps=1)
    # each event follows only the latest other item before it
    assert {k: round(v, 6) for k, v in pairs.items()} == {
        ("r", "a"): 1.0,
        ("a", "b"): 1.0,
        ("b", "a"): 1.0,
        ("a", "c"): 1.0,
    }


def test_session_pairs_are_visits_at_most_the_session_window_apart_both_ways():
    s = settings(covisit_window=86_400, half_life=10**9, next_half_life=10**9)
    new = [
        Interaction("a", 1_000_000, 1.0, "e1"),
        Interaction("b", 1_120_000, 1.0, "e2"),  # two minutes later
        Interaction("c", 1_900_000, 1.0, "e3"),  # 13 minutes after "b"
    ]
    pairs = learn.visitor_pairs([], new, s, 1_120_000, window_s=300, half_life=10**9)
    assert {k: round(v, 6) for k, v in pairs.items()} == {("a", "b"): 1.0, ("b", "a"): 1.0}
    # the day's window pairs all three
    assert len(learn.visitor_pairs([], new, s, 1_120_000)) == 6


def test_next_list_orders_by_the_weight_of_going_there():
    listed = learn.next_list("a", [("b", 1.0), ("c", 4.0), ("a", 9.0), ("d", 0.0)], 10)
    assert listed == [{"product_id": "c", "score": 4.0}, {"product_id": "b", "score": 1.0}]


def test_events_of_the_same_time_follow_each_other_in_the_order_they_came():
    s = settings(next_steps=1, half_life=10**9)
    new = [
        Interaction("z", 5_000, 1.0, "e1", order=10),
        Interaction("a", 5_000, 1.0, "e2", order=11),
        Interaction("m", 5_000, 1.0, "e3", order=12),
    ]
    pairs = learn.next_pairs([], new, s, landmark_ms=5_000)
    assert set(pairs) == {("z", "a"), ("a", "m")}


def test_items_of_the_same_time_are_remembered_in_the_order_they_came():
    s = settings(next_steps=1, half_life=10**9)
    first = [
        Interaction("z", 5_000, 1.0, "e1", order=1),
        Interaction("a", 5_000, 1.0, "e2", order=2),
    ]
    remembered = learn.remember([], first, 20)
    assert [p for p, _, _ in remembered] == ["a", "z"]  # "a" came later: newest
    # split over two batches, the next event follows "a", as in one batch
    after = Interaction("m", 5_000, 1.0, "e3", order=3)
    assert set(learn.next_pairs(remembered, [after], s, 5_000)) == {("a", "m")}
    assert set(learn.next_pairs([], [*first, after], s, 5_000)) == {("z", "a"), ("a", "m")}
    assert learn.remember(remembered, [after], 20) == learn.remember([], [*first, after], 20)


def test_a_products_weight_in_next_pairs_is_its_largest_whatever_the_cut():
    s = settings(next_steps=1, half_life=10**9)
    events = [
        Interaction("p", 1_000, 3.0, "e1", order=0),  # added to the cart
        Interaction("p", 2_000, 1.0, "e2", order=1),  # viewed again
        Interaction("r", 3_000, 3.0, "e3", order=2),
    ]
    whole = learn.next_pairs([], events, s, 3_000)
    remembered = learn.remember([], events[:2], 20)
    split = learn.next_pairs(remembered, events[2:], s, 3_000)
    assert whole[("p", "r")] == split[("p", "r")] == 3.0


def test_next_pairs_look_back_a_bounded_way():
    import time

    s = settings(next_steps=3, half_life=10**9, covisit_window=10**6)
    events = [Interaction(str(n % 50), n, 1.0, f"e{n}", order=n) for n in range(3_000)]
    start = time.perf_counter()
    pairs = learn.next_pairs([], events, s, 3_000)
    assert time.perf_counter() - start < 0.5
    # each event follows the 3 products before it
    assert pairs[("47", "48")] == pytest.approx(60.0) == pairs[("46", "48")]
    assert ("44", "48") not in pairs


def test_one_walk_learns_what_a_walk_per_number_of_steps_does():
    import random

    rng = random.Random(11)
    s = settings(next_steps=3, covisit_window=600)
    for _ in range(200):
        base = rng.randint(0, 10**6)
        remembered = sorted(
            (
                (
                    str(rng.randint(1, 12)),
                    base - rng.randint(-300, 900) * 1000,
                    rng.choice((1.0, 3.0)),
                )
                for _ in range(rng.randint(0, 6))
            ),
            key=lambda item: -item[1],
        )
        new = [
            Interaction(str(rng.randint(1, 12)), base + rng.randint(0, 900) * 1000, 1.0, f"e{n}", n)
            for n in range(rng.randint(1, 12))
        ]
        walked = learn.next_pairs_by_steps(remembered, new, s, base, (3, 1, 2))
        assert walked == [learn.next_pairs(remembered, new, s, base, k) for k in (3, 1, 2)]


def test_best_orders_as_a_sort_by_score_then_id_ties_and_damaged_scores_included():
    import heapq
    import random

    def by_key(scores, length):
        return heapq.nsmallest(length, scores.items(), key=lambda kv: (-kv[1], kv[0]))

    rng = random.Random(7)
    values = [0.5, 0.25, 1.0, 0.0, -0.5, float("inf"), float("-inf")]
    for case in range(3000):
        scores = {
            f"p{rng.randint(1, 400)}": rng.choice([*values, rng.random()])
            for _ in range(rng.choice([0, 1, 5, 30, 200]))
        }
        if case % 10 == 0 and scores:  # a damaged list's score
            scores[rng.choice(sorted(scores))] = float("nan")
        for length in (0, 1, 5, 50):
            expected, found = by_key(scores, length), learn.best(scores, length)
            assert repr(found) == repr(expected), (scores, length)
