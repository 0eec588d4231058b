"""The plugin's OpenAPI schema (``/reco/api/schema/``): its own routes only,
named and versioned as the plugin unless the shop's ``SPECTACULAR_SETTINGS``
name a title or a version (drf-spectacular's defaults are "" and 0.0.0)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
from drf_spectacular.views import SpectacularAPIView

from .. import __version__

TITLE = "reco-plugin API"


def _ours(callback: Any) -> bool:
    view = getattr(callback, "cls", None)
    return view is not None and view.__module__.startswith("reco_plugin.")


class PluginEndpoints(EndpointEnumerator):
    """The endpoints of the plugin's views; a shop's own DRF views are the
    shop's schema's to describe."""

    def get_api_endpoints(self, patterns=None, prefix=""):
        return [
            endpoint
            for endpoint in super().get_api_endpoints(patterns, prefix)
            if _ours(endpoint[3])
        ]


class PluginSchemaGenerator(SchemaGenerator):
    endpoint_inspector_cls = PluginEndpoints


class SchemaView(SpectacularAPIView):
    generator_class = PluginSchemaGenerator

    def _get_schema_response(self, request):
        # set on this response's schema, not by patching drf-spectacular's
        # settings (process-wide) while it is generated
        response = super()._get_schema_response(request)
        own = getattr(settings, "SPECTACULAR_SETTINGS", None) or {}
        info = response.data["info"]
        if "TITLE" not in own:
            info["title"] = TITLE
        if "VERSION" not in own:
            info["version"] = __version__
        return response
