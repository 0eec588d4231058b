"""Reading recommendation lists out of Redis: the only thing the request path does.

Nothing here computes recommendations; the pipeline writes the lists and this
module blends the ready lists (``strategies``) with the bandit's policy, drops
what the shop cannot show, and adds the display fields synced from the catalog.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import threading
import time
from typing import Any

import redis

from . import experiments, keys, ranker, scoring, strategies
from . import rules as rules_
from .redis_client import Unavailable, get_redis, reading

__all__ = ["Served", "Unavailable", "fallback", "recommend", "similar_to", "trending"]

logger = logging.getLogger(__name__)

# How many candidates to look at per item asked for: some are filtered out
# (already on the page, out of stock, not in the catalog).
CANDIDATE_FACTOR = 3
# Catalog entries read beyond those needed, in case some cannot be shown.
DISPLAY_MARGIN = 2


Ranked = strategies.Ranked
EMPTY = Ranked((), {})
# value read from Redis -> its Ranked: the lists every request reads (trending,
# popular, a product's neighbours) are parsed once per value the pipeline writes
_parsed: collections.OrderedDict[str, Ranked] = collections.OrderedDict()
_PARSED_KEPT = 2048
# and at most this many items over all of them (~100 bytes each, with the raw value)
_PARSED_ITEMS_KEPT = 100_000
_parsed_items = 0
_parsed_lock = threading.Lock()


def _load_list(raw: str | None) -> Ranked:
    global _parsed_items
    if not raw:
        return EMPTY
    with _parsed_lock:
        found = _parsed.get(raw)
        if found is not None:
            _parsed.move_to_end(raw)
            return found
    try:
        found = Ranked.parse(json.loads(raw))
    except (ValueError, TypeError):
        logger.warning("reco: unreadable list in Redis")
        return EMPTY
    with _parsed_lock:
        if raw in _parsed:  # parsed meanwhile by another thread
            return _parsed[raw]
        _parsed[raw] = found
        _parsed_items += len(found)
        while len(_parsed) > _PARSED_KEPT or _parsed_items > _PARSED_ITEMS_KEPT:
            _parsed_items -= len(_parsed.popitem(last=False)[1])
    return found


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
    catalog_version: str | None = None,
) -> list[dict[str, Any]]:
    """The chosen (product, strategy, propensity, score) that the catalog can
    show (synced, in stock, not blocked, in ``category`` if given), with their
    display fields; :func:`_numbered` adds the positions and the ``reco_id``.
    Display fields read under ``catalog_version`` (the catalog sync raises it)
    are kept in the process and used while it stays the same."""
    result: list[dict[str, Any]] = []
    # Most candidates can be shown: read a few more than needed, and the next
    # ones only when some could not (the catalog read is most of a request's time).
    start = 0
    while start < len(chosen) and len(result) < limit:
        batch = chosen[start : start + (limit - len(result)) + DISPLAY_MARGIN]
        start += len(batch)
        for (product_id, strategy, propensity, score), fields in zip(
            batch, _catalog_fields(r, [c[0] for c in batch], catalog_version), strict=True
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


# catalog key -> (the catalog version it was read under, its fields)
_display_cache: collections.OrderedDict[str, tuple[str, dict[str, str]]] = collections.OrderedDict()
_DISPLAY_KEPT = 20_000
_display_lock = threading.Lock()
# guards the other process-wide caches below (categories, fallback lists)
_cache_lock = threading.Lock()


def _catalog_fields(
    r: redis.Redis, product_ids: list[str], version: str | None
) -> list[dict[str, str]]:
    """Each product's catalog hash: from the process's copy when it was read
    under ``version``, else from Redis (one round trip for all the misses).
    Without a version (no sync has run) nothing is kept."""
    catalog_keys = [keys.catalog_product(p) for p in product_ids]
    found: list[dict[str, str] | None] = [None] * len(catalog_keys)
    if version is not None:
        with _display_lock:
            for n, key in enumerate(catalog_keys):
                entry = _display_cache.get(key)
                if entry is not None and entry[0] == version:
                    found[n] = entry[1]
    missing = [n for n, fields in enumerate(found) if fields is None]
    if missing:
        pipe = r.pipeline(transaction=False)
        for n in missing:
            pipe.hgetall(catalog_keys[n])
        for n, fields in zip(missing, pipe.execute(), strict=True):
            found[n] = fields
        if version is not None:
            with _display_lock:
                for n in missing:
                    _display_cache[catalog_keys[n]] = (version, found[n] or {})
                    _display_cache.move_to_end(catalog_keys[n])
                while len(_display_cache) > _DISPLAY_KEPT:
                    _display_cache.popitem(last=False)
    return [fields or {} for fields in found]


def _numbered(items: list[dict[str, Any]], seed: str, tag: str = "") -> list[dict[str, Any]]:
    """Positions, and one ``reco_id`` for the list: derived from what is shown
    (and to whom), so the same list has the same id and a cache's ETag holds;
    ``tag`` first (an experiment's arm)."""
    shown = "|".join(item["product_id"] for item in items)
    reco_id = tag + hashlib.sha256(f"{seed}|{shown}".encode()).hexdigest()[:16]
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
    catalog_version: str | None = None,
) -> list[dict[str, Any]]:
    scores = _scores([(strategy, items)])
    ids = strategies.top(items, exclude, limit * CANDIDATE_FACTOR)
    shown = _with_display(
        r,
        [(p, strategy, 1.0, scores[strategy].get(p, 0.0)) for p in ids],
        limit,
        category,
        catalog_version,
    )
    if len(shown) < limit and len(ids) < len(items):
        # the first candidates were filtered out: look deeper in the list
        deeper = strategies.top(items, exclude | set(ids), len(items))
        shown += _with_display(
            r,
            [(p, strategy, 1.0, scores[strategy].get(p, 0.0)) for p in deeper],
            limit - len(shown),
            category,
            catalog_version,
        )
    return _numbered(shown, f"{strategy}|{category}")


