"""Redis key schema, shared by the Django app (readers) and the Spark jobs (writers).

Django-free. Every key the product reads or writes is built here; nothing else
formats a key string. All keys start with ``PREFIX`` so an operator can find,
count or flush them (``redis-cli --scan --pattern 'reco:v1:*'``).
"""

from __future__ import annotations

import hashlib

PREFIX = "reco:v1"

# Recommendation lists are JSON arrays of {"product_id", "score", "strategy"},
# best first, written whole by the pipeline.
LIST_TTL_SECONDS = 7 * 24 * 3600
VISITOR_TTL_SECONDS = 2 * 24 * 3600


def visitor_recommendations(visitor_id: str) -> str:
    """JSON list: the visitor's personal top list."""
    return f"{PREFIX}:visitor:{visitor_id}:recs"


def visitor_recent(visitor_id: str) -> str:
    """JSON list of [product_id, ts_ms, weight]: the visitor's most recent items, newest first."""
    return f"{PREFIX}:visitor:{visitor_id}:recent"


def product_similar(product_id: str) -> str:
    """JSON list: items related to a product (co-visitation)."""
    return f"{PREFIX}:product:{product_id}:similar"


def product_covisits(product_id: str) -> str:
    """Sorted set: other product -> accumulated co-visitation weight."""
    return f"{PREFIX}:product:{product_id}:covisits"


def popularity() -> str:
    """Sorted set: product -> accumulated interaction weight (all time)."""
    return f"{PREFIX}:popularity"


def trending_bucket(bucket_start_s: int) -> str:
    """Sorted set: product -> weight of interactions in one event-time bucket."""
    return f"{PREFIX}:trending:bucket:{bucket_start_s}"


def trending() -> str:
    """JSON list: the trending items over the trending window, best first."""
    return f"{PREFIX}:trending"


def trending_newest_bucket() -> str:
    """String: start (epoch s) of the newest event-time bucket seen; the trending window ends there."""
    return f"{PREFIX}:trending:newest-bucket"


def trending_scratch() -> str:
    """Sorted set: temporary union of the buckets inside the window (deleted after use)."""
    return f"{PREFIX}:trending:scratch"


def catalog_product(product_id: str) -> str:
    """Hash: a product's display fields (title, url, price, category, image, in_stock)."""
    return f"{PREFIX}:catalog:{product_id}"


def catalog_index() -> str:
    """Set: the ids of the products synced into the catalog hashes."""
    return f"{PREFIX}:catalog:ids"


def pipeline_offsets() -> str:
    """Hash: ``topic:partition`` -> next Kafka offset the pipeline has fully processed."""
    return f"{PREFIX}:pipeline:offsets"


def pipeline_heartbeat() -> str:
    """String (JSON, short TTL): the streaming job is up; its last progress."""
    return f"{PREFIX}:pipeline:heartbeat"


def updates_channel() -> str:
    """Pub/sub channel: the pipeline publishes a visitor id whenever that visitor's list changes."""
    return f"{PREFIX}:updates"


def visitor_group(visitor_id: str) -> str:
    """Channels group name for a visitor's websockets.

    Group names allow only ASCII letters, digits, ``-_.`` and fewer than 100
    characters, and a visitor id should not leak into the channel layer, so
    the id is hashed.
    """
    digest = hashlib.sha256(visitor_id.encode()).hexdigest()[:40]
    return f"reco.visitor.{digest}"


def warmup_done() -> str:
    """String: set once a history warm-up has been fully processed (its summary as JSON)."""
    return f"{PREFIX}:warmup:done"
