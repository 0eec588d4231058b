"""Settings for the unit tests: the demo shop's apps, in-memory event backend and
channel layer, and a real Redis started by the ``redis_server`` fixture."""

import os

SECRET_KEY = "tests"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "rest_framework",
    "channels",
    "reco_plugin",
    "demo_shop.catalog",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "reco_plugin.middleware.RecoEventMiddleware",
]
ROOT_URLCONF = "demo_shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": ["templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
ASGI_APPLICATION = "demo_shop.asgi.application"
from demo_shop.catalog import reco_models  # noqa: E402

RECO_PLUGIN = {
    "EVENT_BACKEND": {"BACKEND": "reco_plugin.backends.memory.InMemoryBackend"},
    "REDIS_URL": "redis://127.0.0.1:1/0",  # replaced by the redis_server fixture
    # nothing listens: checks and status that ask Kafka find it down, even
    # beside a `make demo` on the default port (the stack tests give theirs)
    "KAFKA": {"bootstrap.servers": "127.0.0.1:1"},
    "PRODUCT_MODEL": "catalog.Product",
    "CART_MODEL": reco_models.CART_MODEL,
    "ORDER_LINE_MODEL": reco_models.ORDER_LINE_MODEL,
}
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# The job's side (run in these tests' process) and the shop's side know
# forgotten visitors by digests under one secret, as reco_stream arranges.
os.environ.setdefault("RECO_FORGET_SECRET", "tests-forget-secret")
