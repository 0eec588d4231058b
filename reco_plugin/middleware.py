"""Emits a ``page_view`` event for every successful product page view."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

from . import schema
from .conf import reco_settings
from .events import emit
from .tracking import current_request
from .visitor import request_fields, visitor_id_for


def product_id_of(request: HttpRequest, response: HttpResponseBase) -> str | None:
    """The product a response showed, if it was a successful product page GET."""
    if request.method != "GET" or response.status_code != 200:
        return None
    match = getattr(request, "resolver_match", None)
    if match is None or match.url_name not in reco_settings.PRODUCT_VIEW_NAMES:
        return None
    product_id = match.kwargs.get(reco_settings.PRODUCT_URL_KWARG)
    return None if product_id is None else str(product_id)


def _context(request: HttpRequest) -> dict[str, str]:
    context = {"page": request.path[:512]}
    referrer = request.META.get("HTTP_REFERER")
    if referrer:
        # without its query and fragment, which may hold what a visitor typed
        context["referrer"] = referrer.split("#", 1)[0].split("?", 1)[0][:512]
    context.update(request_fields(request))
    return context


class RecoEventMiddleware:
    """Place after ``SessionMiddleware`` and ``AuthenticationMiddleware``.

    Cheap on the hot path: one dict lookup for non-product pages; for product
    pages, one non-blocking hand-over to the event backend. While the view
    runs, the request is known to the cart and order signals
    (``tracking.current_request``).
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if self.is_async:
            return self.__acall__(request)
        token = current_request.set(request)
        try:
            response = self.get_response(request)
        finally:
            current_request.reset(token)
        product_id = product_id_of(request, response)  # type: ignore[arg-type]
        if product_id is not None:
            visitor_id = visitor_id_for(request)
            if visitor_id:
                emit(schema.PAGE_VIEW, visitor_id, product_id, context=_context(request))
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        token = current_request.set(request)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        finally:
            current_request.reset(token)
        product_id = product_id_of(request, response)
        if product_id is not None:
            # The session may live in the database: read it off the event loop.
            visitor_id = await sync_to_async(visitor_id_for)(request)
            if visitor_id:
                emit(schema.PAGE_VIEW, visitor_id, product_id, context=_context(request))
        return response
