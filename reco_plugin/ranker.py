"""The ranker: the strategies' lists are candidates, and a logistic model learnt
online orders them.

Django-free and Spark-free: the streaming job learns the model from the
next-item trials it already judges (``spark_jobs.score``), and the request path
(``store``) scores candidates with the same features, so what is learnt is what
is served.

* **Candidates**: each strategy's top ``DEPTH`` (after what the visitor may not
  be shown), merged: a candidate remembers its rank and score in every list
  that holds it.
* **Features** (``FEATURES``, sparse): for each strategy, whether it lists the
  candidate, 1/(1 + rank) and its score over the list's best; how many lists
  hold it; whether its category is the page's;
  its price against the page product's, and its price rank among the
  candidates of the page's category; the visitor's history length with the
  personal and similar lists.
* **Learning**: each trial (the item a visitor went to next, judged against
  the lists as they stood) gives a positive, the item if it was a candidate,
  and ``NEGATIVES`` negatives, the other candidates chosen by a hash of the
  trial (a batch run again picks the same). FTRL-Proximal (McMahan et al.,
  2013) updates per coordinate, one example at a time in a fixed order, so a
  batch run again from the same model gives bit-identical weights.
* **Evaluation**: each batch's examples are scored by the model before it
  learns from them (prequential): log loss, and AUC of positives over
  negatives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import logging
import math
from array import array
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .strategies import STRATEGIES

try:  # the loops over packed examples, compiled (reco_plugin/_ftrl.c)
    from . import _ftrl
except ImportError:  # not built here: the same loops in Python, to the same floats
    _ftrl = None
try:  # a trial's candidates, compiled (reco_plugin/_candidates.c)
    from . import _candidates
except ImportError:  # not built
    _candidates = None

logger = logging.getLogger(__name__)

# Candidates taken from each strategy's list.
DEPTH = 20
# Negatives learnt from per trial.
NEGATIVES = 10
# FTRL-Proximal's parameters: learning rate alpha, beta, L1 and L2.
ALPHA = 0.1
BETA = 1.0
L1 = 0.0
L2 = 1.0
# Examples the model has learnt from before it is served (until then, the blend).
WARM_EXAMPLES = 2000
# A model learnt over other features (another version of the plugin) goes on
# when it has at least this share of this version's; else it starts again.
# (The version before the ``after`` and ``session`` lists had 41 of these 47.)
CARRIED = 0.85

BIAS = "bias"
SOURCES = "sources"
PAGE_CATEGORY = "category:page"
CHEAPER = "price:cheaper"
PRICE_RATIO = "price:log_ratio"
CHEAPEST = "price:rank_in_category"
PERSONAL_HISTORY = "history:personal"
SIMILAR_HISTORY = "history:similar"

# The features, in the order of the weights.
FEATURES: tuple[str, ...] = (
    BIAS,
    *(f"{name}{part}" for name in STRATEGIES for part in ("", ":rank", ":score")),
    SOURCES,
    PAGE_CATEGORY,
    CHEAPER,
    PRICE_RATIO,
    CHEAPEST,
    PERSONAL_HISTORY,
    SIMILAR_HISTORY,
)
INDEX = {name: i for i, name in enumerate(FEATURES)}
# a candidate's place in the lists: strategy -> (rank from 0, score / the list's best)
Sources = dict[str, tuple[int, float]]
# a feature vector: (feature index, value) of its non-zero features
Vector = list[tuple[int, float]]


def candidates(
    lists: Iterable[tuple[str, Any]], exclude: set[str] | frozenset[str], depth: int = DEPTH
) -> dict[str, Sources]:
    """Every strategy's top ``depth`` products not in ``exclude``, merged, in
    the order first met."""
    return merged((strategy, top(items, exclude, depth)) for strategy, items in lists)


def top(
    items: Any, exclude: set[str] | frozenset[str], depth: int = DEPTH
) -> list[tuple[str, float]]:
    """A list's first ``depth`` (product id, score) not in ``exclude``."""
    return _first_kept(scored_ids(items), exclude, depth)


