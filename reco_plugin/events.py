"""Emitting shop events: the single entry point the middleware, signals and beacon use."""

from __future__ import annotations

import logging
from typing import Any

from . import schema
from .backends import get_backend
from .conf import reco_settings
from .metrics import EMITTED

logger = logging.getLogger(__name__)


def emit(event_type: str, visitor_id: str, product_id: Any, **fields: Any) -> dict[str, Any] | None:
    """Build a schema-1 event and hand it to the backend, fire-and-forget.

    Returns the event, or None if it could not be built or handed over (the
    caller's request must never fail because of an event).
    """
    try:
        event = schema.make_event(event_type, visitor_id, product_id, **fields)
        send(event)
        EMITTED.labels(event_type).inc()
    except Exception:
        logger.exception("reco: could not emit %s event", event_type)
        return None
    return event


def send(event: dict[str, Any], backend: Any = None) -> None:
    """Hand one already-validated event to the backend (the process's unless
    given), on its type's topic, keyed by visitor."""
    (backend or get_backend()).send(
        schema.topic_for(event["type"], reco_settings.TOPICS), event["visitor_id"], event
    )


def emit_many(events: list[dict[str, Any]]) -> None:
    """Hand already-validated events to the backend."""
    for event in events:
        send(event)
        EMITTED.labels(event["type"]).inc()
