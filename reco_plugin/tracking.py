"""Server-side events beyond page views: carts, orders and logins.

- :func:`track` is the call for shops whose cart is not a model::

      reco_plugin.track(request, "add_to_cart", product, quantity=2)

- With ``RECO_PLUGIN["CART_MODEL"]`` / ``["ORDER_LINE_MODEL"]`` set, saving and
  deleting those models' rows emits ``add_to_cart`` / ``remove_from_cart`` /
  ``purchase`` (one per order line) by itself.
- Logging in emits ``identify``, linking the session's anonymous visitor to the
  user, and moves the visitor's open websockets over to the user.

Every event is handed over when the transaction commits: a rolled-back order
emits nothing.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.http import HttpRequest

from . import schema
from .conf import reco_settings
from .events import emit
from .visitor import (
    SESSION_KEY,
    anonymous_id,
    is_tracked,
    new_anonymous_id,
    request_fields,
    visitor_id_for,
)

logger = logging.getLogger(__name__)

# The request being served (set by RecoEventMiddleware), so a model signal
# knows whose cart changed.
current_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "reco_current_request", default=None
)

TRACKABLE_TYPES = frozenset(
    {schema.PAGE_VIEW, schema.CLICK, schema.ADD_TO_CART, schema.REMOVE_FROM_CART, schema.PURCHASE}
)


def _product_id(product: Any) -> str:
    return str(getattr(product, "pk", product))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value) if isinstance(value, int | float | Decimal) else float(str(value))


def on_commit(event: dict[str, Any], using: str = DEFAULT_DB_ALIAS) -> None:
    """Hand ``event`` to the backend when the current transaction commits (now,
    outside a transaction); dropped if it rolls back."""
    transaction.on_commit(lambda: _hand_over(event, using), using=using)


def track(
    request: HttpRequest | None,
    event_type: str,
    product: Any,
    *,
    quantity: int | None = None,
    price: Any = None,
    category: str | None = None,
    context: Mapping[str, Any] | None = None,
    visitor_id: str | None = None,
) -> dict[str, Any] | None:
    """Record that the request's visitor did ``event_type`` with ``product``.

    ``product`` is a product instance or its id. The event is emitted when the
    current database transaction commits (at once outside one). Returns the
    event, or None when the visitor is not tracked (bot, opted out, no session)
    or the input is invalid (logged, never raised: tracking must not break a
    shop's view). ``visitor_id`` is for code without a request (a task); it is
    taken from the request otherwise.
    """
    if event_type not in TRACKABLE_TYPES:
        raise ValueError(
            f"reco_plugin.track: event type must be one of {', '.join(sorted(TRACKABLE_TYPES))}"
        )
    # the request's own fields (EVENT_REQUEST_FIELDS) only for its own visitor
    fields: dict[str, str] = {}
    if visitor_id is None:
        visitor_id = visitor_id_for(request) if request is not None else None
        fields = request_fields(request)
    elif request is not None and visitor_id == visitor_id_for(request, create=False):
        fields = request_fields(request)
    if visitor_id is None:
        return None
    try:
        event = schema.make_event(
            event_type,
            visitor_id,
            _product_id(product),
            quantity=quantity,
            price=_number(price),
            category=category,
            context={**(context or {}), **fields} or None,
        )
    except (schema.InvalidEvent, TypeError, ValueError) as exc:
        logger.warning("reco: %s event not recorded: %s", event_type, exc)
        return None
    on_commit(event)
    return event


# -- model signals ----------------------------------------------------------------

QUANTITY_SEEN = "_reco_quantity"


def _path(instance: Any, path: str | None) -> Any:
    value = instance
    for part in (path or "").replace("__", ".").split("."):
        if not part:
            continue
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _visitor_for(instance: Any, config: Mapping[str, Any]) -> str | None:
    """Whose row this is: its owner (``USER``) if set, else the visitor of the
    request being served, except staff working in the admin. Nobody's when the
    request's visitor is not tracked (a bot, or opted out)."""
    request = current_request.get()
    if request is not None and not is_tracked(request):
        return None
    user = _path(instance, config.get("USER")) if config.get("USER") else None
    if user is not None:
        return f"u:{getattr(user, 'pk', user)}"
    if request is None:
        return None
    match = getattr(request, "resolver_match", None)
    if match is not None and "admin" in match.namespaces:
        return None
    return visitor_id_for(request)


def _quantity(instance: Any, config: Mapping[str, Any]) -> int:
    value = _path(instance, config.get("QUANTITY")) if config.get("QUANTITY") else 1
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


# A checkout that deletes the cart's lines after saving the order's does not
# "remove them from the cart": a removal handed over right after a purchase of
# the same product by the same visitor, in the same run of commit callbacks on
# this connection, is dropped. Kept on the connection (one per thread); a
# rolled-back purchase never runs its callback, so it leaves nothing behind.
SAME_COMMIT_SECONDS = 1.0


def _recent_purchases(using: str) -> dict[tuple[str, str], float]:
    connection = connections[using]
    bought = getattr(connection, "_reco_bought", None)
    if bought is None:
        bought = connection._reco_bought = {}
    return bought


def _hand_over(event: dict[str, Any], using: str) -> None:
    from .events import send

    key = (event["visitor_id"], event["product_id"])
    now = time.monotonic()
    bought = _recent_purchases(using)
    if event["type"] == schema.PURCHASE:
        for old in [k for k, at in bought.items() if now - at > SAME_COMMIT_SECONDS]:
            del bought[old]
        bought[key] = now
    elif (
        event["type"] == schema.REMOVE_FROM_CART
        and now - bought.get(key, -1e9) <= SAME_COMMIT_SECONDS
    ):
        return
    try:
        send(event)
    except Exception:
        logger.exception("reco: could not emit %s event", event["type"])


def _line_event(
    event_type: str,
    instance: Any,
    config: Mapping[str, Any],
    quantity: int,
    using: str,
    event_id: str | None = None,
) -> None:
    visitor_id = _visitor_for(instance, config)
    if visitor_id is None or quantity <= 0:
        return
    product_id = _product_id(_path(instance, config["PRODUCT"]))
    # the request's fields (EVENT_REQUEST_FIELDS) when the row is its visitor's
    request = current_request.get()
    mine = request is not None and visitor_id == visitor_id_for(request, create=False)
    try:
        event = schema.make_event(
            event_type,
            visitor_id,
            product_id,
            quantity=quantity,
            price=_number(_path(instance, config.get("PRICE"))) if config.get("PRICE") else None,
            context=(request_fields(request) if mine else None) or None,
            event_id=event_id,
        )
    except (schema.InvalidEvent, TypeError, ValueError) as exc:
        logger.warning("reco: %s event not recorded: %s", event_type, exc)
        return
    on_commit(event, using)


def _using(sender: Any, instance: Any, signal_kwargs: Mapping[str, Any]) -> str:
    """The database the signal's write went to."""
    return (
        signal_kwargs.get("using")
        or router.db_for_write(sender, instance=instance)
        or DEFAULT_DB_ALIAS
    )


def cart_loaded(sender: Any, instance: Any, **kwargs: Any) -> None:
    setattr(instance, QUANTITY_SEEN, _quantity(instance, reco_settings.CART_MODEL))


def cart_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return
    config = reco_settings.CART_MODEL
    quantity = _quantity(instance, config)
    before = 0 if kwargs.get("created") else getattr(instance, QUANTITY_SEEN, 0)
    setattr(instance, QUANTITY_SEEN, quantity)
    change = quantity - before
    event_type = schema.ADD_TO_CART if change > 0 else schema.REMOVE_FROM_CART
    _line_event(event_type, instance, config, abs(change), _using(sender, instance, kwargs))


def cart_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    config = reco_settings.CART_MODEL
    quantity = getattr(instance, QUANTITY_SEEN, None) or _quantity(instance, config)
    _line_event(
        schema.REMOVE_FROM_CART, instance, config, quantity, _using(sender, instance, kwargs)
    )


def order_line_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if kwargs.get("raw") or not kwargs.get("created"):
        return
    from .importing import order_line_event_id

    config = reco_settings.ORDER_LINE_MODEL
    _line_event(
        schema.PURCHASE,
        instance,
        config,
        _quantity(instance, config),
        _using(sender, instance, kwargs),
        # the id an import of the shop's orders gives it (reco_import)
        event_id=order_line_event_id(sender._meta.label, instance.pk),
    )


# -- login ------------------------------------------------------------------------


def user_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """``identify``: the session's anonymous visitor is now this user."""
    if request is None or user is None or getattr(user, "pk", None) is None:
        return
    session = getattr(request, "session", None)
    previous = anonymous_id(session)
    if previous is None:
        if session is not None:
            # Nothing to carry over; the id names this session's sockets for logout.
            session[SESSION_KEY] = new_anonymous_id()
        return
    if not is_tracked(request):
        return
    visitor_id = f"u:{user.pk}"
    emit(schema.IDENTIFY, visitor_id, None, context={schema.PREVIOUS_VISITOR: previous})
    _tell_websockets(previous, {"type": "reco.identify", "visitor": visitor_id})


def user_logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """The user's sockets opened in this session close; the widget reconnects as
    the new anonymous visitor (who starts with nothing: a shared computer
    must not show the last user's history)."""
    if request is None or user is None or getattr(user, "pk", None) is None:
        return
    previous = anonymous_id(getattr(request, "session", None))
    if previous is not None:
        _tell_websockets(f"u:{user.pk}", {"type": "reco.logout", "previous": previous})


def _tell_websockets(visitor_id: str, message: dict[str, Any]) -> None:
    from .push import send_to_visitor

    try:
        send_to_visitor(visitor_id, message)
    except Exception as exc:
        # The widget still polls and picks the change up on its next page.
        logger.warning("reco: could not tell %s's websockets: %s", visitor_id, exc)
