"""Settings of the demo shop. Every service address comes from the environment
(see README: RECO_KAFKA_PORT, RECO_REDIS_PORT, ...) so tests can run the shop
on free ports beside a running demo."""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("RECO_STATE_DIR", BASE_DIR / "var" / "demo"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-shop-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

KAFKA_BOOTSTRAP = os.environ.get(
    "RECO_KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('RECO_KAFKA_PORT', '9092')}"
)
REDIS_PORT = os.environ.get("RECO_REDIS_PORT", "6379")
# one server, or a primary found through its Sentinels (`make cluster` sets
# redis+sentinel://HOST:PORT,.../SERVICE/0; docs/production.md)
REDIS_URL = os.environ.get("RECO_REDIS_URL", f"redis://127.0.0.1:{REDIS_PORT}/0")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "reco_plugin",
    "demo_shop.catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "reco_plugin.middleware.RecoEventMiddleware",
]

ROOT_URLCONF = "demo_shop.urls"
ASGI_APPLICATION = "demo_shop.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("RECO_DB_PATH", STATE_DIR / "shop.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
# Sessions in Redis-free signed cookies would leak nothing but size; the
# database keeps them server-side and works for the websocket too.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = STATE_DIR / "static"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

from reco_plugin import redis_url  # noqa: E402

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                redis_url.channel_layer_host(
                    redis_url.with_db(REDIS_URL, 2),
                    # The layer blocks up to 5 s reading its queue; redis-py's default
                    # socket timeout is also 5 s, so give the socket more or idle
                    # websockets drop.
                    socket_timeout=30,
                    # redis-py's asyncio pool refuses a 101st concurrent command:
                    # a burst of websockets opening at once needs more
                    max_connections=1000,
                )
            ],
        },
    }
}

from demo_shop.catalog import reco_models  # noqa: E402
from reco_plugin.schedule import beat_schedule  # noqa: E402

RECO_PLUGIN = {
    "KAFKA": {"bootstrap.servers": KAFKA_BOOTSTRAP},
    "REDIS_URL": REDIS_URL,
    "PRODUCT_MODEL": "catalog.Product",
    "CART_MODEL": reco_models.CART_MODEL,
    "ORDER_LINE_MODEL": reco_models.ORDER_LINE_MODEL,
    "PRODUCT_FIELDS": {
        "title": "name",
        "url": "get_absolute_url",
        "price": "display_price",
        "category": "category",
        "image": "image_url",
        "in_stock": "in_stock",
    },
    # the streaming job appends events here; reco_retrain and the nightly task read it
    "PIPELINE": {"lake_path": str(STATE_DIR / "lake")},
    # manage.py reco_stream: the checkpoint, and the Kafka connector's jars fetched by
    # set-up (without them Spark would fetch the connector from Maven Central)
    "SPARK": {
        # None: local[<cores>]; `make cluster` sets spark://HOST:PORT of its master
        "MASTER": os.environ.get("RECO_SPARK_MASTER") or None,
        "MASTER_UI": os.environ.get("RECO_SPARK_MASTER_UI") or None,
        "CONF": json.loads(os.environ.get("RECO_SPARK_CONF", "{}")),
        "CHECKPOINT": str(STATE_DIR / "spark" / "checkpoint"),
        "KAFKA_CONNECTOR": os.environ.get(
            "RECO_SPARK_KAFKA_CONNECTOR", str(BASE_DIR / "jvm" / "lib" / "spark-kafka")
        ),
    },
}

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}

CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = redis_url.celery_broker(
    redis_url.with_db(REDIS_URL, 1)
)
CELERY_TASK_IGNORE_RESULT = True
# the catalog sync every few minutes and the retraining nightly
CELERY_BEAT_SCHEDULE = beat_schedule(
    catalog_sync_seconds=float(os.environ.get("RECO_CATALOG_SYNC_SECONDS", "300"))
)
CELERY_BEAT_SCHEDULE_FILENAME = str(STATE_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        # Django's own handlers go (its console handler, in DEBUG, would
        # print each of its lines a second time: they reach the root's; its
        # mail_admins has no ADMINS here)
        "django": {"level": "INFO"},
        "django.channels.server": {"level": "WARNING"},
    },
}
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
