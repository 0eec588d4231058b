"""The visitor's live channel (``ws /ws/reco/``)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import keys, store
from .conf import reco_settings
from .visitor import anonymous_id, visitor_id_for_scope

# Close codes in the application range (4000-4999).
CLOSE_NO_VISITOR = 4401
# The visitor logged out in this session: reconnect as who they are now.
CLOSE_VISITOR_CHANGED = 4409


class RecommendationsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes ``{"type": "recommendations", "items": [...]}`` when the visitor's list changes.

    The client may send ``{"type": "subscribe", "product": "<id>", "limit": n}``
    to say which product page it is on; the pushed list is then the same blend
    the API returns for that product.
    """

    visitor_id: str | None = None
    group: str | None = None

    async def connect(self) -> None:
        # The session may be stored in the database; resolve it off the loop.
        self.visitor_id = await database_sync_to_async(visitor_id_for_scope)(self.scope)
        # The session's anonymous id, also while logged in: it says which of a
        # user's sockets a logout in this session concerns.
        self.anonymous_id = await database_sync_to_async(anonymous_id)(self.scope.get("session"))
        if not self.visitor_id:
            await self.close(code=CLOSE_NO_VISITOR)
            return
        self.product_id: str | None = None
        self.limit: int = reco_settings.DEFAULT_LIMIT
        self.group = keys.visitor_group(self.visitor_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "subscribe":
            await self.send_json({"type": "error", "error": 'expected {"type": "subscribe"}'})
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
        self.product_id = None if product is None else str(product)
        self.limit = limit
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
        self.anonymous_id = self.visitor_id
        self.visitor_id = visitor_id
        self.group = keys.visitor_group(visitor_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_recommendations()

    async def reco_logout(self, event: dict[str, Any]) -> None:
        """Channel-layer message: the user logged out in the session ``event["previous"]``."""
        if event.get("previous") == self.anonymous_id:
            await self.close(code=CLOSE_VISITOR_CHANGED)

    async def send_recommendations(self) -> None:
        items = await sync_to_async(store.recommendations_for, thread_sensitive=False)(
            self.visitor_id, self.product_id, self.limit
        )
        await self.send_json(
            {"type": "recommendations", "product": self.product_id, "items": items}
        )
