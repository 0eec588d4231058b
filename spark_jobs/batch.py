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
import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from reco_plugin import keys, schema, scoring
from reco_plugin.scoring import PipelineSettings

from . import learn, state
from .transforms import parse

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


def score_partition(
    rows: Iterable[Sequence[Any]],
    *,
    redis_url: str,
    settings: PipelineSettings,
    landmark_ms: int,
    now_ms: int,
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
    # Well-formed events in the time bounds, per visitor, as (topic, partition,
    # offset, event_id, visitor_id, product_id, ts, weight, previous visitor).
    by_visitor: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    oldest = now_ms - settings.horizon * 1000
    newest = now_ms + settings.future_tolerance * 1000
    for row in rows:
        topic, partition, offset, version, type_, event_id, visitor_id, product_id, ts = row[:9]
        previous = row[9]
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
        elif len(row) > 10 and row[10]:
            status = scoring.STATUS_DUPLICATE
        else:
            identify = type_ == schema.IDENTIFY
            by_visitor[visitor_id].append(
                (
                    topic,
                    partition,
                    offset,
                    event_id,
                    visitor_id,
                    product_id,
                    ts,
                    0.0 if identify else weights.get(type_, 0.0),
                    previous if identify else None,
                )
            )
            continue
        counts[(topic, status)] = counts.get((topic, status), 0) + 1

    def count(row: Sequence[Any], status: str) -> None:
        counts[(row[0], status)] = counts.get((row[0], status), 0) + 1

    # Within the batch the first record of an event id (in Kafka order) counts:
    # among the rows of this call here; across the executors' partitions the
    # later copies were marked beforehand (a ``later_copy`` column).
    firsts: dict[str, list[tuple[Any, ...]]] = {}
    ids: set[str] = set()
    for visitor_id in sorted(by_visitor):
        kept = []
        for row in sorted(by_visitor[visitor_id], key=lambda row: (row[0], row[1], row[2])):
            if row[3] in ids:
                count(row, scoring.STATUS_DUPLICATE)
            else:
                ids.add(row[3])
                kept.append(row)
        firsts[visitor_id] = kept
    already = state.seen(r, [row[3] for kept in firsts.values() for row in kept], now_ms, settings)
    learning = {v for v, kept in firsts.items() if any(row[7] > 0 or row[8] for row in kept)}
    learning.update(row[8] for kept in firsts.values() for row in kept if row[8])
    remembered = state.recent_items(r, sorted(learning))
    first_bucket = learn.trending_buckets_in_window(landmark_ms, settings)[0]
    pairs = changes.pairs
    # Sorted ids: an anonymous visitor's (``s:``) new items are known before a
    # user (``u:``) who was them is merged.
    for visitor_id, kept in firsts.items():
        applied = []
        for row in kept:
            if row[3] in already:
                count(row, scoring.STATUS_DUPLICATE)
            else:
                count(row, scoring.STATUS_APPLIED)
                applied.append(row)
                changes.applied_ids.append(row[3])
                changes.newest_ts = max(changes.newest_ts, row[6])
        interactions = [
            learn.Interaction(row[5], row[6], row[7], row[3]) for row in applied if row[7] > 0
        ]
        merged = [row[8] for row in applied if row[8]]
        if not interactions and not merged:
            continue
        previous = remembered.get(visitor_id, [])
        for other in merged:
            # Login: what the visitor did before becomes the user's history. The
            # pairs it taught were learnt then; only the memory moves.
            before = changes.recent.get(other, remembered.get(other, []))
            previous = learn.remember(
                previous, (learn.Interaction(*item, "") for item in before), settings.recent_items
            )
        learnt = learn.visitor_pairs(previous, interactions, settings, landmark_ms)
        for (a, b), weight in learnt.items():
            others = pairs.setdefault(a, {})
            others[b] = others.get(b, 0) + state.to_units(weight)
        changes.recent[visitor_id] = learn.remember(previous, interactions, settings.recent_items)
        for item in interactions:
            changes.popularity[item.product_id] = changes.popularity.get(
                item.product_id, 0
            ) + state.to_units(item.weight * learn.decay(landmark_ms, item.ts, settings.half_life))
            bucket = learn.trending_bucket(item.ts, settings.trending_bucket)
            if bucket >= first_bucket:
                key = (bucket, item.product_id)
                changes.trending[key] = changes.trending.get(key, 0) + state.to_units(item.weight)
    yield changes


# -- step 4: lists, derived from the committed state ------------------------------


def refresh_products(
    product_ids: Iterable[str], *, redis_url: str, settings: PipelineSettings
) -> None:
    """Rewrite the similar lists of these products from their neighbours."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = _redis(redis_url)
    for chunk in state.chunks(list(product_ids), 200):
        neighbours = state.neighbours(r, chunk, settings.neighbours_kept)
        wanted = [*chunk, *(other for pairs in neighbours.values() for other, _ in pairs)]
        pop = state.popularity(r, wanted)
        state.write_lists(
            r,
            {
                keys.product_similar(p): learn.similar_list(
                    p, neighbours[p], pop, settings.list_length
                )
                for p in chunk
            },
            settings.product_ttl,
        )


def refresh_visitors(
    visitor_ids: Iterable[str], *, redis_url: str, settings: PipelineSettings
) -> None:
    """Rewrite the personal lists of these visitors from their recent items."""
    keys.use_prefix(settings.key_prefix)  # also in a fresh executor process
    r = _redis(redis_url)
    similar: dict[str, list[tuple[str, float]]] = {}
    for chunk in state.chunks(list(visitor_ids), 500):
        recent = state.recent_items(r, chunk)
        missing = sorted({pid for items in recent.values() for pid, _, _ in items} - set(similar))
        for product_id, items in zip(
            missing, state.lists(r, [keys.product_similar(p) for p in missing]), strict=True
        ):
            similar[product_id] = [(str(i["product_id"]), float(i["score"])) for i in items]
        state.write_lists(
            r,
            {
                keys.visitor_recommendations(v): learn.personal_list(
                    recent[v], similar, settings.list_length, settings.recency_decay
                )
                for v in chunk
            },
            settings.visitor_ttl,
        )


def refresh_trending(r: redis.Redis, clock_ms: int, settings: PipelineSettings) -> None:
    buckets = [
        keys.trending_bucket(b) for b in learn.trending_buckets_in_window(clock_ms, settings)
    ]
    scratch = keys.pipeline_scratch("trending")
    pipe = r.pipeline(transaction=True)
    pipe.zunionstore(scratch, buckets)
    pipe.zrevrange(scratch, 0, settings.list_length - 1, withscores=True)
    pipe.delete(scratch)
    top = pipe.execute()[1]
    items = [{"product_id": pid, "score": round(score, 4)} for pid, score in top]
    state.write_lists(r, {keys.trending(): items}, settings.product_ttl)


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
        self.settings = settings
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

    def process(self, batch, batch_id: int) -> None:
        steps = Steps()
        settings = self.settings
        r = _redis(self.redis_url)
        query_id = self._query_id()
        fence = state.committed_batch(r, query_id)
        if fence is not None and fence >= batch_id:
            # Committed before a crash: only the lists may be missing.
            logger.info("batch %d was committed before; refreshing its lists", batch_id)
            self._redo_lists(r, query_id, batch_id, batch)
            return
        now_ms = state.batch_time(r, query_id, batch_id, schema.now_ms())
        previous_clock = state.clock(r)
        landmark_ms = landmark(previous_clock, now_ms, settings)
        options = {
            "redis_url": self.redis_url,
            "settings": settings,
            "landmark_ms": landmark_ms,
            "now_ms": now_ms,
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
        products, visitors = changes.touched_products(), changes.touched_visitors()
        self._lists(r, batch, products, visitors, clock_ms, steps, spread=not small)
        counts = {status: 0 for status in scoring.STATUSES}
        for (_, status), n in changes.counts.items():
            counts[status] += n
        self.last = {
            "batch": batch_id,
            "query": query_id,
            "finished_at": time.time(),
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

    def _partitions(self, batch) -> int:
        conf = batch.sparkSession.conf.get("spark.sql.shuffle.partitions")
        return int(conf) if conf else 2

    def _lists(
        self,
        r: redis.Redis,
        batch,
        products: Sequence[str],
        visitors: Sequence[str],
        clock_ms: int,
        steps: Steps,
        *,
        spread: bool,
    ) -> None:
        options = {"redis_url": self.redis_url, "settings": self.settings}
        run: Callable[[Callable[..., None], Sequence[str]], None]
        if spread:
            context = batch.sparkSession.sparkContext
            partitions = self._partitions(batch)

            def run(function, ids):
                if ids:
                    context.parallelize(list(ids), partitions).foreachPartition(
                        functools.partial(function, **options)
                    )
        else:

            def run(function, ids):
                function(ids, **options)

        with steps("similar"):
            run(refresh_products, products)
        with steps("personal"):
            run(refresh_visitors, visitors)
        with steps("trending"):
            refresh_trending(r, clock_ms, self.settings)
        with steps("notify"):
            state.notify(r, visitors)

    def _redo_lists(self, r: redis.Redis, query_id: str, batch_id: int, batch) -> None:
        todo = state.pending(r)
        if not todo or todo.get("query") != query_id or todo.get("batch") != batch_id:
            return
        self._lists(
            r,
            batch,
            todo["products"],
            todo["visitors"],
            state.clock(r),
            Steps(),
            spread=len(todo["products"]) + len(todo["visitors"]) > self.settings.driver_batch_rows,
        )
