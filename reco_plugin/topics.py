"""Creating and checking the plugin's Kafka topics."""

from __future__ import annotations

import dataclasses

from .compat import confluent_kafka
from .conf import reco_settings

FORGOTTEN_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1"}
# copies of each partition a cluster of three or more brokers keeps: one broker
# may fail, and one more be down for maintenance, without losing an event
DEFAULT_REPLICATION = 3


@dataclasses.dataclass(frozen=True)
class Replication:
    """How many copies of each partition, and how many must have an event
    before the producer is told it is stored (``min.insync.replicas``)."""

    factor: int
    min_insync: int
    brokers: int
    # "settings" when TOPIC_REPLICATION/TOPIC_MIN_INSYNC_REPLICAS chose it
    chosen_by: str

    def describe(self) -> str:
        return (
            f"replication factor {self.factor}, min.insync.replicas {self.min_insync} "
            f"({self.brokers} broker{'s' if self.brokers != 1 else ''}; {self.chosen_by})"
        )


def replication_for(brokers: int) -> Replication:
    """The shop's ``TOPIC_REPLICATION`` and ``TOPIC_MIN_INSYNC_REPLICAS``, or
    where they are None what suits ``brokers``: three copies (fewer on a smaller
    cluster), and all but one of them in sync for a write, so a producer with
    ``acks=all`` never loses an acknowledged event to one broker's death and
    keeps writing while one broker is down."""
    factor = reco_settings.TOPIC_REPLICATION
    min_insync = reco_settings.TOPIC_MIN_INSYNC_REPLICAS
    chosen = "set in TOPIC_REPLICATION" if factor else "chosen from the broker count"
    factor = int(factor or max(1, min(DEFAULT_REPLICATION, brokers)))
    min_insync = int(min_insync or max(1, factor - 1))
    return Replication(factor, min_insync, brokers, chosen)


def ensure_topics(create: bool = True, timeout: float = 15.0) -> tuple[Replication, dict[str, str]]:
    """The replication the topics are made with, and topic -> "exists" |
    "created" | "missing" (with what is wrong with an existing one)."""
    if confluent_kafka is None:
        raise ImportError("pip install 'django-reco-plugin[kafka]'")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(dict(reco_settings.KAFKA))
    metadata = admin.list_topics(timeout=timeout)
    replication = replication_for(len(metadata.brokers))
    if replication.factor > len(metadata.brokers):
        raise ValueError(
            f"TOPIC_REPLICATION is {replication.factor} but Kafka has "
            f"{len(metadata.brokers)} broker(s) up"
        )
    existing = metadata.topics
    forgotten = reco_settings.FORGOTTEN_TOPIC
    wanted = sorted({*reco_settings.TOPICS.values(), forgotten})
    report = {
        topic: _existing(existing[topic], replication) for topic in wanted if topic in existing
    }
    missing = [topic for topic in wanted if topic not in existing]
    if forgotten in existing and not _compacted(admin, forgotten, timeout):
        # made by a producer (auto-created): its records would expire
        if create:
            _compact(admin, forgotten, timeout)
            report[forgotten] = "exists (made compacted, kept for good)"
        else:
            report[forgotten] = "exists but is not compacted: run manage.py reco_topics"
    if not create:
        report.update({topic: "missing" for topic in missing})
        return replication, report
    if missing:
        insync = {"min.insync.replicas": str(replication.min_insync)}
        futures = admin.create_topics(
            [
                NewTopic(
                    t,
                    num_partitions=1 if t == forgotten else reco_settings.TOPIC_PARTITIONS,
                    replication_factor=replication.factor,
                    # forget records are kept for good, the latest per visitor
                    config={**insync, **FORGOTTEN_CONFIG} if t == forgotten else insync,
                )
                for t in missing
            ],
            operation_timeout=timeout,
        )
        for topic, future in futures.items():
            future.result(timeout)
            report[topic] = "created"
    return replication, report


def _existing(topic, replication: Replication) -> str:
    """ "exists", or what is short about an existing topic's copies."""
    copies = min((len(p.replicas) for p in topic.partitions.values()), default=0)
    if copies < replication.factor:
        return (
            f"exists with replication factor {copies}, fewer than {replication.factor}: "
            "Kafka's kafka-reassign-partitions.sh adds copies (docs/production.md)"
        )
    return "exists"


def _compacted(admin, topic: str, timeout: float) -> bool:
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout)
    return all(
        config[name].value == value for name, value in FORGOTTEN_CONFIG.items() if name in config
    )


def _compact(admin, topic: str, timeout: float) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in FORGOTTEN_CONFIG.items()
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout)
