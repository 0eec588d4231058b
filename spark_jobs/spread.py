"""A large micro-batch spread over the executors: partitioned so that the
records one call of :func:`score.score_partition` must see together are in
one partition, and scored there as the driver scores a small batch whole.

* **Logins.** A login joins two visitors: it merges what the anonymous
  visitor did before it, in this batch too, into the user's history. The
  batch's logins (a few rows) are collected first; every visitor they join,
  directly or through others, has one *owner* (:func:`owners`), joined on as
  a broadcast. The batch is then partitioned by owner: one shuffle.
* **Copies.** The first record of an event id (in Kafka order) is the one that
  counts. Each partition finds the repeated ids among its own records; an id
  in two partitions (a copy sent under another visitor) sends the batch
  through once more with the later copies marked by a window function
  (:func:`later_copy`, a shuffle by event id before the one by owner), and
  the first result is dropped.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from reco_plugin import schema

from . import state
from .score import EVENT_ID, score_partition
from .transforms import PARSED_COLUMNS

logger = logging.getLogger("spark_jobs.spread")


# SQL text: the batch's well-formed logins of an anonymous visitor
# (``schema.is_visitor_id``): ``visitor_id`` the user, ``previous`` them before.
# Text is one call over Py4J where Columns took a dozen; with the rows' JSON
# below as text too, 20,000 records with a function that only counts them
# took 0.664 s against 0.705 s a batch (medians of 7, alternate batches of one
# query on local[2]).
LOGS_IN = (
    f"coalesce(type = '{schema.IDENTIFY}' AND startswith(previous, 's:')"
    f" AND length(visitor_id) > 2 AND length(visitor_id) <= {schema.MAX_ID_LENGTH}"
    " AND (startswith(visitor_id, 'u:') OR startswith(visitor_id, 's:')), false)"
)


# a group of visitors joined by logins this large is logged (one partition
# scores it whole: a shared anonymous id, such as a cached session cookie,
# can join thousands)
LARGE_GROUP = 1000


def _log_largest(found: dict[str, str]) -> None:
    sizes = Counter(found.values())
    if sizes and max(sizes.values()) >= LARGE_GROUP:
        owner = max(sizes, key=lambda o: (sizes[o], o))
        logger.warning(
            "%d visitors are joined by logins in this batch (owner %s): one partition scores "
            "them all",
            sizes[owner],
            owner,
        )


def later_copy():
    """Column: the record repeats an event id seen earlier in the batch (Kafka order)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first_first = Window.partitionBy("event_id").orderBy("topic", "partition", "offset")
    return F.col("event_id").isNotNull() & (F.row_number().over(first_first) > 1)


def owners(logins: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each visitor of the batch's logins (user, anonymous visitor) -> the
    owner of the visitors those logins join, directly or through others (a
    chain, or one anonymous visitor who logged in as two users): the smallest
    of their ids."""
    owner: dict[str, str] = {}

    def find(visitor: str) -> str:
        root = visitor
        while owner.setdefault(root, root) != root:
            root = owner[root]
        while visitor != root:
            owner[visitor], visitor = root, owner[visitor]
        return root

    for user, anonymous in logins:
        first, second = sorted((find(user), find(anonymous)))
        owner[second] = first
    return {visitor: find(visitor) for visitor in list(owner)}


def as_json(*columns: str) -> str:
    """SQL text: a row's ``columns`` as one JSON object, in order, nulls kept.

    The rows reach Python as one string each, parsed by orjson, instead of
    a pickled ``Row`` of 15 fields: 20,000 records with a function that only
    counts them, without the cache and the logins' job, took 0.48 s against
    0.60 s a batch (medians, alternate batches of one query on local[2]).
    The values are the same Python values (strings, ints, booleans, None,
    and doubles as Java writes them, which read back to the same float), but
    for a double that is not a finite number: "NaN" or "Infinity", as a
    string. Scoring reads none."""
    fields = ", ".join(f"`{column}`" for column in columns)
    return f"to_json(struct({fields}), map('ignoreNullFields', 'false'))"


def _rows(records: Iterable[Sequence[str]]) -> list[tuple[Any, ...]]:
    """The rows :func:`as_json` wrote."""
    return [tuple(orjson.loads(record[0]).values()) for record in records]


def _with_ids(records: Iterable[Sequence[str]], **options: Any) -> Iterator[Any]:
    """A partition's changes, and the event ids it holds."""
    rows = _rows(records)
    ids = {row[EVENT_ID] for row in rows if row[EVENT_ID] is not None}
    for changes in score_partition(rows, **options):
        yield ids, changes


class Cached:
    """A large batch's parsed records, read from Kafka once for all that reads
    them (the logins, the scoring, a second scoring with copies marked, the
    event lake) and kept until :meth:`release`.

    They are read in at most as many tasks as there are partitions to score
    (on a cluster, shuffle_partitions: the executors' cores), not one task a
    Kafka partition (24-60): 20,000 records with a function that only counts
    them took 0.85 s against 1.19 s a batch (medians, alternate batches of
    one query on local[2]). Where a record is read has no bearing on where it
    is scored: the shuffle by owner decides that."""

    def __init__(self, parsed, partitions: int) -> None:
        self.parsed, self.partitions = parsed, partitions
        self._cached = None

    def get(self):
        if self._cached is None:
            from pyspark import StorageLevel

            self._cached = self.parsed.coalesce(self.partitions).persist(
                StorageLevel.MEMORY_AND_DISK
            )
        return self._cached

    def release(self) -> None:
        """The cache dropped; a failure to (Spark stopping) is logged, not
        raised: it must not hide why the batch ended."""
        cached, self._cached = self._cached, None
        if cached is not None:
            try:
                cached.unpersist()
            except Exception as exc:
                logger.warning("a batch's cached records were not released: %s", exc)


def score_spread(cached: Cached, **options: Any) -> list[state.BatchChanges]:
    """Each partition's changes (:func:`score.score_partition` of whole
    owners), merged by the caller."""
    from pyspark.sql import functions as F

    parsed, partitions = cached.get(), cached.partitions
    found = owners(parsed.where(LOGS_IN).select("visitor_id", "previous").collect())
    _log_largest(found)
    if found:
        table = parsed.sparkSession.createDataFrame(
            sorted(found.items()), "visitor string, owner string"
        )
        keyed = parsed.join(
            F.broadcast(table), parsed["visitor_id"] == table["visitor"], "left"
        ).select(*PARSED_COLUMNS, F.coalesce("owner", "visitor_id").alias("owner"))
        owner = "owner"
    else:  # every visitor their own owner
        keyed, owner = parsed, "visitor_id"
    parts = (
        keyed.repartition(partitions, owner)
        .selectExpr(as_json(*PARSED_COLUMNS))
        .rdd.mapPartitions(functools.partial(_with_ids, **options))
        .collect()
    )
    total = sum(len(ids) for ids, _ in parts)
    distinct = len(set().union(*(ids for ids, _ in parts)))
    if distinct == total:
        return [changes for _, changes in parts]
    logger.info(
        "an event id in two partitions (%d ids): the batch is scored again, its copies marked",
        total - distinct,
    )
    marked = (
        keyed.withColumn("later_copy", later_copy())
        .repartition(partitions, owner)
        .selectExpr(as_json(*PARSED_COLUMNS, "later_copy"))
        .rdd.mapPartitions(functools.partial(_with_ids, **options))
        .collect()
    )
    return [changes for _, changes in marked]
