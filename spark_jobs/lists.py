"""The lists derived from the committed state, written whole: the lists of
products (similar, next, after, session, frequently bought together),
visitors' personal and affinity lists, trending and popular, and the bandit's
serving policy.

Each refresh reads the state as it is now, so writing a list again gives the
same list; the product and visitor refreshes run on the executors for a large
batch.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis

from reco_plugin import experiments, keys, rules, strategies
from reco_plugin.scoring import PipelineSettings

from . import learn, state
from .merchandise import read_merchandise

# a product list: (its pair weights, the popularity it is normalised by or
# None, the list)
PRODUCT_LISTS = {
    strategies.SIMILAR: (keys.product_covisits, keys.popularity, keys.product_similar),
    strategies.FBT: (keys.product_bought_with, keys.purchases, keys.product_fbt),
    strategies.NEXT: (keys.product_followed_by, None, keys.product_next),
    strategies.AFTER: (keys.product_then, None, keys.product_after),
    strategies.SESSION: (keys.product_session_with, None, keys.product_session),
}


def refresh_products(
    product_ids: Iterable[str],
    *,
    redis_url: str,
    settings: PipelineSettings,
    kind: str = strategies.SIMILAR,
    writer: state.Writer | None = None,
) -> None:
    """Rewrite a product list (``PRODUCT_LISTS``: similar, frequently bought
    together, next, after or session) of these products from their pair
    weights; with a ``writer`` (the job), they are then no longer owed."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = state.client(redis_url)
    merchandise = read_merchandise(r)
    source, popularity, target = PRODUCT_LISTS[kind]
    for chunk in state.chunks(list(product_ids), 200):
        neighbours = state.neighbours(r, chunk, settings.neighbours_kept, source)
        pop = {}
        if popularity is not None:
            wanted = [*chunk, *(other for pairs in neighbours.values() for other, _ in pairs)]
            pop = state.popularity(r, wanted, popularity())
        categories = state.catalog_facts(r, chunk)[0] if merchandise.by_category else {}
        lists = {}
        for p in chunk:
            # cut under the rules of the product's page, where the list is shown
            shortlist = merchandise.shortlist(p, categories.get(p))
            depth = shortlist.depth(settings.list_length)
            if popularity is None:
                ranked = learn.next_list(p, neighbours[p], depth)
            else:
                ranked = learn.similar_list(p, neighbours[p], pop, depth)
            lists[target(p)] = shortlist.cut(ranked, settings.list_length)
        state.write_lists(
            r, lists, settings.product_ttl, writer, owed=(keys.pipeline_owed(kind), chunk)
        )


