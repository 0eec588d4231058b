"""``{% load reco %}{% recommendations product=product limit=8 %}``"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from django import template
from django.conf import settings
from django.middleware.csrf import get_token
from django.urls import reverse

from .. import store
from ..conf import reco_settings
from ..visitor import visitor_id_for

register = template.Library()
logger = logging.getLogger(__name__)
_widget_ids = itertools.count(1)


@register.inclusion_tag("reco_plugin/widget.html", takes_context=True)
def recommendations(
    context: template.Context,
    product: Any = None,
    limit: int | None = None,
    title: str = "Recommended for you",
) -> dict[str, Any]:
    """Render the visitor's recommendations server-side; the widget script keeps them live.

    ``product`` is a product instance or id (the page's product, if any).
    """
    request = context.get("request")
    limit = int(limit or reco_settings.DEFAULT_LIMIT)
    product_id = None if product is None else str(getattr(product, "pk", product))
    visitor_id = visitor_id_for(request) if request is not None else None
    try:
        items = store.recommendations_for(visitor_id, product_id, limit)
    except Exception:
        # Redis away: the page still renders, the widget fills in when it can.
        logger.exception("reco: could not read recommendations")
        items = []
    widget_id = f"reco-widget-{next(_widget_ids)}"
    config = {
        "api": reverse("reco_plugin:recommendations"),
        "events": reverse("reco_plugin:events"),
        "ws": reco_settings.WEBSOCKET_PATH,
        "product": product_id,
        "limit": limit,
        "poll": reco_settings.POLL_INTERVAL_SECONDS,
        "csrf": get_token(request) if request is not None else "",
        # read at send time: a login elsewhere rotates the token
        "csrfCookie": None
        if settings.CSRF_USE_SESSIONS or settings.CSRF_COOKIE_HTTPONLY
        else settings.CSRF_COOKIE_NAME,
    }
    return {
        "items": items,
        "title": title,
        "config": config,
        "widget_id": widget_id,
        "config_element_id": f"{widget_id}-config",
    }
