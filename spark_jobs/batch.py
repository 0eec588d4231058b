"""One micro-batch, from Kafka records to committed state and fresh lists: the
orchestration of the engine's stages, each in its own module.

The steps, each timed and reported in the last-batch record:

1. ``collect``: the records are parsed (``transforms.parse``) and at most
   ``driver_batch_rows + 1`` of them collected in one Spark job.
2. ``score`` (``spark_jobs.score``): every record below the offset Redis holds
   of its partition is left out (it is in the state already); every other gets
   its status (malformed, too old, future, duplicate, applied), and the applied
   events what they teach. A batch that fit in step 1 is scored on the driver; a
   larger one is partitioned by visitor (``spark_jobs.spread``) and scored on
   the executors, each partition returning its summed changes, which the
   driver merges (``merge``). ``score_in_python`` is the part of ``score``
   spent scoring in Python (the slowest partition's).
3. ``recovery`` (``spark_jobs.recovery``): a batch that starts past Redis's
   offsets means Redis lost state; the query is rewound to them. Records Kafka
   deleted before they were read are counted as expired.
4. ``lake`` (``spark_jobs.lake``): the batch's records to the event lake.
5. ``commit`` (``state.commit``): all state changes and the offsets in one Redis
   transaction, under the lease, if Redis still holds what the batch was
   scored against.
6. ``lists`` (``spark_jobs.lists``): the similar lists of the touched products,
   then trending, then the personal lists of the touched visitors, written
   whole (on the executors for a large batch; a batch catching up a backlog
   leaves the visitors' owed, :meth:`BatchProcessor._visitors_to_write`);
   then the relay is told which visitors changed. Lists a commit owes when
   the job dies are written by the next batch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis

from reco_plugin import experiments, keys, schema, scoring, strategies
from reco_plugin.scoring import PipelineSettings, parse_tuning

from . import lake, lists, recovery, spread, state
from .forgotten import ForgetLog
from .score import landmark, score_partition
from .transforms import parse

logger = logging.getLogger("spark_jobs.batch")


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
    """A Redis outage, raised here or (as text) from a Spark job's Python worker,
    or Redis's offsets moved under the batch: the batch is run again.

    A wrong password or ACL is not an outage (redis-py makes those connection
    errors too). A WatchError is retried: redis-py raises it for a connection
    lost during the commit, and a run again re-reads the offsets.
    """
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(
        exc,
        redis.ConnectionError
        | redis.TimeoutError
        | redis.BusyLoadingError
        | redis.WatchError
        | recovery.Moved,
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


# A large batch's lists of one kind are written on the executors when there are
# more than driver_batch_rows / SPREAD_SHARE of them (1,250 by default), else on
# the driver: a Spark job costs ~0.15 s, a list 45 µs (a product's) to 150 µs (a
# visitor's) here, so a few hundred products' lists take 9 ms on the driver.
SPREAD_SHARE = 4


class BatchProcessor:
    """The ``foreachBatch`` function. Redis outages are waited out with backoff;
    a Redis that lost state stops the query with :class:`recovery.Rewind`
    (``self.rewind``), a lost lease with :class:`recovery.LeaseLost`."""

    def __init__(
        self,
        redis_url: str,
        settings: PipelineSettings,
        *,
        kafka: recovery.KafkaLog | None = None,
        lease: recovery.Lease | None = None,
        forgets: ForgetLog | None = None,
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
        # when the last batch ended, or the query started (time.monotonic())
        self.ended: float | None = None
        # a batch is being processed (the idle job's writes give way to it)
        self.in_batch = False
        self.waiting_for_redis = False
        # The last batch was larger than driver_batch_rows: the job is catching
        # up, so the next batch goes to the executors without first collecting
        # what would not fit on the driver.
        self.catching_up = False
        self.kafka = kafka
        self.lease = lease
        self.forgets = forgets
        # Kafka's topic ids (the life of each topic the offsets belong to)
        self.topic_ids: dict[str, str] = {}
        # where the query stood before this batch (Spark's last progress)
        self.planned: Callable[[], Mapping[tuple[str, int], int]] = dict
        # set when a batch stops the query: to rewind, or because the lease is lost
        self.rewind: recovery.Rewind | None = None
        self.lease_lost = False
        # the offsets of the last rewind, until a batch has followed on from them
        self.rewound_to: dict[tuple[str, int], int] = {}
        # the number of this job's last commit (a rewind numbers on from it)
        self.last_seq = 0
        # a partition Redis holds nothing of is read from Kafka's earliest
        # (False: from wherever the query started, --starting-offsets latest)
        self.from_earliest = True

    def __call__(self, batch, batch_id: int) -> None:
        self.in_batch = True
        try:
            self._process_until_done(batch, batch_id)
        finally:
            self.in_batch = False

    def _process_until_done(self, batch, batch_id: int) -> None:
        delay = 0.5
        while True:
            try:
                self.process(batch, batch_id)
                self.waiting_for_redis = False
                return
            except recovery.Rewind as exc:
                self.rewind = exc
                raise
            except (recovery.LeaseLost, state.StaleWriter):
                self.lease_lost = True
                raise
            except Exception as exc:
                # raised in a list task on an executor, it arrives as Spark's text
                if "StaleWriter" in str(exc) or "LeaseLost" in str(exc):
                    self.lease_lost = True
                    raise
                if not is_transient(exc) or self.stopping.is_set():
                    raise
                moved = isinstance(exc, recovery.Moved | redis.WatchError)
                self.waiting_for_redis = not moved
                logger.warning(
                    "batch %d: %s; running it again in %.1f s",
                    batch_id,
                    "Redis's offsets or lease changed under it"
                    if moved
                    else f"Redis unavailable ({str(exc).splitlines()[0][:200]})",
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

    def _token(self) -> str:
        if self.lease is None:
            raise recovery.LeaseLost("the job runs without a lease")
        return self.lease.token

    def process(self, batch, batch_id: int) -> None:
        # a large batch's records, read from Kafka once for the scoring and the lake
        cached = spread.Cached(parse(batch), self._partitions(batch))
        try:
            self._process(batch, batch_id, cached)
        finally:
            cached.release()

    def _process(self, batch, batch_id: int, cached: spread.Cached) -> None:
        steps = Steps()
        r = state.client(self.redis_url)
        settings = self.apply_tuning(r)
        query_id = self._query_id()
        # when this batch first ran (kept for its re-runs): a visitor forgotten
        # since may have had their events scored by it, so its lists sweep them
        self.started_ms = state.batch_time(r, query_id, batch_id, schema.now_ms())
        # the tombstones of forgets Redis lacks, before any event is scored
        if self.forgets is not None:
            self.forgets.catch_up(r, settings)
        self.write_owed(r, batch)
        read = recovery.position(r)
        held = self._this_life(read)
        now_ms = self.started_ms
        previous_clock = state.clock(r)
        landmark_ms = landmark(previous_clock, now_ms, settings)
        rows: list[Any] = []
        parsed = cached.parsed
        if not self.catching_up:
            with steps("collect"):
                # One job: every partition gives at most driver_batch_rows + 1
                # rows (the session reads all partitions at once for a limit);
                # a batch that fits is complete on the driver. Each Kafka
                # partition with new records is a task of its own (up to 60:
                # five topics of 12), read here in as many tasks as the job
                # has partitions (measured under 200 events/s, alternate
                # batches of one run: 0.15 s a collect, against 0.20 s).
                rows = (
                    parsed.coalesce(self._partitions(batch))
                    .limit(settings.driver_batch_rows + 1)
                    .collect()
                )
        small = not self.catching_up and len(rows) <= settings.driver_batch_rows

        def scored(held: recovery.Position) -> state.BatchChanges:
            options = {
                "redis_url": self.redis_url,
                "settings": settings,
                "landmark_ms": landmark_ms,
                "now_ms": now_ms,
                "held": dict(held.offsets),
                "experiment": self.experiment,
            }
            if small:
                with steps("score"):
                    return next(score_partition(rows, **options))
            with steps("score"):
                parts = spread.score_spread(cached, **options)
            with steps("merge"):
                return functools.reduce(state.BatchChanges.merge, parts, state.BatchChanges())

        changes = scored(held)
        # the part of ``score`` spent in Python (on the executors: the slowest
        # partition's), the rest is Spark's: reading, partitioning, collecting
        steps.seconds["score_in_python"] = changes.seconds
        if changes.skipped:
            # Records read again: already applied, or a new life of their topic?
            renewed = self._new_lives(held)
            if renewed:
                held = held.without(renewed)
                changes = scored(held)
        size = sum(changes.counts.values()) + sum(changes.skipped.values())
        self.catching_up = size > settings.driver_batch_rows
        with steps("recovery"):
            self._judge(changes, held)
        clock_ms = max(previous_clock, changes.newest_ts)
        if not changes.counts and all(
            offset <= held.offsets.get(tp, 0) for tp, offset in changes.offsets.items()
        ):
            # read again, all of it in the state already: nothing to commit
            skipped = sum(changes.skipped.values())
            r.hincrby(keys.pipeline_recovery(), "records_skipped", skipped)
            logger.info("batch %d: %d records already applied, left out", batch_id, skipped)
            return
        fresh = [row for row in rows if row[2] >= held.offsets.get((row[0], row[1]), -1)]
        self._lake(cached, batch_id, steps, fresh if small else None)
        cached.release()  # read for the last time
        with steps("commit"):
            seq = state.commit(
                r,
                self._token(),
                read.offsets,
                (query_id, batch_id),
                changes,
                landmark_ms=landmark_ms,
                clock_ms=clock_ms,
                previous_clock_ms=previous_clock,
                now_ms=now_ms,
                settings=settings,
                topic_ids=self.topic_ids,
                new_lives=sorted({t for t, _ in read.offsets} - {t for t, _ in held.offsets}),
                catching_up=self.catching_up,
            )
        self.rewound_to = {}  # a batch followed on from the rewind
        self.last_seq = seq
        todo = state.pending(r) or {}
        products = self._lists(r, batch, todo, clock_ms, steps, spread=not small)
        visitors = todo.get("visitors", [])
        owed = None
        visitors_owed = None
        with contextlib.suppress(redis.RedisError):
            owed = sum(strategies.product_lists_owed(r).values())
            visitors_owed = strategies.visitor_lists_owed(r)
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
            "commit": seq,
            "finished_at": finished,
            # (none when the batch left its visitors' lists owed)
            "freshness_ms": None
            if visitors and todo.get("visitor_lists") == state.OWE
            else _freshness(finished, changes.newest_ts),
            "applied_by_topic": applied_by_topic,
            "seconds": steps.total(),
            "rows": size,
            "skipped": sum(changes.skipped.values()),
            "path": "driver" if small else "executors",
            **counts,
            "products": products,
            "products_owed": owed,
            "visitors": len(visitors),
            "visitors_owed": visitors_owed,
            "steps": steps.seconds,
        }
        self.ended = time.monotonic()
        with contextlib.suppress(redis.RedisError):
            state.record_batch(r, self.last)
        logger.info(
            "batch %d: %d rows (%d applied, %d duplicate, %d malformed, %d too old, %d future, "
            "%d already applied) on the %s, %d product lists (%s owed), %d visitors in %.3fs %s",
            batch_id,
            self.last["rows"],
            counts[scoring.STATUS_APPLIED],
            counts[scoring.STATUS_DUPLICATE],
            counts[scoring.STATUS_MALFORMED],
            counts[scoring.STATUS_TOO_OLD],
            counts[scoring.STATUS_FUTURE],
            self.last["skipped"],
            self.last["path"],
            products,
            owed,
            len(visitors),
            self.last["seconds"],
            steps.seconds,
        )

    def _judge(self, changes: state.BatchChanges, held: recovery.Position) -> None:
        """Whether the batch follows on from what Redis holds: raises
        :class:`recovery.Rewind` if Redis lost state; counts what Kafka
        deleted before it was read as expired."""
        verdict = recovery.judge(
            changes.first_offsets,
            held,
            self.kafka,
            planned=self.planned(),
            absent=self.rewound_to,
            from_earliest=self.from_earliest,
        )
        for (topic, partition), n in verdict.expired.items():
            logger.error(
                "%d records of %s:%d were deleted by Kafka's retention before the job read them",
                n,
                topic,
                partition,
            )
            key = (topic, scoring.STATUS_EXPIRED)
            changes.counts[key] = changes.counts.get(key, 0) + n

    def _this_life(self, read: recovery.Position) -> recovery.Position:
        """Redis's position without the offsets of a topic's earlier life."""
        old = [
            topic
            for topic, known in read.topic_ids.items()
            if topic in self.topic_ids and self.topic_ids[topic] != known
        ]
        if old:
            logger.warning(
                "topics %s were deleted and created again: their offsets in Redis are of "
                "their earlier life and start afresh",
                ", ".join(old),
            )
        return read.without(old) if old else read

    def _new_lives(self, held: recovery.Position) -> list[str]:
        """Topics Kafka now has a different id for than Redis (asked again of Kafka)."""
        if self.kafka is None:
            return []
        self.topic_ids = {**self.topic_ids, **self.kafka.topic_ids()}
        return [
            topic
            for topic, known in held.topic_ids.items()
            if topic in self.topic_ids and self.topic_ids[topic] != known
        ]

    def _lake(
        self, cached: spread.Cached, batch_id: int, steps: Steps, rows: list[Any] | None
    ) -> None:
        """The batch's events to the event lake: a small batch's new rows
        straight to a local lake's files (named by the batch, so a run again
        rewrites them), anything else with a Spark write (at least once); a
        large batch's from the records its scoring read and cached: read from
        Kafka again, 20,000 records took 1.05-1.42 s a batch, and 0.19-0.32 s
        from the cache (``bench spark_throughput`` with a lake)."""
        path = self.settings.lake_path
        if not path:
            return
        with steps("lake"):
            if rows is not None and lake.is_local(path):
                lake.write_lake_rows(rows, path, f"{self.query_id}-{batch_id:010d}")
            else:
                lake.append_to_lake(cached.parsed if rows is not None else cached.get(), path)

    def _partitions(self, batch) -> int:
        conf = batch.sparkSession.conf.get("spark.sql.shuffle.partitions")
        return int(conf) if conf else 2

    def _large(self, todo: Mapping[str, Any]) -> bool:
        return len(todo.get("visitors", [])) > self.settings.driver_batch_rows

    def write_owed(self, r: redis.Redis, batch=None) -> None:
        """The lists the last commit owes, if it does (a job died while writing
        them): before each batch, and when a job takes the lease, so a shop
        with no new events is not left with them."""
        owed = state.pending(r)
        if not owed:
            return
        logger.info("writing the lists batch %s owes", owed.get("batch"))
        # a record of an earlier version names the products it owes
        state.owe_legacy(r, owed)
        # derived from the state as it is now: as current as the last commit
        owed["seq"] = max(int(owed.get("seq", 0)), state.commit_seq(r))
        self._lists(r, batch, owed, state.clock(r), Steps(), spread=self._large(owed))

    def write_owed_at_start(self) -> None:
        """:meth:`write_owed` on the driver, before the query's first batch."""
        r = state.client(self.redis_url)
        self.apply_tuning(r)
        self.started_ms = schema.now_ms()
        self.write_owed(r)
        # the owed product lists wait for a second without a batch from here
        # too: a query starting again has a backlog to read first
        self.ended = time.monotonic()

    def write_owed_lists(self, busy: Callable[[], bool], visitors: bool = True) -> int:
        """The lists still owed, written while the job has no batch to run:
        the visitors' (``VISITORS_PER_ROUND`` at a time; unless not
        ``visitors``), then the products' (``product_lists_per_batch`` of each
        kind at a time), until none is owed or ``busy()`` (a batch started, the
        job stops, time is up); how many product lists were written. A batch
        that commits meanwhile makes the writes refused
        (:class:`state.StaleWriter`)."""
        r = state.client(self.redis_url)
        writer = state.Writer(self._token(), state.commit_seq(r))
        options = {"redis_url": self.redis_url, "settings": self.settings, "writer": writer}
        personal = 0
        while visitors and not busy():
            owed = state.visitors_owed(r, VISITORS_PER_ROUND)
            if not owed:
                break
            started_ms = schema.now_ms()
            lists.refresh_visitors(owed, **options, experiment=self._running_experiment())
            state.sweep_forgotten(r, owed, started_ms)
            state.notify(r, owed)
            personal += len(owed)
        if personal:
            logger.info("wrote %d visitors' owed lists between batches", personal)
        budget = self.settings.product_lists_per_batch
        write = functools.partial(lists.refresh_products, **options)
        rounds = -(-max(strategies.product_lists_owed(r).values(), default=0) // budget)
        written = 0
        for _ in range(rounds):
            if busy():
                break
            written += _write_owed(r, budget, write)
        return written

    def _running_experiment(self) -> experiments.Experiment | None:
        """The experiment staff scheduled, while it runs (its arms get their lists)."""
        experiment = self.experiment
        if experiment is not None and not experiment.running(int(time.time() * 1000)):
            return None
        return experiment

    def _visitors_to_write(self, r: redis.Redis, todo: Mapping[str, Any]) -> list[str]:
        """The visitors whose personal lists a commit (``todo``: its pending
        record) writes: none when the commit left them owed (its batch caught
        up a backlog: ``state._visitor_lists``); else its own, then every
        visitor owed.

        Left owed, a visitor's lists are written once for many batches: their
        newest events are further on in the backlog, and most visitors act in
        the batches that follow. The job writes them too once it is idle."""
        if todo.get("visitor_lists") == state.OWE:
            return []
        return list(dict.fromkeys([*todo.get("visitors", []), *state.visitors_owed(r)]))

    def _lists(
        self,
        r: redis.Redis,
        batch,
        todo: dict[str, Any],
        clock_ms: int,
        steps: Steps,
        *,
        spread: bool,
    ) -> int:
        """The lists a committed batch changes (``todo``: its pending record),
        then the record goes: nothing is owed any more but product lists past
        ``product_lists_per_batch`` of a kind, and the visitors' lists of a
        batch catching up (:meth:`_visitors_to_write`). How many product lists
        were written."""
        writer = state.Writer(self._token(), int(todo.get("seq", 0)))
        options = {"redis_url": self.redis_url, "settings": self.settings, "writer": writer}
        spread_over = self.settings.driver_batch_rows // SPREAD_SHARE

        def run(function, ids, **more):
            if not ids:
                return
            if spread and batch is not None and len(ids) > spread_over:
                batch.sparkSession.sparkContext.parallelize(
                    list(ids), self._partitions(batch)
                ).foreachPartition(functools.partial(function, **options, **more))
            else:
                function(ids, **options, **more)

        # A batch on the driver writes product_lists_per_batch of each kind at
        # most (its time is the freshness of the next); a large one (catching
        # up) all it owes, spread over the executors.
        limit = None if spread else self.settings.product_lists_per_batch
        with steps("similar"):
            products = _write_owed(r, limit, functools.partial(run, lists.refresh_products))
        # trending first: the visitors' affinity lists are read from it
        with steps("trending"):
            lists.refresh_trending(
                r, clock_ms, self.settings, todo.get("categories", []), writer=writer
            )
        with steps("personal"):
            visitors = self._visitors_to_write(r, todo)
            run(lists.refresh_visitors, visitors, experiment=self._running_experiment())
            # forgotten while this batch ran: what it wrote for them (its
            # commit's memories too, their lists owed or not) goes again
            state.sweep_forgotten(
                r, list(dict.fromkeys([*todo.get("visitors", []), *visitors])), self.started_ms
            )
        if todo.get("bandit"):
            with steps("policy"):
                lists.refresh_policy(r, writer.seq, self.settings)
        with steps("notify"):
            state.notify(r, visitors)
        state.lists_written(r, writer.seq)
        return products


# visitors' owed lists an idle job writes at a time (between its checks of busy())
VISITORS_PER_ROUND = 500


def _write_owed(r: redis.Redis, limit: int | None, write: Callable[..., None]) -> int:
    """The product lists owed longest, ``limit`` of each kind (None: all),
    written by ``write(products, kind=...)``; how many."""
    written = 0
    # similar, fbt, next, after, session
    for kind in strategies.STREAMED_PRODUCT_LISTS:
        due = state.owed(r, kind, limit)
        if due:
            write(due, kind=kind)
        written += len(due)
    return written
