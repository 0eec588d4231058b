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
from typing import Any

import redis
from channels.layers import get_channel_layer

from . import keys
from .redis_client import get_async_redis, shown_url

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
    db = keys.db_of(get_async_redis())  # no connection yet
    logger.info(
        "reco_push: relaying list updates from Redis %s, channel %s, to the channel layer %s, "
        "group %s",
        shown_url(),
        keys.updates_channel(db),
        layer_description(layer),
        keys.live_group(db),
    )
    lost = False
    while stop is None or not stop.is_set():
        r = get_async_redis()
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        try:
            db = keys.db_of(r)
            channel, group = keys.updates_channel(db), keys.live_group(db)
            await pubsub.subscribe(channel)
            if lost:
                logger.info("reco_push: Redis answers again; relaying %s", channel)
                lost = False
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
            lost = True
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await r.aclose()


def layer_description(layer: Any) -> str:
    """The channel layer's class, and for a Redis layer its servers (without
    passwords) and prefix, as the relay logs them."""
    name = f"{type(layer).__module__}.{type(layer).__qualname__}"
    hosts = getattr(layer, "hosts", None)
    if not hosts:
        return name
    addresses = []
    for host in hosts:
        if isinstance(host, dict) and "address" in host:
            address = host["address"]
            addresses.append(shown_url(address) if isinstance(address, str) else str(address))
        elif isinstance(host, dict) and "sentinels" in host:
            addresses.append(f"sentinels {host['sentinels']} ({host.get('master_name')})")
        else:
            addresses.append(str(host))
    prefix = getattr(layer, "prefix", None)
    return f"{name} at {', '.join(addresses)}" + (f", prefix {prefix!r}" if prefix else "")


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
