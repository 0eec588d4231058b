"""Relays the pipeline's update notices to the ASGI processes serving websockets.

The Spark job does not import Django or Channels; after writing new lists it
publishes the touched visitor ids on a Redis channel (``keys.updates_channel``).
This relay, run as ``manage.py reco_push``, forwards each notice as one
channel-layer message to the group every websocket-serving process joins
(``keys.live_group``); each process then refreshes the sockets it has open for
those visitors (``reco_plugin.live``). A notice costs one message per process,
not one per visitor, and visitors without an open socket cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis
from channels.layers import get_channel_layer

from . import keys
from .redis_client import get_async_redis

logger = logging.getLogger(__name__)

# Most visitor ids in one channel-layer message (the pipeline's notices hold 500).
IDS_PER_MESSAGE = 1000


def visitors_of(data: bytes | str) -> list[str]:
    """The visitor ids of a notice, without repeats; empty for an unreadable one."""
    try:
        visitors = json.loads(data)
    except ValueError:
        logger.warning("reco_push: ignoring unreadable notice")
        return []
    if not isinstance(visitors, list):
        return []
    return list(dict.fromkeys(v for v in visitors if isinstance(v, str)))


async def relay_updates(stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set; survives Redis restarts by resubscribing."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("reco_push needs CHANNEL_LAYERS configured")
    while stop is None or not stop.is_set():
        r = get_async_redis()
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        try:
            db = keys.db_of(r)
            channel, group = keys.updates_channel(db), keys.live_group(db)
            await pubsub.subscribe(channel)
            logger.info("reco_push: relaying %s", channel)
            while stop is None or not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                visitors = visitors_of(message["data"])
                for start in range(0, len(visitors), IDS_PER_MESSAGE):
                    await layer.group_send(
                        group,
                        {
                            "type": "reco.updates",
                            "visitors": visitors[start : start + IDS_PER_MESSAGE],
                        },
                    )
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
