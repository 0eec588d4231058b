"""Shop event schema, version 1 (SPEC §5).

Django-free: imported by the Django app (to build and validate events) and by
the Spark jobs (to parse them). One event is one JSON object on one Kafka topic,
keyed by ``visitor_id``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1

PAGE_VIEW = "page_view"
CLICK = "click"
ADD_TO_CART = "add_to_cart"
REMOVE_FROM_CART = "remove_from_cart"
PURCHASE = "purchase"
IMPRESSION = "impression"
# On login: ``visitor_id`` is the user (``u:<pk>``), ``context["previous"]`` the
# anonymous visitor they were before; it names no product.
IDENTIFY = "identify"

EVENT_TYPES: tuple[str, ...] = (
    PAGE_VIEW,
    CLICK,
    ADD_TO_CART,
    REMOVE_FROM_CART,
    PURCHASE,
    IMPRESSION,
    IDENTIFY,
)
# The context key of an ``identify`` event naming the earlier visitor.
PREVIOUS_VISITOR = "previous"

# Default topic per event type; the topic names themselves are configurable
# (``RECO_PLUGIN["TOPICS"]``), this maps a type to its topic's role.
TOPIC_ROLE: dict[str, str] = {
    PAGE_VIEW: "page_views",
    CLICK: "user_clicks",
    ADD_TO_CART: "cart_events",
    REMOVE_FROM_CART: "cart_events",
    PURCHASE: "purchase_events",
    IMPRESSION: "impressions",
    # A login happens on a page: it travels with the page views.
    IDENTIFY: "page_views",
}
DEFAULT_TOPICS: dict[str, str] = {role: role for role in dict.fromkeys(TOPIC_ROLE.values())}

# Types a browser may report through the beacon; the others come from the
# server (middleware, model signals) only.
BEACON_TYPES: frozenset[str] = frozenset({CLICK, IMPRESSION})

# Field name -> JSON type, in wire order. The Spark jobs build their StructType
# from this, so the two sides cannot drift apart.
FIELDS: tuple[tuple[str, str], ...] = (
    ("event_id", "string"),
    ("schema", "integer"),
    ("type", "string"),
    ("ts", "long"),
    ("visitor_id", "string"),
    ("product_id", "string"),
    ("quantity", "integer"),
    ("price", "double"),
    ("category", "string"),
    ("context", "map<string,string>"),
)

MAX_ID_LENGTH = 64
MAX_CONTEXT_KEYS = 16
MAX_CONTEXT_KEY_LENGTH = 64
MAX_CONTEXT_VALUE_LENGTH = 512


class InvalidEvent(ValueError):
    """An event that does not follow schema version 1."""


def now_ms() -> int:
    return int(time.time() * 1000)


def make_event(
    type: str,
    visitor_id: str,
    product_id: Any,
    *,
    ts: int | None = None,
    quantity: int | None = None,
    price: float | None = None,
    category: str | None = None,
    context: Mapping[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Build a validated schema-1 event. ``ts`` defaults to now (server time)."""
    event: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "schema": SCHEMA_VERSION,
        "type": type,
        "ts": now_ms() if ts is None else int(ts),
        "visitor_id": visitor_id,
    }
    if product_id is not None:
        event["product_id"] = str(product_id)
    if quantity is not None:
        event["quantity"] = int(quantity)
    if price is not None:
        event["price"] = float(price)
    if category:
        event["category"] = str(category)
    if context:
        event["context"] = {str(k): "" if v is None else str(v) for k, v in context.items()}
    validate(event)
    return event


def has_valid_core(
    version: Any, type: Any, event_id: Any, visitor_id: Any, product_id: Any, ts: Any
) -> bool:
    """Whether an event's core fields follow schema version 1 (what the pipeline
    needs to apply it; :func:`validate` checks the rest too)."""
    ids = (event_id, visitor_id) if type == IDENTIFY else (event_id, visitor_id, product_id)
    return (
        version == SCHEMA_VERSION
        and type in EVENT_TYPES
        and all(isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH for value in ids)
        and is_visitor_id(visitor_id)
        and isinstance(ts, int)
        and not isinstance(ts, bool)
        and ts > 0
    )


def is_visitor_id(value: Any) -> bool:
    """``u:<user pk>`` or ``s:<opaque id>``, at most ``MAX_ID_LENGTH`` long."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_ID_LENGTH
        and value.startswith(("u:", "s:"))
        and len(value) > 2
    )


def validate(event: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidEvent` unless ``event`` is a well-formed schema-1 event."""
    if event.get("schema") != SCHEMA_VERSION:
        raise InvalidEvent(f"schema must be {SCHEMA_VERSION}")
    if event.get("type") not in EVENT_TYPES:
        raise InvalidEvent(f"type must be one of {', '.join(EVENT_TYPES)}")
    identify = event["type"] == IDENTIFY
    for name in (
        ("event_id", "visitor_id") if identify else ("event_id", "visitor_id", "product_id")
    ):
        value = event.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise InvalidEvent(f"{name} must be a non-empty string of at most {MAX_ID_LENGTH}")
    if not is_visitor_id(event["visitor_id"]):
        raise InvalidEvent("visitor_id must start with 'u:' or 's:'")
    if identify and not is_visitor_id((event.get("context") or {}).get(PREVIOUS_VISITOR)):
        raise InvalidEvent(
            f"an identify event names the earlier visitor in context[{PREVIOUS_VISITOR!r}]"
        )
    ts = event.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
        raise InvalidEvent("ts must be epoch milliseconds")
    quantity = event.get("quantity")
    if quantity is not None and (not isinstance(quantity, int) or quantity < 0):
        raise InvalidEvent("quantity must be a non-negative integer")
    price = event.get("price")
    if price is not None and (not isinstance(price, int | float) or price < 0):
        raise InvalidEvent("price must be a non-negative number")
    context = event.get("context")
    if context is not None:
        if not isinstance(context, Mapping) or len(context) > MAX_CONTEXT_KEYS:
            raise InvalidEvent(f"context must be an object of at most {MAX_CONTEXT_KEYS} keys")
        for key, value in context.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_CONTEXT_KEY_LENGTH:
                raise InvalidEvent(f"context keys are strings of 1-{MAX_CONTEXT_KEY_LENGTH}")
            if not isinstance(value, str) or len(value) > MAX_CONTEXT_VALUE_LENGTH:
                raise InvalidEvent(f"context[{key!r}] must be a short string")


def topic_for(event_type: str, topics: Mapping[str, str] | None = None) -> str:
    """The topic an event of ``event_type`` goes to, given the configured topic names."""
    role = TOPIC_ROLE[event_type]
    return (topics or DEFAULT_TOPICS).get(role, role)


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | str) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidEvent("an event is a JSON object")
    validate(event)
    return event
