"""The plugin's settings: one ``RECO_PLUGIN`` dict over documented defaults.

    from reco_plugin.conf import reco_settings
    reco_settings.REDIS_URL

Values are read lazily and cached; the cache is dropped when Django's
``setting_changed`` fires (``override_settings`` in tests).
"""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from . import schema

DEFAULTS: dict[str, Any] = {
    # librdkafka options for the producer, e.g. {"bootstrap.servers": "127.0.0.1:9092"}
    "KAFKA": {"bootstrap.servers": "127.0.0.1:9092"},
    # where events go: a dotted path to an EventBackend subclass and its options
    "EVENT_BACKEND": {
        "BACKEND": "reco_plugin.backends.kafka.KafkaBackend",
        "OPTIONS": {},
    },
    # topic role -> topic name (SPEC §5)
    "TOPICS": dict(schema.DEFAULT_TOPICS),
    # the record of forgotten visitors (one partition, compacted, kept for good)
    "FORGOTTEN_TOPIC": schema.FORGOTTEN_TOPIC,
    "TOPIC_PARTITIONS": 12,
    # copies of each partition, and how many must hold an event before the
    # producer counts it stored; None: 3 and 2 (fewer on a smaller cluster)
    "TOPIC_REPLICATION": None,
    "TOPIC_MIN_INSYNC_REPLICAS": None,
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # pages, the API and the websocket wait at most this long for Redis...
    "REDIS_TIMEOUT_SECONDS": 0.5,
    # ...and after a failure serve fallbacks without asking it for this long
    "REDIS_RETRY_SECONDS": 5.0,
    # every Redis key, the update channel and the websocket groups start with it
    "KEY_PREFIX": "reco:v1",
    # "app_label.ModelName" of the shop's product
    "PRODUCT_MODEL": None,
    # URL names of the shop's product page, and the URL kwarg holding the product id
    "PRODUCT_VIEW_NAMES": ["product_detail"],
    "PRODUCT_URL_KWARG": "pk",
    # product attribute -> display field synced to Redis (callables are called)
    "PRODUCT_FIELDS": {
        "title": "name",
        "url": "get_absolute_url",
        "price": "price",
        "category": "category",
        "image": "image_url",
        "in_stock": "in_stock",
    },
    "DEFAULT_LIMIT": 8,
    "MAX_LIMIT": 50,
    # how long a browser or CDN may keep the answers that are the same for everyone
    # (trending, similar, a product's list for a visitor without a session)
    "API_CACHE_SECONDS": 30,
    # dotted path to a DRF serializer for each item (e.g. a subclass of
    # reco_plugin.api.serializers.RecommendedItemSerializer); None: the items as stored
    "ITEM_SERIALIZER": None,
    # widget: how often to poll the API when the websocket is unavailable
    "POLL_INTERVAL_SECONDS": 15,
    "WEBSOCKET_PATH": "/ws/reco/",
    # the beacon (POST reco/api/events/): events per request, body size, and
    # requests per visitor (DRF throttle rate, e.g. "120/min"; None: unthrottled)
    "MAX_BEACON_EVENTS": 50,
    "MAX_BEACON_BYTES": 32 * 1024,
    "BEACON_RATE": "120/min",
    # ...and per client address, whatever the session (shared offices, NAT: keep it high)
    "BEACON_RATE_PER_ADDRESS": "1200/min",
    # cart and order models whose changes are events (see docs/events.md), e.g.
    # {"MODEL": "shop.CartLine", "PRODUCT": "product_id", "QUANTITY": "quantity",
    #  "PRICE": "unit_price", "USER": "cart.user_id"}; None: not tracked by signals
    "CART_MODEL": None,
    "ORDER_LINE_MODEL": None,
    # user agents (regular expressions, case-insensitive) that are never tracked
    "BOT_USER_AGENTS": [
        r"bot\b",
        r"crawl",
        r"spider",
        r"slurp",
        r"archiver",
        r"facebookexternalhit",
        r"bingpreview",
        r"^curl/",
        r"^wget/",
        r"python-requests",
        r"^go-http-client",
    ],
    # dotted path to a callable(request) -> bool: True when the visitor opted out
    "OPT_OUT": "reco_plugin.visitor.default_opt_out",
    # what of the request the shop's events also carry in their context, for a
    # shop whose privacy policy allows it: any of "ip", "user_agent", "email"
    # (the logged-in user's); none by default
    "EVENT_REQUEST_FIELDS": [],
    # how often each process adds its producer counts (delivered, failed,
    # dropped) to Redis for reco_status
    "PRODUCER_STATS_SECONDS": 10.0,
    # at process exit, how long queued events may take to reach Kafka
    "EXIT_FLUSH_SECONDS": 5.0,
    # the streaming job's tunables, a partial dict over reco_plugin.scoring.PipelineSettings
    # (half_life, horizon, future_tolerance, dedup_records, shuffle_partitions, ...): event weights, windows and every other scoring setting live here, e.g.
    # {"event_weights": {"purchase": 8}, "covisit_window": 1800, "lake_path": "/var/reco/lake"}
    "PIPELINE": {},
    # the Spark jobs started by reco_stream and reco_retrain (reco_plugin.jobs.SPARK_DEFAULTS):
    # {"CHECKPOINT": "/var/reco/checkpoint", "KAFKA_CONNECTOR": None, "MASTER": None, "CONF": {}}
    "SPARK": {},
    # reco_status reports the pipeline as behind beyond this many unprocessed events...
    "STATUS_MAX_LAG": 10_000,
    # a bearer token a Prometheus scraper sends to GET /reco/metrics (staff
    # sessions need none); None: staff only
    "METRICS_TOKEN": None,
    # ...or when events wait and no batch has finished for this long
    "STATUS_MAX_STALL_SECONDS": 60,
    # ...or when a batch writes its lists this long after its newest event
    "STATUS_MAX_FRESHNESS_SECONDS": 60,
    # dotted path to hook(problems, report), called by the periodic roll-up
    # (reco_plugin.roll_up) when reco_status would report a problem
    "ALERT_HOOK": None,
}


class RecoSettings:
    """Attribute access to ``settings.RECO_PLUGIN`` with defaults filled in."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()
        self._user: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user is None:
            from django.conf import settings

            self._user = dict(getattr(settings, "RECO_PLUGIN", None) or {})
        return self._user

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"Invalid RECO_PLUGIN setting: {name!r}")
        value = self.user_settings.get(name, self.defaults[name])
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user = None


reco_settings = RecoSettings()

# Keys earlier versions had, and where their values go now (system check reco_plugin.E009).
MOVED: dict[str, str] = {
    "EVENT_WEIGHTS": 'set RECO_PLUGIN["PIPELINE"]["event_weights"]',
    "RECENT_ITEMS": 'set RECO_PLUGIN["PIPELINE"]["recent_items"]',
    "COVISIT_WINDOW_SECONDS": 'set RECO_PLUGIN["PIPELINE"]["covisit_window"]',
    "TRENDING_WINDOW_SECONDS": 'set RECO_PLUGIN["PIPELINE"]["trending_window"]',
    "CATALOG_SYNC_SECONDS": "pass catalog_sync_seconds to reco_plugin.schedule.beat_schedule()",
}


@receiver(setting_changed, dispatch_uid="reco_plugin.conf.reload")
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "RECO_PLUGIN":
        reco_settings.reload()
        from . import backends, keys, redis_client, store

        backends.reset_backend()
        redis_client.reset()
        store.reset(fallback=False)
        keys.use_prefix(reco_settings.KEY_PREFIX)
