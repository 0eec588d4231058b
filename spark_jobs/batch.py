"""One micro-batch, from Kafka records to committed state and fresh lists.

The steps, each timed and reported in the last-batch record:

1. ``collect``: the records are parsed (``transforms.parse``) and at most
   ``driver_batch_rows + 1`` of them collected in one Spark job.
2. ``score``: every record gets its status (malformed, too old, future,
   duplicate within the batch or against the ids seen in Redis, or applied);
   per visitor, the applied events teach pairs, popularity and trending weights
   and the visitor's new recent items (``learn``). A batch that fit in step 1 is
   scored on the driver; a larger one is partitioned by visitor and scored on
   the executors, each partition returning its summed changes, which the driver
   merges. Both run the same function, :func:`score_partition`.
3. ``commit``: all state changes and the fence in one Redis transaction
   (``state.commit``); a batch committed before changes nothing.
4. ``lists``: the similar lists of the touched products, then the personal
   lists of the touched visitors, then trending, written whole (on the executors
   for a large batch); then the relay is told which visitors changed.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import redis

from reco_plugin import experiments, keys, rules, schema, scoring, strategies
from reco_plugin.scoring import PipelineSettings, parse_tuning

from . import learn, state
from .transforms import PARSED_COLUMNS, parse

logger = logging.getLogger("spark_jobs.batch")


@functools.cache
def _redis(url: str) -> redis.Redis:
    """One client per process and URL (driver, and each reused Python worker)."""
    return state.connect(url)


# -- step 2: scoring, the same function on the driver and on the executors ---------


def later_copy():
    """Column: the record repeats an event id seen earlier in the batch (Kafka order)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first_first = Window.partitionBy("event_id").orderBy("topic", "partition", "offset")
    return F.col("event_id").isNotNull() & (F.row_number().over(first_first) > 1)


def owner(identified: dict[str, str]):
    """Column: the visitor whose partition a record is scored in. Its own,
    except an anonymous visitor who logged in during the batch: the user's, so
    the login can merge what they did before it in the same batch."""
    from pyspark.sql import functions as F

    if not identified:
        return F.col("visitor_id")
    pairs = [F.lit(value) for item in sorted(identified.items()) for value in item]
    return F.coalesce(F.create_map(*pairs)[F.col("visitor_id")], F.col("visitor_id"))


def identified_in(parsed) -> dict[str, str]:
    """Anonymous visitor -> user, for the well-formed logins of a batch (one small job)."""
    rows = (
        parsed.where(f"type = '{schema.IDENTIFY}' and previous like 's:%'")
        .select("visitor_id", "previous")
        .collect()
    )
    return {row.previous: row.visitor_id for row in rows if schema.is_visitor_id(row.visitor_id)}


def landmark(previous_clock_ms: int, now_ms: int, settings: PipelineSettings) -> int:
    """The time a batch's weights are expressed at: known before the batch is
    read, within two horizons of any event it can apply, and the same when the
    batch is run again (the clock; on a fresh state, now rounded down to a
    multiple of the horizon)."""
    horizon_ms = settings.horizon * 1000
    if previous_clock_ms >= now_ms - horizon_ms:
        return previous_clock_ms
    return now_ms // horizon_ms * horizon_ms


def _anonymous(visitor_id: Any) -> bool:
    return schema.is_visitor_id(visitor_id) and visitor_id.startswith("s:")


# Positions in a parsed row (``transforms.PARSED_COLUMNS``, then ``later_copy``).
PREVIOUS, CATEGORY, STRATEGY, RECO_ID = 9, 10, 11, 12
LATER_COPY = len(PARSED_COLUMNS)


class Applied(NamedTuple):
    """A well-formed event inside the time bounds, as scored."""

    topic: str
    partition: int
    offset: int
    event_id: str
    visitor_id: str
    product_id: str | None
    ts: int
    weight: float
    previous: str | None  # an identify event's anonymous visitor
    type: str
    category: str | None
    strategy: str | None
    reco_id: str | None = None


