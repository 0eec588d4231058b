"""middleware_overhead: what ``RecoEventMiddleware`` adds to a product page view.

The demo shop's full Django request handler (``WSGIHandler``: every middleware,
URL resolving, the product query, the template with the recommendations widget,
the session read from the database) serves ``GET /products/<id>/`` to a
returning visitor whose session already holds their visitor id, so neither
variant writes the session. Two handlers are built from the same settings, one
with the middleware in ``MIDDLEWARE`` and one without, and run in alternating
rounds (the order flipping every round) so that drift touches both alike. Each
request is timed on its own, from the WSGI call until the body is consumed and
the response closed, as a WSGI server would do, minus the socket.

Events go through the real Kafka backend to a real broker on a free port (Redis
beside it serves the widget's reads); after the run the producer is flushed and
the page views on the topic are counted: exactly one per request with the
middleware, none from the other handler.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stack.services import Ports, Stack

MIDDLEWARE_PATH = "reco_plugin.middleware.RecoEventMiddleware"
VISITOR = "bench-middleware-0001"
PRODUCTS = 24
# A browser's request, so that no user-agent or do-not-track rule skips it.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def setup_django(stack: Stack, db_path: Path) -> None:
    """Configure the demo shop in this process against the stack's services:
    production-like (``DEBUG`` off), with its own SQLite file."""
    env = stack.env()
    for name in ("DJANGO_SETTINGS_MODULE", "RECO_STATE_DIR", "RECO_KAFKA_PORT", "RECO_REDIS_PORT"):
        os.environ[name] = env[name]
    os.environ["RECO_DB_PATH"] = str(db_path)
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.pop("RECO_KAFKA_BOOTSTRAP", None)
    os.environ.pop("RECO_REDIS_URL", None)
    import django
    from django.db import connections

    from reco_plugin.conf import reco_settings

    django.setup()
    database = str(connections["default"].settings_dict["NAME"])
    kafka = reco_settings.KAFKA.get("bootstrap.servers")
    if database != str(db_path) or kafka != f"127.0.0.1:{stack.ports.kafka}":
        raise RuntimeError(
            f"Django was configured before this benchmark (database {database}, Kafka {kafka}); "
            "run it in a fresh process: python -m bench middleware_overhead"
        )


def prepare_shop() -> str:
    """Migrate, add products, create the topics; return the returning visitor's session key."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from demo_shop.catalog.models import Product
    from reco_plugin import topics
    from reco_plugin.visitor import SESSION_KEY

    call_command("migrate", verbosity=0, interactive=False)
    # bulk_create: no post_save, so no catalog-sync task is queued to Celery
    Product.objects.bulk_create(
        Product(id=pk, name=f"Film {pk}", year=1995, category="Drama", genres="Drama", price=9.99)
        for pk in range(1, PRODUCTS + 1)
    )
    session = SessionStore()
    session[SESSION_KEY] = VISITOR
    session.create()
    topics.ensure_topics()
    return session.session_key


def build_handlers():
    """Two full request handlers of the shop: with the middleware and without."""
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    if MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        raise RuntimeError(f"the demo shop's MIDDLEWARE lacks {MIDDLEWARE_PATH}")
    with_middleware = WSGIHandler()
    without = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE_PATH]
    with override_settings(MIDDLEWARE=without):
        without_middleware = WSGIHandler()
    return with_middleware, without_middleware


def environ_for(product_id: int, session_key: str, csrf_token: str) -> dict:
    path = f"/products/{product_id}/"
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": USER_AGENT,
        "HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.5",
        "HTTP_ACCEPT_ENCODING": "gzip, deflate",
        "HTTP_REFERER": "http://127.0.0.1:8000/",
        "HTTP_COOKIE": f"csrftoken={csrf_token}; sessionid={session_key}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def timed_requests(handler, environs: list[dict], count: int) -> list[float]:
    """Serve ``count`` product pages; each request's seconds."""
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    times = []
    clock = time.perf_counter
    for i in range(count):
        environ = dict(environs[i % len(environs)])
        environ["wsgi.input"] = io.BytesIO(b"")
        started = clock()
        response = handler(environ, start_response)
        b"".join(response)
        response.close()
        times.append(clock() - started)
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise RuntimeError(f"{len(bad)} product pages did not render: {bad[:3]}")
    return times


