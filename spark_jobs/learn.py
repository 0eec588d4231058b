"""The recommendation algorithm, in plain Python on plain values: no Spark, no Redis.

Every function here is pure. ``spark_jobs.batch`` runs them on the driver for a
small micro-batch and inside executor partitions for a large one, so both paths
compute exactly the same thing.

Time is event time in epoch milliseconds. Weights fade with a half-life: a weight
``w`` learnt from an event at ``t`` is worth ``w * 2 ** (-(clock - t) / half_life)``
when the pipeline's clock reads ``clock``. Decay factors multiply, so the state
reached does not depend on how the events were split into batches, and a batch
can express its weights at any reference time (its *landmark*) and be moved to
the clock with one factor when it is committed.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from reco_plugin.scoring import PipelineSettings

try:  # personal_list's loop, compiled (spark_jobs/_personal.c)
    from . import _personal
except ImportError:  # not built (no C compiler where it was installed)
    _personal = None
try:  # visitor_pairs' loop, compiled (spark_jobs/_pairs.c)
    from . import _pairs
except ImportError:
    _pairs = None

# A remembered item of a visitor: (product_id, ts_ms, weight).
Item = tuple[str, int, float]
Pair = tuple[str, str]


class Interaction(NamedTuple):
    """One applied event that says something about interest (weight > 0)."""

    product_id: str
    ts: int
    weight: float
    event_id: str
    # its place in the order the batch applies the visitor's events (by
    # topic, then offset): the order events of one time came in
    order: int = 0


def decay(clock_ms: int, ts_ms: int, half_life_s: float) -> float:
    """What a unit of weight learnt at ``ts_ms`` is worth at ``clock_ms``
    (more than 1 when ``ts_ms`` is after ``clock_ms``)."""
    return math.pow(2.0, -(clock_ms - ts_ms) / (half_life_s * 1000.0))


def visitor_pairs(
    remembered: Sequence[Item],
    new: Sequence[Interaction],
    settings: PipelineSettings,
    landmark_ms: int,
    *,
    window_s: int | None = None,
    limit: int | None = None,
    half_life: int | None = None,
    compiled: bool = True,
) -> dict[Pair, float]:
    """Co-visitation weights learnt from one visitor's new interactions.

    Each new interaction is paired with the visitor's other items seen at most
    ``covisit_window`` apart (before or after it: late events pair too), taking
    the ``recent_items`` closest in time. Items are the remembered ones (already
    learnt from) and the new ones before it in event-time order, so every pair
    of events is counted once. Pairs go both ways; a pair weighs the smaller of
    its two weights, faded from the later of its two times to ``landmark_ms``.

    ``window_s``, ``limit`` and ``half_life`` (default ``covisit_window``,
    ``recent_items``, ``half_life``) are the baskets' for
    frequently-bought-together pairs, and the sessions'.

    The loop runs in C (``spark_jobs/_pairs.c``, the same dict to the bit)
    unless not ``compiled`` or an argument is of a shape it leaves to Python.
    """
    window_ms = (window_s or settings.covisit_window) * 1000
    recent_items = limit or settings.recent_items
    half_life = half_life or settings.half_life
    ordered = sorted(new, key=lambda i: (i.ts, i.product_id, i.event_id))
    if compiled and _pairs is not None and isinstance(remembered, list):
        made = _pairs.visitor_pairs(
            remembered, ordered, window_ms, recent_items, landmark_ms, half_life * 1000.0
        )
        if made is not None:
            return made
    pairs: dict[Pair, float] = {}
    for index, item in enumerate(ordered):
        candidates: list[tuple[int, int, str, int, float]] = []
        for order, (product_id, ts, weight) in enumerate(remembered):
            if product_id != item.product_id and abs(ts - item.ts) <= window_ms:
                candidates.append((abs(ts - item.ts), order, product_id, ts, weight))
        # The new items before this one, nearest first: at most recent_items matter.
        start = max(0, index - recent_items)
        for order, other in enumerate(ordered[start:index]):
            if other.product_id != item.product_id and item.ts - other.ts <= window_ms:
                candidates.append(
                    (item.ts - other.ts, -order - 1, other.product_id, other.ts, other.weight)
                )
        for _, _, product_id, ts, weight in heapq.nsmallest(recent_items, candidates):
            value = min(item.weight, weight) * decay(landmark_ms, max(item.ts, ts), half_life)
            for key in ((item.product_id, product_id), (product_id, item.product_id)):
                pairs[key] = pairs.get(key, 0.0) + value
    return pairs


def next_pairs(
    remembered: Sequence[Item],
    new: Sequence[Interaction],
    settings: PipelineSettings,
    landmark_ms: int,
    steps: int | None = None,
) -> dict[Pair, float]:
    """What one visitor's new interactions teach of where visitors go next:
    each follows the visitor's ``steps`` (default ``next_steps``; 1 for the
    ``after`` strategy) latest other items before it in
    event time (remembered, or new and earlier), at most ``covisit_window``
    before it: a directed pair (earlier, it) weighing the smaller of their
    two weights (an item's weight the largest it has had, as remembered),
    faded from its time to ``landmark_ms`` by ``next_half_life``. A product's
    latest time counts, so viewing it twice is one step.

    Events of the same time follow each other in the order they came
    (``Interaction.order``; a visitor's events of one type are in one
    partition): measured on ML-100k, where half of a visitor's consecutive
    ratings share their second, ordering those by product id instead lost
    15% of the list's hits. Events of the same millisecond on different
    topics are ordered by topic within a batch and by batch across batches.
    """
    return next_pairs_by_steps(
        remembered, new, settings, landmark_ms, (steps or settings.next_steps,)
    )[0]


def next_pairs_by_steps(
    remembered: Sequence[Item],
    new: Sequence[Interaction],
    settings: PipelineSettings,
    landmark_ms: int,
    steps: Sequence[int],
    compiled: bool = True,
) -> list[dict[Pair, float]]:
    """:func:`next_pairs` for each number of ``steps``, in one walk: an
    item's latest ``k`` items are the first ``k`` of its latest ``n > k``
    (the events walked past the ``k``-th are all earlier than it).

    The loop runs in C (``spark_jobs/_pairs.c``, the same dicts to the bit)
    unless not ``compiled`` or an argument is of a shape it leaves to Python."""
    window_ms = settings.covisit_window * 1000
    ordered = sorted(new, key=lambda i: (i.ts, i.order, i.product_id, i.event_id))
    if compiled and _pairs is not None and isinstance(remembered, list):
        made = _pairs.next_pairs(
            remembered,
            ordered,
            window_ms,
            tuple(steps),
            landmark_ms,
            settings.next_half_life * 1000.0,
        )
        if made is not None:
            return made
    deepest = max(steps)
    learnt: list[dict[Pair, float]] = [{} for _ in steps]
    remembered_weight = {product_id: weight for product_id, _, weight in remembered}
    # product -> the largest weight of its new events so far
    new_weight: dict[str, float] = {}
    for index, item in enumerate(ordered):
        # product -> (time, when it came: its order, or below 0 for a
        # remembered item, the latest -1)
        before: dict[str, tuple[int, int]] = {}
        for place, (product_id, ts, _) in enumerate(remembered):
            if product_id != item.product_id and 0 <= item.ts - ts <= window_ms:
                before[product_id] = (ts, -1 - place)
        # the new events before it, latest first, until ``deepest`` products
        walked: set[str] = set()
        for other in reversed(ordered[:index]):
            if item.ts - other.ts > window_ms or len(walked) == deepest:
                break
            if other.product_id == item.product_id or other.product_id in walked:
                continue
            walked.add(other.product_id)
            before[other.product_id] = max(
                before.get(other.product_id, (other.ts, other.order)), (other.ts, other.order)
            )
        latest = heapq.nlargest(deepest, before.items(), key=lambda kv: (kv[1], kv[0]))
        fade = decay(landmark_ms, item.ts, settings.next_half_life)
        for pairs, k in zip(learnt, steps, strict=True):
            for product_id, _ in latest[:k]:
                weight = max(
                    remembered_weight.get(product_id, 0.0), new_weight.get(product_id, 0.0)
                )
                key = (product_id, item.product_id)
                pairs[key] = pairs.get(key, 0.0) + min(item.weight, weight) * fade
        new_weight[item.product_id] = max(new_weight.get(item.product_id, 0.0), item.weight)
    return learnt


def remember(remembered: Sequence[Item], new: Iterable[Interaction], limit: int) -> list[Item]:
    """The visitor's latest ``limit`` distinct items, newest first: by time,
    then (for the same time) the one that came later first. ``remembered`` is
    newest first, ``new`` in the order the events came."""
    # product -> (latest time, when it came: its place in the sequence, weight)
    latest: dict[str, tuple[int, int, float]] = {}
    sequence = [*reversed(remembered), *((i.product_id, i.ts, i.weight) for i in new)]
    for place, (product_id, ts, weight) in enumerate(sequence):
        current = latest.get(product_id)
        if current is None or ts >= current[0]:
            latest[product_id] = (ts, place, max(weight, current[2]) if current else weight)
        else:
            latest[product_id] = (current[0], current[1], max(weight, current[2]))
    ordered = sorted(latest.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [(product_id, ts, weight) for product_id, (ts, _, weight) in ordered[:limit]]


def similar_list(
    product_id: str,
    neighbours: Sequence[tuple[str, float]],
    popularity: Mapping[str, float],
    length: int,
) -> list[dict[str, Any]]:
    """A product's related items from its co-visitation weights.

    Score = covisit(a, b) / sqrt(pop(a) * pop(b)), so items everybody views do
    not top every list.
    """
    own = popularity.get(product_id) or 1.0
    scored = [
        (other, weight / math.sqrt(own * (popularity.get(other) or 1.0)))
        for other, weight in neighbours
        if weight > 0 and other != product_id
    ]
    scored.sort(key=_highest_first)
    return [{"product_id": other, "score": round(score, 6)} for other, score in scored[:length]]


def next_list(
    product_id: str, followed_by: Sequence[tuple[str, float]], length: int
) -> list[dict[str, Any]]:
    """Where visitors went on to from a product, by the weight of going there
    (not normalised: a bestseller that visitors of this product go on to is
    where they go; measured on ML-100k, dividing by popularity as
    :func:`similar_list` does lost a quarter of the hits)."""
    scored = [
        (other, weight) for other, weight in followed_by if weight > 0 and other != product_id
    ]
    scored.sort(key=_highest_first)
    return [{"product_id": other, "score": round(score, 6)} for other, score in scored[:length]]


def personal_list(
    recent: Sequence[Item],
    similar: Mapping[str, Sequence[tuple[str, float]]],
    length: int,
    recency_decay: float,
    exclude: Iterable[str] | None = None,
    compiled: bool = True,
) -> list[dict[str, Any]]:
    """A visitor's list: over their recent items (newest first), the similar
    scores of candidates they have not interacted with, each item's list scaled
    to a best score of 1, times the item's weight, times ``recency_decay`` per
    step back in time.

    The scaling keeps one rarely seen item (whose similar scores are large,
    being divided by a small popularity) from drowning out the others.

    ``similar`` maps a product to its similar list as (product_id, score) pairs,
    best first. Nothing in ``exclude`` (what the visitor has seen and may not
    be shown again) is listed; by default, nothing in ``recent``.

    The compiled loop (``compiled``, where it was built) gives the same list;
    it leaves to this one what the job does not pass (other types, scores
    that are not finite numbers).
    """
    seen = {product_id for product_id, _, _ in recent} if exclude is None else exclude
    if compiled and _personal is not None:
        made = _personal.personal(recent, similar, length, recency_decay, seen)
        if made is not None:
            return made
    scores: dict[str, float] = {}
    get = scores.get
    for step, (product_id, _, weight) in enumerate(recent):
        neighbours = similar.get(product_id, ())
        if not neighbours or neighbours[0][1] <= 0:
            continue
        factor = weight * recency_decay**step / neighbours[0][1]
        for other, score in neighbours:
            scores[other] = get(other, 0.0) + factor * score
    # the seen taken out after (each other score sums the same terms in the
    # same order): a pop per seen product instead of a test per neighbour
    for product_id in seen:
        scores.pop(product_id, None)
    return [{"product_id": pid, "score": round(score, 6)} for pid, score in best(scores, length)]


def best(scores: Mapping[str, float], length: int) -> list[tuple[str, float]]:
    """The ``length`` highest scores, highest first, then by id: the
    ``length``-th highest found among the bare numbers (in C), then only
    those at least as high sorted by the key (a Python call each). A score
    that is not a number (from a damaged list) compares false with every
    other: then all are ordered as before this short cut, by the key."""
    items: Iterable[tuple[str, float]] = scores.items()
    if len(scores) > length > 0:
        total = sum(scores.values())
        if total != total:  # a NaN (or inf and -inf)
            return heapq.nsmallest(length, items, key=_highest_first)
        cutoff = heapq.nlargest(length, scores.values())[-1]
        items = [item for item in items if item[1] >= cutoff]
    return sorted(items, key=_highest_first)[:length]


def _highest_first(item: tuple[str, float]) -> tuple[float, str]:
    return (-item[1], item[0])


def trending_bucket(ts_ms: int, bucket_s: int) -> int:
    """Start (epoch seconds) of the event-time bucket holding ``ts_ms``."""
    return (ts_ms // 1000) // bucket_s * bucket_s


def trending_windows(settings: PipelineSettings) -> list[tuple[str, int, int]]:
    """(name, bucket seconds, window seconds) of each trending window."""
    return [
        ("short", settings.trending_bucket, settings.trending_window),
        ("long", settings.trending_long_bucket, settings.trending_long_window),
    ]


def trending_buckets_in_window(
    clock_ms: int, settings: PipelineSettings, window: str = "short"
) -> list[int]:
    """The bucket starts inside the trending window ending at ``clock_ms``."""
    _, bucket_s, window_s = next(w for w in trending_windows(settings) if w[0] == window)
    newest = trending_bucket(clock_ms, bucket_s)
    first = newest - window_s + bucket_s
    return list(range(first, newest + 1, bucket_s))


def basket_pairs(
    bought: Sequence[Item],
    purchases: Sequence[Interaction],
    settings: PipelineSettings,
    landmark_ms: int,
) -> dict[Pair, float]:
    """Frequently-bought-together weights from one visitor's new purchases:
    each pairs (weight 1) with their other purchases at most ``basket_window``
    apart, remembered or new, faded like co-visits."""
    return visitor_pairs(
        [(p, ts, 1.0) for p, ts, _ in bought],
        [Interaction(i.product_id, i.ts, 1.0, i.event_id) for i in purchases],
        settings,
        landmark_ms,
        window_s=settings.basket_window,
        limit=50,
    )


def favourite_category(
    recent: Sequence[Item], categories: Mapping[str, str], recency_decay: float
) -> str | None:
    """The category the visitor's recent items weigh most in (newest first,
    ``recency_decay`` per step back, times each item's weight)."""
    weights: dict[str, float] = {}
    for step, (product_id, _, weight) in enumerate(recent):
        category = categories.get(product_id)
        if category:
            weights[category] = weights.get(category, 0.0) + weight * recency_decay**step
    if not weights:
        return None
    return min(weights, key=lambda c: (-weights[c], c))


_WORD = re.compile(r"[^\W\d_]{3,}")


def text_neighbours(
    texts: Mapping[str, str], length: int, common_share: float = 0.05
) -> dict[str, list[dict[str, Any]]]:
    """Each product's neighbours by its text (title, description): TF-IDF
    cosine over words of 3+ letters. Words of one product only, and words in
    more than ``common_share`` of the products (at least 50, at most 200),
    say nothing and are skipped; the cap also bounds the work (each word
    costs at most 200² steps)."""
    bags: dict[str, dict[str, int]] = {}
    for product_id, text in texts.items():
        bag: dict[str, int] = {}
        for word in _WORD.findall(text.lower()):
            bag[word] = bag.get(word, 0) + 1
        if bag:
            bags[product_id] = bag
    n = len(bags)
    frequency: dict[str, int] = {}
    for bag in bags.values():
        for word in bag:
            frequency[word] = frequency.get(word, 0) + 1
    limit = min(200, max(50, int(common_share * n)))
    idf = {w: math.log(n / f) for w, f in frequency.items() if 1 < f <= limit}
    vectors: dict[str, dict[str, float]] = {}
    postings: dict[str, list[str]] = {}
    for product_id, bag in bags.items():
        vector = {w: (1 + math.log(c)) * idf[w] for w, c in bag.items() if w in idf}
        norm = math.sqrt(sum(v * v for v in vector.values()))
        if norm:
            vectors[product_id] = {w: v / norm for w, v in vector.items()}
            for word in vector:
                postings.setdefault(word, []).append(product_id)
    result: dict[str, list[dict[str, Any]]] = {}
    for product_id, vector in vectors.items():
        scores: dict[str, float] = {}
        for word, weight in vector.items():
            for other in postings[word]:
                if other != product_id:
                    scores[other] = scores.get(other, 0.0) + weight * vectors[other][word]
        result[product_id] = [
            {"product_id": p, "score": round(v, 6)} for p, v in best(scores, length)
        ]
    return result