def score_partition(
    rows: Iterable[Sequence[Any]],
    *,
    redis_url: str,
    settings: PipelineSettings,
    landmark_ms: int,
    now_ms: int,
    experiment: experiments.Experiment | None = None,
) -> Iterator[state.BatchChanges]:
    """Parsed rows (``transforms.PARSED_COLUMNS``, optionally a ``later_copy``
    flag after them) of whole visitors ->
    one :class:`state.BatchChanges`, to merge with the other partitions'.

    Every row of a visitor must be in the same call, and the rows of an
    anonymous visitor with those of the user they logged in as in the batch
    (the executors' path partitions by :func:`owner`).
    """
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = _redis(redis_url)
    changes = state.BatchChanges()
    counts = changes.counts
    weights = settings.event_weights
    by_visitor: dict[str, list[Applied]] = defaultdict(list)
    oldest = now_ms - settings.horizon * 1000
    newest = now_ms + settings.future_tolerance * 1000
    for row in rows:
        topic, partition, offset, version, type_, event_id, visitor_id, product_id, ts = row[:9]
        previous = row[PREVIOUS]
        key = (topic, partition)
        changes.offsets[key] = max(changes.offsets.get(key, 0), offset + 1)
        if not schema.has_valid_core(version, type_, event_id, visitor_id, product_id, ts) or (
            type_ == schema.IDENTIFY and not _anonymous(previous)
        ):
            status = scoring.STATUS_MALFORMED
        elif ts < oldest:
            status = scoring.STATUS_TOO_OLD
        elif ts > newest:
            status = scoring.STATUS_FUTURE
        elif len(row) > LATER_COPY and row[LATER_COPY]:
            status = scoring.STATUS_DUPLICATE
        else:
            identify = type_ == schema.IDENTIFY
            by_visitor[visitor_id].append(
                Applied(
                    topic,
                    partition,
                    offset,
                    event_id,
                    visitor_id,
                    product_id,
                    ts,
                    0.0 if identify else weights.get(type_, 0.0),
                    previous if identify else None,
                    type_,
                    row[CATEGORY] or None,
                    row[STRATEGY] or None,
                    row[RECO_ID] if len(row) > RECO_ID else None,
                )
            )
            continue
        counts[(topic, status)] = counts.get((topic, status), 0) + 1

    def count(row: Applied, status: str) -> None:
        counts[(row.topic, status)] = counts.get((row.topic, status), 0) + 1

    # Within the batch the first record of an event id (in Kafka order) counts:
    # among the rows of this call here; across the executors' partitions the
    # later copies were marked beforehand (a ``later_copy`` column).
    firsts: dict[str, list[Applied]] = {}
    ids: set[str] = set()
    for visitor_id in sorted(by_visitor):
        kept = []
        for row in sorted(by_visitor[visitor_id], key=lambda row: row[:3]):
            if row.event_id in ids:
                count(row, scoring.STATUS_DUPLICATE)
            else:
                ids.add(row.event_id)
                kept.append(row)
        firsts[visitor_id] = kept
    # a forgotten visitor's events up to the moment they were forgotten are not
    # learnt again (from Kafka's retention, or a checkpoint read again)
    gone = state.forgotten(
        r,
        sorted(
            {*firsts, *(row.previous for kept in firsts.values() for row in kept if row.previous)}
        ),
    )
    if gone:
        for visitor_id, kept in firsts.items():
            left = []
            for row in kept:
                until = gone.get(visitor_id, gone.get(row.previous or "", -1))
                if row.ts <= until:
                    count(row, scoring.STATUS_FORGOTTEN)
                else:
                    left.append(row)
            firsts[visitor_id] = left
    already = state.seen(
        r, [row.event_id for kept in firsts.values() for row in kept], now_ms, settings
    )
    applied_by: dict[str, list[Applied]] = {}
    for visitor_id, kept in firsts.items():
        applied = []
        for row in kept:
            if row.event_id in already:
                count(row, scoring.STATUS_DUPLICATE)
            else:
                count(row, scoring.STATUS_APPLIED)
                applied.append(row)
                changes.applied_ids.append(row.event_id)
                changes.newest_ts = max(changes.newest_ts, row.ts)
        applied_by[visitor_id] = applied
    _learn(r, applied_by, changes, settings, landmark_ms, experiment)
    yield changes