def _first_kept(
    scored: list[tuple[str, float]], exclude: set[str] | frozenset[str], depth: int
) -> list[tuple[str, float]]:
    kept = []
    for pair in scored:
        if pair[0] not in exclude:
            kept.append(pair)
            if len(kept) == depth:
                break
    return kept


Tops = list[tuple[str, list[tuple[str, float]]]]


def trial_tops(
    sources: list[tuple[str, str]],
    lists: dict[str, list[tuple[str, float]]],
    exclude: set[str] | frozenset[str],
    target: str,
    top: int,
    k: int,
    depth: int,
    compiled: bool = True,
) -> tuple[Tops, list[tuple[str, bool]], dict[str, None]]:
    """A next-item trial's lists: of each (strategy, key) of ``sources``, the
    first ``top`` of ``lists[key]`` (:func:`scored_ids`) not in ``exclude``.
    Returns the strategies' tops (each cut to ``depth``); for each strategy
    with a list, whether ``target`` is in its first ``k``; and the tops'
    :func:`candidate_ids`. The compiled loop (``compiled``, where it was
    built) gives the same lists of the same pairs; it leaves to this one what
    the job does not pass (other types, a negative or huge size)."""
    if compiled and _candidates is not None:
        made = _candidates.tops(sources, lists, exclude, target, top, k, depth)
        if made is not None:
            return made
    tops: Tops = []
    hits = []
    for strategy, key in sources:
        kept = _first_kept(lists[key], exclude, top)
        if kept:
            hits.append((strategy, target in [p for p, _ in kept[:k]]))
        tops.append((strategy, kept[:depth]))
    return tops, hits, candidate_ids(tops)


def merged(
    tops: Iterable[tuple[str, list[tuple[str, float]]]], only: Container[str] | None = None
) -> dict[str, Sources]:
    """Strategies' tops (:func:`top`) as candidates: each product with its rank
    and its score over the list's best in every list that holds it (of the
    products in ``only``, when given)."""
    found: dict[str, Sources] = {}
    for strategy, kept in tops:
        if not kept:
            continue
        best = kept[0][1]
        if not best > 0:  # 0, below, or not a number (a damaged list)
            best = 1.0
        for rank, (product_id, score) in enumerate(kept):
            if only is None or product_id in only:
                found.setdefault(product_id, {})[strategy] = (rank, score / best)
    return found


def candidate_ids(tops: Iterable[tuple[str, list[tuple[str, float]]]]) -> dict[str, None]:
    """The products of strategies' tops, in the order :func:`merged` meets them."""
    return dict.fromkeys(product_id for _, kept in tops for product_id, _ in kept)


def scored_ids(items: Any) -> list[tuple[str, float]]:
    """A list's (product id, score) in order, without empty ids; a score that
    is not a number counts as 0. Taken once for a ``strategies.Ranked``, which
    many requests and trials read."""
    cached = getattr(items, "scored", None)
    if cached is not None:
        return cached
    ids = getattr(items, "ids", None)
    scores = getattr(items, "scores", None)
    if ids is None:
        ids = [str(item.get("product_id", "")) for item in items]
        scores = {str(item.get("product_id", "")): item.get("score", 0.0) for item in items}
    result = []
    for product_id in ids:
        if not product_id:
            continue
        try:
            score = float(scores.get(product_id, 0.0) or 0.0)
        except (TypeError, ValueError, OverflowError):  # written by hand, or damaged
            score = 0.0
        result.append((product_id, score))
    if ids is getattr(items, "ids", None):
        with contextlib.suppress(AttributeError):
            items.scored = result
    return result


@dataclasses.dataclass(frozen=True)
class Context:
    """What the features know besides the lists: the page's product (its
    category and price), how many items the visitor has seen, and each
    candidate's category and price (``facts``)."""

    page_category: str | None = None
    page_price: float | None = None
    history: int = 0
    facts: Mapping[str, tuple[str | None, float | None]] = dataclasses.field(default_factory=dict)


