"""The shop's HTTP under ASGI, with the plugin's read endpoints answered in one
thread hop.

Under ASGI, Django runs each of the shop's sync-capable middleware (sessions,
CSRF, authentication, messages...) through ``sync_to_async`` twice, on the way
in and on the way out, a sync view once more, and the request's start and end
signals too: some twenty hand-overs between the event loop and a thread per
request. For the widget's reads, a pipelined Redis round trip and a little
arithmetic, they cost more than the work: measured by ``bench api_latency``,
the same request takes twice as long as under WSGI.

:class:`ASGIHandler` answers ``GET``/``HEAD`` of the recommendation, similar
and trending endpoints as a threaded WSGI server would: in one worker thread,
the request's start signal, the shop's whole middleware chain, the same view,
and the response's close (its end signal: the thread's database connection is
kept or closed as after any request); the event loop only receives the request
and sends the answer. Every other request (the shop's pages, its async views,
the beacon's POSTs) goes through Django's async chain as before.

In the shop's ``asgi.py``::

    from reco_plugin.asgi import get_asgi_application

    django_asgi_app = get_asgi_application()   # instead of Django's
"""

from __future__ import annotations

from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, resolve, set_script_prefix

READ_METHODS = frozenset({"GET", "HEAD"})


class OneHopReads:
    """For an async Django handler (a ``BaseHandler`` in async mode): the
    plugin's reads go through a sync middleware chain of their own, in one
    ``sync_to_async`` call; the rest through the handler's async chain."""

    _sync_chain: BaseHandler | None = None
    _read_views: frozenset[type] = frozenset()

    def sync_chain(self) -> BaseHandler:
        """The shop's middleware and views, in sync mode."""
        if self._sync_chain is None:
            chain = BaseHandler()
            chain.load_middleware(is_async=False)
            self._sync_chain = chain
        return self._sync_chain

    def is_read(self, method: str, path_info: str) -> bool:
        """Whether the request is a read of the plugin's API."""
        if method not in READ_METHODS:
            return False
        if not self._read_views:
            from .api import views

            self._read_views = frozenset(
                {views.RecommendationsView, views.SimilarView, views.TrendingView}
            )
        try:
            match = resolve(path_info)
        except Resolver404:
            return False
        return getattr(match.func, "view_class", None) in self._read_views

    async def get_response_async(self, request: Any) -> Any:
        if self.is_read(request.method, request.path_info):
            # as Django runs a sync view: in the request's own thread
            return await sync_to_async(self.sync_chain().get_response, thread_sensitive=True)(
                request
            )
        return await super().get_response_async(request)  # type: ignore[misc]


class ASGIHandler(OneHopReads, DjangoASGIHandler):
    """Django's ASGI handler, with the plugin's reads in one thread hop."""

    def __init__(self) -> None:
        super().__init__()
        self.sync_chain()
        self._answer_in_thread = sync_to_async(self._answer, thread_sensitive=False)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        prefix = get_script_prefix(scope)
        path_info = scope["path"].removeprefix(prefix) if prefix else scope["path"]
        if not self.is_read(scope["method"].upper(), path_info):
            return await super().handle(scope, receive, send)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return None
        try:
            response = await self._answer_in_thread(scope, body_file)
            await self.send_response(response, send)
        finally:
            body_file.close()
        if response.streaming:  # (a middleware's doing): closed once sent, as by Django
            await sync_to_async(response.close)()
        return None

    def _answer(self, scope: dict[str, Any], body_file: Any) -> Any:
        """One read, start to end, in this (worker) thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.sync_chain().get_response(request)
        response._handler_class = self.__class__
        if not response.streaming:
            # its content is kept: the end signal fires here, in the thread
            # whose database connection the request used
            response.close()
        return response


def get_asgi_application() -> ASGIHandler:
    """:func:`django.core.asgi.get_asgi_application`, with the plugin's reads
    in one thread hop (:class:`ASGIHandler`)."""
    django.setup(set_prefix=False)
    return ASGIHandler()
