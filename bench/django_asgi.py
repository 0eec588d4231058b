"""The demo shop's HTTP under Django's own ASGI handler, wrapped as the demo
shop's ``asgi.py`` wraps the plugin's, for ``api_latency``'s comparison."""

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

application = ASGIStaticFilesHandler(get_asgi_application())
