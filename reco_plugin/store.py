"""Reading recommendation lists out of Redis: the only thing the request path does.

Nothing here computes recommendations; the pipeline writes the lists and this
module blends the ready lists (personal, similar, trending), drops what the
shop cannot show, and adds the display fields synced from the catalog.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis

from . import keys, scoring
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


def _blend(
    r: redis.Redis,
    lists: list[tuple[str, list[dict[str, Any]]]],
    exclude: set[str],
    limit: int,
) -> list[dict[str, Any]]:
    candidates: list[dict[str, Any]] = []
    seen = set(exclude)
    for strategy, items in lists:
        for item in items:
            product_id = str(item.get("product_id", ""))
            if not product_id or product_id in seen:
                continue
            seen.add(product_id)
            candidates.append(
                {
                    "product_id": product_id,
                    "score": float(item.get("score", 0.0)),
                    "strategy": strategy,
                }
            )
            if len(candidates) >= limit * CANDIDATE_FACTOR:
                break
    if not candidates:
        return []
    pipe = r.pipeline(transaction=False)
    for item in candidates:
        pipe.hgetall(keys.catalog_product(item["product_id"]))
    details = pipe.execute()
    reco_id = uuid.uuid4().hex[:16]
    result = []
    for item, fields in zip(candidates, details, strict=True):
        if not fields or fields.get("in_stock") == "0":
            continue
        item.update(_display(fields))
        item["reco_id"] = reco_id
        item["position"] = len(result)
        result.append(item)
        if len(result) >= limit:
            break
    return result


def recommendations_for(
    visitor_id: str | None, product_id: str | None = None, limit: int = 8
) -> list[dict[str, Any]]:
    """The visitor's list, in the context of ``product_id`` if given.

    The visitor's personal list comes first, then items similar to the product,
    then trending items, without repeats and never the product itself.
    """
    return blend(strategy_lists(visitor_id, product_id), product_id, limit)


def strategy_lists(
    visitor_id: str | None, product_id: str | None = None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(strategy, its list as the pipeline wrote it), in blending order, read
    in one MGET: the visitor's personal list, the product's similar items, trending."""
    sources = []
    if visitor_id:
        sources.append((scoring.STRATEGY_PERSONAL, keys.visitor_recommendations(visitor_id)))
    if product_id:
        sources.append((scoring.STRATEGY_SIMILAR, keys.product_similar(product_id)))
    sources.append((scoring.STRATEGY_TRENDING, keys.trending()))
    r = get_redis()
    raw = r.mget([key for _, key in sources])
    return [
        (strategy, _load_list(value)) for (strategy, _), value in zip(sources, raw, strict=True)
    ]


def blend(
    lists: list[tuple[str, list[dict[str, Any]]]], product_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """``strategy_lists`` as served: in order, without repeats, never the product itself."""
    return _blend(get_redis(), lists, {str(product_id)} if product_id else set(), limit)


def similar_to(product_id: str, limit: int = 8) -> list[dict[str, Any]]:
    r = get_redis()
    items = _load_list(r.get(keys.product_similar(product_id)))
    return _blend(r, [(scoring.STRATEGY_SIMILAR, items)], {str(product_id)}, limit)


def trending(category: str | None = None, limit: int = 8) -> list[dict[str, Any]]:
    r = get_redis()
    items = _load_list(r.get(keys.trending()))
    if not category:
        return _blend(r, [(scoring.STRATEGY_TRENDING, items)], set(), limit)
    # The trending list is global; keep the candidates of the asked category.
    pipe = r.pipeline(transaction=False)
    for item in items:
        pipe.hget(keys.catalog_product(str(item.get("product_id"))), "category")
    categories = pipe.execute()
    wanted = [item for item, cat in zip(items, categories, strict=True) if cat == category]
    return _blend(r, [(scoring.STRATEGY_TRENDING, wanted)], set(), limit)
