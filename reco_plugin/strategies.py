"""The strategies a list is blended from, and the bandit policy that blends them.

Django-free: the request path (``store``) and the streaming job (``spark_jobs``)
both use it, so the lists the bandit is rewarded on are the lists served.

Each strategy is a ready list in Redis, written by the pipeline:

* ``personal``: similar to the visitor's recent items (their personal list);
* ``similar``: co-visited with the product on the page;
* ``next``: what visitors went on to from the product on the page (its
  visitors' next few items, in the order they came);
* ``after``: what its visitors viewed right after it (the next item only:
  fewer, surer candidates than ``next``);
* ``session``: what its visitors viewed within minutes of it, before or
  after (``session_window``), by how often;
* ``fbt``: frequently bought together with it (purchase baskets);
* ``retrained``: its neighbours from the nightly batch job;
* ``content``: products whose title and description share its rarer words
  (the nightly job too; a new product has these before any behaviour);
* ``category``: trending in its category over the long window;
* ``affinity``: trending in the visitor's favourite category (their recent
  items' categories) over the long window;
* ``trending``: trending over the short window;
* ``trending_long``: trending over the long window (what sells lately, where
  ``popular`` remembers weeks);
* ``popular``: most interacted with, fading with the half-life.

The blend fills each slot from one strategy drawn by Thompson sampling: the
policy (written by the pipeline after each batch) is a bank of draws from every
strategy's Beta posterior; a slot's strategy is the best one, among those with
candidates left, under a draw picked at random, or with probability
``exploration`` a uniformly random one. The probability of that choice (the
*propensity*) is computed exactly and served with the item, so impressions and
clicks can be re-weighted offline.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import keys

PERSONAL = "personal"
SIMILAR = "similar"
NEXT = "next"
AFTER = "after"
SESSION = "session"
FBT = "fbt"
RETRAINED = "retrained"
CONTENT = "content"
CATEGORY = "category"
AFFINITY = "affinity"
TRENDING = "trending"
TRENDING_LONG = "trending_long"
POPULAR = "popular"
STRATEGIES: tuple[str, ...] = (
    PERSONAL,
    SIMILAR,
    NEXT,
    AFTER,
    SESSION,
    FBT,
    RETRAINED,
    CONTENT,
    CATEGORY,
    AFFINITY,
    TRENDING,
    TRENDING_LONG,
    POPULAR,
)
# the lists of the product on the page: its neighbours
NEIGHBOURS = frozenset({SIMILAR, NEXT, AFTER, SESSION, FBT, RETRAINED, CONTENT})
# the product lists the streaming job derives from pair weights, in the order
# it writes them (keys.pipeline_owed: those it still owes)
STREAMED_PRODUCT_LISTS: tuple[str, ...] = (SIMILAR, FBT, NEXT, AFTER, SESSION)


def product_lists_owed(r: Any) -> dict[str, int]:
    """How many products' lists of each kind the streaming job owes (their
    pair weights changed since their list was written)."""
    pipe = r.pipeline(transaction=False)
    for kind in STREAMED_PRODUCT_LISTS:
        pipe.zcard(keys.pipeline_owed(kind))
    return dict(zip(STREAMED_PRODUCT_LISTS, pipe.execute(), strict=True))


# A batch catching up a backlog leaves its visitors' personal lists owed; they
# are written once the job has caught up, or by any batch once the visitor owed
# longest has waited this many commits (spark_jobs.batch; ~10 s while catching
# up here).
VISITOR_LISTS_DEFERRED_COMMITS = 5


def visitor_lists_owed(r: Any) -> int:
    """How many visitors' personal lists the streaming job owes (left
    unwritten by batches catching up a backlog)."""
    return int(r.zcard(keys.pipeline_visitors_owed()))


def lists_owed(r: Any) -> bool:
    """Whether the streaming job owes any list: a product's of any kind, or a
    visitor's."""
    return any(product_lists_owed(r).values()) or bool(visitor_lists_owed(r))


