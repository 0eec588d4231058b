"""The co-visitation pairs in C (spark_jobs/_pairs.c) are the pairs Python's
loop makes (learn.visitor_pairs), to the bit and in the same order."""

import math
import random

import pytest

from reco_plugin.scoring import PipelineSettings
from spark_jobs import learn
from spark_jobs.learn import Interaction

SETTINGS = PipelineSettings()
LANDMARK = 1_790_000_000_000


def test_the_compiled_pairs_are_built_by_setup():
    # make setup builds spark_jobs/_pairs.c; without it the pairs are made in Python
    assert learn._pairs is not None


compiled_only = pytest.mark.skipif(learn._pairs is None, reason="spark_jobs._pairs is not built")


def exact(pairs):
    return [(key, float(weight).hex()) for key, weight in pairs.items()]


def random_case(rng: random.Random):
    products = [f"p{i}" for i in range(rng.choice([2, 5, 40]))]
    spread = rng.choice([10, 60_000, 3_600_000, 10**9])  # ties in time, and far apart
    start = LANDMARK - rng.randint(0, 10**9)

    def weight():
        return rng.choice([1.0, 0.5, 3.0, 5.0, 0.0, 1, 2, -0.0, 1e-300, rng.random()])

    remembered = sorted(
        (
            (rng.choice(products), start + rng.randint(-spread, spread), weight())
            for _ in range(rng.randint(0, 30))
        ),
        key=lambda item: -item[1],
    )
    new = [
        Interaction(
            rng.choice(products),
            start + rng.randint(-spread, spread),
            weight(),
            f"e{n:03d}",
            n,
        )
        for n in range(rng.randint(0, 25))
    ]
    options = rng.choice(
        [
            {},
            {"window_s": rng.choice([1, 60, 1800, 10**6]), "limit": rng.choice([1, 2, 7, 50])},
            {"window_s": 1800, "half_life": rng.choice([1, 3600, 86_400 * 30])},
        ]
    )
    return remembered, new, options


@compiled_only
def test_the_compiled_loop_gives_pythons_pairs_to_the_bit():
    rng = random.Random(7)
    made = overflowed = 0
    for _ in range(4000):
        remembered, new, options = random_case(rng)
        ordered = sorted(new, key=lambda i: (i.ts, i.product_id, i.event_id))
        window = (options.get("window_s") or SETTINGS.covisit_window) * 1000
        limit = options.get("limit") or SETTINGS.recent_items
        scale = (options.get("half_life") or SETTINGS.half_life) * 1000.0
        itself = learn._pairs.visitor_pairs(remembered, ordered, window, limit, LANDMARK, scale)
        try:
            python = learn.visitor_pairs(
                remembered, new, SETTINGS, LANDMARK, compiled=False, **options
            )
        except OverflowError:  # a weight faded past a double's range: left to Python
            assert itself is None
            with pytest.raises(OverflowError):
                learn.visitor_pairs(remembered, new, SETTINGS, LANDMARK, **options)
            overflowed += 1
            continue
        compiled = learn.visitor_pairs(remembered, new, SETTINGS, LANDMARK, **options)
        assert exact(compiled) == exact(python), (remembered, new, options)
        assert itself is not None and exact(itself) == exact(python)
        made += 1
    # every other case is of the types the job passes: the C loop made them
    assert made + overflowed == 4000 and made > 3000


@compiled_only
@pytest.mark.parametrize(
    "case",
    [
        "a tuple for the remembered items",
        "a remembered item of four",
        "a str subclass id",
        "a float time",
        "a time past 2**62",
        "a weight too large for a double to hold as an int",
        "a Decimal weight",
        "a weight faded past a double's range",
    ],
)
def test_what_the_job_never_passes_is_left_to_python(case):
    from decimal import Decimal

    class Id(str):
        pass

    remembered = [("a", LANDMARK - 1000, 1.0), ("b", LANDMARK - 2000, 3.0)]
    new = [Interaction("c", LANDMARK - 500, 1.0, "e1", 0), Interaction("a", LANDMARK, 2.0, "e2", 1)]
    if case == "a tuple for the remembered items":
        remembered = tuple(remembered)  # (the C loop takes lists)
    elif case == "a remembered item of four":
        remembered[0] = ("a", LANDMARK - 1000, 1.0, "extra")
    elif case == "a str subclass id":
        new[0] = Interaction(Id("c"), LANDMARK - 500, 1.0, "e1", 0)
    elif case == "a float time":
        remembered[1] = ("b", float(LANDMARK - 2000), 3.0)
    elif case == "a time past 2**62":
        new[1] = Interaction("a", 2**62 + 1, 2.0, "e2", 1)
    elif case == "a weight too large for a double to hold as an int":
        new[0] = Interaction("c", LANDMARK - 500, 2**53 + 1, "e1", 0)
    elif case == "a Decimal weight":
        remembered[0] = ("a", LANDMARK - 1000, Decimal("1.5"))
    ordered = sorted(new, key=lambda i: (i.ts, i.product_id, i.event_id))
    landmark = LANDMARK
    if case == "a weight faded past a double's range":
        landmark = LANDMARK - 10**12  # 2 ** (10**12 / 3,600,000) overflows
        made = learn._pairs.visitor_pairs(
            list(remembered), ordered, 10**13, 20, landmark, 3_600_000.0
        )
        assert made is None
        with pytest.raises(OverflowError):
            learn.visitor_pairs(
                remembered, new, SETTINGS, landmark, window_s=10**10, half_life=3600
            )
        return
    if isinstance(remembered, list):
        made = learn._pairs.visitor_pairs(
            remembered, ordered, 1_800_000, 20, landmark, SETTINGS.half_life * 1000.0
        )
        assert made is None
    # Python's loop makes the pairs (or raises) as it did
    try:
        python = learn.visitor_pairs(remembered, new, SETTINGS, landmark, compiled=False)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            learn.visitor_pairs(remembered, new, SETTINGS, landmark)
    else:
        assert exact(learn.visitor_pairs(remembered, new, SETTINGS, landmark)) == exact(python)


