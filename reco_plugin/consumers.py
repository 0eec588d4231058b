"""The visitor's live channel (``ws /ws/reco/``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import keys, store
from .conf import reco_settings
from .live import live_sockets
from .metrics import PUSHES
from .redis_client import Unavailable
from .visitor import anonymous_id, is_tracked_scope, visitor_id_for_scope

logger = logging.getLogger(__name__)
_version_lock = threading.Lock()
_last_version = 0


def _next_version() -> int:
    """Microseconds since the epoch, strictly growing within the process: a
    list read later has a higher version, also after a reconnect to another worker."""
    global _last_version
    with _version_lock:
        _last_version = max(time.time_ns() // 1000, _last_version + 1)
        return _last_version


# Close codes in the application range (4000-4999).
CLOSE_NO_VISITOR = 4401
# The visitor logged out in this session: reconnect as who they are now.
CLOSE_VISITOR_CHANGED = 4409
# A bot, or a visitor who opted out: nothing personal is pushed; the widget polls.
CLOSE_NOT_TRACKED = 4403
# No channel layer: nothing can be pushed; the widget polls the API instead.
CLOSE_NO_PUSH = 4501
# Redis did not answer: the widget polls (and shows its fallback) and reconnects later.
CLOSE_UNAVAILABLE = 4503


async def _group_add(layer, group: str, channel: str) -> None:  # type: ignore[no-untyped-def]
    """``group_add``, waiting for a free connection when a burst of sockets
    has the layer's pool busy (redis-py refuses at once, it does not queue),
    and trying once more on a connection error: after the layer's Redis
    restarted, the pool's first connection is a stale one."""
    retried = False
    while True:
        try:
            return await layer.group_add(group, channel)
        except redis.exceptions.MaxConnectionsError:
            await asyncio.sleep(0.02)
        except redis.exceptions.ConnectionError:
            if retried:
                raise
            retried = True


class RecommendationsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes ``{"type": "recommendations", "version": v, "items": [...]}`` when
    the visitor's list changes; ``version`` grows with every list read, so a
    client keeps the newest when two arrive out of order.

    The client may send ``{"type": "subscribe", "product": "<id>", "limit": n}``
    to say which product page it is on; the pushed list is then the same blend
    the API returns for that product. ``{"type": "ping"}`` is answered with
    ``{"type": "pong"}`` (a client that hears nothing back polls instead).
    """

    visitor_id: str | None = None
    group: str | None = None
    sent_version = 0
    exclude: frozenset[str] = frozenset()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # also when the consumer ends without a disconnect (its channel
            # layer failed): the process's listener must not keep it
            if self.group:
                live_sockets().discard(self, self.visitor_id)

    async def connect(self) -> None:
        # The session may be stored in the database; resolve it off the loop.
        self.visitor_id = await database_sync_to_async(visitor_id_for_scope)(self.scope)
        # The session's anonymous id, also while logged in: it says which of a
        # user's sockets a logout in this session concerns.
        self.anonymous_id = await database_sync_to_async(anonymous_id)(self.scope.get("session"))
        if not self.visitor_id:
            # Accepted so the close code reaches the browser: the widget then
            # polls and does not reconnect.
            await self.accept()
            await self.close(code=CLOSE_NO_VISITOR)
            return
        if not await sync_to_async(is_tracked_scope, thread_sensitive=False)(self.scope):
            # a bot or a visitor who opted out: no personal pushes, no bookkeeping
            await self.accept()
            await self.close(code=CLOSE_NOT_TRACKED)
            return
        self.product_id: str | None = None
        self.limit: int = reco_settings.DEFAULT_LIMIT
        if self.channel_layer is None:
            # Accepted so the close code reaches the browser (a refused
            # handshake is only "1006" there).
            await self.accept()
            await self.close(code=CLOSE_NO_PUSH)
            return
        group = keys.visitor_group(self.visitor_id)
        try:
            await asyncio.wait_for(
                _group_add(self.channel_layer, group, self.channel_name),
                float(reco_settings.REDIS_TIMEOUT_SECONDS) * 4,
            )
        except (TimeoutError, OSError, redis.RedisError) as exc:
            logger.warning("reco: websocket refused, Redis unavailable (%s)", exc)
            await self.accept()
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.group = group
        await self.accept()
        try:
            # counted among this process's open sockets (once accepted: a push
            # never precedes the handshake), so the relay's notices reach it
            await asyncio.wait_for(
                live_sockets().add(self), float(reco_settings.REDIS_TIMEOUT_SECONDS) * 4
            )
        except (TimeoutError, OSError, redis.RedisError) as exc:
            logger.warning("reco: live updates unavailable (%s)", exc)
            await self.close(code=CLOSE_UNAVAILABLE)

    async def disconnect(self, code: int) -> None:
        if self.group:
            live_sockets().discard(self, self.visitor_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.channel_layer.group_discard(self.group, self.channel_name),
                    float(reco_settings.REDIS_TIMEOUT_SECONDS) * 4,
                )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})
            return
        if not isinstance(content, dict) or content.get("type") != "subscribe":
            await self.send_json(
                {"type": "error", "error": 'expected {"type": "subscribe"} or {"type": "ping"}'}
            )
            return
        product = content.get("product")
        limit = content.get("limit", reco_settings.DEFAULT_LIMIT)
        if product is not None and (not isinstance(product, str | int) or len(str(product)) > 64):
            await self.send_json({"type": "error", "error": "product must be a product id"})
            return
        if not isinstance(limit, int) or not 1 <= limit <= reco_settings.MAX_LIMIT:
            await self.send_json(
                {"type": "error", "error": f"limit must be 1..{reco_settings.MAX_LIMIT}"}
            )
            return
        exclude = content.get("exclude", [])
        if (
            not isinstance(exclude, list)
            or len(exclude) > store.MAX_EXCLUDE
            or not all(isinstance(i, str | int) and len(str(i)) <= 64 for i in exclude)
        ):
            await self.send_json(
                {"type": "error", "error": f"exclude must be up to {store.MAX_EXCLUDE} product ids"}
            )
            return
        self.product_id = None if product is None else str(product)
        self.limit = limit
        self.exclude = frozenset(str(i) for i in exclude)
        await self.send_recommendations()

    async def reco_update(self, event: dict[str, Any]) -> None:
        """Channel-layer message: the pipeline wrote a new list for this visitor."""
        await self.send_recommendations()

    async def reco_identify(self, event: dict[str, Any]) -> None:
        """Channel-layer message: this anonymous visitor logged in as ``event["visitor"]``."""
        visitor_id = event.get("visitor")
        if not isinstance(visitor_id, str) or not visitor_id.startswith("u:"):
            return
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        previous = self.anonymous_id = self.visitor_id
        self.visitor_id = visitor_id
        if self.group:
            live_sockets().moved(self, previous)
        self.group = keys.visitor_group(visitor_id)
        try:
            await asyncio.wait_for(
                _group_add(self.channel_layer, self.group, self.channel_name),
                float(reco_settings.REDIS_TIMEOUT_SECONDS) * 4,
            )
        except (TimeoutError, OSError, redis.RedisError):
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        await self.send_recommendations()

    async def reco_logout(self, event: dict[str, Any]) -> None:
        """Channel-layer message: the user logged out in the session ``event["previous"]``."""
        if event.get("previous") == self.anonymous_id:
            await self.close(code=CLOSE_VISITOR_CHANGED)

    def next_version(self) -> int:
        return _next_version()

    async def send_recommendations(self) -> None:
        version = self.next_version()
        try:
            found: store.Served | None = await sync_to_async(
                store.recommend, thread_sensitive=False
            )(self.visitor_id, self.product_id, self.limit, exclude=self.exclude)
        except Unavailable:
            found = None
        await self.deliver(version, found)

    async def deliver(self, version: int, found: store.Served | None) -> None:
        """Send ``found``, read as ``version``, unless a newer list went out
        already; None means Redis did not answer: the socket closes with 4503."""
        if found is None:
            PUSHES.labels("unavailable").inc()
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if version <= self.sent_version:
            return  # a newer read has been sent meanwhile
        self.sent_version = version
        await self.send_json(
            {
                "type": "recommendations",
                "version": version,
                "product": self.product_id,
                "source": found.source,
                "items": found.items,
            }
        )
        PUSHES.labels("sent").inc()