# the lists that need neither a visitor nor a product: the same for everyone
GLOBAL = frozenset({TRENDING, TRENDING_LONG, POPULAR})
# the strategies that need a product on the page
PRODUCT_CONTEXT = NEIGHBOURS | {CATEGORY}

# A trial is scored on a strategy's top K (after removing what the visitor has seen).
K = 10
# Draws from the posteriors kept in the policy.
POLICY_DRAWS = 256


class Ranked:
    """A list as the pipeline wrote it, kept as its ids in order and each id's
    score (read-only: it is shared by the requests that read the same value).
    Iterating it gives ``{"product_id", "score"}`` items."""

    __slots__ = ("ids", "scores", "scored")  # scored: ranker.scored_ids, once

    def __init__(self, ids: tuple[str, ...], scores: dict[str, float]) -> None:
        self.ids = ids
        self.scores = scores

    @classmethod
    def parse(cls, items: Any) -> Ranked:
        kept = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        ids = tuple(str(item.get("product_id", "")) for item in kept)
        return cls(
            ids,
            {p: float(item.get("score", 0.0)) for p, item in zip(ids, kept, strict=True)},
        )

    @classmethod
    def of(cls, items: Sequence[Mapping[str, Any]]) -> Ranked:
        """Well-formed items as they are (each id as text, its score as
        written): what :func:`top` and ``ranker.candidates`` read of a list of
        items, taken once for a list read many times."""
        ids = tuple(str(item.get("product_id", "")) for item in items)
        return cls(ids, {p: item.get("score", 0.0) for p, item in zip(ids, items, strict=True)})

    @classmethod
    def merged(cls, parts: list[Ranked]) -> Ranked:
        """The first list, then what the next ones add, in order."""
        ids: list[str] = []
        scores: dict[str, float] = {}
        for part in parts:
            for product_id in part.ids:
                if product_id not in scores:
                    ids.append(product_id)
                    scores[product_id] = part.scores[product_id]
        return cls(tuple(ids), scores)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return ({"product_id": p, "score": self.scores[p]} for p in self.ids)


def top(items: Iterable[Mapping[str, Any]], exclude: set[str], k: int = K) -> list[str]:
    """The first ``k`` product ids of a list, skipping ``exclude``."""
    result: list[str] = []
    # a Ranked carries its ids already
    ids = getattr(items, "ids", None)
    if ids is None:
        ids = (str(item.get("product_id", "")) for item in items)
    for product_id in ids:
        if product_id and product_id not in exclude:
            result.append(product_id)
            if len(result) == k:
                break
    return result


CLICK_SUFFIX = ":click"
# Evidence: bandit hash field -> (discounted successes, discounted trials). The
# field is a strategy (next-item trials) or ``strategy:click`` (impressions,
# and the clicks on them).
Evidence = Mapping[str, tuple[float, float]]


def _prior_draw(rng: random.Random, successes: float, trials: float, pooled: float) -> float:
    """A draw from the Beta belief: the evidence over a prior of weight 2 at the
    pooled rate (an unproven strategy is drawn around what the others do, not
    around 1/2)."""
    hits = min(max(successes, 0.0), max(trials, 0.0))
    misses = max(trials, 0.0) - hits
    return rng.betavariate(hits + 2 * pooled + 1e-6, misses + 2 * (1 - pooled) + 1e-6)


def _pooled(evidence: Evidence, fields: list[str]) -> float | None:
    hits = sum(min(*evidence.get(f, (0.0, 0.0))) for f in fields)
    trials = sum(evidence.get(f, (0.0, 0.0))[1] for f in fields)
    return hits / trials if trials else None