def test_nan_weights_pair_as_in_python():
    remembered = [("a", LANDMARK - 1000, math.nan), ("b", LANDMARK - 2000, 1.0)]
    new = [
        Interaction("c", LANDMARK - 500, 1.0, "e1", 0),
        Interaction("d", LANDMARK, math.nan, "e2", 1),
    ]
    python = learn.visitor_pairs(remembered, new, SETTINGS, LANDMARK, compiled=False)
    assert exact(learn.visitor_pairs(remembered, new, SETTINGS, LANDMARK)) == exact(python)


def next_case(rng: random.Random):
    remembered, new, _ = random_case(rng)
    if rng.random() < 0.3:  # the same order for events of one time (two topics)
        new = [item._replace(order=rng.randint(0, 3)) for item in new]
    steps = rng.choice([(SETTINGS.next_steps, 1), (1,), (3, 1), (0, 2), (7,), (1, 1)])
    settings = PipelineSettings(
        covisit_window=rng.choice([1, 60, 1800, 10**6]),
        next_half_life=rng.choice([3600, SETTINGS.next_half_life]),
    )
    return remembered, new, steps, settings


@compiled_only
def test_the_compiled_next_pairs_are_pythons_to_the_bit():
    rng = random.Random(13)
    made = overflowed = 0
    for _ in range(4000):
        remembered, new, steps, settings = next_case(rng)
        try:
            python = learn.next_pairs_by_steps(
                remembered, new, settings, LANDMARK, steps, compiled=False
            )
        except OverflowError:  # a weight faded past a double's range: left to Python
            with pytest.raises(OverflowError):
                learn.next_pairs_by_steps(remembered, new, settings, LANDMARK, steps)
            overflowed += 1
            continue
        ordered = sorted(new, key=lambda i: (i.ts, i.order, i.product_id, i.event_id))
        itself = learn._pairs.next_pairs(
            remembered,
            ordered,
            settings.covisit_window * 1000,
            steps,
            LANDMARK,
            settings.next_half_life * 1000.0,
        )
        compiled = learn.next_pairs_by_steps(remembered, new, settings, LANDMARK, steps)
        assert [exact(p) for p in compiled] == [exact(p) for p in python], (
            remembered,
            new,
            steps,
        )
        assert itself is not None and [exact(p) for p in itself] == [exact(p) for p in python]
        made += 1
    assert made + overflowed == 4000 and made > 3000


@compiled_only
@pytest.mark.parametrize(
    "steps", [(-1,), (1001,), (1, 2, 3, 4, 5, 6, 7, 8, 9)], ids=["negative", "deep", "nine"]
)
def test_next_pairs_of_steps_the_job_never_asks_are_left_to_python(steps):
    remembered = [("a", LANDMARK - 1000, 1.0), ("b", LANDMARK - 2000, 3.0)]
    new = [Interaction("c", LANDMARK - 500, 1.0, "e1", 0), Interaction("a", LANDMARK, 2.0, "e2", 1)]
    assert learn._pairs.next_pairs(remembered, new, 1_800_000, steps, LANDMARK, 1e9) is None
    python = learn.next_pairs_by_steps(remembered, new, SETTINGS, LANDMARK, steps, compiled=False)
    compiled = learn.next_pairs_by_steps(remembered, new, SETTINGS, LANDMARK, steps)
    assert [exact(p) for p in compiled] == [exact(p) for p in python]
