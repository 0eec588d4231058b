"""The demo shop's WSGI application: its pages and API served by a WSGI server
(``gunicorn demo_shop.wsgi``), the websockets by an ASGI server beside it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_shop.settings")
application = get_wsgi_application()
