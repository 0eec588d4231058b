"""The demo shop's routes, and the bare views ``api_latency`` compares the API with."""

from django.http import HttpResponse
from django.urls import path
from redis import asyncio as redis_asyncio

from demo_shop.urls import urlpatterns as shop_urlpatterns
from reco_plugin import keys
from reco_plugin.conf import reco_settings
from reco_plugin.redis_client import get_redis
from reco_plugin.visitor import SESSION_KEY, visitor_id_for


def bare(request):
    """The least a sync Django view can do for the same answer: the visitor's
    stored list, as stored, with the same session and middleware in front of it."""
    visitor_id = visitor_id_for(request, create=False)
    value = get_redis().get(keys.visitor_recommendations(visitor_id or ""))
    return HttpResponse(value or "[]", content_type="application/json")


_async_redis = None


async def bare_async(request):
    """The same as an async view: the session and user read through Django's
    async API, the list through ``redis.asyncio``."""
    global _async_redis
    if _async_redis is None:  # (one event loop per server process)
        _async_redis = redis_asyncio.Redis.from_url(reco_settings.REDIS_URL)
    user = await request.auser()
    if user.is_authenticated:
        visitor_id = f"u:{user.pk}"
    else:
        opaque = await request.session.aget(SESSION_KEY)
        visitor_id = f"s:{opaque}" if opaque else ""
    value = await _async_redis.get(keys.visitor_recommendations(visitor_id))
    return HttpResponse(value or "[]", content_type="application/json")


urlpatterns = [
    *shop_urlpatterns,
    path("bench/bare/", bare),
    path("bench/bare-async/", bare_async),
]
