"""The demo shop's routes and one DRF view of the shop's own (the plugin's
schema describes the plugin's routes only)."""

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from demo_shop.urls import urlpatterns as shop_patterns


class ShopOrdersView(APIView):
    def get(self, request):
        return Response([])


urlpatterns = [*shop_patterns, path("shop-api/orders/", ShopOrdersView.as_view())]
