"""Reading recommendation lists out of Redis: the only thing the request path does.

Nothing here computes recommendations; the pipeline writes the lists and this
module blends the ready lists (``strategies``) with the bandit's policy, drops
what the shop cannot show, and adds the display fields synced from the catalog.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import random
from typing import Any

import redis

from . import keys, strategies
from .redis_client import Unavailable, breaker, get_redis

__all__ = ["Served", "Unavailable", "fallback", "recommend", "similar_to", "trending"]

logger = logging.getLogger(__name__)

# How many candidates to look at per item asked for: some are filtered out
# (already on the page, out of stock, not in the catalog).
CANDIDATE_FACTOR = 3
# Catalog entries read beyond those needed, in case some cannot be shown.
DISPLAY_MARGIN = 2


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
    r: redis.Redis,
    chosen: list[tuple[str, str, float, float]],
    limit: int,
    category: str | None = None,
) -> list[dict[str, Any]]:
    """The chosen (product, strategy, propensity, score) that the catalog can
    show (synced, in stock, not blocked, in ``category`` if given), with their
    display fields; :func:`_numbered` adds the positions and the ``reco_id``."""
    result: list[dict[str, Any]] = []
    # Most candidates can be shown: read a few more than needed, and the next
    # ones only when some could not (the catalog read is most of a request's time).
    start = 0
    while start < len(chosen) and len(result) < limit:
        batch = chosen[start : start + (limit - len(result)) + DISPLAY_MARGIN]
        start += len(batch)
        pipe = r.pipeline(transaction=False)
        for product_id, _, _, _ in batch:
            pipe.hgetall(keys.catalog_product(product_id))
        for (product_id, strategy, propensity, score), fields in zip(
            batch, pipe.execute(), strict=True
        ):
            if not fields or fields.get("in_stock") == "0" or fields.get("blocked") == "1":
                continue
            if category is not None and fields.get("category", "") != category:
                continue
            result.append(
                {
                    "product_id": product_id,
                    "score": score,
                    "strategy": strategy,
                    "propensity": propensity,
                    **_display(fields),
                }
            )
            if len(result) >= limit:
                break
    return result


def _numbered(items: list[dict[str, Any]], seed: str) -> list[dict[str, Any]]:
    """Positions, and one ``reco_id`` for the list: derived from what is shown
    (and to whom), so the same list has the same id and a cache's ETag holds."""
    shown = "|".join(item["product_id"] for item in items)
    reco_id = hashlib.sha256(f"{seed}|{shown}".encode()).hexdigest()[:16]
    for position, item in enumerate(items):
        item["position"] = position
        item["reco_id"] = reco_id
    return items


def _single(
    r: redis.Redis,
    strategy: str,
    items: list[dict[str, Any]],
    exclude: set[str],
    limit: int,
    category: str | None = None,
) -> list[dict[str, Any]]:
    scores = _scores([(strategy, items)])
    ids = strategies.top(items, exclude, limit * CANDIDATE_FACTOR)
    shown = _with_display(
        r, [(p, strategy, 1.0, scores[strategy].get(p, 0.0)) for p in ids], limit, category
    )
    if len(shown) < limit and len(ids) < len(items):
        # the first candidates were filtered out: look deeper in the list
        deeper = strategies.top(items, exclude | set(ids), len(items))
        shown += _with_display(
            r,
            [(p, strategy, 1.0, scores[strategy].get(p, 0.0)) for p in deeper],
            limit - len(shown),
            category,
        )
    return _numbered(shown, f"{strategy}|{category}")


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


@dataclasses.dataclass
class Served:
    """A list as served, and where it came from: ``personal`` (the visitor's
    own lists blended with the rest), or for a visitor without history the
    first of the fallback chain that had items: ``product`` (the context
    product's neighbours), ``category`` (trending in its category),
    ``trending``; ``fallback`` when Redis did not answer (the last trending
    list this process served, or nothing)."""

    items: list[dict[str, Any]]
    source: str