def _scores(lists: list[tuple[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        strategy: items.scores
        if isinstance(items, Ranked)
        else {str(i.get("product_id")): float(i.get("score", 0.0)) for i in items}
        for strategy, items in lists
    }


# (policy version, tuning, an arm's choices) -> Policy; a few entries: the
# current policy with the tuning and each arm of a running experiment
_policies: collections.OrderedDict[tuple[Any, ...], strategies.Policy] = collections.OrderedDict()
_POLICIES_KEPT = 16
_policy_lock = threading.Lock()


def _policy(
    r: redis.Redis, version: str | None, tuning: str | None, arm: Any = None
) -> strategies.Policy:
    """The bandit's serving policy with the staff's tuning of the strategies
    (or, for a visitor in an experiment, their arm's), fetched and parsed once
    per version of each (the policy is ~40 KB; its version a few bytes; the
    tuning under 1 KB)."""
    key = (version, tuning, None if arm is None else json.dumps(arm, sort_keys=True))
    with _policy_lock:
        found = _policies.get(key)
    if found is None:
        raw = r.get(keys.bandit_policy()) if version else None
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            logger.warning("reco: unreadable bandit policy in Redis")
            value = None
        if arm is None:
            overrides, exploration = _overrides(tuning), None
        else:
            overrides = strategies.check_overrides(_known(arm["strategies"]))
            exploration = arm["pipeline"].get("exploration")
        found = strategies.Policy(
            value if isinstance(value, dict) else None, overrides, exploration
        )
        with _policy_lock:
            _policies[key] = found
            while len(_policies) > _POLICIES_KEPT:
                _policies.popitem(last=False)
    return found


def current_policy(r: redis.Redis) -> strategies.Policy:
    """The policy served now to a visitor in no experiment (one round trip)."""
    version, tuning = r.mget(keys.bandit_policy_version(), keys.tuning())
    return _policy(r, version, tuning)


def _overrides(tuning: str | None) -> dict[str, Any]:
    """The strategies' part of the published tuning; nothing when it cannot be read."""
    try:
        return strategies.check_overrides(_known(scoring.parse_tuning(tuning).get("strategies")))
    except (ValueError, TypeError, AttributeError) as exc:
        logger.error("reco: the published tuning's strategies are ignored (%s)", exc)
        return {}


def _known(values: Any) -> Any:
    """Staff's choices of the strategies this version knows: a tuning saved by
    a newer version (another web process upgraded first) may name a strategy
    this one lacks, which it cannot serve anyway."""
    if not isinstance(values, dict):
        return values
    unknown = sorted(set(values) - set(strategies.STRATEGIES))
    if unknown:
        logger.warning("reco: the tuning names strategies this version lacks: %s", unknown)
    return {name: value for name, value in values.items() if name in strategies.STRATEGIES}


class _ParsedOnce:
    """A value published in Redis (a few keys every list reads), parsed once
    per value it takes; what cannot be parsed is logged and read as
    ``fallback``."""

    def __init__(self, parse: Any, fallback: Any, what: str) -> None:
        self.parse, self.fallback, self.what = parse, fallback, what
        self.last: tuple[Any, Any] = (None, fallback)

    def __call__(self, raw: str | None) -> Any:
        last = self.last  # one read: another thread may replace it meanwhile
        if raw == last[0]:
            return last[1]
        try:
            parsed = self.parse(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.error("reco: the published %s is ignored (%s)", self.what, exc)
            parsed = self.fallback
        self.last = (raw, parsed)
        return parsed

    def reset(self) -> None:
        self.last = (None, self.fallback)


def _seed_part(tuning: str | None) -> str:
    version = scoring.parse_tuning(tuning).get("version")
    return f"|{version}" if version is not None else ""


# ``|<version>`` of the published tuning, in the blend's seed: a new tuning
# draws anew (and changes the ETag); nothing without one
_tuning_version = _ParsedOnce(_seed_part, "", "tuning")


@dataclasses.dataclass
class Lists:
    """What a blend is made of: each strategy's list as the pipeline wrote it,
    what may not be shown to the visitor, and the bandit's policy."""

    lists: list[tuple[str, Ranked | list[dict[str, Any]]]]
    exclude: set[str]
    policy: strategies.Policy
    # The blend's draws are seeded by the visitor, the page and the policy's
    # version: the same visitor on the same page sees the same list (the API,
    # the template tag and the websocket agree) until the policy changes, and
    # the draws are still independent of anything the visitor does next.
    seed: str = ""
    # the catalog's version when the lists were read (display fields kept under it)
    catalog_version: str | None = None
    # the merchandising rules published (``reco_plugin.rules``), and the page
    # they are judged on: its product and that product's category
    rules: list[rules_.Rule] = dataclasses.field(default_factory=list)
    product_id: str | None = None
    category: str | None = None
    # ``x<experiment>.<arm>.`` for a visitor in a running experiment: their reco_ids start with it
    tag: str = ""
    # the ranker's weights when the list is ranked by it (``Model.ranking``),
    # None for the blend; the page product's price and how many items the
    # visitor has seen (its features)
    model: Model | None = None
    page_price: float | None = None
    history: int = 0


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
    ("product", strategies.NEIGHBOURS),
    ("category", frozenset({strategies.CATEGORY})),
    ("trending", strategies.GLOBAL),
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
    with reading() as r:
        found = strategy_lists(visitor_id, product_id, category, r=r)
        found.exclude |= set(exclude)
        return served(found, limit, category=category, r=r)


def strategy_lists(
    visitor_id: str | None,
    product_id: str | None = None,
    category: str | None = None,
    *,
    r: Any = None,
) -> Lists:
    """Every strategy's list for a visitor on a product's page (either may be
    None); with ``category``, that category's trending lists are among them.
    One round trip when the product's category is the one this process saw
    last time (a second one otherwise). ``r``: the client to read with."""
    r = r or get_redis()
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
    pipe.mget(
        keys.bandit_policy_version(),
        keys.tuning(),
        keys.rules(),
        keys.experiment(),
        keys.ranker_version(),
    )
    pipe.get(keys.catalog_version())
    if visitor_id:
        pipe.zrange(keys.visitor_seen(visitor_id), 0, -1)
    if product_id:
        pipe.hmget(keys.catalog_product(product_id), "category", "price")
    replies = pipe.execute()
    values = replies[0]
    lists = [
        (strategy, _load_list(value))
        for (strategy, _), value in zip(sources, values[: len(sources)], strict=True)
    ]
    extra = values[len(sources) :]
    exclude = set(replies[3]) if visitor_id else set()
    actual = None
    page_price = None
    if product_id:
        exclude.add(product_id)
        actual = replies[-1][0] or None
        page_price = ranker.price_of(replies[-1][1])
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
        lists.append((strategies.CATEGORY, Ranked.merged([_load_list(v) for v in extra])))
    policy_version, tuning, published_rules, published_experiment, model_version = replies[1]
    # a visitor in a running experiment: their arm's strategy choices, and
    # lists whose reco_id names the arm
    experiment = _experiment(published_experiment)
    arm = None
    if experiment is not None and visitor_id and experiment.running(int(time.time() * 1000)):
        arm = experiment.arm_of(visitor_id)
    return Lists(
        lists,
        exclude,
        _policy(r, policy_version, tuning, None if arm is None else _arm(experiment.arms[arm])),
        f"{visitor_id}|{product_id}|{policy_version}{_tuning_version(tuning)}"
        + ("" if arm is None else f"|x{experiment.id}.{arm}"),
        replies[2],
        _rules(published_rules),
        product_id,
        actual,
        "" if arm is None else experiments.tag(experiment.id, arm),
        _ranking_model(r, model_version, tuning, None if arm is None else experiment.arms[arm]),
        page_price,
        len(replies[3]) if visitor_id else 0,
    )


@dataclasses.dataclass(frozen=True)
class Model:
    """The ranker's weights as the job last committed them."""

    weights: tuple[float, ...]
    examples: int
    # the job's setting (``PipelineSettings.ranking``)
    ranking: str

    @classmethod
    def parse(cls, raw: str | None) -> Model | None:
        value = json.loads(raw) if raw else None
        if not isinstance(value, dict):
            return None  # none yet
        # learnt by a job of another version (one upgraded after the web):
        # served over the features both have, the others at 0
        weights = ranker.by_name(value.get("features"), value.get("weights"))
        if weights is None:
            return None  # too few features in common: the blend until the job learns
        return cls(
            tuple(weights),
            int(value["examples"]),
            str(value.get("ranking", scoring.RANKER)),
        )


# the weights' version -> the weights (a new version is fetched once)
_model = _ParsedOnce(Model.parse, None, "ranker weights")
_served_model: tuple[str | None, Model | None] = (None, None)


def _ranking_model(
    r: redis.Redis, version: str | None, tuning: str | None, arm: experiments.Arm | None
) -> Model | None:
    """The ranker's weights when lists are ranked by it: ``ranking`` is
    ``ranker`` (an experiment arm's choice first, then the published tuning's,
    then the job's setting) and the model has learnt from
    ``ranker.WARM_EXAMPLES`` examples; None for the blend."""
    global _served_model
    if not version:
        return None
    last = _served_model  # one read: another thread may replace it meanwhile
    if last[0] == version:
        model = last[1]
    else:
        model = _model(r.get(keys.ranker_weights()))
        _served_model = (version, model)
    if model is None or model.examples < ranker.WARM_EXAMPLES:
        return None
    return model if chosen_ranking(model.ranking, tuning, arm)[0] == scoring.RANKER else None


def chosen_ranking(job: str, tuning: str | None, arm: experiments.Arm | None) -> tuple[str, str]:
    """How lists are ordered (``scoring.RANKINGS``) and whose choice it is:
    an experiment arm's (``"arm"``), else the published tuning's
    (``"tuning"``), else the job's setting (``"job"``, carried in the
    ranker's weights)."""
    chosen = arm.pipeline.get("ranking") if arm is not None else None
    if chosen:
        return str(chosen), "arm"
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        chosen = (scoring.parse_tuning(tuning).get("pipeline") or {}).get("ranking")
    if chosen:
        return str(chosen), "tuning"
    return job, "job"


def _arm(arm: experiments.Arm) -> dict[str, Any]:
    """What of an arm's version the serving path applies."""
    return {"strategies": dict(arm.strategies), "pipeline": dict(arm.pipeline)}


_experiment = _ParsedOnce(experiments.parse, None, "experiment")
_rules = _ParsedOnce(rules_.parse, [], "rules")


def _holds(items: Ranked | list[dict[str, Any]], product_id: str) -> bool:
    if isinstance(items, Ranked):
        return product_id in items.scores
    return any(str(item.get("product_id")) == product_id for item in items)


def _apply_rules(
    r: redis.Redis,
    shown: list[dict[str, Any]],
    active: list[rules_.Rule],
    exclude: set[str] | frozenset[str],
    limit: int,
    category: str | None,
    catalog_version: str | None,
) -> list[dict[str, Any]]:
    """Boosts, then pins (a pinned product the catalog can show, and not left
    out for this visitor or page, goes to its position); the first ``limit``."""
    if not active:
        return shown[:limit]
    shown = rules_.boosted(shown, active)
    placed = []
    for position, product_id, rule_id in rules_.pins(active):
        if product_id in exclude:
            continue
        found = _with_display(r, [(product_id, "pinned", 1.0, 0.0)], 1, category, catalog_version)
        if found:
            placed.append((position, found[0], rule_id))
    return rules_.pinned(shown, placed, limit) if placed else shown[:limit]


# product -> its category as last read: lets one round trip fetch the category's
# list too; always checked against the catalog in that same round trip.
_categories: collections.OrderedDict[str, str | None] = collections.OrderedDict()
_CATEGORIES_KEPT = 50_000


def _remember_category(product_id: str, category: str | None) -> None:
    with _cache_lock:
        _categories[product_id] = category
        _categories.move_to_end(product_id)
        if len(_categories) > _CATEGORIES_KEPT:
            _categories.popitem(last=False)


def blend(found: Lists, limit: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """``strategy_lists`` as served (see :func:`served`)."""
    return served(found, limit, rng).items


def served(
    found: Lists,
    limit: int,
    rng: random.Random | None = None,
    category: str | None = None,
    *,
    explain: bool = False,
    r: Any = None,
) -> Served:
    """Slots filled by the policy's draws (seeded by ``found.seed`` unless
    ``rng`` is given) from every list when the visitor has lists of their own,
    else from the first tier of the fallback chain with items, the next tiers
    topping up; what the catalog cannot show is dropped and replaced. ``r``:
    the client the lists were read with (a replica's while the primary fails
    over), for the catalog's fields too."""
    r = r or get_redis()
    # what staff turned off is never served, not even to top a list up
    lists = [(s, items) for s, items in found.lists if found.policy.enabled(s)]
    active = rules_.in_effect(
        found.rules, int(time.time() * 1000), found.product_id, category or found.category
    )
    # ranked deeper than the limit when a boost may lift a listed item into it
    take = rules_.reach(active, limit, lambda p: any(_holds(items, p) for _, items in lists))
    depth = take * CANDIDATE_FACTOR
    exclude = found.exclude | rules_.blocked(active)
    candidates = [(strategy, strategies.top(items, exclude, depth)) for strategy, items in lists]
    if any(ids for strategy, ids in candidates if strategy in PERSONAL_STRATEGIES):
        tiers: list[tuple[str, list[tuple[str, list[str]]]]] = [("personal", candidates)]
    else:
        tiers = [
            (name, [(s, ids) for s, ids in candidates if s in members]) for name, members in CHAIN
        ]
    rng = rng or random.Random(found.seed)
    scores = _scores(lists)
    shown: list[dict[str, Any]] = []
    tried: set[str] = set()
    source = "trending"
    if found.model is not None:
        # the ranker: every list's candidates at once, in the model's order
        source = next((name for name, tier in tiers if any(ids for _, ids in tier)), source)
        chosen, explained = _ranked(
            r, found, lists, exclude, rng, depth, reach=take, explain=explain
        )
        tried.update(p for p, _, _, _ in chosen)
        shown += _with_display(r, chosen, take, category, found.catalog_version)
        if explain:
            for item in shown:
                item["ranker"] = explained[item["product_id"]]
        tiers = []
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
            take - len(shown),
            category,
            found.catalog_version,
        )
        if len(shown) >= take:
            break
    if len(shown) < limit:
        # every candidate tried was filtered out: look deeper in each list, best first
        skip = exclude | tried
        unique: dict[str, tuple[str, str, float, float]] = {}
        for strategy, items in lists:
            for item in items:
                product_id = str(item.get("product_id"))
                if product_id not in skip and product_id not in unique:
                    unique[product_id] = (product_id, strategy, 1.0, float(item.get("score", 0.0)))
        shown += _with_display(
            r, list(unique.values()), take - len(shown), category, found.catalog_version
        )
    shown = _apply_rules(r, shown, active, exclude, limit, category, found.catalog_version)
    if not explain:
        _unexplained(shown)
    _remember_trending(
        category,
        [i for i in shown if i["strategy"] in strategies.GLOBAL],
    )
    return Served(_numbered(shown, found.seed, found.tag), source)


def _ranked(
    r: redis.Redis,
    found: Lists,
    lists: list[tuple[str, Any]],
    exclude: set[str],
    rng: random.Random,
    depth: int,
    *,
    reach: int,
    explain: bool = False,
) -> tuple[list[tuple[str, str, float, float]], dict[str, dict[str, Any]]]:
    """The first ``depth`` candidates in the ranker's order, each slot explored with the
    policy's ``exploration`` (a uniformly random one of the next ``reach``):
    (product, strategy, propensity, score) per slot, the strategy the list
    that ranks it best and the score the model's probability; and per
    product, what the preview shows of the features that placed it."""
    assert found.model is not None
    weights = found.model.weights
    candidates = ranker.candidates(lists, exclude)
    facts = {
        p: (fields.get("category") or None, ranker.price_of(fields.get("price")))
        for p, fields in zip(
            candidates,
            _catalog_fields(r, list(candidates), found.catalog_version),
            strict=True,
        )
    }
    context = ranker.Context(found.category, found.page_price, found.history, facts)
    order = ranker.ranked(candidates, context, weights)
    exploration = found.policy.exploration
    chosen: list[tuple[str, str, float, float]] = []
    explained: dict[str, dict[str, Any]] = {}
    left = list(order)
    while left and len(chosen) < depth:
        index = 0
        # exploring: any of the next ``reach`` (the list's length), not the whole tail
        within = min(len(left), reach)
        if exploration and rng.random() < exploration:
            index = int(rng.random() * within)
        propensity = exploration / within + (1 - exploration if index == 0 else 0.0)
        product_id, logit, vector = left.pop(index)
        sources = candidates[product_id]
        strategy = min(sources, key=lambda s: (sources[s][0], _STRATEGY_ORDER.get(s, 99)))
        probability = round(ranker.probability(logit), 6)
        chosen.append((product_id, strategy, round(propensity, 6), probability))
        if explain:
            explained[product_id] = {
                "score": probability,
                "explored": index > 0,
                "features": ranker.explain(vector, weights),
            }
    return chosen, explained


_STRATEGY_ORDER = {name: n for n, name in enumerate(strategies.STRATEGIES)}


def _ruled_single(
    r: redis.Redis,
    strategy: str,
    items: Ranked,
    exclude: set[str],
    limit: int,
    version: str | None,
    published: str | None,
    product_id: str | None,
    category: str | None,
) -> list[dict[str, Any]]:
    """One strategy's list as served, with the rules that hold on its page."""
    active = rules_.in_effect(_rules(published), int(time.time() * 1000), product_id, category)
    exclude = exclude | rules_.blocked(active)
    take = rules_.reach(active, limit, lambda p: _holds(items, p))
    shown = _single(r, strategy, items, exclude, take, None, version)
    if not active:
        return shown
    return _numbered(
        _unexplained(_apply_rules(r, shown, active, exclude, limit, None, version)),
        f"{strategy}|{category}",
    )


def _unexplained(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Served items without the ids of the rules that touched them (the preview shows those)."""
    for item in items:
        item.pop("rules", None)
    return items


def similar_to(
    product_id: str, limit: int = 8, *, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Items related to a product (co-visitation). Raises :class:`Unavailable`."""
    with reading() as r:
        pipe = r.pipeline(transaction=False)
        pipe.mget(keys.product_similar(product_id), keys.catalog_version(), keys.rules())
        # the product's category: the rules of its category hold on its page
        pipe.hget(keys.catalog_product(str(product_id)), "category")
        (raw, version, published), category = pipe.execute()
        return _ruled_single(
            r,
            strategies.SIMILAR,
            _load_list(raw),
            {str(product_id), *exclude},
            limit,
            version,
            published,
            str(product_id),
            category or None,
        )


def trending(
    category: str | None = None,
    limit: int = 8,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Trending over the short window (globally or in ``category``), topped up
    from the long window when the short one has too few. Raises :class:`Unavailable`."""
    with reading() as r:
        short, long, version, published = r.mget(
            keys.trending_list("short", category or ""),
            keys.trending_list("long", category or ""),
            keys.catalog_version(),
            keys.rules(),
        )
        items = Ranked.merged([_load_list(short), _load_list(long)])
        result = _ruled_single(
            r, strategies.TRENDING, items, set(exclude), limit, version, published, None, category
        )
    _remember_trending(category, result)
    return result


# What this process served from the trending lists, newest first, per category
# ("" for all): what a visitor is shown while Redis does not answer.
_last_trending: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
_LAST_TRENDING_KEPT = 64
_FALLBACK_ITEMS = 50


def _remember_trending(category: str | None, items: list[dict[str, Any]]) -> None:
    """Add served trending items (of ``category``, or of any) to the fallback."""
    if not items:
        return
    for name in {category or "", ""}:
        with _cache_lock:
            known = _last_trending.get(name, [])
            ids = {item["product_id"] for item in items}
            merged = [*items, *(i for i in known if i["product_id"] not in ids)]
            _last_trending[name] = merged[:_FALLBACK_ITEMS]
            _last_trending.move_to_end(name)
            while len(_last_trending) > _LAST_TRENDING_KEPT:
                _last_trending.popitem(last=False)


def fallback(
    category: str | None = None,
    limit: int = 8,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """What to show without Redis: the trending items this process served
    lately (of ``category`` if it has some, else of any, then kept to the
    category), less ``exclude``; possibly empty."""
    with _cache_lock:
        items = list(_last_trending.get(category or "") or _last_trending.get("") or [])
    if category:
        items = [i for i in items if i.get("category") == category]
    kept = [dict(item) for item in items if item["product_id"] not in exclude][:limit]
    for position, item in enumerate(kept):
        item["strategy"] = "fallback"
        item["position"] = position
    return kept


def reset(fallback: bool = True) -> None:
    """Forget what this process read from Redis (the settings changed); the
    fallback lists too unless ``fallback`` is False."""
    global _served_model
    for parsed in (_tuning_version, _experiment, _rules, _model):
        parsed.reset()
    _served_model = (None, None)
    with _cache_lock:
        if fallback:
            _last_trending.clear()
        _categories.clear()
    with _display_lock:
        _display_cache.clear()
    global _parsed_items
    with _parsed_lock:
        _parsed.clear()
        _parsed_items = 0
    with _policy_lock:
        _policies.clear()