def _learn(
    r: redis.Redis,
    applied_by: dict[str, list[Applied]],
    changes: state.BatchChanges,
    settings: PipelineSettings,
    landmark_ms: int,
    experiment: experiments.Experiment | None = None,
) -> None:
    """What the applied events teach: pairs, baskets, popularity, trending, the
    visitors' memories, and the bandit's rewards (judged on the lists as they
    stood before the batch)."""
    learning = {
        v for v, rows in applied_by.items() if any(row.weight > 0 or row.previous for row in rows)
    }
    learning.update(row.previous for rows in applied_by.values() for row in rows if row.previous)
    visitors = sorted(learning)
    remembered = state.recent_items(r, visitors)
    seen_before = state.visitor_sets(r, keys.visitor_seen, visitors)
    bought_before = state.visitor_sets(r, keys.visitor_bought, visitors)
    # what they clicked in recommendations, for visitors who click, add to
    # cart, buy, or log in (and so bring their earlier clicks along)
    clicking = sorted(
        {
            visitor_id
            for visitor_id, rows in applied_by.items()
            if any(row.type in ATTRIBUTED or row.previous for row in rows)
        }
        | {row.previous for rows in applied_by.values() for row in rows if row.previous}
    )
    clicked_before = state.visitor_hashes(r, keys.visitor_clicked, clicking)
    products = sorted(
        {x.product_id for rows in applied_by.values() for x in rows if x.product_id}
        | {p for items in remembered.values() for p, _, _ in items[:1]}
    )
    # The catalog's categories (the same in every partition); an event's own
    # category counts for that event only.
    categories, repeatable = state.catalog_facts(r, products)
    firsts = {
        name: learn.trending_buckets_in_window(landmark_ms, settings, name)[0]
        for name, _, _ in learn.trending_windows(settings)
    }
    buckets = learn.trending_windows(settings)
    pairs = changes.pairs
    trials: list[tuple[str, str, str | None, set[str]]] = []
    # Sorted ids: an anonymous visitor's (``s:``) new items are known before a
    # user (``u:``) who was them is merged.
    for visitor_id, applied in sorted(applied_by.items()):
        for row in applied:
            if row.strategy and row.type in (schema.IMPRESSION, schema.CLICK):
                # attributed outcomes: an impression is a trial, a click on it a success
                changes.attributed(row.strategy, row.type == schema.CLICK)
            if experiment is not None and experiment.running(row.ts):
                changes.in_experiment(experiment, row)
        _attribute(visitor_id, applied, clicked_before, changes, settings.attribution_window * 1000)
        weighted = [row for row in applied if row.weight > 0]
        interactions = [
            learn.Interaction(row.product_id, row.ts, row.weight, row.event_id) for row in weighted
        ]
        merged = [row.previous for row in applied if row.previous]
        if not interactions and not merged:
            continue
        previous = remembered.get(visitor_id, [])
        seen = dict(seen_before.get(visitor_id, {}))
        bought = dict(bought_before.get(visitor_id, {}))
        for other in merged:
            # Login: what the visitor did before becomes the user's history. The
            # pairs it taught were learnt then; only the memory moves.
            before = changes.recent.get(other, remembered.get(other, []))
            previous = learn.remember(
                previous, (learn.Interaction(*item, "") for item in before), settings.recent_items
            )
            for source, target in (
                (changes.seen.get(other, seen_before.get(other, {})), seen),
                (changes.bought.get(other, bought_before.get(other, {})), bought),
            ):
                for product_id, ts in source.items():
                    target[product_id] = max(ts, target.get(product_id, 0))
        # The next-item trials: each new item (not seen before) judged against
        # the lists as they stood, in the context of the item before it.
        context = previous[0][0] if previous else None
        known = set(seen)
        taken = 0
        for item in sorted(interactions, key=lambda i: (i.ts, i.product_id, i.event_id)):
            if item.product_id not in known and taken < settings.trials_per_visitor:
                trials.append((visitor_id, item.product_id, context, set(known)))
                taken += 1
            known.add(item.product_id)
            context = item.product_id
        learnt = learn.visitor_pairs(previous, interactions, settings, landmark_ms)
        for (a, b), weight in learnt.items():
            others = pairs.setdefault(a, {})
            others[b] = others.get(b, 0) + state.to_units(weight)
        purchases = [
            item
            for item, row in zip(interactions, weighted, strict=True)
            if row.type == schema.PURCHASE
        ]
        if purchases:
            basket = learn.basket_pairs(
                sorted(((p, ts, 1.0) for p, ts in bought.items()), key=lambda i: -i[1]),
                purchases,
                settings,
                landmark_ms,
            )
            for (a, b), weight in basket.items():
                others = changes.fbt.setdefault(a, {})
                others[b] = others.get(b, 0) + state.to_units(weight)
            for item in purchases:
                changes.purchases[item.product_id] = changes.purchases.get(
                    item.product_id, 0
                ) + state.to_units(
                    item.weight * learn.decay(landmark_ms, item.ts, settings.half_life)
                )
                bought[item.product_id] = max(item.ts, bought.get(item.product_id, 0))
        for item, row in zip(interactions, weighted, strict=True):
            if item.product_id in repeatable:
                continue
            if settings.exclude_seen or row.type == schema.PURCHASE:
                seen[item.product_id] = max(item.ts, seen.get(item.product_id, 0))
        changes.recent[visitor_id] = learn.remember(previous, interactions, settings.recent_items)
        changes.seen[visitor_id] = seen
        changes.bought[visitor_id] = bought
        for item, row in zip(interactions, weighted, strict=True):
            changes.popularity[item.product_id] = changes.popularity.get(
                item.product_id, 0
            ) + state.to_units(item.weight * learn.decay(landmark_ms, item.ts, settings.half_life))
            category = row.category or categories.get(item.product_id) or ""
            for name, bucket_s, _ in buckets:
                bucket = learn.trending_bucket(item.ts, bucket_s)
                if bucket >= firsts[name]:
                    for where in ("", category) if category else ("",):
                        key = (name, bucket, where, item.product_id)
                        changes.trending[key] = changes.trending.get(key, 0) + state.to_units(
                            item.weight
                        )
    if trials:
        _judge(r, trials, categories, changes)


