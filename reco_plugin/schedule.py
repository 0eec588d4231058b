"""The plugin's periodic work, as Celery beat entries.

In the shop's settings (next to its Celery configuration)::

    from reco_plugin.schedule import beat_schedule
    CELERY_BEAT_SCHEDULE = {**beat_schedule(), **your_own_entries}

Safe to import from a settings module: nothing here reads Django's settings.
"""

from __future__ import annotations

from typing import Any


def beat_schedule(
    *,
    catalog_sync_seconds: float = 300,
    roll_up_seconds: float = 15,
    retrain_hour: int = 3,
    retrain_minute: int = 30,
    retrain_days: int = 30,
) -> dict[str, Any]:
    """The full catalog sync every ``catalog_sync_seconds`` (it repairs what a
    lost product-save sync missed), the active tuning published as often, a
    sample for the admin's dashboard every ``roll_up_seconds``, the daily
    cleanup of ended experiments' visitor sets, and the retraining every night at
    ``retrain_hour:retrain_minute`` in the Celery app's timezone; ``retrain``
    needs ``PIPELINE["lake_path"]``: drop its entry when the shop keeps no lake."""
    return {
        "reco-sync-catalog": {
            "task": "reco_plugin.sync_catalog",
            "schedule": float(catalog_sync_seconds),
            # a sync that waited longer than its period is superseded by the next one
            "options": {"expires": float(catalog_sync_seconds)},
        },
        # the active tuning version, again: a Redis restarted empty gets it back
        "reco-publish-tuning": {
            "task": "reco_plugin.publish_tuning",
            "schedule": float(catalog_sync_seconds),
            "options": {"expires": float(catalog_sync_seconds)},
        },
        # a sample for the admin's dashboard
        "reco-roll-up": {
            "task": "reco_plugin.roll_up",
            "schedule": float(roll_up_seconds),
            "options": {"expires": float(roll_up_seconds)},
        },
        # the per-visitor sets of experiments long over, daily
        "reco-cleanup": {
            "task": "reco_plugin.cleanup",
            "schedule": 24 * 3600.0,
            "options": {"expires": 3600.0},
        },
        **retrain_schedule(hour=retrain_hour, minute=retrain_minute, days=retrain_days),
    }


def retrain_schedule(*, hour: int = 3, minute: int = 30, days: int = 30) -> dict[str, Any]:
    """The ``reco-retrain-nightly`` entry of :func:`beat_schedule`: the
    retraining every night at ``hour:minute`` in the Celery app's timezone."""
    from celery.schedules import crontab

    return {
        "reco-retrain-nightly": {
            "task": "reco_plugin.retrain",
            "schedule": crontab(hour=hour, minute=minute),
            "kwargs": {"days": days},
            # a run that could not start within 6 hours waits for the next night
            "options": {"expires": 6 * 3600},
        },
    }
