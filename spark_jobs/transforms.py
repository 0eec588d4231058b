"""Pure DataFrame -> DataFrame transforms of the recommendation job.

Tests call these directly on small DataFrames; ``recommend.py`` wires them to
the Kafka source and the Redis writer.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from reco_plugin import schema, scoring

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

# A visitor's remembered items, as kept in Redis between micro-batches.
RECENT_STRUCT = T.StructType(
    [
        T.StructField("visitor_id", T.StringType(), False),
        T.StructField("product_id", T.StringType(), False),
        T.StructField("ts", T.LongType(), False),
        T.StructField("weight", T.DoubleType(), False),
    ]
)


def parse_events(raw: DataFrame, weights: Mapping[str, float] | None = None) -> DataFrame:
    """Kafka rows (binary ``value``) -> typed schema-1 events with ``event_time`` and ``weight``.

    Rows that are not valid schema-1 JSON are dropped here, so one bad producer
    cannot stop the job.
    """
    weights = dict(weights or scoring.EVENT_WEIGHTS)
    weight = F.lit(0.0)
    for event_type, w in weights.items():
        weight = F.when(F.col("type") == event_type, F.lit(float(w))).otherwise(weight)
    parsed = raw.select(F.from_json(F.col("value").cast("string"), EVENT_STRUCT).alias("e")).select(
        "e.*"
    )
    return (
        parsed.where(
            (F.col("schema") == schema.SCHEMA_VERSION)
            & F.col("type").isin(*schema.EVENT_TYPES)
            & F.col("event_id").isNotNull()
            & F.col("visitor_id").isNotNull()
            & F.col("product_id").isNotNull()
            & (F.col("ts") > 0)
        )
        .withColumn("event_time", F.timestamp_millis(F.col("ts")))
        .withColumn("weight", weight)
    )


def deduplicate(events: DataFrame, delay: str = "10 minutes") -> DataFrame:
    """Drop re-sent events (same ``event_id``) arriving within ``delay`` of event time."""
    return events.withWatermark("event_time", delay).dropDuplicatesWithinWatermark(["event_id"])


def interactions(events: DataFrame) -> DataFrame:
    """The events that say something about interest: (visitor_id, product_id, ts, weight)."""
    return events.where(F.col("weight") > 0).select(
        "visitor_id",
        "product_id",
        F.col("ts").cast("long").alias("ts"),
        F.col("weight").cast("double"),
    )


def covisitation_pairs(
    new: DataFrame,
    recent: DataFrame,
    *,
    recent_items: int = scoring.RECENT_ITEMS,
    window_seconds: int = scoring.COVISIT_WINDOW_SECONDS,
) -> DataFrame:
    """Item pairs a visitor interacted with close together: (product_id, other_id, weight).

    Each new interaction is paired with the visitor's previous ``recent_items``
    interactions (remembered ones from ``recent`` and earlier ones in ``new``)
    that happened at most ``window_seconds`` before it. Pairs are emitted in
    both directions and summed; the weight of a pair is the smaller of the two
    interactions' weights.
    """
    combined = new.withColumn("is_new", F.lit(True)).unionByName(
        recent.withColumn("is_new", F.lit(False))
    )
    order = Window.partitionBy("visitor_id").orderBy("ts", F.col("is_new").asc(), "product_id")
    ranked = combined.withColumn("rn", F.row_number().over(order))
    a = ranked.alias("a")
    b = ranked.where(F.col("is_new")).alias("b")
    joined = a.join(
        b,
        (F.col("a.visitor_id") == F.col("b.visitor_id"))
        & (F.col("a.rn") < F.col("b.rn"))
        & (F.col("b.rn") - F.col("a.rn") <= recent_items)
        & (F.col("b.ts") - F.col("a.ts") <= window_seconds * 1000)
        & (F.col("a.product_id") != F.col("b.product_id")),
    )
    weight = F.least(F.col("a.weight"), F.col("b.weight"))
    forward = joined.select(
        F.col("a.product_id").alias("product_id"),
        F.col("b.product_id").alias("other_id"),
        weight.alias("weight"),
    )
    backward = joined.select(
        F.col("b.product_id").alias("product_id"),
        F.col("a.product_id").alias("other_id"),
        weight.alias("weight"),
    )
    return (
        forward.unionByName(backward)
        .groupBy("product_id", "other_id")
        .agg(F.sum("weight").alias("weight"))
    )


def recent_items(
    new: DataFrame, recent: DataFrame, *, limit: int = scoring.RECENT_ITEMS
) -> DataFrame:
    """Each touched visitor's latest ``limit`` distinct items, newest first.

    Returns (visitor_id, items: array<struct<ts, product_id, weight>>).
    """
    touched = new.select("visitor_id").distinct()
    combined = new.unionByName(recent.join(touched, "visitor_id", "left_semi"))
    latest = combined.groupBy("visitor_id", "product_id").agg(
        F.max("ts").alias("ts"), F.max("weight").alias("weight")
    )
    return latest.groupBy("visitor_id").agg(
        F.slice(
            F.sort_array(F.collect_list(F.struct("ts", "product_id", "weight")), asc=False),
            1,
            limit,
        ).alias("items")
    )


def product_weights(new: DataFrame) -> DataFrame:
    """Interaction weight per product in this batch: (product_id, weight)."""
    return new.groupBy("product_id").agg(F.sum("weight").alias("weight"))


def trending_buckets(
    new: DataFrame, *, bucket_seconds: int = scoring.TRENDING_BUCKET_SECONDS
) -> DataFrame:
    """Interaction weight per product per event-time bucket: (bucket, product_id, weight)."""
    bucket = (F.floor(F.col("ts") / 1000 / bucket_seconds) * bucket_seconds).cast("long")
    return new.groupBy(bucket.alias("bucket"), "product_id").agg(F.sum("weight").alias("weight"))
