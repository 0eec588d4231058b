"""System checks: misconfiguration is reported by ``manage.py check``, not on a request."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import schema
from .conf import reco_settings
from .scoring import PipelineSettings

MIDDLEWARE_PATH = "reco_plugin.middleware.RecoEventMiddleware"


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    middleware = list(getattr(settings, "MIDDLEWARE", []))
    if MIDDLEWARE_PATH not in middleware:
        errors.append(
            Error(
                "RecoEventMiddleware is not installed: product views will not be recorded.",
                hint=f"Add {MIDDLEWARE_PATH!r} to MIDDLEWARE after SessionMiddleware.",
                id="reco_plugin.E001",
            )
        )
    else:
        session = "django.contrib.sessions.middleware.SessionMiddleware"
        if session not in middleware or middleware.index(session) > middleware.index(
            MIDDLEWARE_PATH
        ):
            errors.append(
                Error(
                    "RecoEventMiddleware needs SessionMiddleware before it.",
                    id="reco_plugin.E003",
                )
            )
    model = reco_settings.PRODUCT_MODEL
    try:
        if not model:
            raise LookupError("not set")
        apps.get_model(model)
    except (LookupError, ValueError) as exc:
        errors.append(
            Error(
                f"RECO_PLUGIN['PRODUCT_MODEL'] = {model!r} is not an installed model ({exc}).",
                hint="Set it to 'app_label.ModelName' of your product model.",
                id="reco_plugin.E002",
            )
        )
    topics = reco_settings.TOPICS
    missing_roles = set(schema.DEFAULT_TOPICS) - set(topics)
    if missing_roles:
        errors.append(
            Error(
                f"RECO_PLUGIN['TOPICS'] lacks {', '.join(sorted(missing_roles))}.",
                id="reco_plugin.E004",
            )
        )
    try:
        PipelineSettings.from_mapping(reco_settings.PIPELINE)
    except (TypeError, ValueError) as exc:
        errors.append(
            Error(
                f"RECO_PLUGIN['PIPELINE'] is invalid: {exc}.",
                hint="See the settings table in docs/architecture.md.",
                id="reco_plugin.E005",
            )
        )
    if not getattr(settings, "CHANNEL_LAYERS", None):
        errors.append(
            Warning(
                "CHANNEL_LAYERS is not configured: the widget cannot be updated live "
                "and will poll the API instead.",
                hint="Configure channels_redis.core.RedisChannelLayer.",
                id="reco_plugin.W001",
            )
        )
    schema_class = (getattr(settings, "REST_FRAMEWORK", None) or {}).get("DEFAULT_SCHEMA_CLASS", "")
    if schema_class != "drf_spectacular.openapi.AutoSchema":
        errors.append(
            Warning(
                "The OpenAPI schema at reco/api/schema/ needs drf-spectacular's AutoSchema.",
                hint="REST_FRAMEWORK = {'DEFAULT_SCHEMA_CLASS': 'drf_spectacular.openapi.AutoSchema'}",
                id="reco_plugin.W002",
            )
        )
    return errors