def refresh_visitors(
    visitor_ids: Iterable[str],
    *,
    redis_url: str,
    settings: PipelineSettings,
    experiment: experiments.Experiment | None = None,
    writer: state.Writer | None = None,
) -> None:
    """Rewrite the personal lists of these visitors from their recent items,
    without what they have seen or may not be shown. A visitor in the running
    ``experiment`` gets their arm's recency decay. With a ``writer`` (the
    job), they are then no longer owed (``keys.pipeline_visitors_owed``)."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    arms = (
        [experiment.settings(i, settings) for i in range(len(experiment.arms))]
        if experiment is not None
        else []
    )
    r = state.client(redis_url)
    # a visitor's own lists are shown on any page: the global rules
    shortlist = read_merchandise(r).shortlist()
    similar: dict[str, list[tuple[str, float]]] = {}
    categories: dict[str, str] = {}
    for chunk in state.chunks(list(visitor_ids), 500):
        recent = state.recent_items(r, chunk)
        seen = state.visitor_sets(r, keys.visitor_seen, chunk)
        missing = sorted({pid for items in recent.values() for pid, _, _ in items} - set(similar))
        for product_id, items in zip(
            missing, state.lists(r, [keys.product_similar(p) for p in missing]), strict=True
        ):
            similar[product_id] = [(str(i["product_id"]), float(i["score"])) for i in items]
        categories.update(state.catalog_facts(r, missing)[0])
        own = {v: arms[experiment.arm_of(v)] if experiment else settings for v in chunk}
        favourite = {
            v: learn.favourite_category(recent[v], categories, own[v].recency_decay) for v in chunk
        }
        wanted = sorted({c for c in favourite.values() if c})
        trending_in = dict(
            zip(
                wanted,
                state.lists(r, [keys.trending_list("long", c) for c in wanted]),
                strict=True,
            )
        )
        length = settings.list_length
        lists = {}
        # a visitor forgotten since (their memory gone) gets no lists back
        gone = state.forgotten(r, [v for v in chunk if not recent[v]])
        for v in chunk:
            if v in gone:
                continue
            exclude = set(seen.get(v, ()))  # (the cut leaves out what is blocked)
            ranked = learn.personal_list(
                recent[v], similar, shortlist.depth(length), own[v].recency_decay, exclude=exclude
            )
            lists[keys.visitor_recommendations(v)] = shortlist.cut(ranked, length)
            lists[keys.visitor_affinity(v)] = shortlist.cut(
                [
                    item
                    for item in trending_in.get(favourite[v] or "", [])
                    if item["product_id"] not in exclude
                ],
                length,
            )
        state.write_lists(
            r, lists, settings.visitor_ttl, writer, owed=(keys.pipeline_visitors_owed(), chunk)
        )


def refresh_trending(
    r: redis.Redis,
    clock_ms: int,
    settings: PipelineSettings,
    categories: Iterable[str] = (),
    writer: state.Writer | None = None,
) -> None:
    """The trending lists of both windows, globally and for these categories,
    and the popular list; each list lives as long as its window."""
    merchandise = read_merchandise(r)
    # each list cut under the rules of where it is shown: a category's in that
    # category, the global ones anywhere
    everywhere = merchandise.shortlist()
    shortlists = {c: merchandise.shortlist(None, c) for c in sorted(set(categories))}
    length = settings.list_length
    scratch = keys.pipeline_scratch("trending")
    pipe = r.pipeline(transaction=True)
    wanted: list[tuple[str, int, rules.Shortlist]] = []
    for name, bucket_s, window_s in learn.trending_windows(settings):
        starts = learn.trending_buckets_in_window(clock_ms, settings, name)
        for category in ("", *shortlists):
            shortlist = shortlists[category] if category else everywhere
            buckets = [keys.trending_window_bucket(name, b, category) for b in starts]
            pipe.zunionstore(scratch, buckets)
            pipe.zrevrange(scratch, 0, shortlist.depth(length) - 1, withscores=True)
            pipe.delete(scratch)
            # A category's list is rewritten only when it has events: it
            # expires with its window. The global lists are rewritten every batch.
            ttl = window_s + bucket_s if category else settings.product_ttl
            wanted.append((keys.trending_list(name, category), ttl, shortlist))
    pipe.zrevrange(keys.popularity(), 0, everywhere.depth(length) - 1, withscores=True)
    replies = pipe.execute()
    by_ttl: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for (key, ttl, shortlist), top in zip(wanted, replies[1::3], strict=False):
        by_ttl[ttl][key] = shortlist.cut(_scored(top, 4), length)
    by_ttl[settings.product_ttl][keys.popular()] = everywhere.cut(_scored(replies[-1], 6), length)
    for ttl, key_values in by_ttl.items():
        state.write_lists(r, key_values, ttl, writer)


def _scored(scored: Iterable[tuple[str, float]], digits: int) -> list[dict[str, Any]]:
    return [{"product_id": p, "score": round(s, digits)} for p, s in scored]


def refresh_policy(r: redis.Redis, seed: int, settings: PipelineSettings) -> None:
    """The serving policy from the bandit's current beliefs (seeded by the batch)."""
    value = strategies.policy(state.evidence(r), exploration=settings.exploration, seed=seed)
    raw = json.dumps(value, separators=(",", ":"))
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.bandit_policy(), raw)
    # the version is the content's digest: the same policy, the same version
    pipe.set(keys.bandit_policy_version(), hashlib.sha256(raw.encode()).hexdigest()[:16])
    pipe.execute()
