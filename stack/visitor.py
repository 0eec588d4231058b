"""A visitor of the running demo shop: HTTP with a cookie jar, and its websocket."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.request
from typing import Any

import websockets.sync.client


class ShopVisitor:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(self.base_url + path, timeout=10) as response:
            return response.status, response.read().decode()

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def post_json(self, path: str, body: Any, csrf: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Referer": self.base_url + "/"}
        if csrf:
            headers["X-CSRFToken"] = self.cookie("csrftoken") or ""
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str]:
        """A form POST with the CSRF token, as the shop's own forms send it
        (redirects followed)."""
        import urllib.parse

        data = urllib.parse.urlencode(
            {**fields, "csrfmiddlewaretoken": self.cookie("csrftoken") or ""}
        ).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method="POST")
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def websocket(self, path: str = "/ws/reco/"):
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.cookies)
        return websockets.sync.client.connect(
            self.base_url.replace("http", "ws", 1) + path,
            additional_headers={"Cookie": cookie},
            origin=self.base_url,
            open_timeout=10,
        )