# The fallback chain for a visitor with no list of their own.
PERSONAL_STRATEGIES = frozenset({strategies.PERSONAL, strategies.AFFINITY})
CHAIN: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "product",
        frozenset({strategies.SIMILAR, strategies.FBT, strategies.RETRAINED, strategies.CONTENT}),
    ),
    ("category", frozenset({strategies.CATEGORY})),
    ("trending", frozenset({strategies.TRENDING, strategies.POPULAR})),
)
# Most ids a request may ask to leave out.
MAX_EXCLUDE = 100


def recommendations_for(
    visitor_id: str | None, product_id: str | None = None, limit: int = 8
) -> list[dict[str, Any]]:
    """The visitor's list, in the context of ``product_id`` if given: blended
    from the strategies by the bandit's policy, never the product itself nor
    what the visitor has already seen or bought (repeatable products aside).
    Raises :class:`Unavailable` when Redis does not answer."""
    return recommend(visitor_id, product_id, limit).items


def recommend(
    visitor_id: str | None,
    product_id: str | None = None,
    limit: int = 8,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    category: str | None = None,
) -> Served:
    """:func:`recommendations_for` with its source, leaving out ``exclude``
    (e.g. what the page already shows) and keeping only ``category`` if given."""
    with breaker.guard():
        found = strategy_lists(visitor_id, product_id, category)
        found.exclude |= set(exclude)
        return served(found, limit, category=category)


def strategy_lists(
    visitor_id: str | None, product_id: str | None = None, category: str | None = None
) -> Lists:
    """Every strategy's list for a visitor on a product's page (either may be
    None); with ``category``, that category's trending lists are among them.
    One round trip when the product's category is the one this process saw
    last time (a second one otherwise)."""
    r = get_redis()
    product_id = str(product_id) if product_id else None
    sources = strategies.sources(visitor_id, product_id)
    # the product's category: its long window; a category asked for: short, then long
    wanted: list[str] = []
    if category is not None:
        wanted += [keys.trending_list("short", category), keys.trending_list("long", category)]
    guessed = _categories.get(product_id) if product_id else None
    if guessed and guessed != category:
        wanted.append(keys.trending_list("long", guessed))
    pipe = r.pipeline(transaction=False)
    pipe.mget([key for _, key in sources] + wanted)
    pipe.get(keys.bandit_policy_version())
    if visitor_id:
        pipe.zrange(keys.visitor_seen(visitor_id), 0, -1)
    if product_id:
        pipe.hget(keys.catalog_product(product_id), "category")
    replies = pipe.execute()
    values = replies[0]
    lists = [
        (strategy, _load_list(value))
        for (strategy, _), value in zip(sources, values[: len(sources)], strict=True)
    ]
    extra = values[len(sources) :]
    exclude = set(replies[2]) if visitor_id else set()
    if product_id:
        exclude.add(product_id)
        actual = replies[-1] or None
        _remember_category(product_id, actual)
        if actual != guessed:
            # the category changed (or was not known yet): read its list now
            if guessed and guessed != category:
                wanted.pop()
                extra.pop()
            if actual and actual != category:
                wanted.append(keys.trending_list("long", actual))
                extra.append(r.get(wanted[-1]))
    if wanted:
        items: list[dict[str, Any]] = []
        known: set[str] = set()
        for value in extra:
            for item in _load_list(value):
                if str(item.get("product_id")) not in known:
                    known.add(str(item.get("product_id")))
                    items.append(item)
        lists.append((strategies.CATEGORY, items))
    return Lists(lists, exclude, _policy(r, replies[1]), f"{visitor_id}|{product_id}|{replies[1]}")


# product -> its category as last read: lets one round trip fetch the category's
# list too; always checked against the catalog in that same round trip.
_categories: collections.OrderedDict[str, str | None] = collections.OrderedDict()
_CATEGORIES_KEPT = 50_000


def _remember_category(product_id: str, category: str | None) -> None:
    _categories[product_id] = category
    _categories.move_to_end(product_id)
    if len(_categories) > _CATEGORIES_KEPT:
        _categories.popitem(last=False)


