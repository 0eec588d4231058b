"""Who the current visitor is: ``u:<pk>`` when logged in, else ``s:<opaque id>``.

The anonymous id is random and kept in the session, so the session key itself
never reaches Kafka or Redis. It is always set by the server, never read from
the client's request body.

Nobody is tracked who should not be: a request from a bot (``BOT_USER_AGENTS``)
or from a visitor who opted out (``OPT_OUT``) has no visitor id, so it emits no
event and no session is started for it.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from django.http import HttpRequest
from django.utils.module_loading import import_string

from .conf import reco_settings

# What of the request ``EVENT_REQUEST_FIELDS`` may add to an event's context.
REQUEST_FIELDS = ("ip", "user_agent", "email")

SESSION_KEY = "reco_visitor"
# A visitor who sets this cookie to "1" is not tracked (with the default OPT_OUT).
OPT_OUT_COOKIE = "reco_opt_out"


def default_opt_out(request: HttpRequest) -> bool:
    """The default ``OPT_OUT``: the ``reco_opt_out=1`` cookie or Global Privacy Control."""
    return request.COOKIES.get(OPT_OUT_COOKIE) == "1" or request.META.get("HTTP_SEC_GPC") == "1"


@functools.cache
def _bot_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


@functools.cache
def _opt_out_check(path: str | None) -> Callable[[HttpRequest], bool] | None:
    return import_string(path) if path else None


def is_bot(user_agent: str) -> bool:
    return _is_bot(user_agent, tuple(reco_settings.BOT_USER_AGENTS))


@functools.lru_cache(maxsize=4096)
def _is_bot(user_agent: str, patterns: tuple[str, ...]) -> bool:
    # A shop sees few distinct user agents: each is matched once.
    pattern = _bot_pattern(patterns)
    return pattern is not None and pattern.search(user_agent) is not None


def is_tracked(request: HttpRequest) -> bool:
    """Whether this request's visitor may be tracked (not a bot, not opted out)."""
    cached = getattr(request, "_reco_tracked", None)
    if cached is None:
        check = _opt_out_check(reco_settings.OPT_OUT)
        cached = not is_bot(request.META.get("HTTP_USER_AGENT", "")) and not (
            check is not None and check(request)
        )
        request._reco_tracked = cached  # type: ignore[attr-defined]
    return cached


def new_anonymous_id() -> str:
    return secrets.token_hex(12)


def _from(user: Any, session: Any, create: bool) -> str | None:
    if user is not None and getattr(user, "is_authenticated", False):
        return f"u:{user.pk}"
    if session is None:
        return None
    opaque = session.get(SESSION_KEY)
    if opaque is None and create:
        opaque = new_anonymous_id()
        session[SESSION_KEY] = opaque
    return f"s:{opaque}" if opaque else None


def anonymous_id(session: Any) -> str | None:
    """The ``s:`` id kept in a session, if one was started (also while logged in)."""
    opaque = session.get(SESSION_KEY) if session is not None else None
    return f"s:{opaque}" if opaque else None


def visitor_id_for(request: HttpRequest, create: bool = True) -> str | None:
    """The request's visitor id; with ``create``, starts an anonymous one in the session.

    None for bots and visitors who opted out: they are served, not tracked.
    """
    if not is_tracked(request):
        return None
    return _from(getattr(request, "user", None), getattr(request, "session", None), create)


def visitor_id_for_scope(scope: Mapping[str, Any]) -> str | None:
    """The websocket connection's visitor id (never creates one)."""
    return _from(scope.get("user"), scope.get("session"), create=False)


def is_tracked_scope(scope: Mapping[str, Any]) -> bool:
    """:func:`is_tracked` for a websocket connection (its headers and cookies)."""
    request = HttpRequest()
    for name, value in scope.get("headers") or ():
        key = name.decode("latin1").upper().replace("-", "_")
        request.META[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value.decode("latin1")
    request.COOKIES = dict(scope.get("cookies") or {})
    request.path = scope.get("path", "")
    return is_tracked(request)


def request_fields(request: HttpRequest | None) -> dict[str, str]:
    """The request's IP address, user agent and user's e-mail, as far as
    ``EVENT_REQUEST_FIELDS`` asks (nothing by default), for an event's context."""
    wanted = reco_settings.EVENT_REQUEST_FIELDS
    if not wanted or request is None:
        return {}
    found = {}
    if "ip" in wanted and request.META.get("REMOTE_ADDR"):
        found["ip"] = str(request.META["REMOTE_ADDR"])
    if "user_agent" in wanted and request.META.get("HTTP_USER_AGENT"):
        found["user_agent"] = str(request.META["HTTP_USER_AGENT"])[:512]
    user = getattr(request, "user", None)
    if "email" in wanted and user is not None and user.is_authenticated:
        email = getattr(user, "email", "")
        if email:
            found["email"] = str(email)[:512]
    return found
