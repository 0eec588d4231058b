import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_shop.settings")

from reco_plugin.asgi import get_asgi_application  # noqa: E402

# Django's ASGI handler, with the plugin's read endpoints in one thread hop
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

import reco_plugin.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(reco_plugin.routing.websocket_urlpatterns))
        ),
    }
)