def blend(found: Lists, limit: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """``strategy_lists`` as served (see :func:`served`)."""
    return served(found, limit, rng).items


def served(
    found: Lists, limit: int, rng: random.Random | None = None, category: str | None = None
) -> Served:
    """Slots filled by the policy's draws (seeded by ``found.seed`` unless
    ``rng`` is given) from every list when the visitor has lists of their own,
    else from the first tier of the fallback chain with items, the next tiers
    topping up; what the catalog cannot show is dropped and replaced."""
    r = get_redis()
    depth = limit * CANDIDATE_FACTOR
    candidates = [
        (strategy, strategies.top(items, found.exclude, depth)) for strategy, items in found.lists
    ]
    if any(ids for strategy, ids in candidates if strategy in PERSONAL_STRATEGIES):
        tiers: list[tuple[str, list[tuple[str, list[str]]]]] = [("personal", candidates)]
    else:
        tiers = [
            (name, [(s, ids) for s, ids in candidates if s in members]) for name, members in CHAIN
        ]
    rng = rng or random.Random(found.seed)
    scores = _scores(found.lists)
    shown: list[dict[str, Any]] = []
    tried: set[str] = set()
    source = "trending"
    for name, tier in tiers:
        tier = [(s, [p for p in ids if p not in tried]) for s, ids in tier]
        if not any(ids for _, ids in tier):
            continue
        if not shown:
            source = name
        chosen = strategies.blend(tier, found.policy, depth, rng)
        tried.update(p for p, _, _ in chosen)
        shown += _with_display(
            r,
            [(p, s, propensity, scores[s].get(p, 0.0)) for p, s, propensity in chosen],
            limit - len(shown),
            category,
        )
        if len(shown) >= limit:
            break
    if len(shown) < limit:
        # every candidate tried was filtered out: look deeper in each list, best first
        deeper = [
            (str(item.get("product_id")), strategy, 1.0, float(item.get("score", 0.0)))
            for strategy, items in found.lists
            for item in items
            if str(item.get("product_id")) not in found.exclude | tried
        ]
        unique = list({p: (p, s, w, sc) for p, s, w, sc in reversed(deeper)}.values())[::-1]
        shown += _with_display(r, unique, limit - len(shown), category)
    return Served(_numbered(shown, found.seed), source)


def similar_to(
    product_id: str, limit: int = 8, *, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Items related to a product (co-visitation). Raises :class:`Unavailable`."""
    with breaker.guard():
        r = get_redis()
        items = _load_list(r.get(keys.product_similar(product_id)))
        return _single(r, strategies.SIMILAR, items, {str(product_id), *exclude}, limit)


def trending(
    category: str | None = None,
    limit: int = 8,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Trending over the short window (globally or in ``category``), topped up
    from the long window when the short one has too few. Raises :class:`Unavailable`."""
    with breaker.guard():
        r = get_redis()
        short, long = r.mget(
            keys.trending_list("short", category or ""), keys.trending_list("long", category or "")
        )
        items = _load_list(short)
        known = {str(i.get("product_id")) for i in items}
        items += [i for i in _load_list(long) if str(i.get("product_id")) not in known]
        result = _single(r, strategies.TRENDING, items, set(exclude), limit)
    _remember_trending(category, result)
    return result


# The last trending lists this process served, per category: what a visitor
# is shown while Redis does not answer.
_last_trending: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
_LAST_TRENDING_KEPT = 64


def _remember_trending(category: str | None, items: list[dict[str, Any]]) -> None:
    if not items:
        return
    _last_trending[category or ""] = items
    _last_trending.move_to_end(category or "")
    while len(_last_trending) > _LAST_TRENDING_KEPT:
        _last_trending.popitem(last=False)


def fallback(
    category: str | None = None,
    limit: int = 8,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """What to show without Redis: the last trending list served for the
    category (else the global one), less ``exclude``; possibly empty."""
    items = _last_trending.get(category or "") or _last_trending.get("") or []
    kept = [dict(item) for item in items if item["product_id"] not in exclude][:limit]
    for item in kept:
        item["strategy"] = "fallback"
    return kept
