"""Batch retraining: item neighbours from the event lake's last N days, and
text neighbours from the catalog.

The streaming job appends every applied-looking event to the lake (Parquet,
partitioned by ``date``; ``lake_path``). This job reads the last ``--days``
days of it, drops repeated event ids (a batch Spark ran again appends twice),
and computes an item-kNN over visitors: two products are neighbours as often
as the same visitor interacted with both (each visitor's latest
``--items-per-visitor`` products, at most), cosine-normalised by how many
visitors each has. Each product's top ``list_length`` neighbours are written as
its ``retrained`` list, which the blend uses as one more strategy; the bandit
decides how much it counts. Long-lived and slow-changing tastes that the
streaming co-visits fade out of (a 7-day half-life) stay here.

It also writes each catalog product's ``content`` list: the products whose
title and description share its rarer words (TF-IDF cosine,
``learn.text_neighbours``), which a new product has before any behaviour.

Usage::

    python -m spark_jobs.retrain --lake var/lake --redis redis://127.0.0.1:6379/0 \\
        [--days 30] [--key-prefix reco:v1] [--config '{"list_length": 50}']

``python manage.py reco_retrain`` runs it with the shop's settings, and the
Celery task ``reco_plugin.retrain`` on a schedule (nightly by default).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from reco_plugin import keys, schema
from reco_plugin.scoring import PipelineSettings
from spark_jobs import learn, state
from spark_jobs.merchandise import read_merchandise
from spark_jobs.session import REDIS_URL_ENV, add_spark_arguments, build_session, spark_options

logger = logging.getLogger("spark_jobs.retrain")

# The columns the streaming job writes to the lake (``batch.LAKE_COLUMNS``).
ITEMS_PER_VISITOR = 50


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True, help="the event lake's path (lake_path)")
    parser.add_argument(
        "--redis",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"Redis URL the lists are written to (default ${REDIS_URL_ENV}: a URL with a "
        "password is better kept out of the command line)",
    )
    parser.add_argument("--days", type=int, default=30, help="how many days back to read")
    parser.add_argument("--items-per-visitor", type=int, default=ITEMS_PER_VISITOR)
    parser.add_argument("--key-prefix", default=None)
    parser.add_argument("--config", default=None, help="pipeline settings as JSON (partial)")
    add_spark_arguments(parser)
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error(f"the Redis URL: --redis or ${REDIS_URL_ENV}")
    args.spark = spark_options(parser, args)
    if args.days < 1 or args.items_per_visitor < 2:
        parser.error("--days must be >= 1 and --items-per-visitor >= 2")
    try:
        values = json.loads(args.config) if args.config else {}
        if args.key_prefix:
            values["key_prefix"] = args.key_prefix
        args.settings = PipelineSettings.from_mapping(values)
    except (ValueError, TypeError) as exc:
        parser.error(f"invalid pipeline settings: {exc}")
    return args


def neighbours(
    spark,
    lake: str,
    days: int,
    items_per_visitor: int,
    settings: PipelineSettings,
    depth: int | None = None,
):
    """DataFrame (product_id, other, score, rank) of each product's top
    ``depth`` neighbours (by default, as many as a list holds)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    since = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    weights = {t: w for t, w in settings.event_weights.items() if w > 0}
    events = (
        spark.read.parquet(lake)
        .where(F.col("date") >= F.lit(since))
        .where(F.col("type").isin(list(weights)))
        .where(F.col("product_id").isNotNull() & F.col("visitor_id").isNotNull())
        .dropDuplicates(["event_id"])
    )
    latest = Window.partitionBy("visitor_id").orderBy(F.col("ts").desc(), F.col("product_id"))
    items = (
        events.groupBy("visitor_id", "product_id")
        .agg(F.max("ts").alias("ts"))
        .withColumn("n", F.row_number().over(latest))
        .where(F.col("n") <= items_per_visitor)
        .select("visitor_id", "product_id")
        .cache()
    )
    audience = items.groupBy("product_id").agg(F.count("*").alias("visitors"))
    a, b = items.alias("a"), items.alias("b")
    pairs = (
        a.join(b, (F.col("a.visitor_id") == F.col("b.visitor_id")))
        .where(F.col("a.product_id") != F.col("b.product_id"))
        .groupBy(F.col("a.product_id").alias("product_id"), F.col("b.product_id").alias("other"))
        .agg(F.count("*").alias("together"))
    )
    own = audience.select(F.col("product_id"), F.col("visitors").alias("own"))
    theirs = audience.select(F.col("product_id").alias("other"), F.col("visitors").alias("theirs"))
    scored = (
        pairs.join(own, "product_id")
        .join(theirs, "other")
        .withColumn("score", F.col("together") / F.sqrt(F.col("own") * F.col("theirs")))
    )
    best = Window.partitionBy("product_id").orderBy(F.col("score").desc(), F.col("other"))
    return (
        scored.withColumn("rank", F.row_number().over(best))
        .where(F.col("rank") <= (depth or settings.list_length))
        .select("product_id", "other", "score", "rank")
    )


