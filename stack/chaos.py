"""What runs against the cluster while one part of it fails (tests/test_cluster.py):

- :class:`Traffic`: shop events at a steady rate through the plugin's own Kafka
  producer (``KafkaBackend``: idempotent, ``acks=all``), a mix of new and
  returning visitors, page views, carts and purchases; what the brokers
  acknowledged is counted;
- :class:`Requests`: pages and API calls at a steady rate, each one's status,
  time and whether the API answered from a fallback (``degraded``);
- :class:`Probe`: a visitor with the live widget's websocket who views a product
  and waits for the pushed list that reflects it: the first such push after a
  fault is when the pipeline is fresh again.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from reco_plugin import schema

from .visitor import ShopVisitor

PRODUCTS = 1682  # the demo catalog (MovieLens 100k)
# the requests of the load are a bot's (BOT_USER_AGENTS): they are served, not tracked
BOT_AGENT = "reco-chaos-bot (load)"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Traffic(threading.Thread):
    """``rate`` events per second until :meth:`stop`."""

    def __init__(self, bootstrap: str, rate: float = 100, seed: int = 3):
        super().__init__(daemon=True, name="traffic")
        from reco_plugin.backends.kafka import KafkaBackend

        self.backend = KafkaBackend({"bootstrap.servers": bootstrap})
        self.rate = rate
        self.rng = random.Random(seed)
        self.visitors: list[str] = []
        self.sent = 0
        self.sent_ids: set[str] = set()
        self.halt = threading.Event()
        self.last_ts = 0

    def event(self) -> dict:
        event = self._event()
        # One event per millisecond: two of a visitor's events of the same
        # millisecond on different topics are ordered by topic within a batch
        # and by batch across batches (``learn.remember``), so their order in
        # the visitor's memory would depend on where batches began, which a
        # fault moves. (A sender that falls behind sends a burst.)
        self.last_ts = event["ts"] = max(event["ts"], self.last_ts + 1)
        return event

    def _event(self) -> dict:
        rng = self.rng
        if not self.visitors or rng.random() < 0.15:
            self.visitors.append(f"s:chaos-{len(self.visitors)}")
        visitor = rng.choice(self.visitors[-300:])
        # a few popular products, a long tail
        product = str(
            min(PRODUCTS, int(rng.paretovariate(1.1)))
            if rng.random() < 0.6
            else rng.randint(1, PRODUCTS)
        )
        roll = rng.random()
        if roll < 0.05:
            return schema.make_event(schema.PURCHASE, visitor, product, quantity=1, price=4.0)
        if roll < 0.17:
            return schema.make_event(schema.ADD_TO_CART, visitor, product, quantity=1)
        return schema.make_event(schema.PAGE_VIEW, visitor, product)

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.halt.is_set():
            event = self.event()
            self.backend.send(schema.topic_for(event["type"]), event["visitor_id"], event)
            self.sent += 1
            self.sent_ids.add(event["event_id"])
            next_at += interval
            self.halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> dict[str, int]:
        """Stop sending, wait until what was sent is delivered (or failed), and
        say: sent, delivered (acknowledged by the brokers), failed, dropped."""
        self.halt.set()
        self.join(30)
        self.backend.flush(120)
        return {"sent": self.sent, **self.backend.stats()}


@dataclass
class Answer:
    at: float
    kind: str
    seconds: float
    status: int  # 0: no answer (connection refused, timeout)
    degraded: bool = False


class Requests(threading.Thread):
    """Product pages and the API's similar and trending lists, ``rate`` a second."""

    def __init__(self, web_url: str, rate: float = 8, seed: int = 4):
        super().__init__(daemon=True, name="requests")
        self.web_url = web_url
        self.rate = rate
        self.rng = random.Random(seed)
        self.answers: list[Answer] = []
        self.halt = threading.Event()

    def one(self) -> Answer:
        product = self.rng.randint(1, PRODUCTS)
        kind, path = self.rng.choice(
            [
                ("page", f"/products/{product}/"),
                ("api", f"/reco/api/products/{product}/similar/"),
                ("api", "/reco/api/trending/"),
            ]
        )
        request = urllib.request.Request(self.web_url + path, headers={"User-Agent": BOT_AGENT})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            body, status = b"", error.code
        except OSError:
            body, status = b"", 0
        seconds = time.monotonic() - started
        degraded = False
        if kind == "api" and status == 200:
            degraded = bool(json.loads(body).get("degraded"))
        return Answer(started, kind, seconds, status, degraded)

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.halt.is_set():
            self.answers.append(self.one())
            next_at += interval
            self.halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.halt.set()
        self.join(30)

    def between(self, start: float, end: float) -> dict:
        """Served, failed (not 200), degraded, p50 and p99 of the requests made
        in [start, end)."""
        return self.within([(start, end)])

    def within(self, windows: list[tuple[float, float]]) -> dict:
        """:meth:`between` over the requests made in any of ``windows``."""
        chosen = [a for a in self.answers if any(s <= a.at < e for s, e in windows)]
        times = [a.seconds * 1000 for a in chosen]
        return {
            "served": sum(1 for a in chosen if a.status == 200),
            "failed": sum(1 for a in chosen if a.status != 200),
            "degraded": sum(1 for a in chosen if a.degraded),
            "p50_ms": round(percentile(times, 50) or 0, 1),
            "p99_ms": round(percentile(times, 99) or 0, 1),
        }

    def slowest(self, start: float, end: float, since: float, n: int = 3) -> list[list]:
        """The ``n`` slowest requests made in [start, end): [seconds after
        ``since`` it was made, kind, ms]."""
        chosen = [a for a in self.answers if start <= a.at < end]
        chosen.sort(key=lambda a: -a.seconds)
        return [[round(a.at - since, 1), a.kind, round(a.seconds * 1000)] for a in chosen[:n]]


@dataclass
class Probe:
    """A shopper with the widget open: views products and reads the websocket."""

    web_url: str
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    pushes: int = 0
    reconnects: int = 0

    def __post_init__(self) -> None:
        self.visitor = ShopVisitor(self.web_url)
        self.visitor.get(f"/products/{self.rng.randint(1, PRODUCTS)}/")
        self.ws = None
        self.last: list[str] = []

    def _connect(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.reconnects += 1
        self.ws = self.visitor.websocket()
        self.ws.send(json.dumps({"type": "subscribe", "limit": 8}))

    def fresh(self, timeout: float = 8.0) -> bool:
        """View a product (one the last list holds, if any) and wait up to
        ``timeout`` for a pushed list without it: the view went through Kafka,
        the job, Redis, the relay and the channel layer."""
        try:
            if self.ws is None:
                self._connect()
            product = self.last[0] if self.last else str(self.rng.randint(1, PRODUCTS))
            self.visitor.get(f"/products/{product}/")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                if message.get("type") != "recommendations":
                    continue
                self.pushes += 1
                self.last = [i["product_id"] for i in message.get("items", [])]
                if self.last and product not in self.last:
                    return True
        except TimeoutError:
            return False
        except Exception:  # the socket closed (the web process lost its channel layer)
            self.ws = None
            time.sleep(0.5)
        return False

    def until_fresh(self, timeout: float) -> float | None:
        """Seconds until a view made now (or later) shows in a pushed list."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.fresh():
                return time.monotonic() - started
        return None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
