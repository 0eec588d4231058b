"""Scoring one micro-batch: every record gets its status, and the applied
events what they teach (pairs, baskets, popularity, trending, the visitors'
memories, the bandit's rewards), summed into a :class:`state.BatchChanges`.

The same function, :func:`score_partition`, runs on the driver for a small
batch and on the executors (one call per partition of whole visitors) for a
large one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import redis

from reco_plugin import experiments, keys, ranker, schema, scoring, strategies
from reco_plugin.scoring import PipelineSettings

from . import learn, state
from .transforms import PARSED_COLUMNS


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


# Positions in a parsed row (``transforms.PARSED_COLUMNS``, then, when a large
# batch is scored again with its copies marked, ``later_copy``).
EVENT_ID, PREVIOUS, CATEGORY, STRATEGY, RECO_ID = 5, 9, 10, 11, 12
LATER_COPY = len(PARSED_COLUMNS)


def later_copies(rows: Iterable[Sequence[Any]]) -> set[tuple[str, int, int]]:
    """The Kafka positions (topic, partition, offset) of records that repeat
    an event id of an earlier record among ``rows`` (``spread.later_copy``)."""
    first: dict[str, tuple[str, int, int]] = {}
    later: set[tuple[str, int, int]] = set()
    for row in rows:
        event_id = row[EVENT_ID]
        if event_id is None:
            continue
        position = (row[0], row[1], row[2])
        known = first.get(event_id)
        if known is None:
            first[event_id] = position
        elif position < known:
            later.add(known)
            first[event_id] = position
        else:
            later.add(position)
    return later


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
    held: Mapping[tuple[str, int], int] | None = None,
    experiment: experiments.Experiment | None = None,
) -> Iterator[state.BatchChanges]:
    """Parsed rows (``transforms.PARSED_COLUMNS``, optionally the ``later_copy``
    flag after them) of whole visitors ->
    one :class:`state.BatchChanges`, to merge with the other partitions'.

    Every row of a visitor must be in the same call, and the rows of the
    visitors a login in the batch joins (the executors' path partitions by
    ``spread.owners``). A record that repeats the event id of an earlier one
    (Kafka order) among the rows, whatever that one's status, or is flagged
    ``later_copy``, is a duplicate.

    ``held``: the next offset Redis holds of each (topic, partition);
    a record below it is in the state already and is left out, uncounted.
    """
    started = time.perf_counter()
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = state.client(redis_url)
    changes = state.BatchChanges()
    counts = changes.counts
    weights = settings.event_weights
    by_visitor: dict[str, list[Applied]] = defaultdict(list)
    oldest = now_ms - settings.horizon * 1000
    newest = now_ms + settings.future_tolerance * 1000
    rows = rows if isinstance(rows, list) else list(rows)
    copies = later_copies(rows)
    for row in rows:
        topic, partition, offset, version, type_, event_id, visitor_id, product_id, ts = row[:9]
        previous = row[PREVIOUS]
        key = (topic, partition)
        changes.offsets[key] = max(changes.offsets.get(key, 0), offset + 1)
        changes.first_offsets[key] = min(changes.first_offsets.get(key, offset), offset)
        if held and offset < held.get(key, -1):
            changes.skipped[topic] = changes.skipped.get(topic, 0) + 1
            continue
        if not schema.has_valid_core(version, type_, event_id, visitor_id, product_id, ts) or (
            type_ == schema.IDENTIFY and not _anonymous(previous)
        ):
            status = scoring.STATUS_MALFORMED
        elif ts < oldest:
            status = scoring.STATUS_TOO_OLD
        elif ts > newest:
            status = scoring.STATUS_FUTURE
        elif (len(row) > LATER_COPY and row[LATER_COPY]) or (topic, partition, offset) in copies:
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

    # each visitor's rows in Kafka order (the later copies of an event id are
    # counted above: ``later_copies`` among this call's rows, ``later_copy``
    # across the executors' partitions when an id is in two)
    firsts: dict[str, list[Applied]] = {visitor_id: [] for visitor_id in sorted(by_visitor)}
    for row in sorted(
        (row for rows in by_visitor.values() for row in rows), key=lambda row: row[:3]
    ):
        firsts[row.visitor_id].append(row)
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
        r,
        [
            (row.event_id, row.topic, row.partition, row.offset)
            for kept in firsts.values()
            for row in kept
        ],
        settings,
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
                changes.applied_ids.append((row.event_id, row.topic, row.partition, row.offset))
                changes.newest_ts = max(changes.newest_ts, row.ts)
        applied_by[visitor_id] = applied
    _learn(r, applied_by, changes, settings, landmark_ms, experiment)
    changes.seconds = round(time.perf_counter() - started, 4)
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
    trials: list[Trial] = []
    # each visitor's memory, seen and bought items as the batch leaves them,
    # for a login later in it to merge (the changes hold only what the batch
    # added to the sets, and the memory encoded)
    recent_now: dict[str, list[learn.Item]] = {}
    seen_now: dict[str, dict[str, int]] = {}
    bought_now: dict[str, dict[str, int]] = {}
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
            learn.Interaction(row.product_id, row.ts, row.weight, row.event_id, order)
            for order, row in enumerate(weighted)
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
            before = recent_now.get(other, remembered.get(other, []))
            previous = learn.remember(
                previous,
                (learn.Interaction(*item, "") for item in reversed(before)),
                settings.recent_items,
            )
            for source, target in (
                (seen_now.get(other, seen_before.get(other, {})), seen),
                (bought_now.get(other, bought_before.get(other, {})), bought),
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
                trials.append(
                    Trial(visitor_id, item.product_id, context, set(known), f"{item.ts:013d}")
                )
                taken += 1
            known.add(item.product_id)
            context = item.product_id
        # where they went next, some steps deep and the very next (``after``)
        following, then = learn.next_pairs_by_steps(
            previous, interactions, settings, landmark_ms, (settings.next_steps, 1)
        )
        for learnt, into in (
            (learn.visitor_pairs(previous, interactions, settings, landmark_ms), pairs),
            (following, changes.following),
            (then, changes.then),
            (
                learn.visitor_pairs(
                    previous,
                    interactions,
                    settings,
                    landmark_ms,
                    window_s=settings.session_window,
                    half_life=settings.next_half_life,
                ),
                changes.session,
            ),
        ):
            for (a, b), weight in learnt.items():
                others = into.setdefault(a, {})
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
        recent_now[visitor_id] = learn.remember(previous, interactions, settings.recent_items)
        changes.recent[visitor_id] = orjson.dumps(recent_now[visitor_id])
        seen_now[visitor_id], bought_now[visitor_id] = seen, bought
        changes.seen[visitor_id] = _added(seen, seen_before.get(visitor_id, {}))
        changes.bought[visitor_id] = _added(bought, bought_before.get(visitor_id, {}))
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


def _added(items: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """The items new to ``before``, or later than there."""
    return {product_id: ts for product_id, ts in items.items() if before.get(product_id) != ts}


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


TOP = max(strategies.K, ranker.DEPTH)


class Trial(NamedTuple):
    """A next-item trial: the visitor went to ``product_id`` (new to them)
    from the page of ``context``, knowing ``known``; ``ts`` orders it."""

    visitor_id: str
    product_id: str
    context: str | None
    known: set[str]
    ts: str


def _judge(
    r: redis.Redis,
    trials: list[Trial],
    categories: dict[str, str],
    changes: state.BatchChanges,
) -> None:
    """Reward each strategy that had a list for a trial: a success when the
    visitor's next item was in its top ``strategies.K``; and the ranker's
    examples: the trial's candidates (every strategy's top, merged as by
    ``ranker.candidates``), the next item among them a positive."""
    sources_of = [
        strategies.sources(trial.visitor_id, trial.context, categories.get(trial.context or ""))
        for trial in trials
    ]
    wanted: dict[str, str] = {}
    for trial_sources in sources_of:
        for strategy, key in trial_sources:
            wanted[key] = strategy
    # each list read once, and its ids and scores taken once: the same lists
    # (popular, trending, a product's neighbours) serve many trials
    lists = dict(zip(wanted, state.scored_lists(r, list(wanted)), strict=True))
    found: list[tuple[Trial, ranker.Tops, dict[str, None]]] = []
    for trial, trial_sources in zip(trials, sources_of, strict=True):
        context = trial.context
        exclude = trial.known | ({context} if context else set())
        # each list's top once: its first K judge the strategy, its first
        # DEPTH are the ranker's candidates
        tops, hits, candidates = ranker.trial_tops(
            trial_sources, lists, exclude, trial.product_id, TOP, strategies.K, ranker.DEPTH
        )
        for strategy, hit in hits:
            changes.next_item(strategy, hit)
        if trial.product_id in candidates:
            found.append((trial, tops, candidates))
    if not found:
        return
    facts = state.product_facts(
        r,
        sorted(
            {p for _, _, candidates in found for p in candidates}
            | {trial.context for trial, _, _ in found if trial.context}
        ),
    )
    for trial, tops, candidates in found:
        page_category, page_price = facts.get(trial.context or "", (None, None))
        context = ranker.Context(
            page_category=page_category,
            page_price=page_price,
            history=len(trial.known),
            facts=facts,
        )
        key = f"{trial.ts}|{trial.visitor_id}|{trial.product_id}"
        changes.examples.add(
            ranker.trial_examples(key, trial.product_id, tops, context, candidates)
        )