def catalog_texts(r) -> dict[str, str]:
    """Each synced product's title and description, from the catalog hashes."""
    ids = sorted(r.smembers(keys.catalog_index()))
    texts: dict[str, str] = {}
    for chunk in state.chunks(ids):
        pipe = r.pipeline(transaction=False)
        for product_id in chunk:
            pipe.hmget(keys.catalog_product(product_id), "title", "description")
        for product_id, (title, description) in zip(chunk, pipe.execute(), strict=True):
            text = " ".join(filter(None, (title, description)))
            if text:
                texts[product_id] = text
    return texts


def retrain(spark, args: argparse.Namespace) -> dict[str, Any]:
    """Compute and write the retrained lists; a summary of what was done."""
    settings = args.settings
    keys.use_prefix(settings.key_prefix)
    started = time.monotonic()
    if not Path(args.lake).exists() and "://" not in args.lake:
        raise LakeMissing(f"the event lake {args.lake} does not exist yet (no events appended)")
    logger.info("reading the last %d days of %s", args.days, args.lake)
    r = state.connect(args.redis)
    merchandise = read_merchandise(r)
    length = settings.list_length
    depth = merchandise.depth(length)
    rows = (
        neighbours(spark, args.lake, args.days, args.items_per_visitor, settings, depth)
        .orderBy("product_id", "rank")
        .collect()
    )
    lists: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        lists.setdefault(row.product_id, []).append(
            {"product_id": row.other, "score": round(float(row.score), 6)}
        )
    content = learn.text_neighbours(catalog_texts(r), depth)
    # each product's lists cut under the rules of its page
    categories = (
        state.catalog_facts(r, sorted({*lists, *content}))[0] if merchandise.by_category else {}
    )

    def cut(found: dict[str, list[dict[str, Any]]], key) -> dict[str, Any]:
        return {
            key(p): merchandise.shortlist(p, categories.get(p)).cut(items, length)
            for p, items in found.items()
        }

    # a list outlives a missed nightly run or two
    ttl = max(settings.product_ttl, 3 * 86_400)
    state.write_lists(r, cut(lists, keys.product_retrained), ttl)
    state.write_lists(r, cut(content, keys.product_content), ttl)
    summary = {
        "finished_at": time.time(),
        "seconds": round(time.monotonic() - started, 1),
        "days": args.days,
        "products": len(lists),
        "neighbours": len(rows),
        "content_products": len(content),
        "now_ms": schema.now_ms(),
    }
    r.set(keys.retrain_last(), json.dumps(summary))
    logger.info(
        "wrote the retrained lists of %d products in %.1f s", len(lists), summary["seconds"]
    )
    return summary


class LakeMissing(Exception):
    """Nothing to learn from yet: the streaming job has appended no events."""


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    r = state.connect(args.redis)
    keys.use_prefix(args.settings.key_prefix)
    # kept until the run ends: a run killed without a word stays "running",
    # which reco_status reports once it is older than any run should be
    _mark(r, keys.retrain_running(), {"pid": os.getpid(), "started_at": time.time()})
    spark = None
    try:
        spark = build_session(
            "reco-retrain",
            shuffle_partitions=args.settings.shuffle_partitions,
            kafka=False,
            **args.spark,
        )
        summary = retrain(spark, args)
    except LakeMissing as exc:
        # a shop with no events yet has nothing to retrain on: skipped, not failed
        _mark(r, keys.retrain_failed(), {"at": time.time(), "error": str(exc), "skipped": True})
        logger.warning("skipped: %s", exc)
        summary = {"skipped": str(exc), "now_ms": schema.now_ms()}
    except BaseException as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        _mark(r, keys.retrain_failed(), {"at": time.time(), "error": error})
        raise
    finally:
        if spark is not None:
            spark.stop()
        with contextlib.suppress(redis.RedisError):
            r.delete(keys.retrain_running())
    print(json.dumps(summary))
    return 0


def _mark(r, key: str, value: dict[str, Any]) -> None:
    """For ``reco_status``: a run started or failed (lost when Redis is down)."""
    try:
        r.set(key, json.dumps(value))
    except redis.RedisError as exc:
        logger.warning("could not record the run in Redis: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
