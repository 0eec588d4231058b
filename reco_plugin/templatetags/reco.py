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
from ..visitor import is_tracked, visitor_id_for

register = template.Library()
logger = logging.getLogger(__name__)
_widget_ids = itertools.count(1)
EMPTY_TEXT = _("No recommendations yet.")
UPDATED_TEXT = _("Recommendations updated.")


KINDS = ("for_you", "similar", "trending")


@register.inclusion_tag("reco_plugin/widget.html", takes_context=True)
def recommendations(
    context: template.Context,
    product: Any = None,
    limit: int | None = None,
    title: str = "Recommended for you",
    kind: str = "for_you",
    category: str | None = None,
    css: bool = True,
) -> dict[str, Any]:
    """Render a list server-side; the widget script keeps it live.

    ``kind``: ``for_you`` (the visitor's blend, in the context of ``product``
    if given; pushed over the websocket as it changes), ``similar`` (items
    related to ``product``) or ``trending`` (in ``category`` if given); the
    last two are the same for everyone and are refreshed by polling.
    ``css=False`` leaves out the link to the widget's stylesheet (the shop
    styles it). The markup is the templates ``reco_plugin/widget.html`` and
    ``reco_plugin/item.html``, which a shop may override.
    """
    if kind not in KINDS:
        raise template.TemplateSyntaxError(f"recommendations kind must be one of {KINDS}")
    request = context.get("request")
    limit = max(1, min(int(limit or reco_settings.DEFAULT_LIMIT), reco_settings.MAX_LIMIT))
    product_id = None if product is None else str(getattr(product, "pk", product))
    # a category given as a model instance, or too long for the API: as text, or none
    category = str(category)[:200] if category not in (None, "") else None
    if kind == "similar" and product_id is None:
        raise template.TemplateSyntaxError('recommendations kind="similar" needs product=')
    # what the page's earlier widgets show is not repeated by the visitor's list
    shown: list[str] = list(getattr(request, "_reco_shown", ())) if request is not None else []
    params: dict[str, str] = {}
    visitor_id = visitor_id_for(request) if request is not None and kind == "for_you" else None
    live = (
        kind == "for_you" and visitor_id is not None and request is not None and is_tracked(request)
    )
    if kind == "similar":
        api = reverse("reco_plugin:similar", args=[product_id])
    elif kind == "trending":
        api = reverse("reco_plugin:trending")
        params = {"category": category} if category else {}
    else:
        api = reverse("reco_plugin:recommendations")
        params = {"product": product_id} if product_id else {}
        if shown:
            params["exclude"] = ",".join(shown[: store.MAX_EXCLUDE])
    unavailable = False
    try:
        if kind == "similar":
            items = store.similar_to(product_id, limit)
        elif kind == "trending":
            items = store.trending(category, limit)
        else:
            items = store.recommend(visitor_id, product_id, limit, exclude=set(shown)).items
    except store.Unavailable:
        # Redis away (asked once per REDIS_RETRY_SECONDS): the page renders at
        # once with the last trending list, the widget fills in when it can.
        items = store.fallback(category, limit, {*shown, product_id} if product_id else set(shown))
        unavailable = not items
    except Exception:
        logger.exception("reco: could not read recommendations")
        items, unavailable = [], True
    if request is not None:
        request._reco_shown = list(dict.fromkeys([*shown, *(i["product_id"] for i in items)]))
    widget_id = f"reco-widget-{next(_widget_ids)}"
    if request is not None and css:
        # one stylesheet link per page, however many widgets it has
        css = not getattr(request, "_reco_css_linked", False)
        request._reco_css_linked = True
    config = {
        "kind": kind,
        "api": api,
        "params": params,
        "events": reverse("reco_plugin:events"),
        # only the visitor's own list is pushed; the others are polled
        # (and only when there is a visitor who may be tracked)
        "ws": reco_settings.WEBSOCKET_PATH if live else None,
        "product": product_id,
        "exclude": shown[: store.MAX_EXCLUDE] if kind == "for_you" else [],
        "limit": limit,
        "poll": reco_settings.POLL_INTERVAL_SECONDS,
        "empty": EMPTY_TEXT,
        "updated": UPDATED_TEXT,
        "csrf": get_token(request) if request is not None else "",
        # read at send time: a login elsewhere rotates the token
        "csrfCookie": None
        if settings.CSRF_USE_SESSIONS or settings.CSRF_COOKIE_HTTPONLY
        else settings.CSRF_COOKIE_NAME,
    }
    return {
        "items": items,
        "title": title,
        "kind": kind,
        "css": css,
        "empty_text": EMPTY_TEXT,
        # nothing could be read (not an empty shop): the block is hidden, not
        # "No recommendations yet.", until the widget reads a list
        "unavailable": unavailable,
        "config": config,
        "widget_id": widget_id,
        "config_element_id": f"{widget_id}-config",
    }
