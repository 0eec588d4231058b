"""The open websockets of this process, and the one listener that refreshes them.

The relay (``manage.py reco_push``) forwards each update notice of the
pipeline, a list of visitor ids, to one channel-layer group that every ASGI
process serving websockets joins: one message per process and notice,
however many visitors it names. Each process looks the visitors up among its
own open sockets (a dict lookup: visitors without a socket here cost
nothing) and reads their new lists in chunks, one thread hand-over per chunk
rather than per socket, sending each list as soon as its chunk is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from . import keys, store
from .redis_client import Unavailable, get_redis

logger = logging.getLogger(__name__)

# Lists read per thread hand-over: large enough that the hand-over is paid
# rarely, small enough that the first lists of a big notice go out early.
CHUNK = 32
# channels_redis forgets a group's members after a day (``group_expiry``);
# the listener joins again well before that.
REJOIN_SECONDS = 600.0
# After the channel layer failed (Redis down), wait this long before listening again.
RETRY_SECONDS = 1.0


class Socket(Protocol):
    """What the listener needs of a websocket consumer."""

    visitor_id: str | None
    product_id: str | None
    limit: int
    exclude: frozenset[str]

    def next_version(self) -> int: ...

    async def deliver(self, version: int, found: store.Served | None) -> None: ...


def read_lists(wanted: list[tuple[str, str | None, int, frozenset[str]]]) -> list[Any]:
    """Each visitor's list as served (or the :class:`Unavailable` raised for it),
    read one after another in the calling thread."""
    found: list[Any] = []
    for visitor_id, product_id, limit, exclude in wanted:
        try:
            found.append(store.recommend(visitor_id, product_id, limit, exclude=exclude))
        except Unavailable as exc:
            found.append(exc)
    return found


async def refresh(sockets: Iterable[Socket]) -> int:
    """Read and send the current list of every socket in ``sockets``; how many were sent."""
    pending = list(sockets)
    sent = 0
    for start in range(0, len(pending), CHUNK):
        chunk = pending[start : start + CHUNK]
        versions = [socket.next_version() for socket in chunk]
        found = await sync_to_async(read_lists, thread_sensitive=False)(
            [(s.visitor_id, s.product_id, s.limit, s.exclude) for s in chunk]  # type: ignore[misc]
        )
        for socket, version, served in zip(chunk, versions, found, strict=True):
            try:
                await socket.deliver(version, None if isinstance(served, Unavailable) else served)
            except Exception as exc:  # closed meanwhile: the others still get theirs
                logger.debug("reco: a live update was not sent (%s)", exc)
                continue
            sent += 1
    return sent


class LiveSockets:
    """This event loop's open sockets by visitor, and its listener on the relay's group.

    The listener runs while at least one socket is open: the first
    :meth:`add` starts it and waits until it has joined the group (so a
    notice sent after ``connect`` returns reaches the socket); the last
    :meth:`discard` stops it.
    """

    def __init__(self) -> None:
        self.by_visitor: dict[str, set[Socket]] = {}
        self._task: asyncio.Task[None] | None = None
        self._joined: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return sum(len(sockets) for sockets in self.by_visitor.values())

    async def add(self, socket: Socket) -> None:
        """Count ``socket`` in; raises what the channel layer raised when the
        listener could not join the relay's group."""
        assert socket.visitor_id
        self.by_visitor.setdefault(socket.visitor_id, set()).add(socket)
        if self._task is None or self._task.done():
            self._joined = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(self._listen(self._joined))
        try:
            await asyncio.shield(self._joined)  # type: ignore[arg-type]
        except BaseException:
            self.discard(socket, socket.visitor_id)
            raise

    def _remove(self, socket: Socket, visitor_id: str | None) -> None:
        sockets = self.by_visitor.get(visitor_id or "")
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.by_visitor[visitor_id or ""]

    def discard(self, socket: Socket, visitor_id: str | None) -> None:
        """Count ``socket`` (known as ``visitor_id``) out."""
        self._remove(socket, visitor_id)
        if not self.by_visitor and self._task is not None:
            self._task.cancel()
            self._task = None

    def moved(self, socket: Socket, previous: str | None) -> None:
        """``socket``'s visitor changed from ``previous`` (a login)."""
        self._remove(socket, previous)
        if socket.visitor_id:
            self.by_visitor.setdefault(socket.visitor_id, set()).add(socket)

    def sockets_of(self, visitors: Iterable[Any]) -> list[Socket]:
        found: list[Socket] = []
        for visitor in dict.fromkeys(v for v in visitors if isinstance(v, str)):
            found += self.by_visitor.get(visitor, ())
        return found

    async def _listen(self, joined: asyncio.Future[None]) -> None:
        layer = get_channel_layer()
        channel = None
        group = keys.live_group(keys.db_of(get_redis()))
        try:
            while True:
                try:
                    if channel is None:
                        channel = await layer.new_channel()
                    await layer.group_add(group, channel)
                    if not joined.done():
                        joined.set_result(None)
                    await self._receive(layer, channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the layer's Redis: down, refused, timed out
                    if not joined.done():
                        joined.set_exception(exc)
                        return
                    logger.warning("reco: live updates paused, channel layer failed (%s)", exc)
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(layer.group_discard(group, channel), 1.0)

    async def _receive(self, layer: Any, channel: str) -> None:
        """Handle notices until it is time to rejoin the group."""
        loop = asyncio.get_running_loop()
        rejoin_at = loop.time() + REJOIN_SECONDS
        while loop.time() < rejoin_at:
            try:
                message = await asyncio.wait_for(
                    layer.receive(channel), max(0.0, rejoin_at - loop.time())
                )
            except TimeoutError:
                return
            if message.get("type") == "reco.updates":
                sockets = self.sockets_of(message.get("visitors") or ())
                if sockets:
                    await refresh(sockets)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveSockets] = (
    weakref.WeakKeyDictionary()
)


def live_sockets() -> LiveSockets:
    """The running event loop's :class:`LiveSockets` (one per ASGI process)."""
    loop = asyncio.get_running_loop()
    live = _by_loop.get(loop)
    if live is None:
        live = _by_loop[loop] = LiveSockets()
    return live
