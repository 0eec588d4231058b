from django.urls import path

from .api import views
from .api.schema import SchemaView
from .metrics import metrics_view

app_name = "reco_plugin"

urlpatterns = [
    path("api/recommendations/", views.RecommendationsView.as_view(), name="recommendations"),
    path("api/products/<str:product_id>/similar/", views.SimilarView.as_view(), name="similar"),
    path("api/trending/", views.TrendingView.as_view(), name="trending"),
    path("api/events/", views.EventsView.as_view(), name="events"),
    # a beacon posted without the slash is answered too (APPEND_SLASH cannot redirect a POST)
    path("api/events", views.EventsView.as_view(schema=None)),  # in the schema once
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("metrics", metrics_view, name="metrics"),
]
