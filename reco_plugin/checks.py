"""System checks: misconfiguration is reported by ``manage.py check``, not on a request."""

from __future__ import annotations

import re
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string
from rest_framework.throttling import SimpleRateThrottle

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
    errors.extend(_event_checks())
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


def _event_checks() -> list[Any]:
    """The event backend, the cart and order models, and the tracking settings."""
    errors: list[Any] = []
    from .backends import build_backend

    try:
        # Without brokers to reach: this checks the options, it does not connect.
        backend = build_backend(connect=False)
    except Exception as exc:
        errors.append(
            Error(
                f"The event backend cannot be built: {type(exc).__name__}: {exc}",
                hint="Check RECO_PLUGIN['EVENT_BACKEND'] and RECO_PLUGIN['KAFKA'] "
                "(librdkafka options); the Kafka backend needs confluent-kafka.",
                id="reco_plugin.E006",
            )
        )
    else:
        backend.close(timeout=0)
    for name in ("CART_MODEL", "ORDER_LINE_MODEL"):
        problem = _line_model_problem(getattr(reco_settings, name))
        if problem:
            errors.append(
                Error(
                    f"RECO_PLUGIN[{name!r}] {problem}.",
                    hint='{"MODEL": "app_label.Model", "PRODUCT": "product_id", '
                    '"QUANTITY": "quantity", "PRICE": "unit_price", "USER": "order.user_id"}',
                    id="reco_plugin.E007",
                )
            )
    try:
        for pattern in reco_settings.BOT_USER_AGENTS:
            re.compile(pattern)
        if reco_settings.OPT_OUT:
            import_string(reco_settings.OPT_OUT)
        for rate in (reco_settings.BEACON_RATE, reco_settings.BEACON_RATE_PER_ADDRESS):
            if rate:
                SimpleRateThrottle.parse_rate(None, rate)  # type: ignore[arg-type]
    except (ImportError, re.error, ValueError, KeyError, TypeError) as exc:
        errors.append(
            Error(
                f"A tracking setting is invalid: {exc}.",
                hint="BOT_USER_AGENTS: regular expressions; OPT_OUT: a dotted path "
                "to a callable; BEACON_RATE: like '120/min'.",
                id="reco_plugin.E008",
            )
        )
    return errors


def _line_model_problem(config: Any) -> str | None:
    if config is None:
        return None
    if not isinstance(config, dict) or not config.get("MODEL") or not config.get("PRODUCT"):
        return "must be a dict with at least MODEL and PRODUCT"
    unknown = set(config) - {"MODEL", "PRODUCT", "QUANTITY", "PRICE", "USER"}
    if unknown:
        return f"has unknown keys {', '.join(sorted(unknown))}"
    try:
        model = apps.get_model(config["MODEL"])
    except (LookupError, ValueError) as exc:
        return f"names a model that is not installed ({exc})"
    fields = model._meta.get_fields()
    names = {f.name for f in fields} | {getattr(f, "attname", f.name) for f in fields}
    for key in ("PRODUCT", "QUANTITY", "PRICE", "USER"):
        path = config.get(key)
        if not path:
            continue
        first = path.replace("__", ".").split(".")[0]
        if first not in names and not hasattr(model, first):
            return f"{key} = {path!r}: {model.__name__} has no field {first!r}"
    return None
