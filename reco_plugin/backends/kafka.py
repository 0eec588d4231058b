"""The Kafka backend: every event producing to Kafka goes through here."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .. import schema
from ..compat import confluent_kafka
from .base import EventBackend

logger = logging.getLogger(__name__)
# librdkafka's own messages (connection errors and the like), rate-limited.
client_logger = logging.getLogger("reco_plugin.kafka")

# Safe defaults: an idempotent producer (no duplicates or reordering on retry)
# that keeps retrying through a broker outage for five minutes and batches for
# a few milliseconds. The shop's RECO_PLUGIN["KAFKA"] options override these.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    # Batching for 20 ms costs the recommendations nothing a shopper sees and
    # spares the broker (and the web server's cores) a request per event.
    "linger.ms": 20,
    # Only failures call back into Python; deliveries are counted from what
    # was sent and what is still queued.
    "delivery.report.only.error": True,
    "message.timeout.ms": 300_000,
    "queue.buffering.max.messages": 200_000,
    "compression.type": "lz4",
    "client.id": "reco-plugin",
    # a broker that closes idle connections is not worth a log line
    "log.connection.close": False,
}

# ``send`` serves callbacks every this many events (``stats`` and ``flush`` too).
POLL_EVERY = 16

# The same message (per kind) at most once per this many seconds.
LOG_INTERVAL_SECONDS = 60.0


class RateLimitedLog:
    """Logs a message of each kind at most once per ``interval`` seconds, and
    says how many were held back in between.

    Given to librdkafka as its ``logger`` (its ``log(level, fmt, *args)`` calls
    carry the facility as ``args[0]``) and used for its errors.
    """

    def __init__(self, target: logging.Logger, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.target = target
        self.interval = interval
        self._last: dict[Any, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        self.emit(args[0] if args else fmt, level, fmt, *args)

    def emit(self, kind: Any, level: int, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(kind, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[kind] = (last, held + 1)
                return
            self._last[kind] = (now, 0)
        if held:
            fmt += " (%d more like this in the last %.0f s)"
            args = (*args, held, now - last)
        self.target.log(level, fmt, *args)


class KafkaBackend(EventBackend):
    """Produces events with confluent-kafka (librdkafka).

    ``send`` only appends to librdkafka's in-memory queue; delivery happens on
    librdkafka's threads. If the queue is full (the broker has been away long
    enough to fill it) the event is dropped and counted rather than blocking
    the shop's request. Delivered, failed and dropped events are counted
    (:meth:`stats`).
    """

    accepts_validate_only = True

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        validate_only: bool = False,
        **options: Any,
    ) -> None:
        if confluent_kafka is None:
            raise ImportError(
                "reco_plugin's Kafka backend needs confluent-kafka: "
                "pip install 'django-reco-plugin[kafka]'"
            )
        if config is None:
            from ..conf import reco_settings

            config = reco_settings.KAFKA
        self.log = RateLimitedLog(client_logger)
        self.config = {**PRODUCER_DEFAULTS, **dict(config)}
        self.producer = confluent_kafka.Producer(
            {
                **self.config,
                "logger": self.log,
                "error_cb": self._on_error,
                "on_delivery": self._on_delivery,
                # librdkafka checks every option when the client is made; with
                # no brokers to reach it makes no connection.
                **({"bootstrap.servers": ""} if validate_only else {}),
            }
        )
        # Callbacks run in whichever thread polls: counts change under a lock.
        self._counts_lock = threading.Lock()
        self._sent = itertools.count()  # accepted into the queue (atomic increments)
        self._sends = 0
        self.failed = 0
        self.dropped = 0
        self._unsent_at_close = 0
        self._produce = self.producer.produce
        self._poll = self.producer.poll

    @property
    def sent(self) -> int:
        """Events accepted into the queue so far."""
        return self._sent.__reduce__()[1][0]

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + n)

    def _on_error(self, error: Any) -> None:
        level = logging.ERROR if error.fatal() else logging.WARNING
        self.log.emit(error.code(), level, "reco: Kafka: %s", error.str())

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._count("failed")
            self.log.emit(
                ("delivery", err.code()),
                logging.WARNING,
                "reco event not delivered to %s: %s",
                msg.topic(),
                err,
            )

    def send(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        try:
            self._produce(topic, schema.encode(event), key.encode())
        except BufferError:
            self._count("dropped")
            self.log.emit(
                "dropped", logging.ERROR, "reco event dropped: producer queue full (is Kafka down?)"
            )
        except confluent_kafka.KafkaException as exc:
            self._count("dropped")
            self.log.emit("dropped", logging.ERROR, "reco event dropped: %s", exc)
        else:
            next(self._sent)
        # Serve callbacks (failures, librdkafka's log) now and then; never waits.
        self._sends += 1
        if not self._sends % POLL_EVERY:
            self._poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return self.producer.flush(timeout)

    def stats(self) -> dict[str, int]:
        self.producer.poll(0)
        queued = len(self.producer)
        with self._counts_lock:
            delivered = self.sent - self.failed - self._unsent_at_close - queued
            return {
                "delivered": max(0, delivered),
                "failed": self.failed,
                "dropped": self.dropped,
                "queued": queued,
            }

    def close(self, timeout: float = 2.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            with self._counts_lock:
                self.dropped += remaining
                self._unsent_at_close += remaining
            logger.warning("reco: %d events could not be delivered before close", remaining)
