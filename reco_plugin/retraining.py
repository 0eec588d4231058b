"""Running the batch retraining job (``spark_jobs.retrain``) with the shop's settings.

``python manage.py reco_retrain`` and the Celery task ``reco_plugin.retrain``
both call :func:`retrain`; Celery beat runs the task nightly with
``reco_plugin.schedule.beat_schedule()`` (or the shop's own schedule).
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Callable
from typing import Any

from . import jobs
from .conf import reco_settings


def beat_schedule(hour: int = 3, minute: int = 30, days: int = 30) -> dict[str, Any]:
    """Deprecated: :func:`reco_plugin.schedule.beat_schedule` has this entry
    among the plugin's other periodic work (``retrain_hour``, ``retrain_minute``,
    ``retrain_days``). This returns only the nightly retraining entry, as before."""
    warnings.warn(
        "reco_plugin.retraining.beat_schedule() is deprecated: use "
        "reco_plugin.schedule.beat_schedule(retrain_hour=..., retrain_minute=..., "
        "retrain_days=...), which has every periodic task of the plugin",
        DeprecationWarning,
        stacklevel=2,
    )
    from .schedule import retrain_schedule

    return retrain_schedule(hour=hour, minute=minute, days=days)


class RetrainError(RuntimeError):
    """The job could not run; the message says why."""


def lake_path() -> str:
    path = (reco_settings.PIPELINE or {}).get("lake_path")
    if not path:
        raise RetrainError(
            'no event lake: set RECO_PLUGIN["PIPELINE"]["lake_path"] (and restart the '
            "streaming job so that it appends events there)"
        )
    return str(path)


def command(days: int = 30) -> list[str]:
    """The job's command line for this shop."""
    return jobs.retrain_command(lake_path(), days)


def retrain(days: int = 30, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the job to the end; its summary (products written, seconds)."""
    process = subprocess.Popen(
        command(days),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=jobs.environment(),
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if log and " spark_jobs.retrain " in line:
            log(line)
    if process.wait():
        tail = "\n".join(lines[-15:])
        raise RetrainError(f"the retraining job exited with {process.returncode}:\n{tail}")
    # the job's summary: the last line that is a JSON object (Spark and Py4J
    # may log after it)
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise RetrainError("the retraining job printed no summary")
