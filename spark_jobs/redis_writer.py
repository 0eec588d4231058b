"""Writing the job's results into Redis (keys from ``reco_plugin.keys``).

Plain Python on rows, no Spark and no Django: the driver calls these with
collected rows, and ``write_pairs`` also runs inside ``foreachPartition`` on the
Python workers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from reco_plugin import keys, scoring

PIPELINE_CHUNK = 1000
PUBLISH_CHUNK = 500


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_recent(r: redis.Redis, visitor_ids: Sequence[str]) -> list[tuple[str, str, int, float]]:
    """The remembered items of these visitors as (visitor_id, product_id, ts, weight) rows."""
    rows: list[tuple[str, str, int, float]] = []
    for chunk in _chunks(list(visitor_ids), PIPELINE_CHUNK):
        pipe = r.pipeline(transaction=False)
        for visitor_id in chunk:
            pipe.get(keys.visitor_recent(visitor_id))
        for visitor_id, raw in zip(chunk, pipe.execute(), strict=True):
            for product_id, ts, weight in json.loads(raw) if raw else []:
                rows.append((visitor_id, str(product_id), int(ts), float(weight)))
    return rows


def write_pairs(rows: Iterable[Any], redis_url: str) -> None:
    """Add co-visitation weights: rows of (product_id, other_id, weight)."""
    r = connect(redis_url)
    pipe = r.pipeline(transaction=False)
    pending = 0
    for row in rows:
        pipe.zincrby(
            keys.product_covisits(row["product_id"]), float(row["weight"]), row["other_id"]
        )
        pending += 1
        if pending >= PIPELINE_CHUNK:
            pipe.execute()
            pending = 0
    if pending:
        pipe.execute()
    r.close()


def write_popularity(r: redis.Redis, rows: Iterable[Any]) -> None:
    pipe = r.pipeline(transaction=False)
    for row in rows:
        pipe.zincrby(keys.popularity(), float(row["weight"]), row["product_id"])
    pipe.execute()


def write_trending(
    r: redis.Redis,
    rows: Sequence[Any],
    *,
    bucket_seconds: int = scoring.TRENDING_BUCKET_SECONDS,
    window_seconds: int = scoring.TRENDING_WINDOW_SECONDS,
    length: int = scoring.LIST_LENGTH,
) -> list[dict[str, Any]] | None:
    """Add this batch's bucket counts and rebuild the trending list over the window
    ending at the newest bucket seen (event time, so a replay of old traffic trends too)."""
    if not rows:
        return None
    pipe = r.pipeline(transaction=False)
    for row in rows:
        key = keys.trending_bucket(int(row["bucket"]))
        pipe.zincrby(key, float(row["weight"]), row["product_id"])
        # Buckets are summed only while inside the window; keep them a while longer.
        pipe.expire(key, max(window_seconds * 2, 3600))
    newest_key = keys.trending_newest_bucket()
    pipe.get(newest_key)
    *_, newest_raw = pipe.execute()
    newest = max([int(row["bucket"]) for row in rows] + ([int(newest_raw)] if newest_raw else []))
    buckets = [
        keys.trending_bucket(start)
        for start in range(newest - window_seconds + bucket_seconds, newest + 1, bucket_seconds)
    ]
    pipe = r.pipeline(transaction=False)
    pipe.set(newest_key, newest)
    scratch = keys.trending_scratch()
    pipe.zunionstore(scratch, buckets)
    pipe.zrevrange(scratch, 0, length - 1, withscores=True)
    pipe.delete(scratch)
    top = pipe.execute()[2]
    items = [{"product_id": pid, "score": round(score, 4)} for pid, score in top]
    r.set(keys.trending(), json.dumps(items), ex=keys.LIST_TTL_SECONDS)
    return items


def refresh_similar(
    r: redis.Redis, product_ids: Sequence[str], *, length: int = scoring.LIST_LENGTH
) -> int:
    """Rebuild the similar-items lists of these products from their co-visitation counts.

    Score = co-visitation weight / sqrt(popularity(a) * popularity(b)), so that
    items everybody views do not top every list.
    """
    written = 0
    for chunk in _chunks(list(product_ids), 200):
        pipe = r.pipeline(transaction=False)
        for product_id in chunk:
            pipe.zrevrange(keys.product_covisits(product_id), 0, length * 2 - 1, withscores=True)
        covisits = pipe.execute()
        wanted = sorted({pid for pairs in covisits for pid, _ in pairs} | set(chunk))
        pop = dict(zip(wanted, r.zmscore(keys.popularity(), wanted) if wanted else [], strict=True))
        pipe = r.pipeline(transaction=False)
        for product_id, pairs in zip(chunk, covisits, strict=True):
            own = pop.get(product_id) or 1.0
            scored = sorted(
                (
                    (other, weight / math.sqrt(own * (pop.get(other) or 1.0)))
                    for other, weight in pairs
                ),
                key=lambda item: -item[1],
            )[:length]
            items = [{"product_id": other, "score": round(score, 6)} for other, score in scored]
            pipe.set(keys.product_similar(product_id), json.dumps(items), ex=keys.LIST_TTL_SECONDS)
            written += 1
        pipe.execute()
    return written


def refresh_visitors(
    r: redis.Redis,
    visitors: Sequence[tuple[str, Sequence[tuple[int, str, float]]]],
    *,
    length: int = scoring.LIST_LENGTH,
    decay: float = scoring.RECENCY_DECAY,
) -> list[str]:
    """Store each visitor's recent items and rebuild their personal list.

    ``visitors`` holds (visitor_id, [(ts, product_id, weight), ...] newest first).
    A candidate's score sums, over the visitor's recent items, the item's
    similarity to it times the item's weight times ``decay`` per step back in
    time. Items the visitor already interacted with are left out.
    """
    similar_cache: dict[str, list[dict[str, Any]]] = {}
    needed = sorted({pid for _, items in visitors for _, pid, _ in items})
    for chunk in _chunks(needed, PIPELINE_CHUNK):
        pipe = r.pipeline(transaction=False)
        for product_id in chunk:
            pipe.get(keys.product_similar(product_id))
        for product_id, raw in zip(chunk, pipe.execute(), strict=True):
            similar_cache[product_id] = json.loads(raw) if raw else []
    updated: list[str] = []
    for chunk in _chunks(list(visitors), PIPELINE_CHUNK):
        pipe = r.pipeline(transaction=False)
        for visitor_id, items in chunk:
            seen = {pid for _, pid, _ in items}
            scores: dict[str, float] = {}
            for step, (_, product_id, weight) in enumerate(items):
                factor = weight * decay**step
                for candidate in similar_cache.get(product_id, []):
                    other = candidate["product_id"]
                    if other not in seen:
                        scores[other] = scores.get(other, 0.0) + factor * candidate["score"]
            top = sorted(scores.items(), key=lambda kv: -kv[1])[:length]
            recs = [{"product_id": pid, "score": round(score, 6)} for pid, score in top]
            recent = [[pid, int(ts), float(weight)] for ts, pid, weight in items]
            pipe.set(
                keys.visitor_recent(visitor_id), json.dumps(recent), ex=keys.VISITOR_TTL_SECONDS
            )
            pipe.set(
                keys.visitor_recommendations(visitor_id),
                json.dumps(recs),
                ex=keys.VISITOR_TTL_SECONDS,
            )
            updated.append(visitor_id)
        pipe.execute()
    return updated


def notify(r: redis.Redis, visitor_ids: Sequence[str]) -> None:
    """Tell the websocket relay which visitors have a new list."""
    for chunk in _chunks(list(visitor_ids), PUBLISH_CHUNK):
        r.publish(keys.updates_channel(), json.dumps(list(chunk)))


def record_progress(r: redis.Redis, progress: dict[str, Any]) -> None:
    """Store the Kafka offsets the pipeline has fully processed, and a heartbeat."""
    offsets: dict[str, int] = {}
    for source in progress.get("sources", []):
        end = source.get("endOffset")
        if isinstance(end, str):
            end = json.loads(end)
        for topic, partitions in (end or {}).items():
            for partition, offset in partitions.items():
                offsets[f"{topic}:{partition}"] = int(offset)
    pipe = r.pipeline(transaction=False)
    if offsets:
        pipe.hset(keys.pipeline_offsets(), mapping=offsets)
    pipe.set(
        keys.pipeline_heartbeat(),
        json.dumps(
            {
                "batch": progress.get("batchId"),
                "timestamp": progress.get("timestamp"),
                "rows": progress.get("numInputRows"),
            }
        ),
        ex=30,
    )
    pipe.execute()
