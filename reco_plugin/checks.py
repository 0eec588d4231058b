"""System checks: misconfiguration is reported by ``manage.py check``, not on a request."""

from __future__ import annotations

import difflib
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
    errors.extend(_key_checks())
    errors.extend(_product_field_checks())
    errors.extend(_websocket_checks())
    errors.extend(_channel_layer_checks())
    errors.extend(_extras_checks())
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
    from .visitor import REQUEST_FIELDS

    asked = reco_settings.EVENT_REQUEST_FIELDS
    if not isinstance(asked, list | tuple) or set(asked) - set(REQUEST_FIELDS):
        errors.append(
            Error(
                f"RECO_PLUGIN['EVENT_REQUEST_FIELDS'] is {asked!r}.",
                hint=f"a list of any of {', '.join(REQUEST_FIELDS)} (none by default)",
                id="reco_plugin.E013",
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
    unknown = set(config) - {"MODEL", "PRODUCT", "QUANTITY", "PRICE", "USER", "TIME", "ORDER"}
    if unknown:
        return f"has unknown keys {', '.join(sorted(unknown))}"
    try:
        model = apps.get_model(config["MODEL"])
    except (LookupError, ValueError) as exc:
        return f"names a model that is not installed ({exc})"
    fields = model._meta.get_fields()
    names = {f.name for f in fields} | {getattr(f, "attname", f.name) for f in fields}
    for key in ("PRODUCT", "QUANTITY", "PRICE", "USER", "TIME", "ORDER"):
        path = config.get(key)
        if not path:
            continue
        first = path.replace("__", ".").split(".")[0]
        if first not in names and not hasattr(model, first):
            return f"{key} = {path!r}: {model.__name__} has no field {first!r}"
    return None


def _key_checks() -> list[Any]:
    """Keys of RECO_PLUGIN (and of its SPARK dict) that nothing reads: a typo, or moved."""
    from .conf import DEFAULTS, MOVED
    from .jobs import SPARK_DEFAULTS

    errors: list[Any] = []
    user = reco_settings.user_settings
    for key in sorted(set(user) - set(DEFAULTS)):
        if key in MOVED:
            hint = f"It moved: {MOVED[key]} instead."
        else:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else "See docs/settings.md."
        errors.append(
            Error(f"RECO_PLUGIN[{key!r}] is not a setting.", hint=hint, id="reco_plugin.E009")
        )
    spark = user.get("SPARK") or {}
    if not isinstance(spark, dict):
        errors.append(Error("RECO_PLUGIN['SPARK'] must be a dict.", id="reco_plugin.E009"))
    else:
        for key in sorted(set(spark) - set(SPARK_DEFAULTS)):
            errors.append(
                Error(
                    f"RECO_PLUGIN['SPARK'][{key!r}] is not a setting.",
                    hint=f"The keys are {', '.join(SPARK_DEFAULTS)}.",
                    id="reco_plugin.E009",
                )
            )
    return errors


def _product_field_checks() -> list[Any]:
    """PRODUCT_FIELDS naming attributes the product model lacks would sync empty values."""
    try:
        model = apps.get_model(reco_settings.PRODUCT_MODEL or "")
    except (LookupError, ValueError):
        return []  # reco_plugin.E002
    fields = reco_settings.PRODUCT_FIELDS
    if not isinstance(fields, dict) or "title" not in fields:
        return [
            Error(
                "RECO_PLUGIN['PRODUCT_FIELDS'] must map display names to the product's "
                "attributes, and name at least 'title'.",
                hint='{"title": "name", "url": "get_absolute_url", "price": "price", ...}',
                id="reco_plugin.E010",
            )
        ]
    names = {f.name for f in model._meta.get_fields()}
    errors: list[Any] = []
    for display, attribute in fields.items():
        if attribute not in names and not hasattr(model, attribute):
            errors.append(
                Error(
                    f"RECO_PLUGIN['PRODUCT_FIELDS'][{display!r}] = {attribute!r}: "
                    f"{model.__name__} has no such field, property or method.",
                    hint="Map it to one of the model's attributes, or leave the key out.",
                    id="reco_plugin.E010",
                )
            )
    return errors


def _websocket_checks() -> list[Any]:
    """The websocket app should check the Origin header (cross-site websocket hijacking)."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        return [
            Warning(
                "ASGI_APPLICATION is not set: runserver (with daphne) and the websocket "
                "push need it.",
                hint="ASGI_APPLICATION = 'yourproject.asgi.application'; see docs/install.md.",
                id="reco_plugin.W003",
            )
        ]
    try:
        application = import_string(path)
    except ImportError as exc:
        return [Error(f"ASGI_APPLICATION cannot be imported: {exc}", id="reco_plugin.E011")]
    websocket = getattr(application, "application_mapping", {}).get("websocket")
    if websocket is None:
        return [
            Warning(
                "The ASGI application routes no websockets: the widget will poll.",
                hint="Add reco_plugin.routing.websocket_urlpatterns; see docs/install.md.",
                id="reco_plugin.W004",
            )
        ]
    from channels.security.websocket import OriginValidator

    layer, seen = websocket, 0
    while layer is not None and seen < 20:
        if isinstance(layer, OriginValidator):
            return []
        layer, seen = getattr(layer, "inner", None), seen + 1
    return [
        Warning(
            "The websocket application does not check the Origin header.",
            hint="Wrap it in channels.security.websocket.AllowedHostsOriginValidator.",
            id="reco_plugin.W005",
        )
    ]


def _channel_layer_checks() -> list[Any]:
    """A Redis channel layer sized for many open widgets (what ws_fanout measures)."""
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}
    if "channels_redis" not in str(layer.get("BACKEND", "")):
        return []
    config = layer.get("CONFIG") or {}
    hosts = config.get("hosts") or []
    if hosts and all(isinstance(h, dict) and "max_connections" in h for h in hosts):
        return []
    return [
        Warning(
            "The Redis channel layer is sized for a small shop: its hosts use redis-py's "
            "pool of 100 connections, which refuses a burst of websockets opening at once.",
            hint='CONFIG: {"hosts": [{"address": ..., "socket_timeout": 30, '
            '"max_connections": 1000}]}; see docs/install.md.',
            id="reco_plugin.W006",
        )
    ]


def _extras_checks() -> list[Any]:
    """What the settings use and the installed extras lack (pip install
    "django-reco-plugin[...]"). The Kafka producer's is E006."""
    import importlib.util

    errors: list[Any] = []
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}
    if "channels_redis" in str(layer.get("BACKEND", "")) and not importlib.util.find_spec(
        "channels_redis"
    ):
        errors.append(
            Error(
                "CHANNEL_LAYERS uses channels_redis, which is not installed.",
                hint='pip install "django-reco-plugin[websocket]"',
                id="reco_plugin.E012",
            )
        )
    if getattr(settings, "CELERY_BROKER_URL", None) and not importlib.util.find_spec("celery"):
        errors.append(
            Warning(
                "CELERY_BROKER_URL is set but Celery is not installed: products are synced "
                "on save, and nothing runs the periodic catalog sync or the retraining.",
                hint='pip install "django-reco-plugin[celery]"',
                id="reco_plugin.W007",
            )
        )
    return errors


@register(Tags.compatibility)
def check_production_durability(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """With ``DEBUG=False`` (a production configuration): the pipeline's record
    and state must survive the loss of one machine (docs/production.md)."""
    return [] if settings.DEBUG else _durability_warnings()


@register(Tags.compatibility, deploy=True)
def check_redis_durability(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``check --deploy`` under ``DEBUG=True`` says the same (with
    ``DEBUG=False`` the check above already has)."""
    return _durability_warnings() if settings.DEBUG else []


# how long the checks wait for Redis and Kafka (they run before most commands)
DURABILITY_TIMEOUT_SECONDS = 1.0


def _durability_warnings() -> list[Any]:
    """W008 Redis evicts keys, W009 Redis keeps nothing on disk, W010 topics
    with one copy. Redis or Kafka not answering is ``reco_status``'s to report."""
    from . import redis_url
    from .status import redis_durability

    hint = "See docs/production.md."
    found: list[Any] = []
    try:
        client = redis_url.connect(
            reco_settings.REDIS_URL,
            socket_timeout=DURABILITY_TIMEOUT_SECONDS,
            socket_connect_timeout=DURABILITY_TIMEOUT_SECONDS,
            decode_responses=True,
        )
        durability = redis_durability(client)
    except Exception:
        durability = {"problems": []}
    found += [Warning(p, hint=hint, id="reco_plugin.W008") for p in durability["problems"]]
    if durability.get("persistence") == "none":
        found.append(
            Warning(
                "Redis keeps nothing on disk (no append-only file, no snapshots): a restart "
                "empties it, and the job rebuilds it from what Kafka still holds.",
                hint="Run Redis with appendonly yes (docs/production.md, Redis).",
                id="reco_plugin.W009",
            )
        )
    single = _single_copy_topics()
    if single:
        found.append(
            Warning(
                f"Kafka topics with one copy of each partition ({', '.join(single)}): "
                "one broker's loss loses their events.",
                hint="Three brokers and TOPIC_REPLICATION 3 (the default chooses it from the "
                f"broker count). {hint}",
                id="reco_plugin.W010",
            )
        )
    return found


# (Kafka's address, the topics, TOPIC_REPLICATION) -> (when, what was found):
# a broker that does not answer costs a command's start DURABILITY_TIMEOUT_SECONDS
# once a minute, not at each check
_single_copy_found: dict[tuple, tuple[float, list[str]]] = {}


def _single_copy_topics() -> list[str]:
    """The shop's topics with a partition of one copy; where Kafka does not
    answer, all of them if ``TOPIC_REPLICATION`` is 1."""
    import time

    topics = sorted(reco_settings.TOPICS.values())
    key = (str(reco_settings.KAFKA), tuple(topics), reco_settings.TOPIC_REPLICATION)
    when, found = _single_copy_found.get(key, (0.0, []))
    if time.monotonic() - when > 60:
        found = _ask_kafka_for_single_copies(topics)
        _single_copy_found[key] = (time.monotonic(), found)
    return found


def _ask_kafka_for_single_copies(topics: list[str]) -> list[str]:
    from .compat import confluent_kafka

    if confluent_kafka is None:
        return topics if reco_settings.TOPIC_REPLICATION == 1 else []
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({**dict(reco_settings.KAFKA), "log_level": 0})
        metadata = admin.list_topics(timeout=DURABILITY_TIMEOUT_SECONDS)
    except Exception:
        return topics if reco_settings.TOPIC_REPLICATION == 1 else []
    return [
        name
        for name in topics
        if name in metadata.topics
        and any(len(p.replicas) < 2 for p in metadata.topics[name].partitions.values())
    ]


@register(Tags.compatibility)
def check_deployment_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """W011 a Celery broker in the plugin's own Redis database; E014 a Kafka
    connector directory that does not hold the connector."""
    return [*_celery_broker_checks(), *_connector_checks()]


def _celery_broker_checks() -> list[Any]:
    """Shops share a Redis through ``KEY_PREFIX`` (docs/install.md, "Two shops
    on one Kafka and Redis"), but Celery's queue there has no prefix: with its
    broker in that database, another shop's workers run this shop's tasks (and
    this shop's theirs). Only this case is certain from one shop's settings: a
    broker database of its own elsewhere may still be another shop's too."""
    broker = getattr(settings, "CELERY_BROKER_URL", None)
    if not broker or not isinstance(broker, str):
        return []
    transport = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    if transport.get("global_keyprefix") or getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", None):
        return []  # the shop named its queue or prefixed its broker's keys
    try:
        shared = _redis_databases(broker) & _redis_databases(reco_settings.REDIS_URL)
    except ValueError:
        return []
    if not shared:
        return []
    return [
        Warning(
            "CELERY_BROKER_URL is the plugin's Redis database (RECO_PLUGIN['REDIS_URL']), the "
            "one shops share through KEY_PREFIX; Celery's queue in it is not prefixed, so the "
            "workers of another shop on that database would run this shop's tasks.",
            hint="Give each shop's Celery a broker database of its own (e.g. redis://HOST:6379/1 "
            "for this shop, /3 for the next) or its own Redis; see docs/install.md.",
            id="reco_plugin.W011",
        )
    ]


def _redis_databases(url: str) -> set[tuple[Any, ...]]:
    """The Redis databases a Redis URL (redis-py's or kombu's form, Sentinels
    included) names, as comparable tuples; empty for another kind of broker."""
    from urllib.parse import parse_qs, urlsplit

    from . import redis_url

    if redis_url.is_sentinel(url):
        url = redis_url.celery_broker(url)[0]
    found: set[tuple[Any, ...]] = set()
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        query = parse_qs(parts.query)
        path = parts.path.strip("/")
        if parts.scheme in ("unix", "redis+socket", "socket"):
            found.add(("socket", parts.path, int((query.get("db") or ["0"])[0])))
            continue
        if parts.scheme not in ("redis", "rediss", "sentinel"):
            continue
        db = int(path) if path.isdigit() else int((query.get("db") or ["0"])[0])
        host = parts.hostname or "localhost"
        host = "127.0.0.1" if host == "localhost" else host
        default_port = 26379 if parts.scheme == "sentinel" else 6379
        found.add((parts.scheme.rstrip("s"), host, parts.port or default_port, db))
    return found


def _connector_checks() -> list[Any]:
    """``SPARK["KAFKA_CONNECTOR"]`` naming a directory here without Spark's Kafka
    connector in it (or one for another Spark): the job could not start. A
    directory that is not on this machine is not reported: the web servers
    need not have it; ``reco_stream`` says so where it runs."""
    import os

    from . import connector

    spark = reco_settings.SPARK
    named = spark.get("KAFKA_CONNECTOR") if isinstance(spark, dict) else None
    if not named or not os.path.isdir(str(named)):
        return []
    problem = connector.directory_problem(str(named))
    if problem is None:
        return []
    return [
        Error(
            f"RECO_PLUGIN['SPARK']['KAFKA_CONNECTOR']: {problem}.",
            hint=f"Fill it with `manage.py reco_stream --fetch-connector {named}` where Maven "
            "Central is reachable (docs/install.md, Offline servers).",
            id="reco_plugin.E014",
        )
    ]


@register(Tags.templates)
def check_widget_templates(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """W012: ``{% recommendations %}`` in a template that extends another,
    outside any ``{% block %}``: Django renders only the parent with the
    child's blocks, so the tag renders nothing, without an error."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    found: list[Any] = []
    seen: set[str] = set()
    for backend in engines.all():
        if not isinstance(backend, DjangoTemplates):
            continue
        for name, source in _template_sources(backend.engine.template_loaders):
            if name in seen:
                continue
            seen.add(name)
            # most templates are not read further than this
            if "recommendations" not in source or "extends" not in source:
                continue
            for parent, line in _tags_outside_blocks(backend.engine, name, source):
                found.append(
                    Warning(
                        f"{name}, line {line}: {{% recommendations %}} is outside any "
                        f"{{% block %}} of a template that extends {parent}: it renders nothing.",
                        hint="Move it into a {% block %} of the parent template "
                        "(e.g. {% block content %}...{% endblock %}).",
                        obj=name,
                        id="reco_plugin.W012",
                    )
                )
    return found


# templates larger than this are not read (generated files, not pages)
TEMPLATE_CHECK_MAX_BYTES = 1024 * 1024


def _template_sources(loaders: Any) -> Any:
    """(file path or name, text) of every template the loaders can find."""
    import os

    for loader in loaders:
        inner = getattr(loader, "loaders", None)  # the cached loader
        if inner is not None:
            yield from _template_sources(inner)
            continue
        templates = getattr(loader, "templates_dict", None)  # the locmem loader
        if isinstance(templates, dict):
            yield from templates.items()
            continue
        get_dirs = getattr(loader, "get_dirs", None)
        if get_dirs is None:
            continue
        for directory in get_dirs():
            for root, _dirs, files in os.walk(directory):
                for file in sorted(files):
                    path = os.path.join(root, file)
                    try:
                        if os.path.getsize(path) > TEMPLATE_CHECK_MAX_BYTES:
                            continue
                        with open(path, encoding=loader.engine.file_charset) as f:
                            yield path, f.read()
                    except (OSError, UnicodeDecodeError):
                        continue


def _tags_outside_blocks(engine: Any, name: str, source: str) -> list[tuple[str, int]]:
    """(parent template, line) of each ``{% recommendations %}`` of ``source``
    that a child template's rendering skips."""
    from django.template.base import Origin, Template
    from django.template.library import InclusionNode
    from django.template.loader_tags import BlockNode, ExtendsNode

    from .templatetags.reco import recommendations

    try:
        template = Template(source, origin=Origin(name), name=name, engine=engine)
    except Exception:
        return []  # a template that does not compile is reported when it is used

    def outside(nodelist: Any) -> Any:
        for node in nodelist:
            if isinstance(node, BlockNode):
                continue
            if isinstance(node, InclusionNode) and node.func is recommendations:
                yield node
            for attribute in node.child_nodelists:
                yield from outside(getattr(node, attribute, None) or [])

    found = []
    for node in template.nodelist:
        if isinstance(node, ExtendsNode):
            parent = node.parent_name.token if node.parent_name else "another"
            for tag in outside(node.nodelist):
                token = getattr(tag, "token", None)
                found.append((parent, token.lineno if token else 0))
    return found