def policy(
    evidence: Evidence,
    *,
    exploration: float,
    seed: int = 0,
    draws: int = POLICY_DRAWS,
) -> dict[str, Any]:
    """The serving policy for this evidence: a bank of joint draws, one value per
    strategy (``STRATEGIES`` order) each, seeded so that a batch run again
    writes the same policy.

    A strategy's value is a draw of its next-item success rate, times, once
    the shop has clicks, a draw of its click rate relative to the pooled
    click rate (a strategy whose items are clicked twice as often counts
    twice as much).
    """
    rng = random.Random(seed)
    next_pooled = _pooled(evidence, list(STRATEGIES))
    click_pooled = _pooled(evidence, [s + CLICK_SUFFIX for s in STRATEGIES])
    bank = []
    for _ in range(draws):
        draw = []
        for name in STRATEGIES:
            value = _prior_draw(rng, *evidence.get(name, (0.0, 0.0)), next_pooled or 0.5)
            if click_pooled:
                click = _prior_draw(
                    rng, *evidence.get(name + CLICK_SUFFIX, (0.0, 0.0)), click_pooled
                )
                value *= click / click_pooled
            draw.append(value)
        bank.append(draw)
    return {"strategies": list(STRATEGIES), "exploration": exploration, "draws": bank}


LEARNT = "learnt"
OFF = "off"


def check_overrides(values: Mapping[str, Any] | None) -> dict[str, str | float]:
    """Staff's choice per strategy: ``"learnt"`` (the bandit decides, the
    default), ``"off"``, or a fixed weight >= 0 (1 weighs as much as an average
    learnt strategy). Returns the normalised mapping; raises ValueError."""
    result: dict[str, str | float] = {}
    for name, value in (values or {}).items():
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}")
        if value in (LEARNT, OFF):
            result[name] = value
            continue
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected 'learnt', 'off' or a weight >= 0") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"{name}: a weight must be a number >= 0")
        result[name] = weight
    return result


class Policy:
    """A policy as served: the chance of each strategy among those that have
    candidates left, computed once per set of strategies and kept.

    ``overrides`` (see :func:`check_overrides`) are the staff's tuning: an
    ``off`` strategy is never drawn; a strategy with a fixed weight ``w`` takes
    ``w / (sum of fixed weights + number of learnt strategies)`` of the slots,
    and the learnt ones share the rest by the bandit's draws.
    """

    def __init__(
        self,
        value: Mapping[str, Any] | None,
        overrides: Mapping[str, Any] | None = None,
        exploration: float | None = None,
    ) -> None:
        value = value or {}
        self.names = list(value.get("strategies", ()))
        self.bank = [list(draw) for draw in value.get("draws", ())]
        # the pipeline's (the active version's), unless an experiment's arm has its own
        self.exploration = float(
            value.get("exploration", 0.05) if exploration is None else exploration
        )
        self.overrides = check_overrides(overrides)
        self._chances: dict[tuple[str, ...], list[float]] = {}

    def enabled(self, strategy: str) -> bool:
        return self.overrides.get(strategy) != OFF

    def chances(self, live: Sequence[str]) -> list[float]:
        """Probability that each of ``live`` (enabled strategies) fills the next slot."""
        key = tuple(live)
        found = self._chances.get(key)
        if found is not None:
            return found
        fixed = {s: w for s in live if isinstance(w := self.overrides.get(s), float)}
        learnt = [s for s in live if s not in fixed]
        learnt_chances = dict(zip(learnt, self._learnt(learnt), strict=True))
        total = sum(fixed.values()) + len(learnt)
        if not fixed:
            result = [learnt_chances[s] for s in live]
        elif total <= 0:  # every strategy left weighs 0: any of them
            result = [1.0 / len(live)] * len(live)
        else:
            result = [
                fixed[s] / total if s in fixed else len(learnt) / total * learnt_chances[s]
                for s in live
            ]
        self._chances[key] = result
        return result

    def _learnt(self, live: Sequence[str]) -> list[float]:
        """The bandit's chances among ``live``: the share of draws each wins,
        mixed with a uniform choice. A strategy the policy does not know yet
        (written by a job of an older version) has only the uniform share."""
        if not live:
            return []
        uniform = 1.0 / len(live)
        known = [i for i, s in enumerate(live) if s in self.names]
        if not self.bank or not known:
            return [uniform] * len(live)
        columns = [self.names.index(live[i]) for i in known]
        wins = [0.0] * len(live)
        for draw in self.bank:
            values = [draw[c] for c in columns]
            best = max(values)
            tied = [known[i] for i, v in enumerate(values) if v == best]
            # a tie is broken uniformly at random
            for i in tied:
                wins[i] += 1 / len(tied)
        n = len(self.bank)
        return [(1 - self.exploration) * w / n + self.exploration * uniform for w in wins]


