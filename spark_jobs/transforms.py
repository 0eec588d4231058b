"""Pure DataFrame -> DataFrame transforms of the streaming job.

Tests call these directly on small DataFrames; ``spark_jobs.batch`` applies them
to each micro-batch read from Kafka.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from reco_plugin import schema

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

# What ``parse`` returns, in this order (``spark_jobs.batch`` reads rows by position).
PARSED_COLUMNS = (
    "topic",
    "partition",
    "offset",
    "schema",
    "type",
    "event_id",
    "visitor_id",
    "product_id",
    "ts",
    "previous",
    "category",
    "strategy",
    "reco_id",
    "position",
    "propensity",
)

# The projections as SQL text, built once: the plan is then analysed from one
# string per batch instead of dozens of Column objects sent over Py4J (~0.4 s a
# batch), and it holds no per-batch value, so Spark reuses its generated code.
_PARSE = (
    "topic",
    "partition",
    "offset",
    f"from_json(cast(value as string), '{EVENT_STRUCT.simpleString()}') as e",
)
_FIELDS = (
    *PARSED_COLUMNS[:3],
    *(f"e.{name}" for name in PARSED_COLUMNS[3:9]),
    # an identify event's earlier visitor
    f"e.context['{schema.PREVIOUS_VISITOR}'] as previous",
    "e.category",
    # how a recommended item was shown (impressions and clicks): the bandit's
    # rewards, and the event lake's record for offline evaluation
    "e.context['strategy'] as strategy",
    "e.context['reco_id'] as reco_id",
    "e.context['position'] as position",
    "cast(e.context['propensity'] as double) as propensity",
)


def parse(raw: DataFrame) -> DataFrame:
    """Kafka records -> one row per record: where it came from and the event's
    core fields, null where the value is not JSON of that shape.

    Nothing is filtered out: the batch counts every record by what it does with
    it (``reco_plugin.schema.has_valid_core`` decides what is malformed).
    """
    return raw.selectExpr(*_PARSE).selectExpr(*_FIELDS)
