from django.urls import path

from .consumers import RecommendationsConsumer

websocket_urlpatterns = [
    path("ws/reco/", RecommendationsConsumer.as_asgi()),
]