# The events last-click attribution looks at, and how many clicked products a
# visitor's attribution memory keeps (the latest).
ATTRIBUTED = frozenset({schema.CLICK, schema.ADD_TO_CART, schema.PURCHASE})
CLICKS_KEPT = 200


def _attribute(
    visitor_id: str,
    applied: Sequence[Applied],
    clicked_before: Mapping[str, Mapping[str, str]],
    changes: state.BatchChanges,
    window_ms: int,
) -> None:
    """Last-click attribution: a product clicked in a strategy's list, then
    added to the cart or bought within ``window_ms``, counts as a conversion
    of that strategy. A login brings the clicks made before it (the later
    click of a product wins)."""
    rows = [row for row in applied if row.type in ATTRIBUTED or row.previous]
    if not rows:
        return

    def parsed(raw: Mapping[str, str]) -> dict[str, tuple[str, int]]:
        found = {}
        for product_id, value in raw.items():
            strategy, _, ts = value.partition(" ")
            if ts.isdigit():
                found[product_id] = (strategy, int(ts))
        return found

    def known(visitor: str) -> dict[str, tuple[str, int]]:
        if visitor in changes.clicked:
            return parsed(changes.clicked[visitor])
        return parsed(clicked_before.get(visitor, {}))

    clicked = known(visitor_id)
    changed = False
    for row in sorted(rows, key=lambda row: (row.ts, row.offset)):
        if row.previous:
            for product_id, (strategy, ts) in known(row.previous).items():
                if ts > clicked.get(product_id, ("", -1))[1]:
                    clicked[product_id] = (strategy, ts)
                    changed = True
        elif row.type == schema.CLICK:
            if row.strategy and row.product_id:
                clicked[row.product_id] = (row.strategy, row.ts)
                changed = True
        elif row.product_id in clicked:
            strategy, ts = clicked[row.product_id]
            if 0 <= row.ts - ts <= window_ms:
                changes.converted(strategy, row.type)
    if changed:
        latest = sorted(clicked.items(), key=lambda kv: kv[1][1])[-CLICKS_KEPT:]
        changes.clicked[visitor_id] = {p: f"{s} {ts}" for p, (s, ts) in latest}


