"""Django's test ``Client``, with every request served by the plugin's ASGI
handler (``reco_plugin.asgi.ASGIHandler``) as an ASGI server would drive it,
so one test runs against both paths.

The reads run in the test's own thread here (the test's database transaction
is visible to them), with the start and end signals' connection closing
switched off as Django's test clients do; the worker threads themselves are
tested in ``test_api`` through :func:`asgi_get`-style calls."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import HttpResponse
from django.test import Client

from reco_plugin.asgi import ASGIHandler


class InTestThread(ASGIHandler):
    """The plugin's handler, with the reads (and Django's sync code) in the
    test's thread."""

    def __init__(self) -> None:
        super().__init__()
        self._answer_in_thread = sync_to_async(self._answer, thread_sensitive=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # without the per-request thread of Django's handler
        await self.handle(scope, receive, send)


def http_scope(
    path: str,
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
    scheme: str = "http",
    server: tuple[str, int] = ("testserver", 80),
    client: str = "127.0.0.1",
) -> dict[str, Any]:
    """The scope an ASGI server gives one HTTP request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "query_string": query,
        "root_path": root_path,
        "headers": [(b"host", server[0].encode()), *(headers or [])],
        "client": (client, 50000),
        "server": server,
    }


def scope_of(environ: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of a test client's WSGI environ."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.removeprefix("HTTP_").replace("_", "-").lower()
            if value != "" and name != "host":
                headers.append((name.encode("latin1"), str(value).encode("latin1")))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    scope = http_scope(
        environ["PATH_INFO"],
        method=environ["REQUEST_METHOD"],
        query=environ.get("QUERY_STRING", "").encode("latin1"),
        headers=headers,
        root_path=environ.get("SCRIPT_NAME", ""),
        scheme=environ.get("wsgi.url_scheme", "http"),
        server=(environ.get("SERVER_NAME", "testserver"), int(environ.get("SERVER_PORT", 80))),
        client=environ.get("REMOTE_ADDR", "127.0.0.1"),
    )
    return scope, body


async def served(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, list, bytes]:
    """(status, headers, body) of ``app``'s answer to one request."""
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(10)
    content = b""
    while True:
        message = await communicator.receive_output(10)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], start["headers"], content


class ASGIClientHandler:
    """The test client's handler: a WSGI environ in, a Django response out."""

    def __init__(self) -> None:
        self.app = InTestThread()

    def __call__(self, environ: dict[str, Any]) -> HttpResponse:
        scope, body = scope_of(environ)
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            status, headers, content = async_to_sync(served)(self.app, scope, body)
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        response = HttpResponse(content, status=status)
        del response["Content-Type"]
        for name, value in headers:
            if name.lower() == b"set-cookie":
                response.cookies.load(value.decode("latin1"))
            else:
                response[name.decode("latin1")] = value.decode("latin1")
        response.wsgi_request = None
        return response


class ASGIClient(Client):
    """``Client`` through the plugin's ASGI handler."""

    def __init__(self, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.handler = ASGIClientHandler()
