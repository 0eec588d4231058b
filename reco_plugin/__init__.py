"""Real-time personalized product recommendations for Django shops.

The package root imports nothing from Django, so the Django-free modules
(:mod:`reco_plugin.schema`, :mod:`reco_plugin.keys`, :mod:`reco_plugin.scoring`)
can be imported by the Spark jobs.
"""

__version__ = "0.1.0.dev0"


def track(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Record a shop event for the request's visitor; see :func:`reco_plugin.tracking.track`.

    ``reco_plugin.track(request, "add_to_cart", product, quantity=2)``
    """
    from .tracking import track as _track

    return _track(*args, **kwargs)


def flush(timeout: float = 10.0) -> int:
    """Wait up to ``timeout`` seconds for queued events to be delivered; returns
    how many are still queued. Call it at the end of a script or task that must
    not exit before its events are out (process exit flushes too)."""
    from .backends import get_backend

    return get_backend().flush(timeout)
