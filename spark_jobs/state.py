"""The pipeline's state in Redis: reading it, and committing one batch's changes once.

Keys come from ``reco_plugin.keys``. Two kinds of writes:

* **State** (co-visitation weights, popularity, trending buckets, visitors'
  recent items, seen event ids, counters, the clock) changes only in
  :func:`commit`: one MULTI/EXEC transaction that also stores the next Kafka
  offset of every partition the batch read (``spark_jobs.recovery``). The
  offsets decide what is applied: a record below them is in the state
  already, so every event changes the state once, whatever reads it again.
* **Lists** (similar, personal, trending) are derived from the state and written
  whole with SET, so writing them again gives the same lists; a list carries the
  commit it derives from and never overwrites one of a later commit, and only
  the job holding the lease writes them (:func:`write_lists`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from reco_plugin import experiments, keys, ranker, redis_url, schema, strategies
from reco_plugin.scoring import STATUS_EXPIRED, PipelineSettings

from . import bulk
from .learn import Item

logger = logging.getLogger(__name__)

CHUNK = 1000
# Weights learnt in a batch are summed as integers of 1e-9 units: integer sums do
# not depend on their order, so a batch scored on the driver and the same batch
# scored on the executors (partial sums merged) change the state identically.
WEIGHT_UNITS = 10**9


def to_units(weight: float) -> int:
    return round(weight * WEIGHT_UNITS)


def from_units(units: int) -> float:
    return units / WEIGHT_UNITS


# De-duplication (the same event id at two offsets: a beacon sent twice, a
# producer's copy). A copy carries its original's key (the visitor), so it is in
# the same partition, later: the ids of applied events are kept for the last
# ``dedup_records`` offsets of each partition, in SEEN_BUCKETS stretches. Whether
# a record is a copy depends on offsets only, never on where batches begin, and
# memory is a fixed budget per partition, whatever the time or the backlog.
SEEN_BUCKETS = 4


@functools.cache
def client(url: str) -> redis.Redis:
    """One client per process and URL (driver, and each reused Python worker)."""
    return connect(url)


def connect(url: str) -> redis.Redis:
    """A client of the Redis at ``url``: one server, or the primary its
    Sentinels name (``redis+sentinel://``), asked again after a failover."""
    return redis_url.connect(
        url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=5,
        # No retries inside redis-py (its default retries a paused server for
        # minutes per call): the batch retries as a whole, with backoff, and the
        # heartbeat and SIGTERM stay responsive.
        retry=Retry(NoBackoff(), 0),
        # RESP2: redis-py 8 on RESP3 re-encodes every score of a sorted-set reply
        # to text and parses it again (most of the time of a similar-list refresh).
        protocol=2,
        # (UTF-8: a URL that sets another encoding keeps redis-py's packer)
        **(
            {} if "encoding" in parse_qs(urlsplit(url).query) else {"command_packer": bulk.Packer()}
        ),
    )


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``items`` in slices of ``size``, a thousand by default."""
    return bulk.chunks(items, size)


# -- reading -----------------------------------------------------------------


def batch_time(r: redis.Redis, query_id: str, batch_id: int, now_ms: int) -> int:
    """The wall clock (ms) this batch is judged by: ``now_ms`` on its first run,
    the same value when Spark runs it again."""
    key = keys.pipeline_batch_time()
    prefix = f"{query_id}:{batch_id}:"
    recorded = r.get(key)
    if recorded and recorded.startswith(prefix):
        return int(recorded[len(prefix) :])
    r.set(key, f"{prefix}{now_ms}")
    return now_ms


def clock(r: redis.Redis) -> int:
    raw = r.get(keys.pipeline_clock())
    return int(raw) if raw else 0


def _seen_stretch(settings: PipelineSettings) -> int:
    return max(1, settings.dedup_records // SEEN_BUCKETS)


def seen(
    r: redis.Redis,
    events: Sequence[tuple[str, str, int, int]],
    settings: PipelineSettings,
) -> set[str]:
    """The ids among ``events`` (id, topic, partition, offset) applied before
    within ``dedup_records`` offsets of them (in whole stretches)."""
    if not events:
        return set()
    stretch = _seen_stretch(settings)
    by_partition: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for event_id, topic, partition, offset in events:
        by_partition[(topic, partition)].append((event_id, offset))
    asked: list[tuple[int, Sequence[tuple[str, int]]]] = []
    pipe = r.pipeline(transaction=False)
    for (topic, partition), rows in sorted(by_partition.items()):
        low = (min(o for _, o in rows) - settings.dedup_records) // stretch
        for bucket in range(max(0, low), max(o for _, o in rows) // stretch + 1):
            for chunk in chunks(rows):
                pipe.smismember(keys.seen_events(topic, partition, bucket), [i for i, _ in chunk])
                asked.append((bucket, chunk))
    found: set[str] = set()
    for (bucket, chunk), flags in zip(asked, pipe.execute(), strict=True):
        for (event_id, offset), flag in zip(chunk, flags, strict=True):
            if flag and bucket >= (offset - settings.dedup_records) // stretch:
                found.add(event_id)
    return found


def _loads(raw: str) -> Any:
    """A list or memory the job wrote: by orjson, or by json what orjson refuses
    (``NaN``, which Python's json writes, in a list written by hand)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def recent_items(r: redis.Redis, visitor_ids: Sequence[str]) -> dict[str, list[Item]]:
    """Each visitor's remembered items, newest first."""
    result: dict[str, list[Item]] = {}
    for chunk in chunks(list(visitor_ids)):
        for visitor_id, raw in zip(
            chunk, r.mget([keys.visitor_recent(v) for v in chunk]), strict=True
        ):
            result[visitor_id] = [
                (str(pid), int(ts), float(w)) for pid, ts, w in (_loads(raw) if raw else [])
            ]
    return result


def neighbours(
    r: redis.Redis,
    product_ids: Sequence[str],
    limit: int,
    key: Callable[[str], str] = keys.product_covisits,
) -> dict[str, list[tuple[str, float]]]:
    pipe = r.pipeline(transaction=False)
    for product_id in product_ids:
        pipe.zrevrange(key(product_id), 0, limit - 1, withscores=True)
    return dict(zip(product_ids, pipe.execute(), strict=True))


def popularity(
    r: redis.Redis, product_ids: Sequence[str], key: str | None = None
) -> dict[str, float]:
    wanted = sorted(set(product_ids))
    if not wanted:
        return {}
    return dict(zip(wanted, r.zmscore(key or keys.popularity(), wanted), strict=True))


def visitor_sets(
    r: redis.Redis, key: Callable[[str], str], visitor_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Each visitor's sorted set under ``key(visitor)`` as product -> ts_ms."""
    found = bulk.flat_ranges(r, [key(v) for v in visitor_ids])
    return {
        v: dict(zip(flat[::2], map(int, map(float, flat[1::2])), strict=True))
        for v, flat in zip(visitor_ids, found, strict=True)
    }


def visitor_hashes(
    r: redis.Redis, key: Callable[[str], str], visitor_ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Each visitor's hash under ``key(visitor)``."""
    return dict(zip(visitor_ids, bulk.hashes(r, [key(v) for v in visitor_ids]), strict=True))


def digest(visitor_id: str) -> str:
    """The digest a forgotten visitor is known by (under the shop's secret)."""
    return keys.visitor_digest(visitor_id, os.environ.get(keys.FORGET_SECRET_ENV, ""))


def forgotten(r: redis.Redis, visitor_ids: Sequence[str]) -> dict[str, int]:
    """Visitor -> when (epoch ms) they were forgotten, for those who were."""
    found: dict[str, int] = {}
    for part in chunks(list(visitor_ids)):
        for visitor_id, value in zip(
            part, r.mget([keys.visitor_forgotten(digest(v)) for v in part]), strict=True
        ):
            if value is not None:
                found[visitor_id] = int(value)
    return found


def sweep_forgotten(r: redis.Redis, visitor_ids: Sequence[str], since_ms: int) -> int:
    """Delete again what a batch that started at ``since_ms`` wrote for
    visitors forgotten while it ran (it may have read their events before the
    tombstone was set); how many were."""
    gone = {v for v, at in forgotten(r, visitor_ids).items() if at >= since_ms}
    if gone:
        r.delete(*(key for v in gone for key in keys.visitor_keys(v)))
    return len(gone)


def catalog_facts(r: redis.Redis, product_ids: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """The catalog's category of each product (where synced), and which are repeatable."""
    if not product_ids:
        return {}, set()
    product_ids = list(product_ids)
    found = bulk.fields(r, [keys.catalog_product(p) for p in product_ids], "category")
    categories = {p: c for p, (c,) in zip(product_ids, found, strict=True) if c}
    repeatable: set[str] = set()
    for chunk in chunks(product_ids):
        flags = r.smismember(keys.catalog_repeatable(), list(chunk))
        repeatable.update(p for p, flag in zip(chunk, flags, strict=True) if flag)
    return categories, repeatable


def product_facts(
    r: redis.Redis, product_ids: Sequence[str]
) -> dict[str, tuple[str | None, float | None]]:
    """The catalog's category and price of each product (``ranker.Context.facts``)."""
    product_ids = list(product_ids)
    found = bulk.fields(r, [keys.catalog_product(p) for p in product_ids], "category", "price")
    return {
        product_id: (category or None, ranker.price_of(price))
        for product_id, (category, price) in zip(product_ids, found, strict=True)
    }


def evidence(r: redis.Redis) -> dict[str, tuple[float, float]]:
    """The bandit's discounted (successes, trials) per field (``strategies.Evidence``)."""
    return strategies.evidence_from(r.hgetall(keys.bandit()))


def lists(r: redis.Redis, list_keys: Sequence[str]) -> list[list[dict[str, Any]]]:
    result = []
    for chunk in chunks(list(list_keys)):
        result.extend(_loads(raw) if raw else [] for raw in r.mget(chunk))
    return result


# The lists a batch judges its trials on, as ``ranker.scored_ids`` reads them,
# kept by their value as Redis holds it: most are not rewritten between one
# batch and the next, and a value read again is not decoded again. Decoding
# was 15% of the driver's time under 200 events/s (py-spy); reading 477 lists
# of 40 items took 23.7 ms a batch. Two generations: the values read since the
# last swap, and those before; once the new one holds SCORED_KEPT characters
# of values (~3x that in memory), it becomes the old one, and the values read
# in neither are forgotten (a list rewritten is read again under its new value).
SCORED_KEPT = 8_000_000
_scored: list[dict[str, list[tuple[str, float]]]] = [{}, {}]
_scored_size = 0


def scored_lists(r: redis.Redis, list_keys: Sequence[str]) -> list[list[tuple[str, float]]]:
    """Each list's (product id, score) pairs, in order (``ranker.scored_ids``);
    none for a list Redis does not hold. Shared: not to be changed."""
    global _scored_size
    result = []
    for chunk in chunks(list(list_keys)):
        new, old = _scored
        for raw in r.mget(chunk):
            if not raw:
                result.append([])
                continue
            scored = new.get(raw)
            if scored is None:
                scored = old.get(raw)
                if scored is None:
                    scored = ranker.scored_ids(strategies.Ranked.of(_loads(raw)))
                new[raw] = scored
                _scored_size += len(raw)
            result.append(scored)
        # (after each chunk of CHUNK lists: a large batch's call holds many)
        if _scored_size > SCORED_KEPT:
            _scored[:] = [{}, new]
            _scored_size = 0
    return result


# -- committing a batch --------------------------------------------------------


@dataclasses.dataclass
class BatchChanges:
    """Everything one batch (or one partition of it) changes in the state.

    Weights are integers of ``1 / WEIGHT_UNITS``, expressed at the batch's
    landmark time (``learn``'s module docstring); :func:`commit` moves them to
    the clock.
    """

    counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    # (topic, partition) -> the next offset after the batch's last record, and
    # its first record's offset (the batch follows on from Redis, or not)
    offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    first_offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    # topic -> records read again that Redis holds already (left out)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    # (event id, topic, partition, offset) of the applied events, for de-duplication
    applied_ids: list[tuple[str, str, int, int]] = dataclasses.field(default_factory=list)
    # visitor -> their remembered items as the batch leaves them, as Redis
    # keeps them (orjson, encoded where they were scored: on the executors
    # for a large batch, not on the driver between batches)
    recent: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # product -> other product -> co-visitation weight
    pairs: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    popularity: dict[str, int] = dataclasses.field(default_factory=dict)
    # (window, bucket, category or "", product) -> weight
    trending: dict[tuple[str, int, str, str], int] = dataclasses.field(default_factory=dict)
    newest_ts: int = 0
    # visitor -> product -> ts_ms: what the batch adds to what they have seen
    # (not to show again), bought (new items, or later times)
    seen: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    bought: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # frequently bought together: product -> other product -> basket weight
    fbt: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # where visitors went next: product -> the product after it -> weight
    following: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # ...right after: product -> the very next product -> weight
    then: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # viewed within minutes: product -> other product -> weight
    session: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    purchases: dict[str, int] = dataclasses.field(default_factory=dict)
    # bandit field (a strategy for next-item trials, ``strategy:click`` for
    # impressions and their clicks) -> [successes, trials]
    rewards: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # visitor -> product -> "<strategy> <ts_ms>" of their last click on it in a
    # recommendation (whole values, the latest CLICKS_KEPT)
    clicked: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # the ranker's training examples from the batch's next-item trials
    examples: ranker.Examples = dataclasses.field(default_factory=ranker.Examples)
    # ``<strategy>:carts`` / ``<strategy>:purchases`` -> add-to-carts and
    # purchases of products clicked in that strategy's lists
    conversions: dict[str, int] = dataclasses.field(default_factory=dict)
    # the running experiment: its id, ``<arm>:impressions``/``<arm>:clicks``
    # -> count, and (arm, exposed/carted/purchased) -> visitors
    experiment_id: int | None = None
    experiment_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    experiment_visitors: dict[tuple[int, str], set[str]] = dataclasses.field(default_factory=dict)
    # how long the scoring took in Python (merged: the slowest partition's)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.examples, ranker.Examples):
            self.examples = ranker.Examples(self.examples)

    def in_experiment(self, experiment: experiments.Experiment, row: Any) -> None:
        """Count an applied event for the arm it belongs to: impressions and
        clicks by the arm their list was served to (its ``reco_id``),
        add-to-carts and purchases by the visitor's arm."""
        self.experiment_id = experiment.id
        if row.type in (schema.IMPRESSION, schema.CLICK):
            arm = experiments.arm_in(row.reco_id, experiment.id)
            if arm is None or arm >= len(experiment.arms):
                return
            name = "impressions" if row.type == schema.IMPRESSION else "clicks"
            field = f"{arm}:{name}"
            self.experiment_counts[field] = self.experiment_counts.get(field, 0) + 1
            name = "exposed" if row.type == schema.IMPRESSION else "clicked"
        elif row.type in (schema.ADD_TO_CART, schema.PURCHASE):
            arm = experiment.arm_of(row.visitor_id)
            name = "carted" if row.type == schema.ADD_TO_CART else "purchased"
        else:
            return
        member = experiments.member(experiment.id, row.visitor_id)
        self.experiment_visitors.setdefault((arm, name), set()).add(member)

    def converted(self, strategy: str, event_type: str) -> None:
        """An add-to-cart or purchase of a product clicked in ``strategy``'s list."""
        if strategy not in strategies.STRATEGIES:
            return
        field = f"{strategy}:{'purchases' if event_type == schema.PURCHASE else 'carts'}"
        self.conversions[field] = self.conversions.get(field, 0) + 1

    def next_item(self, strategy: str, success: bool) -> None:
        """A next-item trial of a strategy's list."""
        self._count(strategy, success, trial=True)

    def attributed(self, strategy: str, clicked: bool) -> None:
        """An impression (a trial) or a click on one (a success) from a strategy."""
        self._count(strategy + strategies.CLICK_SUFFIX, clicked, trial=not clicked)

    def _count(self, field: str, success: bool, *, trial: bool) -> None:
        if field.split(":")[0] not in strategies.STRATEGIES:
            return
        counts = self.rewards.setdefault(field, [0, 0])
        counts[0] += int(success)
        counts[1] += int(trial)

    def merge(self, other: BatchChanges) -> BatchChanges:
        """Add another partition's changes (partitions hold disjoint visitors)."""
        for key, offset in other.offsets.items():
            self.offsets[key] = max(self.offsets.get(key, 0), offset)
        for key, offset in other.first_offsets.items():
            self.first_offsets[key] = min(self.first_offsets.get(key, offset), offset)
        _add(self.skipped, other.skipped)
        self.applied_ids.extend(other.applied_ids)
        self.examples.extend(other.examples)
        self.newest_ts = max(self.newest_ts, other.newest_ts)
        self.seconds = max(self.seconds, other.seconds)
        # per visitor (a visitor is in one partition): whole values, or for
        # seen and bought, what the batch adds
        self.recent.update(other.recent)
        self.seen.update(other.seen)
        self.bought.update(other.bought)
        self.clicked.update(other.clicked)
        # sums
        for mine, theirs in (
            (self.counts, other.counts),
            (self.conversions, other.conversions),
            (self.popularity, other.popularity),
            (self.trending, other.trending),
            (self.purchases, other.purchases),
        ):
            _add(mine, theirs)
        for product_id, others in other.pairs.items():
            _add(self.pairs.setdefault(product_id, {}), others)
        for mine, theirs in (
            (self.fbt, other.fbt),
            (self.following, other.following),
            (self.then, other.then),
            (self.session, other.session),
        ):
            for product_id, others in theirs.items():
                _add(mine.setdefault(product_id, {}), others)
        if other.experiment_id is not None:
            self.experiment_id = other.experiment_id
            _add(self.experiment_counts, other.experiment_counts)
            for key, visitors in other.experiment_visitors.items():
                self.experiment_visitors.setdefault(key, set()).update(visitors)
        for field, (successes, trials) in other.rewards.items():
            counts = self.rewards.setdefault(field, [0, 0])
            counts[0] += successes
            counts[1] += trials
        return self

    def touched_products(self) -> list[str]:
        return sorted(self.pairs)

    def touched_baskets(self) -> list[str]:
        return sorted(self.fbt)

    def touched_followed(self) -> list[str]:
        return sorted(self.following)

    def touched_after(self) -> list[str]:
        return sorted(self.then)

    def touched_sessions(self) -> list[str]:
        return sorted(self.session)

    def touched_categories(self) -> list[str]:
        return sorted({category for _, _, category, _ in self.trending if category})

    def touched_visitors(self) -> list[str]:
        return sorted(self.recent)


def _add(mine: dict[Any, int], theirs: Mapping[Any, int]) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n


def commit(
    r: redis.Redis,
    lease: str,
    held: Mapping[tuple[str, int], int],
    batch: tuple[str, int],
    changes: BatchChanges,
    *,
    landmark_ms: int,
    clock_ms: int,
    previous_clock_ms: int,
    now_ms: int,
    settings: PipelineSettings,
    topic_ids: Mapping[str, str] | None = None,
    new_lives: Sequence[str] = (),
    catching_up: bool = False,
) -> int:
    """Apply ``changes`` (weights at ``landmark_ms``), move the clock to
    ``clock_ms`` and store the batch's offsets, in one transaction; the number
    of this commit (lists carry it).

    ``held`` is the offsets Redis held when the batch was scored: if Redis
    holds other offsets now (restored, failed over, written by another copy),
    nothing is written and :class:`recovery.Moved` is raised; if the job no
    longer holds the ``lease``, :class:`recovery.LeaseLost`. ``batch`` is the
    (query id, batch id), recorded for operators. ``topic_ids``: the life of
    each topic the offsets belong to; the offsets of ``new_lives`` (topics
    created again) are dropped first. ``catching_up``: the batch is larger
    than ``driver_batch_rows`` (its visitors' lists may be left owed:
    :func:`_visitor_lists`).
    """
    from .recovery import Moved, parse_field

    products = changes.touched_products()
    baskets = changes.touched_baskets()
    followed = changes.touched_followed()
    after = changes.touched_after()
    sessions = changes.touched_sessions()
    with r.pipeline(transaction=True) as pipe:
        watched = _watch_as_writer(pipe, lease, held)
        if watched is None:
            raise Moved("Redis's offsets changed while the batch was scored")
        owner, now_held = watched
        # Only the job writes these, and only under the lease: read here, they
        # are the values the batch builds on.
        clocks = {
            keys.product_clock(): pipe.hmget(keys.product_clock(), products) if products else [],
            keys.fbt_clock(): pipe.hmget(keys.fbt_clock(), baskets) if baskets else [],
            keys.next_clock(): pipe.hmget(keys.next_clock(), followed) if followed else [],
            keys.after_clock(): pipe.hmget(keys.after_clock(), after) if after else [],
            keys.session_clock(): pipe.hmget(keys.session_clock(), sessions) if sessions else [],
        }
        current_evidence = strategies.evidence_from(pipe.hgetall(keys.bandit()))
        seq = int(pipe.get(keys.pipeline_commit_seq()) or 0) + 1
        visitor_lists = _visitor_lists(pipe, seq, catching_up)
        learnt = _ranker_learnt(pipe, changes.examples, clock_ms, settings)
        expired_seen = _expired_seen(
            pipe,
            {tp: max(o, held.get(tp, 0)) for tp, o in changes.offsets.items()},
            settings,
        )
        # offsets only move forward (a batch read again may end below Redis's)
        changes.offsets = {
            tp: offset if tp[0] in new_lives else max(offset, held.get(tp, 0))
            for tp, offset in changes.offsets.items()
        }
        pipe.multi()
        if owner is None:
            # expired (Redis paused, restored): nobody took it, so it is ours
            # again (WATCH fails this commit if another copy takes it first)
            pipe.set(keys.pipeline_lease(), lease, px=settings.lease_ttl * 1000)
            pipe.incr(keys.pipeline_lease_epoch())
        old_life = [name for name in now_held if parse_field(name)[0] in set(new_lives)]
        if old_life:
            pipe.hdel(keys.pipeline_offsets(), *old_life)
        _write_changes(
            pipe,
            changes,
            clocks,
            landmark_ms,
            clock_ms,
            previous_clock_ms,
            now_ms,
            settings,
        )
        if expired_seen:
            pipe.delete(*expired_seen)
            pipe.zrem(keys.seen_index(), *expired_seen)
        if topic_ids:
            pipe.hset(keys.pipeline_topic_ids(), mapping=dict(topic_ids))
        if changes.rewards:
            updated = updated_evidence(current_evidence, changes.rewards, settings)
            pipe.hset(keys.bandit(), mapping={f: f"{s!r} {t!r}" for f, (s, t) in updated.items()})
            stats: dict[str, int] = {}
            for field_name, (successes, trials) in changes.rewards.items():
                strategy, _, click = field_name.partition(":")
                names = ("clicks", "impressions") if click else ("successes", "trials")
                stats[f"{strategy}:{names[0]}"] = successes
                stats[f"{strategy}:{names[1]}"] = trials
            for field_name, n in sorted(stats.items()):
                if n:
                    pipe.hincrby(keys.bandit_stats(), field_name, n)
        for field_name, n in sorted(changes.conversions.items()):
            pipe.hincrby(keys.bandit_stats(), field_name, n)
        if learnt is not None:
            model, weights, metrics = learnt
            pipe.set(keys.ranker_model(), model)
            pipe.set(keys.ranker_weights(), weights)
            # the weights' digest: the same weights, the same version
            pipe.set(keys.ranker_version(), hashlib.sha256(weights.encode()).hexdigest()[:16])
            if metrics:
                pipe.lpush(keys.ranker_metrics(), metrics)
                pipe.ltrim(keys.ranker_metrics(), 0, RANKER_METRICS_KEPT - 1)
        if changes.experiment_id is not None:
            for field_name, n in sorted(changes.experiment_counts.items()):
                pipe.hincrby(keys.experiment_counts(changes.experiment_id), field_name, n)
            for (arm, name), visitors in sorted(changes.experiment_visitors.items()):
                pipe.sadd(
                    keys.experiment_visitors(changes.experiment_id, arm, name), *sorted(visitors)
                )
        skipped = sum(changes.skipped.values())
        if skipped:
            pipe.hincrby(keys.pipeline_recovery(), "records_skipped", skipped)
        _record_expired(
            pipe,
            {t: n for (t, status), n in changes.counts.items() if status == STATUS_EXPIRED and n},
        )
        owing = {
            strategies.SIMILAR: products,
            strategies.FBT: baskets,
            strategies.NEXT: followed,
            strategies.AFTER: after,
            strategies.SESSION: sessions,
        }
        for kind, touched in owing.items():
            if touched:
                # owed since the first commit that changed them (NX)
                pipe.zadd(keys.pipeline_owed(kind), dict.fromkeys(touched, seq), nx=True)
        touched_visitors = changes.touched_visitors()
        if visitor_lists == OWE and touched_visitors:
            for chunk in chunks(touched_visitors, 1000):
                pipe.zadd(keys.pipeline_visitors_owed(), dict.fromkeys(chunk, seq), nx=True)
        pipe.set(keys.pipeline_clock(), clock_ms)
        pipe.set(keys.pipeline_commit_seq(), seq)
        pipe.set(
            keys.pipeline_pending(),
            json.dumps(
                {
                    "query": batch[0],
                    "batch": batch[1],
                    "seq": seq,
                    "categories": changes.touched_categories(),
                    "visitors": touched_visitors,
                    "visitor_lists": visitor_lists,
                    "bandit": bool(changes.rewards),
                }
            ),
        )
        pipe.hset(keys.pipeline_committed_batch(), batch[0], batch[1])
        pipe.execute()
    return seq


# What a commit's lists do with the personal lists of its visitors (its
# pending record's "visitor_lists"): leave them owed, or write them and every
# one owed.
OWE, WRITE = "owe", "write"


def _visitor_lists(pipe: Any, seq: int, catching_up: bool) -> str:
    """Whether commit ``seq`` leaves its visitors' personal lists owed: when
    its batch catches up a backlog, unless the visitor owed longest has
    waited ``strategies.VISITOR_LISTS_DEFERRED_COMMITS``. Decided in the
    commit and kept in its pending record, so the lists written for it are
    the same however often they are (a job killed while writing them)."""
    if not catching_up:
        return WRITE
    first = pipe.zrange(keys.pipeline_visitors_owed(), 0, 0, withscores=True)
    if first and seq - int(first[0][1]) >= strategies.VISITOR_LISTS_DEFERRED_COMMITS:
        return WRITE
    return OWE


# commits whose ranker metrics are kept (keys.ranker_metrics)
RANKER_METRICS_KEPT = 500


def _ranker_learnt(
    pipe: Any,
    examples: ranker.Examples,
    clock_ms: int,
    settings: PipelineSettings,
) -> tuple[str, str, str | None] | None:
    """The ranker after the batch's examples, from the learner Redis holds
    (read under the commit's WATCH: a batch run again learns from the same
    model, so its weights come out bit-identical): its learner, its weights
    as served, and the model's log loss and AUC on the examples before it
    learnt them, at the batch's event-time clock (None when they lack a
    positive or a negative). None without examples. Nothing here depends on
    the wall clock or the commit's number: a batch run again writes the same."""
    if not examples:
        return None
    raw = pipe.get(keys.ranker_model())
    try:
        learner = ranker.Learner.from_dict(json.loads(raw) if raw else None)
    except (ValueError, TypeError, KeyError):
        logger.warning("the ranker's model in Redis is unreadable: it learns again from scratch")
        learner = ranker.Learner()
    # in their key order, sorted once (both would sort them)
    examples = examples.in_key_order()
    measured = ranker.evaluate(learner.weights(), examples)
    learner.learn(examples)
    weights = {
        "features": list(ranker.FEATURES),
        "weights": learner.weights(),
        "examples": learner.examples,
        "ranking": settings.ranking,
    }
    metrics = None
    if measured is not None:
        metrics = json.dumps({"clock": clock_ms, **measured}, sort_keys=True)
    return json.dumps(learner.to_dict()), json.dumps(weights), metrics


def _expired_seen(
    pipe: Any, offsets: Mapping[tuple[str, int], int], settings: PipelineSettings
) -> list[str]:
    """The de-duplication stretches of these partitions no later record can look in."""
    if not offsets:
        return []
    stretch = _seen_stretch(settings)
    oldest = {
        keys.seen_events(topic, partition, 0).rpartition(":")[0]: (
            (offset - settings.dedup_records) // stretch
        )
        for (topic, partition), offset in offsets.items()
    }
    return [
        key
        for key, bucket in pipe.zrange(keys.seen_index(), 0, -1, withscores=True)
        if bucket < oldest.get(key.rpartition(":")[0], -1)
    ]


def _watch_as_writer(
    pipe: Any, lease: str, held: Mapping[tuple[str, int], int]
) -> tuple[str | None, dict[str, str]] | None:
    """WATCH what a write of the state depends on: the lease's epoch (it changes
    when the lease changes hands, not when it is renewed) and the offsets.
    Raises :class:`recovery.LeaseLost` if another copy holds the lease; None if
    Redis holds other offsets than ``held``; else the lease's owner (None: it
    expired, nobody took it) and the offsets' fields."""
    from .recovery import LeaseLost, parse_field

    pipe.watch(keys.pipeline_lease_epoch(), keys.pipeline_offsets())
    owner = pipe.get(keys.pipeline_lease())
    if owner not in (lease, None):
        pipe.unwatch()
        raise LeaseLost("another copy of the job holds the lease")
    now_held = pipe.hgetall(keys.pipeline_offsets())
    if {parse_field(k): int(v) for k, v in now_held.items()} != dict(held):
        pipe.unwatch()
        return None
    return owner, now_held


def _record_expired(pipe: Any, by_topic: Mapping[str, int]) -> None:
    """When and where records last expired in Kafka before they were read."""
    if by_topic:
        pipe.hset(
            keys.pipeline_recovery(),
            "last_expired",
            json.dumps({"at": time.time(), "topics": dict(sorted(by_topic.items()))}),
        )


def advance(
    r: redis.Redis,
    lease: str,
    held: Mapping[tuple[str, int], int],
    offsets: Mapping[tuple[str, int], int],
    expired: Mapping[tuple[str, int], int],
) -> bool:
    """Move Redis's offsets of partitions where Kafka holds nothing more to read
    (``offsets``), counting what retention deleted there before it was read as
    expired; only under the lease and if Redis still holds ``held``. Whether done."""

    with r.pipeline(transaction=True) as pipe:
        if _watch_as_writer(pipe, lease, held) is None:
            return False
        pipe.multi()
        pipe.hset(
            keys.pipeline_offsets(),
            mapping={f"{t}:{p}": o for (t, p), o in sorted(offsets.items())},
        )
        by_topic: dict[str, int] = {}
        for (topic, _), n in expired.items():
            by_topic[topic] = by_topic.get(topic, 0) + n
        for topic, n in sorted(by_topic.items()):
            pipe.hincrby(keys.pipeline_counters(), f"{topic}:{STATUS_EXPIRED}", n)
        _record_expired(pipe, by_topic)
        pipe.execute()
    return True


def updated_evidence(
    evidence: Mapping[str, tuple[float, float]],
    rewards: Mapping[str, Sequence[int]],
    settings: PipelineSettings,
) -> dict[str, tuple[float, float]]:
    """Discounted evidence: the next-item evidence of every strategy fades by
    ``bandit_discount`` per trial occasion of the batch (an item judged: the
    most trials any one strategy had), the click evidence per impression of
    the batch; then the batch's successes and trials are added. Successes and
    trials are kept apart, so a click counted in a later batch than its
    impression adds a success, not a failure too."""
    result: dict[str, tuple[float, float]] = {}
    for clicks in (False, True):
        suffix = strategies.CLICK_SUFFIX if clicks else ""
        fields = [name + suffix for name in strategies.STRATEGIES]
        occasions = max((rewards.get(f, (0, 0))[1] for f in fields), default=0)
        if clicks:
            occasions = sum(rewards.get(f, (0, 0))[1] for f in fields)
        fade = settings.bandit_discount**occasions
        for field in fields:
            successes, trials = evidence.get(field, (0.0, 0.0))
            new_successes, new_trials = rewards.get(field, (0, 0))
            if not (successes or trials or new_successes or new_trials):
                continue
            result[field] = (
                round(successes * fade + new_successes, 9),
                round(trials * fade + new_trials, 9),
            )
    return result


# The pair sets of many products in one call: per product, what the pipeline
# would send as ZADD to the scratch set, ZUNIONSTORE (old weights faded, new
# ones added), ZREMRANGEBYRANK, DEL and EXPIRE, run by Redis on the same
# values (numbers travel as the text redis-py would send). Five commands a
# product, each packed and parsed by the client, were most of a small batch's
# commit.
_ADD_PAIRS = """
local spec = cjson.decode(ARGV[1])
local new_fade, kept, ttl, sets = spec[1], spec[2], spec[3], spec[4]
local scratch = KEYS[1]
for i, set in ipairs(sets) do
  local target = KEYS[i + 1]
  local members = set[2]
  for first = 1, #members, 2000 do
    redis.call('ZADD', scratch, unpack(members, first, math.min(first + 1999, #members)))
  end
  redis.call('ZUNIONSTORE', target, 2, target, scratch, 'WEIGHTS', set[1], new_fade)
  redis.call('ZREMRANGEBYRANK', target, 0, -kept - 1)
  redis.call('DEL', scratch)
  redis.call('EXPIRE', target, ttl)
end
return #sets
"""
# products per call of _ADD_PAIRS: Redis serves nothing else while it runs
PAIRS_CALL = 250


def _add_pairs(
    pipe: redis.client.Pipeline,
    pairs: Mapping[str, Mapping[str, int]],
    key: Callable[[str], str],
    clock_key: str,
    clocks: Sequence[str | None],
    clock_ms: int,
    new_fade: float,
    settings: PipelineSettings,
    half_life: int,
) -> None:
    """Old pair weights fade to the clock (by ``half_life``), new ones (at the
    landmark) are moved to the clock and added; the strongest
    ``neighbours_kept`` stay."""
    from .learn import decay

    products = sorted(pairs)
    if not products:
        return
    faded = [
        (product_id, decay(clock_ms, int(last), half_life) if last else 1.0)
        for product_id, last in zip(products, clocks, strict=True)
    ]
    for part in chunks(faded, PAIRS_CALL):
        sets = [
            [
                repr(fade),
                [t for b, u in pairs[p].items() for t in (repr(from_units(u)), b)],
            ]
            for p, fade in part
        ]
        spec = [repr(new_fade), settings.neighbours_kept, settings.product_ttl, sets]
        # EVAL, not EVALSHA: inside MULTI, a script Redis no longer holds
        # (SCRIPT FLUSH) would fail alone while the rest of the commit applied
        pipe.eval(
            _ADD_PAIRS,
            1 + len(part),
            keys.pipeline_scratch("delta"),
            *(key(p) for p, _ in part),
            orjson.dumps(spec),
        )
    pipe.hset(clock_key, mapping={p: clock_ms for p in products})


def _add_weights(
    pipe: redis.client.Pipeline, key: str, weights: Mapping[str, int], fade: float, new_fade: float
) -> None:
    """A fading sorted set (popularity, purchases): old weights fade, new ones are added."""
    scratch = keys.pipeline_scratch("delta")
    if weights or fade != 1.0:
        if weights:
            pipe.zadd(scratch, {p: from_units(u) for p, u in weights.items()})
        pipe.zunionstore(key, {key: fade, scratch: new_fade})
        pipe.delete(scratch)
        # Products nobody has touched for ~60 half-lives weigh nothing any more.
        pipe.zremrangebyscore(key, "-inf", 1e-18)


def _write_visitor_sets(pipe: redis.client.Pipeline, changes: BatchChanges, settings) -> None:
    for key, values, kept in (
        (keys.visitor_seen, changes.seen, settings.seen_kept),
        (keys.visitor_bought, changes.bought, settings.recent_items),
    ):
        # what the batch added (merged visitors' items too): the rest is in
        # Redis already, as the batch read it
        added = {key(v): dict(sorted(items.items())) for v, items in sorted(values.items())}
        bulk.add_and_trim(pipe, added, kept, settings.visitor_ttl)


def _write_changes(
    pipe: redis.client.Pipeline,
    changes: BatchChanges,
    clocks: Mapping[str, Sequence[str | None]],
    landmark_ms: int,
    clock_ms: int,
    previous_clock_ms: int,
    now_ms: int,
    settings: PipelineSettings,
) -> None:
    from .learn import decay, trending_windows

    counters: dict[str, int] = {}
    for (topic, status), n in changes.counts.items():
        counters[f"{topic}:{status}"] = counters.get(f"{topic}:{status}", 0) + n
        if status != STATUS_EXPIRED:
            counters[f"{topic}:read"] = counters.get(f"{topic}:read", 0) + n
    for field, n in sorted(counters.items()):
        pipe.hincrby(keys.pipeline_counters(), field, n)
    if changes.offsets:
        pipe.hset(
            keys.pipeline_offsets(),
            mapping={f"{t}:{p}": o for (t, p), o in sorted(changes.offsets.items())},
        )
    if changes.applied_ids:
        stretch = _seen_stretch(settings)
        by_bucket: dict[tuple[str, int, int], list[str]] = defaultdict(list)
        for event_id, topic, partition, offset in changes.applied_ids:
            by_bucket[topic, partition, offset // stretch].append(event_id)
        for key, ids in sorted((keys.seen_events(*b), ids) for b, ids in by_bucket.items()):
            for chunk in chunks(ids):
                pipe.sadd(key, *chunk)
            pipe.zadd(keys.seen_index(), {key: int(key.rpartition(":")[2])})
    recent = {
        keys.visitor_recent(visitor_id): encoded
        for visitor_id, encoded in sorted(changes.recent.items())
    }
    bulk.set_expiring(pipe, recent, settings.visitor_ttl)
    _write_visitor_sets(pipe, changes, settings)
    for visitor_id, clicked in sorted(changes.clicked.items()):
        pipe.delete(keys.visitor_clicked(visitor_id))
        if clicked:
            pipe.hset(keys.visitor_clicked(visitor_id), mapping=clicked)
            pipe.expire(keys.visitor_clicked(visitor_id), settings.attribution_window)

    # With no new weights the clock may stay before the landmark: nothing to move.
    def new_fade(half_life: int) -> float:
        # with no new weights the clock may stay before the landmark: nothing to move
        return decay(clock_ms, landmark_ms, half_life) if changes.newest_ts else 1.0

    for pairs, key, clock_key, half_life in (
        (changes.pairs, keys.product_covisits, keys.product_clock(), settings.half_life),
        (changes.fbt, keys.product_bought_with, keys.fbt_clock(), settings.half_life),
        (
            changes.following,
            keys.product_followed_by,
            keys.next_clock(),
            settings.next_half_life,
        ),
        (changes.then, keys.product_then, keys.after_clock(), settings.next_half_life),
        (
            changes.session,
            keys.product_session_with,
            keys.session_clock(),
            settings.next_half_life,
        ),
    ):
        _add_pairs(
            pipe,
            pairs,
            key,
            clock_key,
            clocks[clock_key],
            clock_ms,
            new_fade(half_life),
            settings,
            half_life,
        )
    fade = decay(clock_ms, previous_clock_ms, settings.half_life) if previous_clock_ms else 1.0
    _add_weights(pipe, keys.popularity(), changes.popularity, fade, new_fade(settings.half_life))
    _add_weights(pipe, keys.purchases(), changes.purchases, fade, new_fade(settings.half_life))
    ttls = {name: 2 * (window + bucket) for name, bucket, window in trending_windows(settings)}
    by_window: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (window, bucket, category, product_id), weight in sorted(changes.trending.items()):
        key = keys.trending_window_bucket(window, bucket, category)
        by_window[window].setdefault(key, {})[product_id] = from_units(weight)
    for window, increments in sorted(by_window.items()):
        bulk.increment(pipe, increments, ttls[window])


def commit_seq(r: redis.Redis) -> int:
    return int(r.get(keys.pipeline_commit_seq()) or 0)


_CONTINUE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""


def continue_commits(r: redis.Redis, last: int) -> int:
    """Number the next commit past ``last`` (the last this job made): a Redis
    restored from an older snapshot numbers from there, and a list task of a
    commit before the rewind would otherwise count as current."""
    return int(r.eval(_CONTINUE, 1, keys.pipeline_commit_seq(), last))


def pending(r: redis.Redis) -> dict[str, Any] | None:
    """The visitors' and global lists the last commit still owes, if it does
    (the product lists owed are in :func:`owed`)."""
    raw = r.get(keys.pipeline_pending())
    return json.loads(raw) if raw else None


def owed(r: redis.Redis, kind: str, limit: int | None) -> list[str]:
    """The first ``limit`` (None: all) products whose list of ``kind`` is
    owed: those whose pair weights changed longest ago first (by commit, then id)."""
    return r.zrange(keys.pipeline_owed(kind), 0, -1 if limit is None else limit - 1)


def visitors_owed(r: redis.Redis, limit: int | None = None) -> list[str]:
    """The first ``limit`` (None: all) visitors whose personal lists are
    owed, those owed longest first."""
    return r.zrange(keys.pipeline_visitors_owed(), 0, -1 if limit is None else limit - 1)


# the fields under which a pending record of an earlier version named the
# products whose lists it owed
LEGACY_PENDING = {
    "products": strategies.SIMILAR,
    "baskets": strategies.FBT,
    "followed": strategies.NEXT,
    "after": strategies.AFTER,
    "sessions": strategies.SESSION,
}


def owe_legacy(r: redis.Redis, todo: Mapping[str, Any]) -> None:
    """The product lists a pending record of an earlier version names, owed
    as this version owes them."""
    pipe = r.pipeline(transaction=False)
    for field, kind in LEGACY_PENDING.items():
        if todo.get(field):
            pipe.zadd(keys.pipeline_owed(kind), dict.fromkeys(todo[field], 0), nx=True)
    pipe.execute()


def lists_written(r: redis.Redis, seq: int) -> None:
    """Commit ``seq``'s lists are written: nothing is owed (unless a later commit is)."""
    with r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.pipeline_pending())
            owed = pending(pipe)  # type: ignore[arg-type]
            if owed and int(owed.get("seq", 0)) <= seq:
                pipe.multi()
                pipe.delete(keys.pipeline_pending())
                pipe.execute()
            else:
                pipe.unwatch()
        except redis.WatchError:
            pass


# Batches kept in the history the admin's dashboard draws
HISTORY_KEPT = 720


def record_batch(r: redis.Redis, info: Mapping[str, Any]) -> None:
    """The last batch's id, time, size and step timings, for ``reco_status``,
    and a line of the batch history (``keys.pipeline_history``)."""
    pipe = r.pipeline(transaction=False)
    pipe.hset(
        keys.pipeline_last_batch(),
        mapping={
            k: json.dumps(v) if isinstance(v, dict) else ("" if v is None else v)
            for k, v in info.items()
        },
    )
    line = {
        name: info.get(name)
        for name in ("batch", "finished_at", "seconds", "rows", "freshness_ms", "applied_by_topic")
    }
    pipe.lpush(keys.pipeline_history(), json.dumps(line))
    pipe.ltrim(keys.pipeline_history(), 0, HISTORY_KEPT - 1)
    pipe.execute()


# -- derived lists -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Writer:
    """Who writes lists: the job's lease token and the commit they derive from."""

    lease: str
    seq: int


# SET each list only while no other writer holds the lease and no later commit has
# begun writing its lists: a task of an old batch, or of a copy of the job that
# lost its lease, cannot bring back an old list (or a forgotten visitor's).
# KEYS[3] is an owed set (keys.pipeline_owed) the products whose lists these
# are leave, in the same step: they are owed again only by a later commit.
_GUARDED_SET = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return -1 end
local seq = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') > seq then return -2 end
local written = #KEYS - 3
for i = 1, written do
  redis.call('SET', KEYS[i + 3], ARGV[i + 4], 'EX', ARGV[3])
end
local done = tonumber(ARGV[4])
for first = 1, done, 1000 do
  local last = math.min(first + 999, done)
  redis.call('ZREM', KEYS[3], unpack(ARGV, written + 4 + first, written + 4 + last))
end
return written
"""


class StaleWriter(Exception):
    """A list write refused: the writer lost the lease or a later commit wrote."""


def write_lists(
    r: redis.Redis,
    key_values: Mapping[str, Any],
    ttl: int,
    writer: Writer | None = None,
    owed: tuple[str, Sequence[str]] | None = None,
) -> None:
    """SET each list (JSON) with ``ttl``; with a ``writer``, only as it may
    (raises :class:`StaleWriter` otherwise), and ``owed``: (the owed set,
    products) whose lists these are, no longer owed once all are written. The
    retraining writes its own lists without a writer."""
    items = list(key_values.items())
    if writer is None:
        for part in chunks(items):
            pipe = r.pipeline(transaction=False)
            bulk.set_expiring(pipe, {key: orjson.dumps(value) for key, value in part}, ttl)
            pipe.execute()
        return
    # (no owed set: a name no set has, and nothing leaves it)
    owed_key, done = owed if owed is not None else (keys.pipeline_owed("-"), ())
    if not items and not done:
        return
    script = _guarded_set(r)
    parts = list(chunks(items)) or [[]]
    for n, chunk in enumerate(parts, 1):
        # the products leave the owed set with the last part
        leaving = list(done) if n == len(parts) else []
        # ARGV[3] is the TTL, ARGV[4] how many leave; the values follow from
        # ARGV[5] (KEYS[i] <-> ARGV[i+1]), then those leaving
        result = script(
            keys=[
                keys.pipeline_lease(),
                keys.pipeline_commit_seq(),
                owed_key,
                *(k for k, _ in chunk),
            ],
            args=[
                writer.lease,
                writer.seq,
                ttl,
                len(leaving),
                *(orjson.dumps(v) for _, v in chunk),
                *leaving,
            ],
        )
        if int(result) < 0:
            raise StaleWriter(
                "the job lost its lease" if int(result) == -1 else "a later commit wrote its lists"
            )


@functools.cache
def _guarded_set(r: redis.Redis) -> Any:
    return r.register_script(_GUARDED_SET)


def notify(r: redis.Redis, visitor_ids: Sequence[str]) -> None:
    """Tell the websocket relay which visitors have a new list."""
    for chunk in chunks(list(visitor_ids), 500):
        r.publish(keys.updates_channel(keys.db_of(r)), json.dumps(list(chunk)))


def heartbeat(r: redis.Redis, info: Mapping[str, Any], ttl: int = keys.HEARTBEAT_TTL) -> None:
    r.set(keys.pipeline_heartbeat(), json.dumps({**info, "at": time.time()}), ex=ttl)
