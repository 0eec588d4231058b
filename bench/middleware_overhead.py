"""middleware_overhead: what ``RecoEventMiddleware`` adds to a product page view.

The demo shop's full Django request handler (``WSGIHandler``: every middleware,
URL resolving, the product query, the template with the recommendations widget,
the session read from the database) serves ``GET /products/<id>/`` to a
returning visitor whose session already holds their visitor id, so neither
variant writes the session. Two handlers are built from the same settings, one
with the middleware in ``MIDDLEWARE`` and one without. Each product page is
served twice in a row, once by each (which goes first alternates), so drift and
the view's own variance (a Redis read, the database) touch both alike; the
value is the median over all pairs of (with - without). Each request is timed
on its own, from the WSGI call until the body is consumed and the response
closed, as a WSGI server would do, minus the socket. Its CPU time on the
request's own thread and in the whole process are recorded beside it: they
tell the middleware's own work from that of the producer's background threads
(the broker shares this machine's cores here; it would not in production).
The backend hands events to librdkafka on a thread of its own: after each
request with the middleware the benchmark waits for that hand-over, untimed,
so its work does not land in the next request, and reports its CPU apart
(``hand_over_cpu_us_mean``).

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
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import kafka_and_redis, percentile
from stack.services import Stack

MIDDLEWARE_PATH = "reco_plugin.middleware.RecoEventMiddleware"
VISITOR = "bench-middleware-0001"
PRODUCTS = 24
# A browser's request, so that no user-agent or do-not-track rule skips it.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


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


@dataclass
class Timings:
    """Per request, in seconds: wall clock; CPU of the request's thread; CPU of
    the whole process (the producer's librdkafka threads included)."""

    wall: list[float] = field(default_factory=list)
    thread_cpu: list[float] = field(default_factory=list)
    process_cpu: list[float] = field(default_factory=list)

    def extend(self, other: Timings) -> None:
        self.wall += other.wall
        self.thread_cpu += other.thread_cpu
        self.process_cpu += other.process_cpu


def timed_requests(handler, environs: list[dict], count: int, offset: int = 0) -> Timings:
    """Serve ``count`` product pages, timing each."""
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    timings = Timings()
    wall, thread_cpu, process_cpu = time.perf_counter, time.thread_time, time.process_time
    for i in range(count):
        environ = dict(environs[(offset + i) % len(environs)])
        environ["wsgi.input"] = io.BytesIO(b"")
        p0, t0, w0 = process_cpu(), thread_cpu(), wall()
        response = handler(environ, start_response)
        b"".join(response)
        response.close()
        w1, t1, p1 = wall(), thread_cpu(), process_cpu()
        timings.wall.append(w1 - w0)
        timings.thread_cpu.append(t1 - t0)
        timings.process_cpu.append(p1 - p0)
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise RuntimeError(f"{len(bad)} product pages did not render: {bad[:3]}")
    return timings


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
    with kafka_and_redis(log) as (stack, state):
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

        with_t, without_t = Timings(), Timings()
        paired: list[float] = []
        hand_over_cpu: list[float] = []
        log(f"{rounds} rounds x {per_round} requests per handler, alternating per request...")
        for i in range(rounds):
            for j in range(per_round):
                # with/without, then without/with: neither always goes first
                first_with = (i + j) % 2 == 0
                pair = {}
                for handler in (with_mw, without_mw) if first_with else (without_mw, with_mw):
                    timings = timed_requests(handler, environs, 1, offset=j)
                    (with_t if handler is with_mw else without_t).extend(timings)
                    pair[handler is with_mw] = timings.wall[0]
                    if handler is with_mw:
                        # The event goes on to librdkafka on the backend's
                        # hand-over thread: let it, untimed, so its CPU does
                        # not land in the next request, and count that CPU.
                        cpu = time.process_time()
                        backend.hand_over(5)
                        hand_over_cpu.append(time.process_time() - cpu)
                paired.append(pair[True] - pair[False])
            log(
                f"  round {i + 1}/{rounds}: added "
                f"{statistics.median(paired[-per_round:]) * 1e6:.0f} us (median of pairs)"
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

    def us(values: list[float], statistic=statistics.median) -> float:
        return statistic(values) * 1e6

    p50_with, p50_without = us(with_t.wall), us(without_t.wall)
    return {
        "name": "middleware_overhead",
        # the same product page served twice in a row, once by each handler:
        # the median of (with - without) over all pairs
        "value": round(us(paired), 1),
        "unit": "us",
        "peer": "same view without the middleware",
        "peer_value": round(p50_without, 1),
        "ratio": round(p50_with / p50_without, 4),
        "p50_with_us": round(p50_with, 1),
        "p50_without_us": round(p50_without, 1),
        "p90_with_us": round(percentile(with_t.wall, 90) * 1e6, 1),
        "p90_without_us": round(percentile(without_t.wall, 90) * 1e6, 1),
        "added_us_difference_of_p50s": round(p50_with - p50_without, 1),
        # where the added time goes: on the request's own thread, and in the
        # whole process (librdkafka's threads too; a mean, since their work
        # lands on whichever request is running)
        "thread_cpu_added_us": round(us(with_t.thread_cpu) - us(without_t.thread_cpu), 1),
        "process_cpu_added_us": round(
            us(with_t.process_cpu, statistics.mean) - us(without_t.process_cpu, statistics.mean),
            1,
        ),
        # CPU of the hand-over thread per event (off the request, not in value)
        "hand_over_cpu_us_mean": round(us(hand_over_cpu, statistics.mean), 1),
        "requests_per_variant": len(with_t.wall),
        "rounds": rounds,
        "warmup_requests_per_variant": warmup,
        "events_delivered": delivered,
    }
