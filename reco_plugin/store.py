"""Reading recommendation lists out of Redis: the only thing the request path does.

Nothing here computes recommendations; the pipeline writes the lists and this
module blends the ready lists (``strategies``) with the bandit's policy, drops
what the shop cannot show, and adds the display fields synced from the catalog.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import uuid
from typing import Any

import redis

from . import keys, strategies
from .redis_client import get_redis

logger = logging.getLogger(__name__)

# How many candidates to look at per item asked for: some are filtered out
# (already on the page, out of stock, not in the catalog).
CANDIDATE_FACTOR = 3


def _load_list(raw: str | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except ValueError:
        logger.warning("reco: unreadable list in Redis")
        return []
    return items if isinstance(items, list) else []


def _display(fields: dict[str, str]) -> dict[str, Any]:
    price = fields.get("price")
    return {
        "title": fields.get("title", ""),
        "url": fields.get("url", ""),
        "price": price if price not in (None, "") else None,
        "category": fields.get("category", ""),
        "image": fields.get("image", ""),
    }


def _with_display(
    r: redis.Redis, chosen: list[tuple[str, str, float, float]], limit: int
) -> list[dict[str, Any]]:
    """The chosen (product, strategy, propensity, score) that the catalog can
    show (synced, in stock, not blocked), with their display fields."""
    if not chosen:
        return []
    pipe = r.pipeline(transaction=False)
    for product_id, _, _, _ in chosen:
        pipe.hgetall(keys.catalog_product(product_id))
    details = pipe.execute()
    reco_id = uuid.uuid4().hex[:16]
    result: list[dict[str, Any]] = []
    for (product_id, strategy, propensity, score), fields in zip(chosen, details, strict=True):
        if not fields or fields.get("in_stock") == "0" or fields.get("blocked") == "1":
            continue
        result.append(
            {
                "product_id": product_id,
                "score": score,
                "strategy": strategy,
                "propensity": propensity,
                **_display(fields),
                "reco_id": reco_id,
                "position": len(result),
            }
        )
        if len(result) >= limit:
            break
    return result


def _single(
    r: redis.Redis, strategy: str, items: list[dict[str, Any]], exclude: set[str], limit: int
) -> list[dict[str, Any]]:
    scores = _scores([(strategy, items)])
    ids = strategies.top(items, exclude, limit * CANDIDATE_FACTOR)
    return _with_display(r, [(p, strategy, 1.0, scores[strategy].get(p, 0.0)) for p in ids], limit)


def _scores(lists: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, float]]:
    return {
        strategy: {str(i.get("product_id")): float(i.get("score", 0.0)) for i in items}
        for strategy, items in lists
    }


_policy_cache: tuple[str | None, strategies.Policy] = (None, strategies.Policy(None))


def _policy(r: redis.Redis, version: str | None) -> strategies.Policy:
    """The bandit's serving policy, fetched and parsed once per version the
    pipeline writes (the policy is ~40 KB; its version a few bytes)."""
    global _policy_cache
    if version != _policy_cache[0]:
        raw = r.get(keys.bandit_policy()) if version else None
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            logger.warning("reco: unreadable bandit policy in Redis")
            value = None
        _policy_cache = (version, strategies.Policy(value if isinstance(value, dict) else None))
    return _policy_cache[1]


@dataclasses.dataclass
class Lists:
    """What a blend is made of: each strategy's list as the pipeline wrote it,
    what may not be shown to the visitor, and the bandit's policy."""

    lists: list[tuple[str, list[dict[str, Any]]]]
    exclude: set[str]
    policy: strategies.Policy
    # The blend's draws are seeded by the visitor, the page and the policy's
    # version: the same visitor on the same page sees the same list (the API,
    # the template tag and the websocket agree) until the policy changes, and
    # the draws are still independent of anything the visitor does next.
    seed: str = ""


def recommendations_for(
    visitor_id: str | None, product_id: str | None = None, limit: int = 8
) -> list[dict[str, Any]]:
    """The visitor's list, in the context of ``product_id`` if given: blended
    from the strategies by the bandit's policy, never the product itself nor
    what the visitor has already seen or bought (repeatable products aside)."""
    return blend(strategy_lists(visitor_id, product_id), limit)


def strategy_lists(visitor_id: str | None, product_id: str | None = None) -> Lists:
    """Every strategy's list for a visitor on a product's page (either may be
    None), in two round trips (the second for the product's category list)."""
    r = get_redis()
    product_id = str(product_id) if product_id else None
    sources = strategies.sources(visitor_id, product_id)
    pipe = r.pipeline(transaction=False)
    pipe.mget([key for _, key in sources])
    pipe.get(keys.bandit_policy_version())
    if visitor_id:
        pipe.zrange(keys.visitor_seen(visitor_id), 0, -1)
    if product_id:
        pipe.hget(keys.catalog_product(product_id), "category")
    replies = pipe.execute()
    lists = [
        (strategy, _load_list(value))
        for (strategy, _), value in zip(sources, replies[0], strict=True)
    ]
    exclude = set(replies[2]) if visitor_id else set()
    if product_id:
        exclude.add(product_id)
        category = replies[-1]
        if category:
            key = keys.trending_list("long", category)
            lists.append((strategies.CATEGORY, _load_list(r.get(key))))
    return Lists(lists, exclude, _policy(r, replies[1]), f"{visitor_id}|{product_id}|{replies[1]}")


def blend(found: Lists, limit: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """``strategy_lists`` as served: slots filled by the policy's draws (seeded
    by ``found.seed`` unless ``rng`` is given), then what the catalog cannot
    show dropped."""
    candidates = [
        (strategy, strategies.top(items, found.exclude, limit * CANDIDATE_FACTOR))
        for strategy, items in found.lists
    ]
    rng = rng or random.Random(found.seed)
    chosen = strategies.blend(candidates, found.policy, limit * CANDIDATE_FACTOR, rng)
    scores = _scores(found.lists)
    return _with_display(
        get_redis(),
        [(p, s, propensity, scores[s].get(p, 0.0)) for p, s, propensity in chosen],
        limit,
    )


def similar_to(product_id: str, limit: int = 8) -> list[dict[str, Any]]:
    r = get_redis()
    items = _load_list(r.get(keys.product_similar(product_id)))
    return _single(r, strategies.SIMILAR, items, {str(product_id)}, limit)


def trending(category: str | None = None, limit: int = 8) -> list[dict[str, Any]]:
    """Trending over the short window (globally or in ``category``), topped up
    from the long window when the short one has too few."""
    r = get_redis()
    short, long = r.mget(
        keys.trending_list("short", category or ""), keys.trending_list("long", category or "")
    )
    items = _load_list(short)
    known = {str(i.get("product_id")) for i in items}
    items += [i for i in _load_list(long) if str(i.get("product_id")) not in known]
    return _single(r, strategies.TRENDING, items, set(), limit)