def _judge(
    r: redis.Redis,
    trials: list[tuple[str, str, str | None, set[str]]],
    categories: dict[str, str],
    changes: state.BatchChanges,
) -> None:
    """Reward each strategy that had a list for a trial: a success when the
    visitor's next item was in its top ``strategies.K``."""
    wanted: dict[str, str] = {}
    for visitor_id, _, context, _ in trials:
        for strategy, key in strategies.sources(visitor_id, context, categories.get(context or "")):
            wanted[key] = strategy
    values = dict(zip(wanted, state.lists(r, list(wanted)), strict=True))
    for visitor_id, product_id, context, known in trials:
        exclude = known | ({context} if context else set())
        for strategy, key in strategies.sources(visitor_id, context, categories.get(context or "")):
            ids = strategies.top(values[key], exclude)
            if ids:
                changes.next_item(strategy, product_id in ids)


# -- step 4: lists, derived from the committed state ------------------------------


def refresh_products(
    product_ids: Iterable[str],
    *,
    redis_url: str,
    settings: PipelineSettings,
    baskets: bool = False,
) -> None:
    """Rewrite the similar lists of these products from their neighbours (with
    ``baskets``, their frequently-bought-together lists from their baskets)."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = _redis(redis_url)
    merchandise = state.merchandise(r)
    source, weights, target = (
        (keys.product_bought_with, keys.purchases(), keys.product_fbt)
        if baskets
        else (keys.product_covisits, keys.popularity(), keys.product_similar)
    )
    for chunk in state.chunks(list(product_ids), 200):
        neighbours = state.neighbours(r, chunk, settings.neighbours_kept, source)
        wanted = [*chunk, *(other for pairs in neighbours.values() for other, _ in pairs)]
        pop = state.popularity(r, wanted, weights)
        categories = state.catalog_facts(r, chunk)[0] if merchandise.by_category else {}
        lists = {}
        for p in chunk:
            # cut under the rules of the product's page, where the list is shown
            shortlist = merchandise.shortlist(p, categories.get(p))
            ranked = learn.similar_list(
                p, neighbours[p], pop, shortlist.depth(settings.list_length)
            )
            lists[target(p)] = shortlist.cut(ranked, settings.list_length)
        state.write_lists(r, lists, settings.product_ttl)


def refresh_baskets(product_ids: Iterable[str], *, redis_url: str, settings: PipelineSettings):
    refresh_products(product_ids, redis_url=redis_url, settings=settings, baskets=True)


def refresh_visitors(
    visitor_ids: Iterable[str],
    *,
    redis_url: str,
    settings: PipelineSettings,
    experiment: experiments.Experiment | None = None,
) -> None:
    """Rewrite the personal lists of these visitors from their recent items,
    without what they have seen or may not be shown. A visitor in the running
    ``experiment`` gets their arm's recency decay."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    arms = (
        [experiment.settings(i, settings) for i in range(len(experiment.arms))]
        if experiment is not None
        else []
    )
    r = _redis(redis_url)
    # a visitor's own lists are shown on any page: the global rules
    shortlist = state.merchandise(r).shortlist()
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
        for v in chunk:
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
        state.write_lists(r, lists, settings.visitor_ttl)


def refresh_trending(
    r: redis.Redis, clock_ms: int, settings: PipelineSettings, categories: Iterable[str] = ()
) -> None:
    """The trending lists of both windows, globally and for these categories,
    and the popular list; each list lives as long as its window."""
    merchandise = state.merchandise(r)
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
        state.write_lists(r, key_values, ttl)


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


# -- the event lake --------------------------------------------------------------

# What the lake keeps of each well-formed record (``spark_jobs.retrain`` reads it).
LAKE_COLUMNS = (
    "event_id",
    "type",
    "visitor_id",
    "product_id",
    "ts",
    "category",
    "strategy",
    "reco_id",
    "position",
    "propensity",
    "previous",
    "topic",
    "partition",
    "offset",
)
_LAKE_TYPES = {"ts": "int64", "partition": "int32", "offset": "int64", "propensity": "float64"}


