"""Creating and checking the plugin's Kafka topics."""

from __future__ import annotations

from .compat import confluent_kafka
from .conf import reco_settings

FORGOTTEN_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1"}


def ensure_topics(create: bool = True, timeout: float = 15.0) -> dict[str, str]:
    """Return topic -> "exists" | "created" | "missing"."""
    if confluent_kafka is None:
        raise ImportError("pip install 'django-reco-plugin[kafka]'")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(dict(reco_settings.KAFKA))
    existing = set(admin.list_topics(timeout=timeout).topics)
    forgotten = reco_settings.FORGOTTEN_TOPIC
    wanted = sorted({*reco_settings.TOPICS.values(), forgotten})
    report = {topic: "exists" for topic in wanted if topic in existing}
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
        return report
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    t,
                    num_partitions=1 if t == forgotten else reco_settings.TOPIC_PARTITIONS,
                    replication_factor=reco_settings.TOPIC_REPLICATION,
                    # forget records are kept for good, the latest per visitor
                    config=FORGOTTEN_CONFIG if t == forgotten else {},
                )
                for t in missing
            ],
            operation_timeout=timeout,
        )
        for topic, future in futures.items():
            future.result(timeout)
            report[topic] = "created"
    return report


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
