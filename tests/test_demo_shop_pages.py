"""The demo shop's own pages, apart from the widget."""

from pathlib import Path

import pytest

# the demo shop's static files (its settings' STATICFILES_DIRS)
STATIC = Path(__file__).resolve().parent.parent / "static"


@pytest.mark.django_db
def test_every_page_has_an_icon(client):
    """The shop's pages name their icon; a page that names none (the
    admin's) asks for /favicon.ico, which leads to the same icon: no 404 in
    the browser's console on any page."""
    page = client.get("/", HTTP_USER_AGENT="Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0")
    assert page.status_code == 200
    assert b'<link rel="icon" href="/static/shop/favicon.svg" type="image/svg+xml">' in page.content
    icon = client.get("/favicon.ico")
    assert (icon.status_code, icon["Location"]) == (302, "/static/shop/favicon.svg")
    assert (STATIC / "shop" / "favicon.svg").read_text().startswith("<svg ")