def price_of(value: Any) -> float | None:
    """A catalog price as a positive number, or None."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if price > 0 and math.isfinite(price) else None


def vectors(
    found: Mapping[str, Sources], context: Context, only: Sequence[str] | None = None
) -> list[Vector]:
    """The feature vector of each candidate of ``found`` (or of ``only``, some
    of them), in that order."""
    facts = context.facts
    page_category = context.page_category
    page_price = context.page_price
    history = math.log1p(context.history) / 5.0
    cheapest: dict[str, int] = {}
    if page_category:
        same = sorted(
            (price, product_id)
            for product_id in found
            if (fact := facts.get(product_id))
            and fact[0] == page_category
            and (price := fact[1]) is not None
        )
        cheapest = {product_id: rank for rank, (_, product_id) in enumerate(same)}
    result: list[Vector] = []
    for product_id in found if only is None else only:
        sources = found[product_id]
        vector: Vector = [(0, 1.0)]
        for strategy, (rank, score) in sources.items():
            base = _STRATEGY_BASE.get(strategy)
            if base is not None:
                vector += [(base, 1.0), (base + 1, 1.0 / (rank + 1)), (base + 2, score)]
        vector.append((_SOURCES, len(sources) / 3.0))
        category, price = facts.get(product_id, (None, None))
        if category and category == page_category:
            vector.append((_PAGE_CATEGORY, 1.0))
        if price is not None and page_price is not None:
            ratio = math.log(price / page_price)
            if ratio < 0:
                vector.append((_CHEAPER, 1.0))
            if ratio:
                vector.append((_PRICE_RATIO, max(-3.0, min(3.0, ratio)) / 3.0))
        rank = cheapest.get(product_id)
        if rank is not None:
            vector.append((_CHEAPEST, 1.0 / (rank + 1)))
        if history:
            if "personal" in sources:
                vector.append((_PERSONAL_HISTORY, history))
            if "similar" in sources:
                vector.append((_SIMILAR_HISTORY, history))
        result.append(vector)
    return result


_STRATEGY_BASE = {name: INDEX[name] for name in STRATEGIES}
_SOURCES = INDEX[SOURCES]
_PAGE_CATEGORY = INDEX[PAGE_CATEGORY]
_CHEAPER = INDEX[CHEAPER]
_PRICE_RATIO = INDEX[PRICE_RATIO]
_CHEAPEST = INDEX[CHEAPEST]
_PERSONAL_HISTORY = INDEX[PERSONAL_HISTORY]
_SIMILAR_HISTORY = INDEX[SIMILAR_HISTORY]


def score(weights: Sequence[float], vector: Vector) -> float:
    """The model's logit for one candidate: the products added in order, as
    the compiled loop adds them (``sum`` compensates its additions from
    Python 3.12 on)."""
    logit = 0.0
    for i, value in vector:
        logit += weights[i] * value
    return logit


def probability(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


# -- learning -----------------------------------------------------------------


Example = tuple[str, int, Vector]  # (order key, label 0/1, features)


def examples(
    key: str, target: str, found: Mapping[str, Sources], context: Context
) -> list[Example]:
    """A trial's training examples: the item the visitor went to next as a
    positive (none when it was not a candidate: then the trial teaches the
    ranker nothing), and up to ``NEGATIVES`` other candidates, picked by a
    hash of ``key`` (the trial's own) and the candidate."""
    if target not in found:
        return []
    chosen = _chosen(key, target, found)
    return _labelled(key, target, chosen, vectors(found, context, chosen))


def trial_examples(
    key: str,
    target: str,
    tops: Sequence[tuple[str, list[tuple[str, float]]]],
    context: Context,
    ids: Mapping[str, None] | None = None,
) -> list[Example]:
    """:func:`examples` of the candidates ``merged(tops)``, with only the
    chosen ones' places in the lists merged (the same examples; the other
    candidates, a few dozen, cost their ids and hashes only); ``ids``: the
    tops' :func:`candidate_ids`, when known."""
    ids = candidate_ids(tops) if ids is None else ids
    if target not in ids:
        return []
    chosen = _chosen(key, target, ids)
    # every candidate's id (the price ranks look at all of them), and the
    # chosen ones' sources (the only vectors made)
    found: dict[str, Any] = dict.fromkeys(ids)
    found.update(merged(tops, only=set(chosen)))
    return _labelled(key, target, chosen, vectors(found, context, chosen))


def _chosen(key: str, target: str, candidates: Iterable[str]) -> list[str]:
    """The target, then up to ``NEGATIVES`` other candidates picked by a hash
    of the trial's ``key`` and the candidate."""
    others = heapq.nsmallest(
        NEGATIVES, (p for p in candidates if p != target), key=lambda p: _hash(f"{key}|{p}")
    )
    return [target, *others]


def _labelled(key: str, target: str, chosen: list[str], vectors: list[Vector]) -> list[Example]:
    return [
        (f"{key}|{p}", int(p == target), vector) for p, vector in zip(chosen, vectors, strict=True)
    ]


class Examples:
    """Training examples packed in flat arrays, in the order added: keys,
    labels, and every vector's (index, value) pairs one after another. A
    partition's examples reach the driver as a few byte strings, not as a
    list of small tuples (here, 40,000 examples of 20 features took ~0.6 s
    more to pickle, move and unpickle as tuples). Iterated, each is (key,
    label, its (index, value) pairs, once)."""

    def __init__(self, examples: Iterable[Example] = ()) -> None:
        self.keys: list[str] = []
        self.labels = bytearray()
        # where each example's features start in indices and values (and
        # where the last one ends)
        self.starts = array("I", [0])
        self.indices = array("H")
        self.values = array("d")
        # in key order (as :meth:`in_key_order` leaves them)
        self.ordered = False
        self.add(examples)

    def add(self, examples: Iterable[Example]) -> None:
        keys, labels, starts, indices, values = (
            self.keys,
            self.labels,
            self.starts,
            self.indices,
            self.values,
        )
        self.ordered = False
        for key, label, vector in examples:
            keys.append(key)
            labels.append(label)
            for i, value in vector:
                indices.append(i)
                values.append(value)
            starts.append(len(indices))

    def extend(self, other: Examples) -> None:
        self.ordered = False
        shift = len(self.indices)
        self.keys += other.keys
        self.labels += other.labels
        self.starts.extend(array("I", (start + shift for start in other.starts[1:])))
        self.indices += other.indices
        self.values += other.values

    def in_key_order(self) -> Examples:
        """These examples sorted by key (the order the model learns in)."""
        if self.ordered:
            return self
        result = Examples()
        result.keys = sorted(self.keys)
        place = {key: j for j, key in enumerate(self.keys)}
        starts, indices, values = self.starts, self.indices, self.values
        for key in result.keys:
            j = place[key]
            result.labels.append(self.labels[j])
            result.indices += indices[starts[j] : starts[j + 1]]
            result.values += values[starts[j] : starts[j + 1]]
            result.starts.append(len(result.indices))
        result.ordered = True
        return result

    def __iter__(self) -> Iterator[tuple[str, int, Iterator[tuple[int, float]]]]:
        # each example's features as an iterator over its part of the arrays:
        # read them as they come (thousands kept at once wake the garbage
        # collector, ~10x slower)
        starts, indices, values = self.starts, self.indices, self.values
        for j, key in enumerate(self.keys):
            begin, end = starts[j], starts[j + 1]
            yield key, self.labels[j], zip(indices[begin:end], values[begin:end], strict=True)

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Examples) and (
            self.keys,
            self.labels,
            self.starts,
            self.indices,
            self.values,
        ) == (other.keys, other.labels, other.starts, other.indices, other.values)