def append_to_lake(parsed, path: str) -> None:
    """Append a (large) batch's events to the lake with Spark, partitioned by
    event date (UTC). At least once: a batch run again appends again; readers
    drop repeated ids."""
    (
        parsed.where("event_id is not null and visitor_id is not null and ts is not null")
        .selectExpr(*LAKE_COLUMNS, "cast(to_date(timestamp_millis(ts)) as string) as date")
        .write.mode("append")
        .partitionBy("date")
        .parquet(path)
    )


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def write_lake_rows(rows: Sequence[Sequence[Any]], path: str, name: str) -> int:
    """Write a small batch's collected rows to a local lake without a Spark job
    (a Spark write costs ~0.5 s a batch): one Parquet file per event date,
    ``date=YYYY-MM-DD/part-<name>.parquet``, the layout and types Spark
    writes. The file name is the batch's, so a batch run again rewrites the
    same files: exactly once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = {name: n for n, name in enumerate(PARSED_COLUMNS)}
    by_date: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for row in rows:
        event_id, visitor_id, ts = (
            row[index["event_id"]],
            row[index["visitor_id"]],
            row[index["ts"]],
        )
        if event_id is None or visitor_id is None or ts is None:
            continue
        try:
            day = datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC).date().isoformat()
        except (OverflowError, OSError, ValueError):
            continue
        by_date[day].append(row)
    schema = pa.schema(
        [(column, getattr(pa, _LAKE_TYPES.get(column, "string"))()) for column in LAKE_COLUMNS]
    )
    root = path[len("file://") :] if path.startswith("file://") else path
    for day, day_rows in sorted(by_date.items()):
        table = pa.table(
            {c: [row[index[c]] for row in day_rows] for c in LAKE_COLUMNS}, schema=schema
        )
        directory = os.path.join(root, f"date={day}")
        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, f"part-{name}.parquet")
        # written aside and renamed: a reader never sees half a file
        pq.write_table(table, final + ".tmp")
        os.replace(final + ".tmp", final)
    return sum(len(r) for r in by_date.values())


# -- the foreachBatch function ------------------------------------------------------


class Steps:
    """Wall time of each step of a batch."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(
                self.seconds.get(name, 0.0) + time.perf_counter() - started, 4
            )

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 4)


def is_transient(exc: BaseException) -> bool:
    """A Redis outage, raised here or (as text) from a Spark job's Python worker.

    A wrong password or ACL is not an outage (redis-py makes those connection
    errors too). A WatchError is retried: redis-py raises it for a connection
    lost during the fenced commit, and a run again re-reads the fence.
    """
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(
        exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError | redis.WatchError
    ):
        return True
    text = str(exc)
    return any(
        name in text
        for name in (
            "redis.exceptions.ConnectionError",
            "redis.exceptions.TimeoutError",
            "redis.exceptions.BusyLoadingError",
        )
    )


# A batch whose newest event is older than this replays history (a warm-up, a
# replay, a backfill): its freshness says nothing about the live pipeline.
LIVE_WINDOW_MS = 3_600_000


def _freshness(finished: float, newest_ts: int) -> int | None:
    """Milliseconds from the newest event applied to its lists being written;
    None for a batch of history."""
    if not newest_ts:
        return None
    age = int(finished * 1000) - newest_ts
    return age if age <= LIVE_WINDOW_MS else None


