"""``{% load reco %}{% recommendations product=product limit=8 %}``"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from django import template
from django.conf import settings
from django.middleware.csrf import get_token
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from .. import store
from ..conf import reco_settings
from ..visitor import visitor_id_for

register = template.Library()
logger = logging.getLogger(__name__)
_widget_ids = itertools.count(1)
EMPTY_TEXT = _("No recommendations yet.")


@register.inclusion_tag("reco_plugin/widget.html", takes_context=True)
def recommendations(
    context: template.Context,
    product: Any = None,
    limit: int | None = None,
    title: str = "Recommended for you",
    css: bool = True,
) -> dict[str, Any]:
    """Render the visitor's recommendations server-side; the widget script keeps them live.

    ``product`` is a product instance or id (the page's product, if any);
    ``css=False`` leaves out the link to the widget's stylesheet (the shop
    styles it). The markup is the templates ``reco_plugin/widget.html`` and
    ``reco_plugin/item.html``, which a shop may override.
    """
    request = context.get("request")
    limit = int(limit or reco_settings.DEFAULT_LIMIT)
    product_id = None if product is None else str(getattr(product, "pk", product))
    visitor_id = visitor_id_for(request) if request is not None else None
    try:
        items = store.recommendations_for(visitor_id, product_id, limit)
    except store.Unavailable:
        # Redis away (asked once per REDIS_RETRY_SECONDS): the page renders at
        # once with the last trending list, the widget fills in when it can.
        items = store.fallback(None, limit, {product_id} if product_id else set())
    except Exception:
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
        "empty": EMPTY_TEXT,
        "csrf": get_token(request) if request is not None else "",
        # read at send time: a login elsewhere rotates the token
        "csrfCookie": None
        if settings.CSRF_USE_SESSIONS or settings.CSRF_COOKIE_HTTPONLY
        else settings.CSRF_COOKIE_NAME,
    }
    return {
        "items": items,
        "title": title,
        "css": css,
        "empty_text": EMPTY_TEXT,
        "config": config,
        "widget_id": widget_id,
        "config_element_id": f"{widget_id}-config",
    }