def _order(example: Any) -> str:
    return example[0]


def _in_key_order(batch: Iterable[Example] | Examples) -> Iterable[Any]:
    """Examples in their key order, packed ones read as they come."""
    if isinstance(batch, Examples):
        return batch.in_key_order()
    return sorted(batch, key=_order)


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@dataclasses.dataclass
class Learner:
    """FTRL-Proximal's per-coordinate state; ``weights()`` is the model served."""

    z: list[float] = dataclasses.field(default_factory=lambda: [0.0] * len(FEATURES))
    n: list[float] = dataclasses.field(default_factory=lambda: [0.0] * len(FEATURES))
    examples: int = 0
    alpha: float = ALPHA
    beta: float = BETA
    l1: float = L1
    l2: float = L2

    def weight(self, i: int) -> float:
        z = self.z[i]
        if abs(z) <= self.l1:
            return 0.0
        sign = 1.0 if z > 0 else -1.0
        return -(z - sign * self.l1) / ((self.beta + math.sqrt(self.n[i])) / self.alpha + self.l2)

    def weights(self) -> list[float]:
        return [self.weight(i) for i in range(len(self.z))]

    def learn(self, batch: Iterable[Example] | Examples, compiled: bool = True) -> None:
        """One FTRL step per example, in the examples' key order (:meth:`weight`
        inlined: the same operations in the same order, so the same floats;
        each coordinate's square root of ``n`` is kept as ``n`` changes, the
        same float as taking it again). Packed examples go through the
        compiled loop where it was built (``compiled``), which gives the same
        floats as this one."""
        if _compiled_loops_take(batch, compiled):
            ordered = batch.in_key_order()
            self.examples += _ftrl.learn(
                self.z,
                self.n,
                ordered.labels,
                ordered.starts,
                ordered.indices,
                ordered.values,
                self.alpha,
                self.beta,
                self.l1,
                self.l2,
            )
            return
        z, n_, alpha, beta, l1, l2 = self.z, self.n, self.alpha, self.beta, self.l1, self.l2
        sqrt = math.sqrt
        roots = [sqrt(n) for n in n_]
        learnt = 0
        for _, label, vector in _in_key_order(batch):
            weights = []
            logit = 0
            for i, value in vector:
                zi = z[i]
                if abs(zi) <= l1:
                    w = 0.0
                else:
                    w = -(zi - (l1 if zi > 0 else -l1)) / ((beta + roots[i]) / alpha + l2)
                weights.append((i, value, w))
                logit += w * value
            gradient = probability(logit) - label
            for i, value, w in weights:
                g = gradient * value
                n = n_[i] + g * g
                root = sqrt(n)
                z[i] += g - (root - roots[i]) / alpha * w
                n_[i] = n
                roots[i] = root
            learnt += 1
        self.examples += learnt

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "z": self.z,
            "n": self.n,
            "examples": self.examples,
            "alpha": self.alpha,
            "beta": self.beta,
            "l1": self.l1,
            "l2": self.l2,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> Learner:
        """The stored learner (a new one for None). One learnt by a version
        of the plugin with other features goes on from what it learnt of the
        features both have (:func:`by_name`), or starts again when they share
        too few. ValueError when the value is damaged."""
        learner = cls()
        if value is None:
            return learner
        if not isinstance(value, Mapping):
            raise ValueError("the ranker's stored learner is not an object")
        stored = value.get("features")
        z, n = by_name(stored, value.get("z")), by_name(stored, value.get("n"))
        if z is None or n is None:
            logger.warning(
                "the ranker's model was learnt over other features (another version of the "
                "plugin), too few of them this version's: it learns again from scratch"
            )
            return learner
        if stored != list(FEATURES):
            logger.warning(
                "the ranker's model was learnt over other features (another version of the "
                "plugin): it goes on from those this version has too, a new one at 0"
            )
        if any(x < 0 for x in n):
            raise ValueError("the ranker's stored learner has a negative sum of squares")
        learner.z, learner.n = z, n
        learner.examples = int(_finite(value.get("examples", 0)))
        for name in ("alpha", "beta", "l1", "l2"):
            setattr(learner, name, _finite(value.get(name, getattr(learner, name))))
        if learner.alpha <= 0 or min(learner.beta, learner.l1, learner.l2, learner.examples) < 0:
            raise ValueError("the ranker's stored learner has parameters out of range")
        return learner


