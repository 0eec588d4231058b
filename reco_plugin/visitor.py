"""Who the current visitor is: ``u:<pk>`` when logged in, else ``s:<opaque id>``.

The anonymous id is random and kept in the session, so the session key itself
never reaches Kafka or Redis. It is always set by the server, never read from
the client's request body.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest

SESSION_KEY = "reco_visitor"


def _from(user: Any, session: Any, create: bool) -> str | None:
    if user is not None and getattr(user, "is_authenticated", False):
        return f"u:{user.pk}"
    if session is None:
        return None
    opaque = session.get(SESSION_KEY)
    if opaque is None and create:
        opaque = secrets.token_hex(12)
        session[SESSION_KEY] = opaque
    return f"s:{opaque}" if opaque else None


def visitor_id_for(request: HttpRequest, create: bool = True) -> str | None:
    """The request's visitor id; with ``create``, starts an anonymous one in the session."""
    return _from(getattr(request, "user", None), getattr(request, "session", None), create)


def visitor_id_for_scope(scope: Mapping[str, Any]) -> str | None:
    """The websocket connection's visitor id (never creates one)."""
    return _from(scope.get("user"), scope.get("session"), create=False)
