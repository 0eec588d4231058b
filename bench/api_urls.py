"""The demo shop's routes, and the bare view ``api_latency`` compares the API with."""

from django.http import HttpResponse
from django.urls import path

from demo_shop.urls import urlpatterns as shop_urlpatterns
from reco_plugin import keys
from reco_plugin.redis_client import get_redis
from reco_plugin.visitor import visitor_id_for


def bare(request):
    """The least a Django view can do for the same answer: the visitor's stored
    list, as stored, with the same session and middleware in front of it."""
    visitor_id = visitor_id_for(request, create=False)
    value = get_redis().get(keys.visitor_recommendations(visitor_id or ""))
    return HttpResponse(value or "[]", content_type="application/json")


urlpatterns = [*shop_urlpatterns, path("bench/bare/", bare)]