def by_name(stored: Any, values: Any) -> list[float] | None:
    """``values`` learnt over the features named ``stored`` (this version's,
    or another version's), in the order of :data:`FEATURES`: a feature they
    lack at 0, one this version lacks dropped. None when they share fewer
    than :data:`CARRIED` of this version's features; ValueError when they are
    damaged (not lists of one length, a name twice, a value not a finite
    number)."""
    if not isinstance(stored, list) or not isinstance(values, list):
        raise ValueError("the ranker's stored features or values are not lists")
    if len(stored) != len(values) or len(set(map(str, stored))) != len(stored):
        raise ValueError("the ranker's stored features and values do not match")
    numbers = [_finite(value) for value in values]
    if stored == list(FEATURES):
        return numbers
    shared = {str(name): number for name, number in zip(stored, numbers, strict=True)}
    if sum(name in shared for name in FEATURES) < CARRIED * len(FEATURES):
        return None
    return [shared.get(name, 0.0) for name in FEATURES]


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"not a number: {value!r:.40}") from exc
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r:.40}")
    return number


def _compiled_loops_take(batch: Iterable[Example] | Examples, compiled: bool) -> bool:
    """Whether the compiled loops take ``batch``: asked to (``compiled``),
    built, and the examples packed."""
    return compiled and _ftrl is not None and isinstance(batch, Examples)


