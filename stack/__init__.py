"""The local stack: Kafka (KRaft), Redis, the Spark streaming job, the websocket
relay, Celery worker and beat, and the demo shop on an ASGI server, each a plain
process started in order, checked for readiness, logged to a file and stopped by
the process id it was started with.

Used by ``make demo`` (``python -m stack demo``), the integration tests and the
benchmarks. Not part of the installable app.
"""

from .services import Ports, Stack, free_port

__all__ = ["Ports", "Stack", "free_port"]