def count_page_views(bootstrap: str, topic: str, visitor_id: str) -> tuple[int, int]:
    """(records on ``topic``, page views of ``visitor_id`` among them), read from the broker."""
    from confluent_kafka import Consumer, TopicPartition

    from reco_plugin import schema

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reco-bench-count",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records = mine = 0
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=1):
                if message.error():
                    raise RuntimeError(f"reading {topic}: {message.error()}")
                records += 1
                event = schema.decode(message.value())
                if event["type"] == schema.PAGE_VIEW and event["visitor_id"] == visitor_id:
                    mine += 1
                if message.offset() + 1 >= ends.get(message.partition(), 0):
                    ends.pop(message.partition(), None)
        if ends:
            raise RuntimeError(f"timed out reading {topic}: partitions {sorted(ends)} unread")
        return records, mine
    finally:
        consumer.close()


def run(rounds: int = 20, per_round: int = 500, warmup: int = 500, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="reco-bench-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        try:
            log("starting Kafka and Redis on free ports...")
            stack.start_kafka()
            stack.start_redis()
            setup_django(stack, Path(state) / "shop.sqlite3")
            from reco_plugin import schema
            from reco_plugin.backends import get_backend, reset_backend
            from reco_plugin.backends.kafka import KafkaBackend
            from reco_plugin.conf import reco_settings

            session_key = prepare_shop()
            backend = get_backend()
            if not isinstance(backend, KafkaBackend):
                raise RuntimeError(f"expected the Kafka backend, got {type(backend)}")
            with_mw, without_mw = build_handlers()
            csrf_token = "b" * 32
            environs = [environ_for(pk, session_key, csrf_token) for pk in range(1, PRODUCTS + 1)]

            log(f"warm-up: {warmup} requests per handler...")
            timed_requests(with_mw, environs, warmup)
            timed_requests(without_mw, environs, warmup)
            backend.flush(30)

            with_times: list[float] = []
            without_times: list[float] = []
            round_added: list[float] = []
            log(f"{rounds} rounds x {per_round} requests per handler, alternating...")
            for i in range(rounds):
                order = [(with_mw, with_times), (without_mw, without_times)]
                medians = {}
                for handler, sink in order if i % 2 == 0 else order[::-1]:
                    times = timed_requests(handler, environs, per_round)
                    sink.extend(times)
                    medians[handler is with_mw] = statistics.median(times)
                round_added.append(medians[True] - medians[False])
                log(
                    f"  round {i + 1}/{rounds}: with {medians[True] * 1e6:.0f} us, "
                    f"without {medians[False] * 1e6:.0f} us"
                )

            log("flushing the producer and counting page views on the broker...")
            remaining = backend.flush(60)
            topic = schema.topic_for(schema.PAGE_VIEW, reco_settings.TOPICS)
            expected = warmup + rounds * per_round
            records, delivered = count_page_views(
                f"127.0.0.1:{stack.ports.kafka}", topic, f"s:{VISITOR}"
            )
            if remaining or backend.failed or backend.dropped:
                raise RuntimeError(
                    f"events lost: {remaining} still queued, {backend.failed} failed, "
                    f"{backend.dropped} dropped"
                )
            if delivered != expected or records != expected:
                raise RuntimeError(
                    f"expected {expected} page views on {topic!r} (one per request with "
                    f"the middleware), found {delivered} of the visitor in {records} records"
                )
            log(f"{delivered} page views on {topic!r}, as expected")
            reset_backend()  # closes the producer while its broker is still up
        except Exception:
            log(stack.dump_logs(30))
            raise
        finally:
            stack.stop()

    with_us = [t * 1e6 for t in with_times]
    without_us = [t * 1e6 for t in without_times]
    p50_with, p50_without = statistics.median(with_us), statistics.median(without_us)
    return {
        "name": "middleware_overhead",
        "value": round(p50_with - p50_without, 1),
        "unit": "us",
        "peer": "same view without the middleware",
        "peer_value": round(p50_without, 1),
        "ratio": round(p50_with / p50_without, 4),
        "p50_with_us": round(p50_with, 1),
        "p50_without_us": round(p50_without, 1),
        "p90_with_us": round(percentile(with_us, 90), 1),
        "p90_without_us": round(percentile(without_us, 90), 1),
        "added_us_median_of_rounds": round(statistics.median(round_added) * 1e6, 1),
        "requests_per_variant": len(with_us),
        "rounds": rounds,
        "warmup_requests_per_variant": warmup,
        "events_delivered": delivered,
    }
