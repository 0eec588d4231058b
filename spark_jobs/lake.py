"""The event lake: every well-formed record of a batch as Parquet, partitioned
by event date (UTC), which the retraining (``spark_jobs.retrain``) reads."""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .transforms import PARSED_COLUMNS

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
