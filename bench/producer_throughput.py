"""producer_throughput: events per second through the plugin's emit path
(``reco_plugin.events.emit``: build and validate a schema-1 event, encode it,
hand it to the configured backend, the real Kafka backend) into a real broker
on a free port, from the first event until ``flush()`` returns.

Peer: a plain ``confluent_kafka.Producer`` loop with the same producer config
(``PRODUCER_DEFAULTS`` and the bootstrap servers, plus a delivery callback)
producing the same records already encoded (events built the same way from the
same visitors, products and page contexts, so of the same sizes) to the same
broker, on a topic of its own. The two alternate, each run several times; the
median run of each is reported (every run is listed). Each run's count on the
broker (end offsets of its topic) must grow by exactly the events sent.

The argument lists and pre-encoded records are built before the clock starts
and frozen out of the garbage collector, so neither loop pays for scanning them.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time

from bench import kafka_and_redis
from reco_plugin import schema
from stack.pipeline import end_offsets
from stack.services import Stack

PLUGIN_TOPIC = "bench.plugin.page_views"
RAW_TOPIC = "bench.raw.page_views"
WARMUP = 1_000


def page_views(n: int, seed: int = 11) -> list[tuple[str, str, dict[str, str]]]:
    """(visitor_id, product_id, context) of ``n`` page views of 5,000 visitors over 2,000 products."""
    rng = random.Random(seed)
    views = []
    for _ in range(n):
        product = str(rng.randint(1, 2000))
        context = {"page": f"/products/{product}/", "referrer": "http://127.0.0.1:8000/"}
        views.append((f"s:{rng.getrandbits(48):012x}{rng.randint(1, 5000):04d}", product, context))
    return views


def encoded(views: list[tuple[str, str, dict[str, str]]]) -> list[tuple[bytes, bytes]]:
    """The records the plugin would produce for ``views``: (key, value)."""
    records = []
    for visitor, product, context in views:
        event = schema.make_event(schema.PAGE_VIEW, visitor, product, context=context)
        records.append((visitor.encode(), schema.encode(event)))
    return records


def on_broker(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """Records on ``topic``: the sum of its partitions' end offsets."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return sum(end_offsets(bootstrap, [topic]).values())
        except KafkaException:
            # a topic just created may not have all its partition leaders yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def setup_django(stack: Stack) -> None:
    """The demo shop's settings in this process (unless a benchmark set them up
    already); the plugin is pointed at this stack by ``override_settings``."""
    env = stack.env()
    for name in ("DJANGO_SETTINGS_MODULE", "RECO_STATE_DIR", "RECO_KAFKA_PORT", "RECO_REDIS_PORT"):
        os.environ.setdefault(name, env[name])
    import django

    django.setup()


def plugin_run(views, bootstrap: str) -> dict:
    from reco_plugin.backends import get_backend
    from reco_plugin.events import emit

    backend = get_backend()
    before = on_broker(bootstrap, PLUGIN_TOPIC)
    failed, dropped = backend.failed, backend.dropped
    page_view = schema.PAGE_VIEW
    started = time.perf_counter()
    for visitor, product, context in views:
        emit(page_view, visitor, product, context=context)
    handed_over = time.perf_counter()
    remaining = backend.flush(300)
    finished = time.perf_counter()
    delivered = on_broker(bootstrap, PLUGIN_TOPIC) - before
    lost = (remaining, backend.failed - failed, backend.dropped - dropped)
    if any(lost) or delivered != len(views):
        raise RuntimeError(
            f"plugin: sent {len(views)}, {delivered} on the broker "
            f"({lost[0]} still queued, {lost[1]} failed, {lost[2]} dropped)"
        )
    return {"seconds": finished - started, "loop_seconds": handed_over - started}


def raw_run(producer, records, bootstrap: str, counts: dict[str, int]) -> dict:
    before = on_broker(bootstrap, RAW_TOPIC)
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                produce(RAW_TOPIC, key=key, value=value)
                break
            except BufferError:
                poll(0.01)
        poll(0)
    handed_over = time.perf_counter()
    remaining = producer.flush(300)
    finished = time.perf_counter()
    delivered = on_broker(bootstrap, RAW_TOPIC) - before
    if remaining or counts["failed"] or len(records) != delivered:
        raise RuntimeError(
            f"raw: sent {len(records)}, {delivered} on the broker "
            f"({remaining} still queued, {counts['failed']} failed)"
        )
    return {"seconds": finished - started, "loop_seconds": handed_over - started}