def evaluate(
    weights: Sequence[float], batch: Iterable[Example] | Examples, compiled: bool = True
) -> dict[str, float] | None:
    """The model's log loss and AUC on examples it has not learnt from; None
    without both a positive and a negative. Packed examples are scored by
    the compiled loop where it was built (``compiled``; the same floats)."""
    # in the examples' key order: the sums come out the same however they arrived
    ordered = _in_key_order(batch)
    if _compiled_loops_take(ordered, compiled):
        logits = _ftrl.logits(list(weights), ordered.starts, ordered.indices, ordered.values)
        scored = list(zip(logits, ordered.labels, strict=True))
    else:
        scored = [(score(weights, vector), label) for _, label, vector in ordered]
    positives = sum(label for _, label in scored)
    negatives = len(scored) - positives
    if not positives or not negatives:
        return None
    loss = 0.0
    for logit, label in scored:
        p = min(max(probability(logit), 1e-12), 1 - 1e-12)
        loss -= math.log(p if label else 1 - p)
    # AUC: the chance a positive outscores a negative (ties count half)
    ranked = sorted(scored)
    below = 0.0
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i + 1
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        tied_positives = sum(label for _, label in ranked[i:j])
        rank_sum += tied_positives * (below + (j - i - tied_positives) / 2.0)
        below += j - i - tied_positives
        i = j
    return {
        "examples": len(scored),
        "log_loss": loss / len(scored),
        "auc": rank_sum / (positives * negatives),
    }


def ranked(
    found: Mapping[str, Sources], context: Context, weights: Sequence[float]
) -> list[tuple[str, float, Vector]]:
    """The candidates best first: (product id, logit, features); ties by id."""
    rows = [
        (product_id, score(weights, vector), vector)
        for product_id, vector in zip(found, vectors(found, context), strict=True)
    ]
    rows.sort(key=lambda row: (-row[1], row[0]))
    return rows


def explain(vector: Vector, weights: Sequence[float]) -> dict[str, float]:
    """Each non-zero feature's share of the logit (weight x value), largest first."""
    parts = {FEATURES[i]: round(weights[i] * value, 4) for i, value in vector if i}
    return dict(sorted(parts.items(), key=lambda kv: -abs(kv[1])))
