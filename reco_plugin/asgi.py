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
the request's start signal, the shop's middleware chain (in sync mode: an
async-only middleware still runs on the event loop, as Django adapts it), the
same view, and the response's close (its end signal: the thread's database
connection is kept or closed as after any request); the event loop only
receives the request and sends the answer. The worker threads are the
handler's own (``read_threads``, 8 by default: with ``CONN_MAX_AGE`` above 0,
also the database connections they keep), so nothing else that uses the event
loop's default pool waits for them, nor they for it. A request is told apart
by resolving its path with ``ROOT_URLCONF``; every other request (the shop's
pages, its async views, the beacon's POSTs) goes through Django's async chain.

In the shop's ``asgi.py``::

    from reco_plugin.asgi import get_asgi_application

    django_asgi_app = get_asgi_application()   # instead of Django's
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import resolve, set_script_prefix

READ_METHODS = frozenset({"GET", "HEAD"})
READ_THREADS = 8


class ASGIHandler(DjangoASGIHandler):
    """Django's ASGI handler, with the plugin's reads in one thread hop."""

    def __init__(self, read_threads: int = READ_THREADS) -> None:
        from .api import views

        super().__init__()
        self._read_views = frozenset(
            {views.RecommendationsView, views.SimilarView, views.TrendingView}
        )
        self._sync_chain = BaseHandler()
        self._sync_chain.load_middleware(is_async=False)
        self._answer_in_thread = sync_to_async(
            self._answer,
            thread_sensitive=False,
            executor=ThreadPoolExecutor(read_threads, thread_name_prefix="reco-read"),
        )

    def is_read(self, method: str, path_info: str) -> bool:
        """Whether the request is a read of the plugin's API."""
        if method not in READ_METHODS:
            return False
        try:
            match = resolve(path_info)
        except Exception:  # no route, or a failing one: Django's chain answers it
            return False
        return getattr(match.func, "view_class", None) in self._read_views

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
        if response.streaming:
            # (a middleware's doing) closed once sent, as by Django: its end
            # signal then fires in another thread than the view's
            await sync_to_async(response.close)()
        return None

    def _answer(self, scope: dict[str, Any], body_file: Any) -> Any:
        """One read, start to end, in this (worker) thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self._sync_chain.get_response(request)
        response._handler_class = self.__class__
        if not response.streaming:
            # its content is kept: the end signal fires here, in the thread
            # whose database connection the request used
            response.close()
        return response


def get_asgi_application(read_threads: int = READ_THREADS) -> ASGIHandler:
    """:func:`django.core.asgi.get_asgi_application`, with the plugin's reads
    in one thread hop (:class:`ASGIHandler`) on ``read_threads`` threads."""
    django.setup(set_prefix=False)
    return ASGIHandler(read_threads)
