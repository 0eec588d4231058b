"""The Kafka backend: every event producing to Kafka goes through here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .. import schema
from ..compat import confluent_kafka
from .base import EventBackend

logger = logging.getLogger(__name__)

# Safe defaults: an idempotent producer (no duplicates or reordering on retry)
# that keeps retrying through a broker outage for five minutes and batches for
# a few milliseconds. The shop's RECO_PLUGIN["KAFKA"] options override these.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 300_000,
    "queue.buffering.max.messages": 200_000,
    "compression.type": "lz4",
    "client.id": "reco-plugin",
}


class KafkaBackend(EventBackend):
    """Produces events with confluent-kafka (librdkafka).

    ``send`` only appends to librdkafka's in-memory queue; delivery happens on
    librdkafka's threads. If the queue is full (the broker has been away long
    enough to fill it) the event is dropped and counted rather than blocking
    the shop's request.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **options: Any) -> None:
        if confluent_kafka is None:
            raise ImportError(
                "reco_plugin's Kafka backend needs confluent-kafka: "
                "pip install 'django-reco-plugin[kafka]'"
            )
        if config is None:
            from ..conf import reco_settings

            config = reco_settings.KAFKA
        self.config = {**PRODUCER_DEFAULTS, **dict(config)}
        self.producer = confluent_kafka.Producer(self.config)
        self.dropped = 0
        self.failed = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            logger.warning("reco event not delivered to %s: %s", msg.topic(), err)

    def send(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        try:
            self.producer.produce(
                topic, key=key.encode(), value=schema.encode(event), on_delivery=self._on_delivery
            )
        except BufferError:
            self.dropped += 1
            logger.error("reco event dropped: producer queue full (is Kafka down?)")
        except confluent_kafka.KafkaException as exc:
            self.dropped += 1
            logger.error("reco event dropped: %s", exc)
        # Serve delivery callbacks of earlier events; never waits.
        self.producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return self.producer.flush(timeout)

    def close(self, timeout: float = 2.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            logger.warning("reco: %d events could not be delivered before close", remaining)
