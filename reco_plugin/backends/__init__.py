"""Event backends: where the shop's events go.

Configured as ``RECO_PLUGIN["EVENT_BACKEND"] = {"BACKEND": dotted.path, "OPTIONS": {...}}``.

One backend per process. A backend that cannot be built (a missing package, a
bad option) is reported once and replaced by one that counts the events it
drops; the shop's pages never fail for it. Each process adds its counts to
Redis every ``PRODUCER_STATS_SECONDS`` for ``reco_status``, and flushes what is
queued when it exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from django.utils.module_loading import import_string

from .base import EventBackend, UnavailableBackend

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_backend: EventBackend | None = None
_reporter: StatsReporter | None = None


def build_backend(connect: bool = True) -> EventBackend:
    """A new backend from the settings; raises if it cannot be built. With
    ``connect=False`` a backend that would connect somewhere is built with its
    options checked but no connection made (``validate_only``)."""
    from ..conf import reco_settings

    config = reco_settings.EVENT_BACKEND
    cls = import_string(config["BACKEND"])
    options = dict(config.get("OPTIONS", {}))
    if not connect and getattr(cls, "accepts_validate_only", False):
        options["validate_only"] = True
    return cls(**options)


def get_backend() -> EventBackend:
    """The process-wide backend, built on first use."""
    global _backend, _reporter
    if _backend is None:
        with _lock:
            if _backend is None:
                try:
                    backend = build_backend()
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    logger.error(
                        "reco: the event backend cannot be built (%s); events are dropped "
                        "until it is fixed (see manage.py check)",
                        reason,
                    )
                    backend = UnavailableBackend(reason)
                _backend = backend
                _reporter = StatsReporter(backend)
                # A management command, script or task that emits and exits
                # would otherwise lose what is still queued.
                atexit.register(_flush_at_exit)
    return _backend


def _flush_at_exit() -> None:
    from ..conf import reco_settings

    with _lock:
        if _backend is not None:
            _backend.close(timeout=reco_settings.EXIT_FLUSH_SECONDS)
        if _reporter is not None:
            _reporter.stop()


def reset_backend() -> None:
    global _backend, _reporter
    with _lock:
        if _reporter is not None:
            _reporter.stop(publish=False)
        if _backend is not None:
            _backend.close()
        _backend = None
        _reporter = None
    atexit.unregister(_flush_at_exit)


def _forget_after_fork() -> None:
    """A forked child (a pre-forking server's worker) builds its own backend:
    the parent's producer and threads do not exist in it."""
    global _backend, _reporter
    _backend = None
    _reporter = None


os.register_at_fork(after_in_child=_forget_after_fork)


class StatsReporter:
    """Adds the backend's count changes to Redis (``keys.producer_stats``) every
    ``PRODUCER_STATS_SECONDS`` on a daemon thread, so ``reco_status`` can sum
    every process's. A Redis outage only delays the counts."""

    def __init__(self, backend: EventBackend) -> None:
        from ..conf import reco_settings

        self.backend = backend
        self.published: dict[str, int] = {}
        self.interval = float(reco_settings.PRODUCER_STATS_SECONDS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.interval > 0 and backend.stats():
            self._thread = threading.Thread(target=self._run, name="reco-stats", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def publish(self) -> None:
        from .. import keys
        from ..redis_client import get_work_redis as get_redis

        counts = self.backend.stats()
        changes = {
            name: value - self.published.get(name, 0)
            for name, value in counts.items()
            if name != "queued" and value != self.published.get(name, 0)
        }
        if not changes:
            return
        try:
            with get_redis().pipeline(transaction=True) as pipe:
                for name, change in changes.items():
                    pipe.hincrby(keys.producer_stats(), name, change)
                pipe.execute()
        except Exception as exc:
            logger.debug("reco: producer counts not published yet: %s", exc)
            return
        self.published.update({name: counts[name] for name in changes})

    def stop(self, publish: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # one publisher at a time
            if publish:
                self.publish()


__all__ = ["EventBackend", "build_backend", "get_backend", "reset_backend"]
