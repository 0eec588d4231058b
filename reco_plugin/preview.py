"""What a visitor would be served, explained: for the admin's preview page."""

from __future__ import annotations

import time
from typing import Any

from . import privacy, rules, store, strategies
from .redis_client import Unavailable, get_redis


def preview(visitor: str, product: str, category: str, limit: int) -> dict[str, Any]:
    """Each strategy's candidates (scores, and which the visitor may not be
    shown), the blend's chance per strategy, the rules that hold on the page,
    and the list as served with the rules that touched each item."""
    result: dict[str, Any] = {"error": None}
    visitor_id = None
    if visitor:
        try:
            visitor_id = privacy.visitor_id_of(visitor)
        except ValueError as exc:
            return {"error": str(exc)}
    result["visitor_id"] = visitor_id
    try:
        found = store.strategy_lists(visitor_id, product or None, category or None)
        served = store.served(found, limit, category=category or None, explain=True)
    except (Unavailable, OSError) as exc:
        return {"error": f"Redis did not answer: {exc}"}
    except Exception as exc:  # redis-py's errors
        return {"error": f"Redis did not answer: {exc}"}
    active = rules.in_effect(
        found.rules, int(time.time() * 1000), found.product_id, category or found.category
    )
    blocked = rules.blocked(active)
    titles = _titles(
        {str(i.get("product_id")) for _, items in found.lists for i in list(items)[: limit * 3]}
    )
    lists = []
    live = [s for s, items in found.lists if len(items) and found.policy.enabled(s)]
    chances = dict(zip(live, found.policy.chances(live), strict=True)) if live else {}
    for strategy, items in found.lists:
        rows = []
        for item in list(items)[: limit * 3]:
            product_id = str(item.get("product_id"))
            why = None
            if product_id in blocked:
                why = "blocked by a rule"
            elif product_id in found.exclude:
                why = "seen, bought, or on the page"
            rows.append(
                {
                    "product_id": product_id,
                    "title": titles.get(product_id, ""),
                    "score": item.get("score"),
                    "left_out": why,
                }
            )
        lists.append(
            {
                "strategy": strategy,
                "choice": found.policy.overrides.get(strategy, strategies.LEARNT),
                "chance": chances.get(strategy),
                "items": rows,
                "length": len(items),
            }
        )
    result.update(
        {
            "notes": _notes(visitor_id, product, found),
            "source": served.source,
            "served": served.items,
            "lists": lists,
            "rules": [{"id": rule.id, "text": _describe(rule)} for rule in active],
            "category": category or found.category,
        }
    )
    return result


def _notes(visitor_id: str | None, product: str, found: store.Lists) -> list[str]:
    """What staff should know to read the preview right."""
    from . import keys
    from .models import Experiment

    notes = []
    if product and not get_redis().exists(keys.catalog_product(product)):
        notes.append(
            f"Product {product!r} is not in the catalog the pipeline reads (synced by "
            "reco_sync_catalog): the lists below are those of a page without it."
        )
    if visitor_id and not any(
        len(items) for s, items in found.lists if s in store.PERSONAL_STRATEGIES
    ):
        notes.append(
            f"{visitor_id} has no list of their own (no recent history, or forgotten): "
            "they are served the fallback chain."
        )
    if found.tag:
        experiment_id, arm = (int(part) for part in found.tag[1:].split(".")[:2])
        experiment = Experiment.objects.filter(pk=experiment_id).first()
        arms = list(experiment.arms.order_by("pk")) if experiment else []
        if arm < len(arms):
            notes.append(
                f"{visitor_id} is in the experiment “{experiment}”, arm “{arms[arm].name}” "
                f"(version {arms[arm].tuning_id}): its strategy choices apply here."
            )
    return notes


def _titles(product_ids: set[str]) -> dict[str, str]:
    r = get_redis()
    ids = sorted(product_ids)
    fields = store._catalog_fields(r, ids, None)
    return {p: f.get("title", "") for p, f in zip(ids, fields, strict=True)}


def _describe(rule: rules.Rule) -> str:
    if rule.action == rules.PIN:
        how = f"pin {rule.product_id} at {rule.position}"
    elif rule.action == rules.BOOST:
        how = f"boost {rule.product_id} x{rule.factor or 1:g}"
    else:
        how = f"block {rule.product_id}"
    where = {
        rules.GLOBAL: "everywhere",
        rules.CATEGORY: f"in {rule.scope_value}",
        rules.PRODUCT: f"on product {rule.scope_value}",
    }[rule.scope]
    return f"#{rule.id}: {how} {where}"
