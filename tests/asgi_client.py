"""A test client whose requests go through the plugin's ASGI path
(``reco_plugin.asgi.OneHopReads`` on Django's async test handler), with the
sync methods of Django's ``Client``, so one test runs against both paths."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.test.client import AsyncClient, AsyncClientHandler

from reco_plugin.asgi import OneHopReads

METHODS = ("get", "post", "head", "put", "patch", "delete", "options", "generic")


class OneHopClientHandler(OneHopReads, AsyncClientHandler):
    """Django's async test handler, with the plugin's reads in one hop."""


class ASGIClient:
    """``Client``'s interface over an ``AsyncClient`` that serves through
    :class:`OneHopClientHandler`."""

    def __init__(self, **defaults: Any) -> None:
        self._client = AsyncClient(**defaults)
        self._client.handler = OneHopClientHandler(enforce_csrf_checks=False)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if name not in METHODS:
            return value

        def call(*args: Any, headers: dict[str, str] | None = None, **extra: Any) -> Any:
            # Client's HTTP_X_Y=... keywords, as the async client's headers
            headers = dict(headers or {})
            for key in [k for k in extra if k.startswith("HTTP_")]:
                headers[key[5:].replace("_", "-").title()] = extra.pop(key)
            return async_to_sync(value)(*args, headers=headers, **extra)

        return call