def run(events: int = 200_000, runs: int = 3, log=print) -> dict:
    with kafka_and_redis(log) as (stack, state):
        bootstrap = f"127.0.0.1:{stack.ports.kafka}"
        setup_django(stack)
        from confluent_kafka import Producer
        from django.conf import settings
        from django.test import override_settings

        from reco_plugin import topics
        from reco_plugin.backends import get_backend, reset_backend
        from reco_plugin.backends.kafka import PRODUCER_DEFAULTS, KafkaBackend

        def plugin_settings(topic: str) -> dict:
            return {
                **settings.RECO_PLUGIN,
                "KAFKA": {"bootstrap.servers": bootstrap},
                "EVENT_BACKEND": {
                    "BACKEND": "reco_plugin.backends.kafka.KafkaBackend",
                    "OPTIONS": {},
                },
                "TOPICS": {"page_views": topic},
                "REDIS_URL": stack.redis_url,
            }

        # The plugin's own topic creation, for both topics (same partitions).
        for topic in (RAW_TOPIC, PLUGIN_TOPIC):
            with override_settings(RECO_PLUGIN=plugin_settings(topic)):
                topics.ensure_topics()

        log(f"building {events} page views and their encoded records...")
        views = page_views(events)
        records = encoded(views)
        sizes = [len(value) for _, value in records]

        with override_settings(RECO_PLUGIN=plugin_settings(PLUGIN_TOPIC)):
            backend = get_backend()
            if not isinstance(backend, KafkaBackend):
                raise RuntimeError(f"expected the Kafka backend, got {type(backend)}")
            config = {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap}
            if {k: v for k, v in backend.config.items() if k in config} != config:
                raise RuntimeError(f"the backend's config differs: {backend.config}")
            # The same config: with delivery.report.only.error only
            # failures call back, as in the plugin's backend.
            counts = {"failed": 0}

            def on_delivery(err, msg):
                if err is not None:
                    counts["failed"] += 1

            producer = Producer({**config, "on_delivery": on_delivery})

            log(f"warm-up: {WARMUP} events each...")
            plugin_run(views[:WARMUP], bootstrap)
            raw_run(producer, records[:WARMUP], bootstrap, counts)

            results: dict[str, list[dict]] = {"plugin": [], "raw": []}
            gc.collect()
            gc.freeze()
            try:
                for i in range(runs):
                    order = ["plugin", "raw"] if i % 2 == 0 else ["raw", "plugin"]
                    for variant in order:
                        if variant == "plugin":
                            result = plugin_run(views, bootstrap)
                        else:
                            result = raw_run(producer, records, bootstrap, counts)
                        results[variant].append(result)
                        log(
                            f"  run {i + 1}/{runs} {variant:>6}: "
                            f"{events / result['seconds']:,.0f} events/s "
                            f"(hand-over loop {events / result['loop_seconds']:,.0f}/s)"
                        )
            finally:
                gc.unfreeze()
            producer.flush(10)
            reset_backend()  # closes the plugin's producer while its broker is up

    def rates(variant: str, field: str) -> list[float]:
        return [events / r[field] for r in results[variant]]

    value = statistics.median(rates("plugin", "seconds"))
    peer_value = statistics.median(rates("raw", "seconds"))
    return {
        "name": "producer_throughput",
        "value": round(value),
        "unit": "events/s",
        "peer": "raw confluent-kafka Producer",
        "peer_value": round(peer_value),
        "ratio": round(value / peer_value, 3),
        "statistic": f"median of {runs} alternating runs, first send to flush() returned",
        "events_per_run": events,
        "runs_events_per_s": [round(r) for r in rates("plugin", "seconds")],
        "peer_runs_events_per_s": [round(r) for r in rates("raw", "seconds")],
        "handover_events_per_s": round(statistics.median(rates("plugin", "loop_seconds"))),
        "peer_handover_events_per_s": round(statistics.median(rates("raw", "loop_seconds"))),
        "payload_bytes_mean": round(statistics.mean(sizes), 1),
        "events_delivered": events * runs,
        "peer_events_delivered": events * runs,
    }
