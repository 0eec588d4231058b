"""The demo shop's HTTP under Django's own ASGI handler, for ``api_latency``'s
comparison with the plugin's (``reco_plugin.asgi``)."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()
