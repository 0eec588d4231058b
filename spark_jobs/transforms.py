"""Pure DataFrame -> DataFrame transforms of the streaming job.

Tests call these directly on small DataFrames; ``spark_jobs.batch`` applies them
to each micro-batch read from Kafka.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from reco_plugin import schema, scoring
from reco_plugin.scoring import PipelineSettings

_TYPES = {
    "string": T.StringType(),
    "integer": T.IntegerType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "map<string,string>": T.MapType(T.StringType(), T.StringType()),
}

EVENT_STRUCT = T.StructType(
    [T.StructField(name, _TYPES[kind], True) for name, kind in schema.FIELDS]
)

# What ``classify`` returns, in this order (``spark_jobs.batch`` reads rows by position).
CLASSIFIED_COLUMNS = (
    "topic",
    "partition",
    "offset",
    "status",
    "event_id",
    "visitor_id",
    "product_id",
    "ts",
    "weight",
)
# The status of a well-formed event; the batch then decides what happens to it.
CANDIDATE = "candidate"


def _well_formed(e: Column) -> Column:
    def short_id(name: str) -> Column:
        value = e[name]
        return value.isNotNull() & (F.length(value) > 0) & (F.length(value) <= schema.MAX_ID_LENGTH)

    return (
        e.isNotNull()
        & (e["schema"] == schema.SCHEMA_VERSION)
        & e["type"].isin(*schema.EVENT_TYPES)
        & short_id("event_id")
        & short_id("visitor_id")
        & short_id("product_id")
        & (e["visitor_id"].startswith("u:") | e["visitor_id"].startswith("s:"))
        & e["ts"].isNotNull()
        & (e["ts"] > 0)
    )


def classify(raw: DataFrame, settings: PipelineSettings) -> DataFrame:
    """Kafka rows -> one row per record with its ``status`` and, if well formed,
    its fields.

    ``status`` is ``malformed`` (not schema-1 JSON) or ``candidate``; the
    batch then decides between applied, duplicate, too old and future
    (``spark_jobs.batch``). Nothing is filtered out: every record is counted by
    what the batch does with it. The plan holds no per-batch value (a literal
    such as the current time would make Spark generate and compile its code
    again for every batch).
    """
    e = F.from_json(F.col("value").cast("string"), EVENT_STRUCT)
    parsed = raw.select("topic", "partition", "offset", e.alias("e"))
    e = F.col("e")
    weight = F.lit(0.0)
    for event_type, w in settings.event_weights.items():
        weight = F.when(e["type"] == event_type, F.lit(float(w))).otherwise(weight)
    usable = _well_formed(e)
    return parsed.select(
        "topic",
        "partition",
        "offset",
        F.when(usable, F.lit(CANDIDATE)).otherwise(F.lit(scoring.STATUS_MALFORMED)).alias("status"),
        F.when(usable, e["event_id"]).alias("event_id"),
        F.when(usable, e["visitor_id"]).alias("visitor_id"),
        F.when(usable, e["product_id"]).alias("product_id"),
        F.when(usable, e["ts"]).alias("ts"),
        F.when(usable, weight).otherwise(0.0).alias("weight"),
    )
