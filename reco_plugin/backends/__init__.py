"""Event backends: where the shop's events go.

Configured as ``RECO_PLUGIN["EVENT_BACKEND"] = {"BACKEND": dotted.path, "OPTIONS": {...}}``.
"""

from __future__ import annotations

import atexit
import threading

from django.utils.module_loading import import_string

from .base import EventBackend

_lock = threading.Lock()
_backend: EventBackend | None = None


def get_backend() -> EventBackend:
    """The process-wide backend, built on first use."""
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                from ..conf import reco_settings

                config = reco_settings.EVENT_BACKEND
                cls = import_string(config["BACKEND"])
                _backend = cls(**config.get("OPTIONS", {}))
                # A management command, script or task that emits and exits
                # would otherwise lose what is still queued.
                atexit.register(_flush_at_exit)
    return _backend


def _flush_at_exit() -> None:
    from ..conf import reco_settings

    with _lock:
        if _backend is not None:
            _backend.close(timeout=reco_settings.EXIT_FLUSH_SECONDS)


def reset_backend() -> None:
    global _backend
    with _lock:
        if _backend is not None:
            _backend.close()
        _backend = None
    atexit.unregister(_flush_at_exit)


__all__ = ["EventBackend", "get_backend", "reset_backend"]