def blend(
    candidates: Sequence[tuple[str, Sequence[str]]],
    policy_value: Policy | Mapping[str, Any] | None,
    limit: int,
    rng: random.Random | None = None,
) -> list[tuple[str, str, float]]:
    """Fill ``limit`` slots from the strategies' candidate ids (already
    filtered): ``(product_id, strategy, propensity)`` per slot.

    Without a policy (a new shop) every strategy is equally likely.
    """
    draw = (rng or random).random
    current = policy_value if isinstance(policy_value, Policy) else Policy(policy_value)
    queues = {
        strategy: list(ids) for strategy, ids in candidates if ids and current.enabled(strategy)
    }
    order = [s for s in STRATEGIES if s in queues] + sorted(set(queues) - set(STRATEGIES))
    used: set[str] = set()
    chosen: list[tuple[str, str, float]] = []
    while len(chosen) < limit:
        for strategy in order:
            queue = queues[strategy]
            while queue and queue[0] in used:
                queue.pop(0)
        live = [s for s in order if queues[s]]
        if not live:
            break
        chances = current.chances(live)
        pick = draw()
        index = len(live) - 1
        for i, chance in enumerate(chances):
            pick -= chance
            if pick < 0:
                index = i
                break
        strategy = live[index]
        product_id = queues[strategy].pop(0)
        used.add(product_id)
        chosen.append((product_id, strategy, round(chances[index], 6)))
    return chosen


def evidence_from(raw: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """The bandit hash (field -> "successes trials", discounted) as numbers."""
    result = {}
    for name, value in raw.items():
        try:
            successes, trials = (float(x) for x in str(value).split())
        except ValueError:
            continue
        result[name] = (successes, trials)
    return result


def describe(evidence: Evidence) -> dict[str, dict[str, Any]]:
    """Readable beliefs per strategy: the posterior mean of its next-item
    success rate and of its click rate (None before any impression), with the
    discounted trials and impressions behind them."""
    result: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        hits, trials = evidence.get(name, (0.0, 0.0))
        clicks, shown = evidence.get(name + CLICK_SUFFIX, (0.0, 0.0))
        if not trials and not shown:
            continue
        result[name] = {
            "mean": round((1 + min(hits, trials)) / (2 + trials), 4),
            "trials": round(trials, 1),
            "click_rate": round((1 + min(clicks, shown)) / (2 + shown), 4) if shown else None,
            "impressions": round(shown, 1),
        }
    return result


def sources(
    visitor_id: str | None, product_id: str | None, category: str | None = None
) -> list[tuple[str, str]]:
    """(strategy, Redis key of its list) for a visitor on a product's page (either may be None)."""
    found: list[tuple[str, str]] = []
    if visitor_id:
        found.append((PERSONAL, keys.visitor_recommendations(visitor_id)))
        found.append((AFFINITY, keys.visitor_affinity(visitor_id)))
    if product_id:
        found.append((SIMILAR, keys.product_similar(product_id)))
        found.append((NEXT, keys.product_next(product_id)))
        found.append((AFTER, keys.product_after(product_id)))
        found.append((SESSION, keys.product_session(product_id)))
        found.append((FBT, keys.product_fbt(product_id)))
        found.append((RETRAINED, keys.product_retrained(product_id)))
        found.append((CONTENT, keys.product_content(product_id)))
        if category:
            found.append((CATEGORY, keys.trending_list("long", category)))
    found.append((TRENDING, keys.trending()))
    found.append((TRENDING_LONG, keys.trending_list("long")))
    found.append((POPULAR, keys.popular()))
    return found
