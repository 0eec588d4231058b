"""The demo shop's settings as a production shop runs them, with one more route:
the peer of ``api_latency``, a bare Django view returning the same Redis value."""

from demo_shop.settings import *  # noqa: F403

DEBUG = False
ROOT_URLCONF = "bench.api_urls"
LOGGING = {"version": 1, "disable_existing_loggers": False}
