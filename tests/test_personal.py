"""The visitors' personal lists in C (spark_jobs/_personal.c) give the lists
Python's loop gives (learn.personal_list), to the bit."""

import math
import random

import pytest

from spark_jobs import learn


def test_the_compiled_personal_lists_are_built_by_setup():
    # make setup builds spark_jobs/_personal.c; without it the lists are made in Python
    assert learn._personal is not None


compiled_only = pytest.mark.skipif(
    learn._personal is None, reason="spark_jobs._personal is not built"
)


def both(recent, similar, length, decay, exclude=None):
    """The list of each loop, and whether the compiled one made it itself."""
    python = learn.personal_list(recent, similar, length, decay, exclude=exclude, compiled=False)
    seen = {p for p, _, _ in recent} if exclude is None else exclude
    made = learn._personal.personal(recent, similar, length, decay, seen)
    compiled = learn.personal_list(recent, similar, length, decay, exclude=exclude)
    return python, compiled, made is not None


def exact(items):
    return [(item["product_id"], float(item["score"]).hex()) for item in items]


def random_case(rng: random.Random):
    products = [f"p{i}" for i in range(rng.choice([3, 30, 300]))]
    scores = rng.choice(
        [
            lambda: rng.random(),
            lambda: rng.choice([0.5, 0.25, 1.0, 0.125]),  # ties
            lambda: rng.uniform(-1, 1),  # negative best scores are skipped
            lambda: rng.choice([0.0, -0.0, 1e-9, -1e-9]),
            lambda: rng.randint(0, 3),  # ints, as a hand-written list holds them
            lambda: rng.lognormvariate(0, 6),
        ]
    )
    similar = {}
    for product in rng.sample(products, k=len(products) // 2):
        neighbours = [(rng.choice(products), scores()) for _ in range(rng.randint(0, 40))]
        neighbours.sort(key=lambda pair: -pair[1])
        similar[product] = neighbours
    recent = [
        (rng.choice(products), rng.randint(0, 10**12), rng.choice([1.0, 1.5, 3.0, 5, 0.0]))
        for _ in range(rng.randint(0, 25))
    ]
    exclude = None
    if rng.random() < 0.5:
        exclude = set(rng.sample(products, k=rng.randint(0, len(products) // 3)))
    length = rng.choice([0, 1, 5, 50, 1000])
    decay = rng.choice([0.85, 1.0, 0.5, 0.0, 0.999, 1, 0])  # ints: recency_decay: 1
    return recent, similar, length, decay, exclude


def ints_divided(recent, similar, decay) -> bool:
    """Whether Python divides an int by an int in the case (an int weight
    times an int decay's power, by an int best score): left to Python."""
    return isinstance(decay, int) and any(
        isinstance(weight, int)
        and (first := similar.get(p))
        and isinstance(first[0][1], int)
        and first[0][1] > 0
        for p, _, weight in recent
    )


@compiled_only
def test_the_compiled_loop_gives_pythons_lists_to_the_bit():
    rng = random.Random(11)
    made = 0
    for _ in range(3000):
        recent, similar, length, decay, exclude = random_case(rng)
        python, compiled, itself = both(recent, similar, length, decay, exclude)
        assert exact(compiled) == exact(python), (recent, similar, length, decay, exclude)
        # every case but those is of the types the job passes
        assert itself == (not ints_divided(recent, similar, decay))
        made += itself
    assert made > 2800


@compiled_only
def test_scores_are_rounded_as_pythons_round_near_halfway_too():
    rng = random.Random(3)
    values = [0.0, -0.0, 1e-300, -1e-300, 5e-7, 1.5e-6, 2.5e-6, -2.5e-6, 4.5e9, 1e300]
    for _ in range(20000):
        k = rng.randint(-(10**12), 10**12)
        halfway = (k + 0.5) / 1e6
        values += [halfway, math.nextafter(halfway, math.inf), math.nextafter(halfway, -math.inf)]
        values.append(rng.uniform(-1e10, 1e10))
        values.append(rng.random() * 10 ** rng.randint(-12, 12))
    for value in values:
        # one neighbour of score 1 makes the factor 1: the other's score is
        # 0.0 + 1.0 * value (value itself, but for -0.0)
        similar = {"page": [("first", 1.0), ("other", value)]}
        listed = learn._personal.personal([("page", 1, 1.0)], similar, 5, 0.85, {"page"})
        score = next(item["score"] for item in listed if item["product_id"] == "other")
        assert score.hex() == round(0.0 + 1.0 * value, 6).hex(), value


@compiled_only
@pytest.mark.parametrize(
    "case",
    [
        "nan score",
        "inf score",
        "overflowing factor",
        "a str subclass id",
        "a list for seen",
        "an int recency decay other than 0 or 1",
        "a mapping that is not a dict",
        "a pair of three",
        "a negative length",
        "a huge length",
        "ints divided by ints",
    ],
)
def test_what_the_job_never_passes_is_left_to_python(case):
    recent = [("a", 1, 1.0), ("b", 2, 3.0)]
    similar = {"a": [("x", 2.0), ("y", 1.0)], "b": [("y", 4.0), ("z", 0.5)]}
    length, decay, seen = 10, 0.85, {"a", "b"}

    class Id(str):
        pass

    if case == "nan score":
        similar["a"] = [("x", 2.0), ("y", math.nan)]
    elif case == "inf score":
        similar["b"] = [("y", math.inf), ("z", 0.5)]
    elif case == "overflowing factor":
        recent = [("a", 1, 1e308), ("b", 2, 3.0)]
        similar["a"] = [("x", 1e-308), ("y", 1e-309)]
    elif case == "a str subclass id":
        similar["a"] = [(Id("x"), 2.0), ("y", 1.0)]
    elif case == "a list for seen":
        seen = ["a", "b"]
    elif case == "an int recency decay other than 0 or 1":
        decay = 2
    elif case == "a mapping that is not a dict":
        similar = type("Lists", (dict,), {})(similar)
    elif case == "a pair of three":
        similar["b"] = [("y", 4.0, "extra"), ("z", 0.5)]
    elif case == "a negative length":
        length = -1
    elif case == "a huge length":
        length = 10**30
    elif case == "ints divided by ints":  # int ** int stays an int: one rounding in Python
        recent, decay = [("a", 0, 2**53 + 1), ("b", 1, 3.0)], 1
        similar["a"] = [("x", 3), ("y", 1)]
    assert learn._personal.personal(recent, similar, length, decay, seen) is None
    try:
        python = learn.personal_list(recent, similar, length, decay, set(seen), compiled=False)
    except ValueError:  # the three-field pair: Python's loop raises, as it always did
        with pytest.raises(ValueError):
            learn.personal_list(recent, similar, length, decay, set(seen))
        return
    compiled = learn.personal_list(recent, similar, length, decay, set(seen))
    assert [(i["product_id"], repr(i["score"])) for i in compiled] == [
        (i["product_id"], repr(i["score"])) for i in python
    ]


def test_without_the_compiled_loop_the_lists_are_pythons(monkeypatch):
    recent = [("a", 1, 1.0), ("b", 2, 3.0)]
    similar = {"a": [("x", 2.0), ("y", 1.0)], "b": [("y", 4.0), ("z", 0.5)]}
    expected = learn.personal_list(recent, similar, 10, 0.85, compiled=False)
    monkeypatch.setattr(learn, "_personal", None)
    assert learn.personal_list(recent, similar, 10, 0.85) == expected
    assert [item["product_id"] for item in expected] == ["y", "x", "z"]
