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
        return rng.choice(
            [1.0, 0.5, 3.0, 5.0, 0.0, 1, 2, -0.0, 1e-300, rng.random(), -1.5, math.inf, math.nan]
        )

    # times on a grid of the windows' sizes too: pairs exactly a window apart
    step = rng.choice([1, 1000, 60_000, 1_800_000])

    def time():
        return start + rng.randint(-spread, spread) // step * step

    remembered = sorted(
        ((rng.choice(products), time(), weight()) for _ in range(rng.randint(0, 30))),
        key=lambda item: -item[1],
    )
    new = [
        Interaction(rng.choice(products), time(), weight(), f"e{n:03d}", n)
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
        new = [item._replace(order=rng.randint(-3, 3)) for item in new]
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


def window_edges(rng: random.Random):
    """The covisit window (1,800,000 ms) and the session window apart, exactly
    and by one ms either way."""
    remembered, new, _ = random_case(rng)
    base = LANDMARK - 10**7
    gaps = [0, 1, 299_999, 300_000, 300_001, 1_799_999, 1_800_000, 1_800_001]
    remembered = [(p, base - rng.choice(gaps), w) for p, _, w in remembered]
    new = [item._replace(ts=base + rng.choice(gaps)) for item in new]
    return remembered, new


@compiled_only
def test_pairs_a_window_apart_and_one_ms_either_way_are_pythons():
    rng = random.Random(17)
    for _ in range(1500):
        remembered, new = window_edges(rng)
        for options in ({}, {"window_s": 300, "half_life": 3600}):
            python = learn.visitor_pairs(
                remembered, new, SETTINGS, LANDMARK, compiled=False, **options
            )
            compiled = learn.visitor_pairs(remembered, new, SETTINGS, LANDMARK, **options)
            assert exact(compiled) == exact(python)
        steps = (SETTINGS.next_steps, 1)
        python = learn.next_pairs_by_steps(
            remembered, new, SETTINGS, LANDMARK, steps, compiled=False
        )
        compiled = learn.next_pairs_by_steps(remembered, new, SETTINGS, LANDMARK, steps)
        assert [exact(p) for p in compiled] == [exact(p) for p in python]


@compiled_only
@pytest.mark.parametrize(
    "case",
    [
        "a str subclass id",
        "a float time",
        "a bool order",
        "a float order",
        "a landmark past 2**63",
        "a float landmark",
        "a window past 2**63",
        "times 2**62 apart",
    ],
)
def test_what_next_pairs_never_gets_is_left_to_python(case):
    class Id(str):
        pass

    remembered = [("a", LANDMARK - 1000, 1.0), ("b", LANDMARK - 2000, 3.0)]
    new = [Interaction("c", LANDMARK - 500, 1.0, "e1", 0), Interaction("a", LANDMARK, 2.0, "e2", 1)]
    landmark, window = LANDMARK, 1_800_000
    if case == "a str subclass id":
        new[0] = new[0]._replace(product_id=Id("c"))
    elif case == "a float time":
        remembered[0] = ("a", float(LANDMARK - 1000), 1.0)
    elif case == "a bool order":
        new[0] = new[0]._replace(order=True)
    elif case == "a float order":
        new[0] = new[0]._replace(order=0.5)
    elif case == "a landmark past 2**63":
        landmark = 2**63
    elif case == "a float landmark":
        landmark = float(LANDMARK)
    elif case == "a window past 2**63":
        window = 2**63
    elif case == "times 2**62 apart":
        remembered, new = [], [new[0]._replace(ts=-(2**62)), new[1]._replace(ts=2**62)]
        landmark = 2**62
    ordered = sorted(new, key=lambda i: (i.ts, i.order, i.product_id, i.event_id))
    steps = (3, 1)
    assert learn._pairs.next_pairs(remembered, ordered, window, steps, landmark, 1e10) is None
    assert learn._pairs.visitor_pairs(remembered, ordered, window, 20, landmark, 1e10) is None or (
        case in ("a bool order", "a float order")  # (visitor_pairs reads no order)
    )
    settings = PipelineSettings(covisit_window=window // 1000)
    try:
        python = learn.next_pairs_by_steps(
            remembered, new, settings, landmark, steps, compiled=False
        )
    except (TypeError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            learn.next_pairs_by_steps(remembered, new, settings, landmark, steps)
    else:
        compiled = learn.next_pairs_by_steps(remembered, new, settings, landmark, steps)
        assert [exact(p) for p in compiled] == [exact(p) for p in python]


@compiled_only
def test_a_visitor_of_thousands_of_events_is_not_slower_in_c():
    """A bot's thousands of events in one batch: each weight looked up in a
    table, not by a walk over the events before it."""
    import time

    new = [
        Interaction(f"p{n % 3000}", LANDMARK - 10**6 + n, 1.0, f"e{n:05d}", n) for n in range(8000)
    ]
    steps = (SETTINGS.next_steps, 1)
    started = time.perf_counter()
    python = learn.next_pairs_by_steps([], new, SETTINGS, LANDMARK, steps, compiled=False)
    in_python = time.perf_counter() - started
    started = time.perf_counter()
    compiled = learn.next_pairs_by_steps([], new, SETTINGS, LANDMARK, steps)
    in_c = time.perf_counter() - started
    assert [exact(p) for p in compiled] == [exact(p) for p in python]
    assert in_c < in_python / 2, (in_c, in_python)
