"""What a visitor would be served, explained: for the admin's preview page."""

from __future__ import annotations

import time
from typing import Any

from . import experiments, keys, privacy, ranker, rules, scoring, store, strategies
from .redis_client import Unavailable, get_redis

# the ranker's features that made an item, shown per served item
FEATURES_SHOWN = 5


def preview(visitor: str, product: str, category: str, limit: int) -> dict[str, Any]:
    """Each strategy's candidates (scores, and which the visitor may not be
    shown), the blend's chance per strategy, the rules that hold on the page,
    whether the ranker or the blend ordered the list and why, and the list as
    served with the rules that touched each item and, when the ranker ordered
    it, each item's score and the features that placed it."""
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
        ranking = _ranking(found)
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
    if found.model is not None:
        chances = {}  # the ranker draws no strategy for a slot
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
            "ranking": ranking,
            "served": [_with_features(item) for item in served.items],
            "lists": lists,
            "rules": [{"id": rule.id, "text": _describe(rule)} for rule in active],
            "category": category or found.category,
        }
    )
    return result


def _ranking(found: store.Lists) -> dict[str, Any]:
    """Whether the ranker ordered the list (``ranked``), the setting and
    whose it is, how many examples the model learnt from against the
    ``ranker.WARM_EXAMPLES`` it needs, and a sentence saying why."""
    r = get_redis()
    raw_model, raw_tuning, raw_experiment = r.mget(
        keys.ranker_weights(), keys.tuning(), keys.experiment()
    )
    model = found.model
    if model is None:
        try:
            model = store.Model.parse(raw_model)
        except (ValueError, TypeError, KeyError):
            model = None
    arm = None
    if found.tag:
        experiment_id, index = (int(part) for part in found.tag[1:].split(".")[:2])
        try:
            experiment = experiments.parse(raw_experiment)
        except (ValueError, TypeError, KeyError):
            experiment = None
        if experiment is not None and experiment.id == experiment_id:
            arm = experiment.arms[index] if index < len(experiment.arms) else None
    if model is not None:
        job = model.ranking
    else:  # the job has not written one: what it starts with
        from .conf import reco_settings

        job = scoring.PipelineSettings.from_mapping(reco_settings.PIPELINE).ranking
    setting, by = store.chosen_ranking(job, raw_tuning, arm)
    whose = {
        "arm": f"by the experiment's arm “{arm.name}”" if arm is not None else "",
        "tuning": f"by tuning version {_tuning_version(raw_tuning)}",
        "job": 'by the shop\'s setting (RECO_PLUGIN["PIPELINE"], as the streaming job runs it)',
    }[by]
    examples = model.examples if model is not None else 0
    learnt = f"{examples:,} of the {ranker.WARM_EXAMPLES:,} examples it needs"
    if found.model is not None:
        why = (
            f"Ranked by the ranker: ranking is “{setting}” {whose}, and the model has "
            f"learnt from {examples:,} examples (served from {ranker.WARM_EXAMPLES:,})."
        )
    elif setting != scoring.RANKER:
        why = f"Blended by the bandit: ranking is “{setting}” {whose}."
    elif model is None:
        why = "Blended by the bandit: the ranker has not learnt yet (no model in Redis)."
    elif examples < ranker.WARM_EXAMPLES:
        why = f"Blended by the bandit until the ranker is warm: it has learnt from {learnt}."
    else:
        why = (
            "Blended by the bandit: the ranker's weights were not read with the lists "
            "(no version of them published, or a new one meanwhile)."
        )
    return {
        "ranked": found.model is not None,
        "setting": setting,
        "by": by,
        "examples": examples,
        "warm": ranker.WARM_EXAMPLES,
        "why": why,
    }


def _tuning_version(raw: str | None) -> Any:
    try:
        return scoring.parse_tuning(raw).get("version")
    except (ValueError, TypeError):
        return None


def _with_features(item: dict[str, Any]) -> dict[str, Any]:
    """A served item with the ranker's top features as rows (``top``): the
    ``FEATURES_SHOWN`` largest shares of its logit (weight x value), by size."""
    explained = item.get("ranker")
    if not explained:
        return item
    # a feature whose weight is still 0 placed nothing
    shares = [(name, share) for name, share in explained["features"].items() if share]
    top = sorted(shares, key=lambda kv: -abs(kv[1]))[:FEATURES_SHOWN]
    return {
        **item,
        "ranker": {
            **explained,
            "top": [
                {"feature": name, "label": feature_label(name), "contribution": share}
                for name, share in top
            ],
        },
    }


# what each of the ranker's features says, for staff (ranker.FEATURES)
_FEATURE_LABELS = {
    ranker.BIAS: "bias (every candidate)",
    ranker.SOURCES: "number of lists holding it",
    ranker.PAGE_CATEGORY: "in the page's category",
    ranker.CHEAPER: "cheaper than the page's product",
    ranker.PRICE_RATIO: "price against the page's product",
    ranker.CHEAPEST: "cheapness among the page category's candidates",
    ranker.PERSONAL_HISTORY: "visitor's history, in their personal list",
    ranker.SIMILAR_HISTORY: "visitor's history, in the similar list",
}


def feature_label(name: str) -> str:
    """A feature of the ranker in words (``similar:rank``: "high in similar's list")."""
    if name in _FEATURE_LABELS:
        return _FEATURE_LABELS[name]
    strategy, _, part = name.partition(":")
    if strategy in strategies.STRATEGIES and part in ("", "rank", "score"):
        return {
            "": f"listed by {strategy}",
            "rank": f"high in {strategy}'s list",
            "score": f"{strategy}'s score",
        }[part]
    return name


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
