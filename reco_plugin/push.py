"""Relays the pipeline's update notices to the visitors' websocket groups.

The Spark job does not import Django or Channels; after writing new lists it
publishes the touched visitor ids on a Redis channel (``keys.updates_channel``).
This relay, run as ``manage.py reco_push``, turns each into a channel-layer
``group_send`` to the visitor's group, which reaches every open tab of theirs
on any ASGI worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis
from channels.layers import get_channel_layer

from . import keys
from .consumers import ONLINE_SECONDS
from .redis_client import get_async_redis

logger = logging.getLogger(__name__)


# group_send calls in flight at once: bounded so a large batch of updates
# cannot exhaust the channel layer's connection pool.
CONCURRENCY = 16


async def online(r, visitors: list[str]) -> list[str]:
    """The visitors of a notice with a socket open (seen within ``ONLINE_SECONDS``):
    one round trip for the whole notice."""
    visitors = [v for v in dict.fromkeys(visitors) if isinstance(v, str)]
    if not visitors:
        return []
    seen = await r.zmscore(keys.websocket_visitors(), visitors)
    since = time.time() - ONLINE_SECONDS
    return [v for v, at in zip(visitors, seen, strict=True) if at is not None and at >= since]


async def _send_all(layer, visitors: list[str]) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def send(visitor_id: str) -> None:
        async with limit:
            await layer.group_send(keys.visitor_group(visitor_id), {"type": "reco.update"})

    await asyncio.gather(*(send(v) for v in visitors))


async def _forget_closed(r) -> None:
    """Drop visitors whose sockets stopped saying they are open (the set stays small)."""
    await r.zremrangebyscore(keys.websocket_visitors(), "-inf", time.time() - ONLINE_SECONDS)


async def relay_updates(stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set; survives Redis restarts by resubscribing."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("reco_push needs CHANNEL_LAYERS configured")
    while stop is None or not stop.is_set():
        r = get_async_redis()
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        try:
            channel = keys.updates_channel(keys.db_of(r))
            await pubsub.subscribe(channel)
            logger.info("reco_push: relaying %s", channel)
            swept = 0.0
            while stop is None or not stop.is_set():
                if time.monotonic() - swept > ONLINE_SECONDS:
                    await _forget_closed(r)
                    swept = time.monotonic()
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                try:
                    visitors = json.loads(message["data"])
                except ValueError:
                    logger.warning("reco_push: ignoring unreadable notice")
                    continue
                listening = await online(r, visitors if isinstance(visitors, list) else [])
                await _send_all(layer, listening)
        except (ConnectionError, OSError, redis.RedisError) as exc:
            logger.warning("reco_push: Redis unavailable (%s); retrying in 1 s", exc)
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await r.aclose()


# A login must not wait long on a slow channel layer.
SEND_TIMEOUT_SECONDS = 1.0


def send_to_visitor(visitor_id: str, message: dict) -> None:
    """From sync code: ``message`` to every open websocket of ``visitor_id``
    (a no-op without a channel layer)."""
    from asgiref.sync import async_to_sync

    layer = get_channel_layer()
    if layer is None:
        return

    async def send() -> None:
        await asyncio.wait_for(
            layer.group_send(keys.visitor_group(visitor_id), message), SEND_TIMEOUT_SECONDS
        )

    async_to_sync(send)()
