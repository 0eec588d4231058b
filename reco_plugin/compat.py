"""Optional integrations, imported in one place. Each name is None when missing."""

from __future__ import annotations

try:
    import confluent_kafka
except ImportError:  # pragma: no cover - depends on the installed extras
    confluent_kafka = None

try:
    import celery
except ImportError:  # pragma: no cover
    celery = None


def celery_configured() -> bool:
    """True when the shop has a Celery app with a broker: only then are tasks
    queued (an unconfigured app would try a local AMQP broker on every call)."""
    if celery is None:
        return False
    return bool(celery.current_app.conf.broker_url)


__all__ = ["celery", "celery_configured", "confluent_kafka"]
