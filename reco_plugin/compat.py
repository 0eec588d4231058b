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

__all__ = ["celery", "confluent_kafka"]
