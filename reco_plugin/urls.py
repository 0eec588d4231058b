from django.conf import settings
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from . import __version__
from .api import views
from .metrics import metrics_view


def _schema_settings() -> dict[str, str]:
    """The schema's title and version, unless the shop set its own
    (``SPECTACULAR_SETTINGS``): drf-spectacular's defaults are "" and 0.0.0."""
    own = getattr(settings, "SPECTACULAR_SETTINGS", None) or {}
    named = {"TITLE": "reco-plugin API", "VERSION": __version__}
    return {key: value for key, value in named.items() if key not in own}


app_name = "reco_plugin"

urlpatterns = [
    path("api/recommendations/", views.RecommendationsView.as_view(), name="recommendations"),
    path("api/products/<str:product_id>/similar/", views.SimilarView.as_view(), name="similar"),
    path("api/trending/", views.TrendingView.as_view(), name="trending"),
    path("api/events/", views.EventsView.as_view(), name="events"),
    # a beacon posted without the slash is answered too (APPEND_SLASH cannot redirect a POST)
    path("api/events", views.EventsView.as_view(schema=None)),  # in the schema once
    path(
        "api/schema/", SpectacularAPIView.as_view(custom_settings=_schema_settings()), name="schema"
    ),
    path("metrics", metrics_view, name="metrics"),
]