class BatchProcessor:
    """The ``foreachBatch`` function. Redis outages are waited out with backoff."""

    def __init__(
        self,
        redis_url: str,
        settings: PipelineSettings,
        *,
        stopping: threading.Event | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.redis_url = redis_url
        # the settings the job started with; self.settings adds the tuning
        # staff published in the admin, read again before every batch
        self.base = self.settings = settings
        self._tuning: Any = None
        # the experiment staff scheduled (its arms are counted while it runs)
        self._experiment_raw: Any = None
        self.experiment: experiments.Experiment | None = None
        # when the batch being processed started (wall clock, ms)
        self.started_ms = 0
        self.stopping = stopping or threading.Event()
        self.max_backoff = max_backoff
        self.query_id: str | None = None
        self.last: dict[str, Any] = {}
        self.waiting_for_redis = False
        # The last batch was larger than driver_batch_rows: the job is catching
        # up, so the next batch goes to the executors without first collecting
        # what would not fit on the driver.
        self.catching_up = False

    def __call__(self, batch, batch_id: int) -> None:
        delay = 0.5
        while True:
            try:
                self.process(batch, batch_id)
                self.waiting_for_redis = False
                return
            except Exception as exc:
                if not is_transient(exc) or self.stopping.is_set():
                    raise
                self.waiting_for_redis = True
                logger.warning(
                    "batch %d: Redis unavailable (%s); retrying in %.1f s",
                    batch_id,
                    str(exc).splitlines()[0][:200],
                    delay,
                )
                self.stopping.wait(delay)
                delay = min(delay * 2, self.max_backoff)

    def _query_id(self) -> str:
        deadline = time.monotonic() + 60
        while self.query_id is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the streaming query's id was never set")
            time.sleep(0.01)
        return self.query_id

    def apply_tuning(self, r) -> PipelineSettings:
        """``self.settings``: the starting settings with the published tuning
        (``keys.tuning``) on top; a tuning that cannot be applied is logged
        and the starting settings are kept."""
        raw, experiment = r.mget(keys.tuning(), keys.experiment())
        if experiment != self._experiment_raw:
            self._experiment_raw = experiment
            try:
                self.experiment = experiments.parse(experiment)
            except (ValueError, TypeError, KeyError) as exc:
                logger.error("the published experiment is not counted: %s", exc)
                self.experiment = None
        if raw != self._tuning:
            self._tuning = raw
            try:
                published = parse_tuning(raw)
                self.settings = self.base.tuned(published.get("pipeline"))
                if published:
                    logger.info("tuning version %s applied", published.get("version"))
            except (ValueError, TypeError, AttributeError) as exc:
                logger.error("the published tuning is not applied: %s", exc)
                self.settings = self.base
        return self.settings

    def process(self, batch, batch_id: int) -> None:
        steps = Steps()
        r = _redis(self.redis_url)
        settings = self.apply_tuning(r)
        query_id = self._query_id()
        # when this batch first ran (kept for its re-runs): a visitor forgotten
        # since may have had their events scored by it, so its lists sweep them
        self.started_ms = state.batch_time(r, query_id, batch_id, schema.now_ms())
        fence = state.committed_batch(r, query_id)
        if fence is not None and fence >= batch_id:
            # Committed before a crash: only the lists may be missing.
            logger.info("batch %d was committed before; refreshing its lists", batch_id)
            self._redo_lists(r, query_id, batch_id, batch)
            rows = None
            if self.settings.lake_path and is_local(self.settings.lake_path):
                rows = parse(batch).limit(settings.driver_batch_rows + 1).collect()
                rows = rows if len(rows) <= settings.driver_batch_rows else None
            # a small batch rewrites the same files (exactly once)
            self._lake(batch, batch_id, Steps(), rows)
            return
        now_ms = state.batch_time(r, query_id, batch_id, schema.now_ms())
        previous_clock = state.clock(r)
        landmark_ms = landmark(previous_clock, now_ms, settings)
        options = {
            "redis_url": self.redis_url,
            "settings": settings,
            "landmark_ms": landmark_ms,
            "now_ms": now_ms,
            "experiment": self.experiment,
        }
        parsed = parse(batch)
        rows: list[Any] = []
        if not self.catching_up:
            with steps("collect"):
                # One job: every partition gives at most driver_batch_rows + 1
                # rows (the session reads all partitions at once for a limit);
                # a batch that fits is complete on the driver.
                rows = parsed.limit(settings.driver_batch_rows + 1).collect()
        small = not self.catching_up and len(rows) <= settings.driver_batch_rows
        if small:
            with steps("score"):
                changes = next(score_partition(rows, **options))
        else:
            with steps("score"):
                parts = (
                    parsed.withColumn("later_copy", later_copy())
                    .repartition(self._partitions(batch), owner(identified_in(parsed)))
                    .rdd.mapPartitions(functools.partial(score_partition, **options))
                    .collect()
                )
            with steps("merge"):
                changes = functools.reduce(state.BatchChanges.merge, parts, state.BatchChanges())
        size = sum(changes.counts.values())
        self.catching_up = size > settings.driver_batch_rows
        clock_ms = max(previous_clock, changes.newest_ts)
        with steps("commit"):
            committed = state.commit(
                r,
                query_id,
                batch_id,
                changes,
                landmark_ms=landmark_ms,
                clock_ms=clock_ms,
                previous_clock_ms=previous_clock,
                now_ms=now_ms,
                settings=settings,
            )
        if not committed:
            logger.warning("batch %d was committed by another run of this query", batch_id)
            self._redo_lists(r, query_id, batch_id, batch)
            return
        todo = state.pending(r) or {}
        self._lists(r, batch, todo, clock_ms, steps, spread=not small)
        self._lake(batch, batch_id, steps, rows if small else None)
        products, visitors = todo.get("products", []), todo.get("visitors", [])
        counts = {status: 0 for status in scoring.STATUSES}
        applied_by_topic: dict[str, int] = {}
        for (topic, status), n in changes.counts.items():
            counts[status] += n
            if status == scoring.STATUS_APPLIED:
                applied_by_topic[topic] = applied_by_topic.get(topic, 0) + n
        finished = time.time()
        self.last = {
            "batch": batch_id,
            "query": query_id,
            "finished_at": finished,
            "freshness_ms": _freshness(finished, changes.newest_ts),
            "applied_by_topic": applied_by_topic,
            "seconds": steps.total(),
            "rows": size,
            "path": "driver" if small else "executors",
            **counts,
            "products": len(products),
            "visitors": len(visitors),
            "steps": steps.seconds,
        }
        with contextlib.suppress(redis.RedisError):
            state.record_batch(r, self.last)
        logger.info(
            "batch %d: %d rows (%d applied, %d duplicate, %d malformed, %d too old, %d future) "
            "on the %s, %d products, %d visitors in %.3fs %s",
            batch_id,
            self.last["rows"],
            counts[scoring.STATUS_APPLIED],
            counts[scoring.STATUS_DUPLICATE],
            counts[scoring.STATUS_MALFORMED],
            counts[scoring.STATUS_TOO_OLD],
            counts[scoring.STATUS_FUTURE],
            self.last["path"],
            len(products),
            len(visitors),
            self.last["seconds"],
            steps.seconds,
        )

    def _lake(self, batch, batch_id: int, steps: Steps, rows: Sequence[Any] | None) -> None:
        """The batch's events to the event lake: a small batch's collected rows
        straight to a local lake's files, anything else with a Spark write."""
        path = self.settings.lake_path
        if not path:
            return
        with steps("lake"):
            if rows is not None and is_local(path):
                write_lake_rows(rows, path, f"{self.query_id}-{batch_id:010d}")
            else:
                append_to_lake(parse(batch), path)

    def _partitions(self, batch) -> int:
        conf = batch.sparkSession.conf.get("spark.sql.shuffle.partitions")
        return int(conf) if conf else 2

    def _lists(
        self,
        r: redis.Redis,
        batch,
        todo: dict[str, Any],
        clock_ms: int,
        steps: Steps,
        *,
        spread: bool,
    ) -> None:
        """The lists a committed batch changes (``todo``: its pending record)."""
        options = {"redis_url": self.redis_url, "settings": self.settings}
        run: Callable[..., None]
        if spread:
            context = batch.sparkSession.sparkContext
            partitions = self._partitions(batch)

            def run(function, ids, **more):
                if ids:
                    context.parallelize(list(ids), partitions).foreachPartition(
                        functools.partial(function, **options, **more)
                    )
        else:

            def run(function, ids, **more):
                if ids:
                    function(ids, **options, **more)

        with steps("similar"):
            run(refresh_products, todo.get("products", []))
            run(refresh_baskets, todo.get("baskets", []))
        # trending first: the visitors' affinity lists are read from it
        with steps("trending"):
            refresh_trending(r, clock_ms, self.settings, todo.get("categories", []))
        with steps("personal"):
            experiment = self.experiment
            if experiment is not None and not experiment.running(int(time.time() * 1000)):
                experiment = None
            run(refresh_visitors, todo.get("visitors", []), experiment=experiment)
            # forgotten while this batch ran: what it wrote for them goes again
            state.sweep_forgotten(r, todo.get("visitors", []), self.started_ms)
        if todo.get("bandit"):
            with steps("policy"):
                refresh_policy(r, int(todo.get("batch", 0)), self.settings)
        with steps("notify"):
            state.notify(r, todo.get("visitors", []))

    def _redo_lists(self, r: redis.Redis, query_id: str, batch_id: int, batch) -> None:
        todo = state.pending(r)
        if not todo or todo.get("query") != query_id or todo.get("batch") != batch_id:
            return
        self._lists(
            r,
            batch,
            todo,
            state.clock(r),
            Steps(),
            spread=len(todo["products"]) + len(todo["visitors"]) > self.settings.driver_batch_rows,
        )
