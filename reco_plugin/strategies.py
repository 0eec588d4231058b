"""The strategies a list is blended from, and the bandit policy that blends them.

Django-free: the request path (``store``) and the streaming job (``spark_jobs``)
both use it, so the lists the bandit is rewarded on are the lists served.

Each strategy is a ready list in Redis, written by the pipeline:

* ``personal``: similar to the visitor's recent items (their personal list);
* ``similar``: co-visited with the product on the page;
* ``fbt``: frequently bought together with it (purchase baskets);
* ``retrained``: its neighbours from the nightly batch job;
* ``category``: trending in its category over the long window;
* ``trending``: trending over the short window;
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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import keys

PERSONAL = "personal"
SIMILAR = "similar"
FBT = "fbt"
RETRAINED = "retrained"
CATEGORY = "category"
TRENDING = "trending"
POPULAR = "popular"
STRATEGIES: tuple[str, ...] = (PERSONAL, SIMILAR, FBT, RETRAINED, CATEGORY, TRENDING, POPULAR)
# the strategies that need a product on the page
PRODUCT_CONTEXT = frozenset({SIMILAR, FBT, RETRAINED, CATEGORY})

# A trial is scored on a strategy's top K (after removing what the visitor has seen).
K = 10
# Draws from the posteriors kept in the policy.
POLICY_DRAWS = 256


def top(items: Iterable[Mapping[str, Any]], exclude: set[str], k: int = K) -> list[str]:
    """The first ``k`` product ids of a list, skipping ``exclude``."""
    result: list[str] = []
    for item in items:
        product_id = str(item.get("product_id", ""))
        if product_id and product_id not in exclude:
            result.append(product_id)
            if len(result) == k:
                break
    return result


def policy(
    beliefs: Mapping[str, tuple[float, float]],
    *,
    exploration: float,
    seed: int = 0,
    draws: int = POLICY_DRAWS,
) -> dict[str, Any]:
    """The serving policy for these Beta(alpha, beta) beliefs: a bank of joint
    draws, one value per strategy (``STRATEGIES`` order) each, seeded so that a
    batch run again writes the same policy."""
    rng = random.Random(seed)
    # Evidence over the Beta(1, 1) each belief starts from; a strategy with
    # little of it is drawn around the pooled success rate of all strategies,
    # not around 1/2 (an unproven strategy would otherwise win most slots).
    evidence = [
        (max(0.0, a - 1.0), max(0.0, b - 1.0))
        for a, b in (beliefs.get(name, (1.0, 1.0)) for name in STRATEGIES)
    ]
    hits = sum(s for s, _ in evidence)
    total = hits + sum(f for _, f in evidence)
    pooled = hits / total if total else 0.5
    params = [(s + 2 * pooled, f + 2 * (1 - pooled)) for s, f in evidence]
    bank = [
        [round(rng.betavariate(max(a, 1e-6), max(b, 1e-6)), 6) for a, b in params]
        for _ in range(draws)
    ]
    return {"strategies": list(STRATEGIES), "exploration": exploration, "draws": bank}


class Policy:
    """A policy as served: the chance of each strategy among those that have
    candidates left, computed once per set of strategies and kept."""

    def __init__(self, value: Mapping[str, Any] | None) -> None:
        value = value or {}
        self.names = list(value.get("strategies", ()))
        self.bank = [list(draw) for draw in value.get("draws", ())]
        self.exploration = float(value.get("exploration", 0.05))
        self._chances: dict[tuple[str, ...], list[float]] = {}

    def chances(self, live: Sequence[str]) -> list[float]:
        """Probability that each of ``live`` fills the next slot: the share of
        draws it wins among them, mixed with a uniform choice."""
        key = tuple(live)
        found = self._chances.get(key)
        if found is not None:
            return found
        uniform = 1.0 / len(live)
        if not self.bank or any(s not in self.names for s in live):
            result = [uniform] * len(live)
        else:
            columns = [self.names.index(s) for s in live]
            wins = [0] * len(live)
            for draw in self.bank:
                values = [draw[c] for c in columns]
                wins[values.index(max(values))] += 1
            n = len(self.bank)
            result = [(1 - self.exploration) * w / n + self.exploration * uniform for w in wins]
        self._chances[key] = result
        return result


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
    queues = {strategy: list(ids) for strategy, ids in candidates if ids}
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


def beliefs_from(raw: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """The bandit hash (strategy -> "alpha beta") as numbers."""
    result = {}
    for name, value in raw.items():
        try:
            alpha, beta = (float(x) for x in str(value).split())
        except ValueError:
            continue
        result[name] = (alpha, beta)
    return result


def describe(beliefs: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Readable beliefs: the posterior mean and the (discounted) evidence."""
    return {
        name: {
            "mean": round(a / (a + b), 4) if a + b else 0.0,
            "alpha": round(a, 3),
            "beta": round(b, 3),
        }
        for name, (a, b) in sorted(beliefs.items())
    }


def sources(
    visitor_id: str | None, product_id: str | None, category: str | None = None
) -> list[tuple[str, str]]:
    """(strategy, Redis key of its list) for a visitor on a product's page (either may be None)."""
    found: list[tuple[str, str]] = []
    if visitor_id:
        found.append((PERSONAL, keys.visitor_recommendations(visitor_id)))
    if product_id:
        found.append((SIMILAR, keys.product_similar(product_id)))
        found.append((FBT, keys.product_fbt(product_id)))
        found.append((RETRAINED, keys.product_retrained(product_id)))
        if category:
            found.append((CATEGORY, keys.trending_list("long", category)))
    found.append((TRENDING, keys.trending()))
    found.append((POPULAR, keys.popular()))
    return found
