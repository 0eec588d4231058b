from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import EventBackend


class InMemoryBackend(EventBackend):
    """Keeps events in a list. For unit tests only."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, topic: str, key: str, event: Mapping[str, Any]) -> None:
        self.sent.append((topic, key, dict(event)))

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        return [event for _, _, event in self.sent if type is None or event["type"] == type]

    def clear(self) -> None:
        self.sent.clear()
