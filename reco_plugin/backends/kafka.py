"""The Kafka backend: every event producing to Kafka goes through here."""

from __future__ import annotations

import collections
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
    # a broker that hangs with its sockets open holds a partition's sends for
    # this long before they go to the partition's new leader (60 s by default)
    "socket.timeout.ms": 10_000,
    "queue.buffering.max.messages": 200_000,
    "compression.type": "lz4",
    "client.id": "reco-plugin",
    # a broker that closes idle connections is not worth a log line
    "log.connection.close": False,
}

# The hand-over thread produces what has gathered this often (seconds)...
HAND_OVER_SECONDS = 0.002
# Beyond this many waiting, a sender produces its event itself.
HAND_OVER_BACKLOG = 64
# It sleeps (until the next event wakes it) after this many quiet seconds...
SLEEP_AFTER_SECONDS = 1.0
# ...and at most this many events wait for it (beyond them, events are dropped
# and counted: librdkafka's own queue is full too, Kafka has been away long).
MAX_PENDING = 100_000

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

    ``send`` appends the event to an in-process queue and returns: a
    hand-over thread encodes and produces what has gathered every
    ``HAND_OVER_SECONDS`` (producing a few events in a row costs a fraction of
    producing each from a request, whose work has pushed librdkafka's code out
    of the CPU's caches); librdkafka's threads deliver them. While Kafka is away
    events wait in librdkafka's queue, then in this one; when both are full an
    event is dropped and counted rather than blocking the shop's request.
    Delivered, failed and dropped events are counted (:meth:`stats`).
    """

    accepts_validate_only = True

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        validate_only: bool = False,
        max_pending: int = MAX_PENDING,
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
                **({"bootstrap.servers": "", "log_level": 0} if validate_only else {}),
            }
        )
        # Callbacks run in whichever thread polls: counts change under a lock.
        self._counts_lock = threading.Lock()
        self._sent = itertools.count()  # produced into librdkafka (atomic increments)
        self.failed = 0
        self.dropped = 0
        self._unsent_at_close = 0
        self.max_pending = max_pending
        self._pending: collections.deque[tuple[str, str, Mapping[str, Any]]] = collections.deque()
        self._wake = threading.Event()
        self._asleep = True
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    @property
    def sent(self) -> int:
        """Events produced into librdkafka so far."""
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
        pending = len(self._pending)
        if pending >= HAND_OVER_BACKLOG:
            # A burst (a script, a replay) outruns the thread: this caller
            # produces its own event, which never waits either.
            try:
                self._produce(topic, key, event)
                return
            except BufferError:
                if pending >= self.max_pending:
                    self._count("dropped")
                    self.log.emit(
                        "dropped",
                        logging.ERROR,
                        "reco event dropped: producer queue full (is Kafka down?)",
                    )
                    return
        self._pending.append((topic, key, event))
        if self._asleep:  # only the first event after a quiet second pays a wake-up
            self._wake_up()

    def _wake_up(self) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._hand_over, name="reco-producer", daemon=True
                    )
                    self._thread.start()
        self._asleep = False
        self._wake.set()

    def _hand_over(self) -> None:
        """While events come, look for them every ``HAND_OVER_SECONDS``; after
        a quiet ``SLEEP_AFTER_SECONDS``, sleep until ``send`` wakes the thread."""
        quiet_since = time.monotonic()
        while not self._closing:
            if self._asleep:
                self._wake.wait()
                self._wake.clear()
            else:
                time.sleep(HAND_OVER_SECONDS)
            self._idle.clear()
            if self._pending:
                self._produce_pending()
                self.producer.poll(0)  # serve callbacks: failures, librdkafka's log
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > SLEEP_AFTER_SECONDS:
                self.producer.poll(0)
                self._asleep = True
                if self._pending:  # appended just before: ``send`` saw us awake
                    self._asleep = False
            self._idle.set()

    def _produce(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        """Into librdkafka's queue, counted; raises BufferError when it is full."""
        self.producer.produce(topic, schema.encode(event), key.encode())
        next(self._sent)

    def _produce_pending(self) -> None:
        pending = self._pending
        while pending:
            topic, key, event = pending.popleft()
            while True:
                try:
                    self._produce(topic, key, event)
                    break
                except BufferError:
                    if self._closing:
                        pending.appendleft((topic, key, event))
                        return
                    # librdkafka's queue is full: wait for the broker here, not
                    # in anybody's request.
                    self.producer.poll(0.1)
                except Exception as exc:
                    self._count("dropped")
                    self.log.emit("dropped", logging.ERROR, "reco event dropped: %s", exc)
                    break

    def hand_over(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds until what is pending has been
        produced into librdkafka (not delivered); return how many still wait."""
        self._drain(time.monotonic() + timeout)
        return len(self._pending)

    def _drain(self, deadline: float) -> None:
        """Wait until the hand-over thread has produced what is pending."""
        while (self._pending or not self._idle.is_set()) and time.monotonic() < deadline:
            if self._asleep:
                self._wake_up()
            self._idle.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            time.sleep(0.001)

    def flush(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        self._drain(deadline)
        return len(self._pending) + self.producer.flush(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        self.producer.poll(0)
        in_librdkafka = len(self.producer)
        with self._counts_lock:
            delivered = self.sent - self.failed - self._unsent_at_close - in_librdkafka
            return {
                "delivered": max(0, delivered),
                "failed": self.failed,
                "dropped": self.dropped,
                "queued": in_librdkafka + len(self._pending),
            }

    def close(self, timeout: float = 2.0) -> None:
        remaining = self.flush(timeout)
        self._closing = True
        self._wake.set()  # a sleeping thread ends
        if remaining:
            unsent = len(self._pending)
            self._pending.clear()
            with self._counts_lock:
                self.dropped += remaining
                self._unsent_at_close += remaining - unsent
            logger.warning("reco: %d events could not be delivered before close", remaining)
