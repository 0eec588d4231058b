from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EventBackend:
    """Hands events to the event log. Subclasses implement :meth:`send`.

    ``send`` must never block the request nor raise because the log is down:
    it queues the event and returns.
    """

    def send(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds for queued events; return how many are still queued."""
        return 0

    def stats(self) -> dict[str, int]:
        """Counts since start: ``delivered``, ``failed``, ``dropped``, ``queued`` (those known)."""
        return {}

    def close(self, timeout: float = 2.0) -> None:
        """Release resources; queued events get up to ``timeout`` seconds to go out."""


class UnavailableBackend(EventBackend):
    """Stands in when the configured backend cannot be built: the reason was
    logged once (and ``manage.py check`` reports it); events are counted as dropped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.dropped = 0

    def send(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        self.dropped += 1

    def stats(self) -> dict[str, int]:
        return {"dropped": self.dropped}
