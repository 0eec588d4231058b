"""The staff's tuning: the active version, its settings merged over the shop's,
and publishing it to Redis, where the streaming job and the serving path read it.

Values tuned in the admin override ``RECO_PLUGIN["PIPELINE"]``, which overrides
the defaults of ``scoring.PipelineSettings``: :func:`effective_settings` merges
the three. The job reads the published version before each micro-batch; the
serving path reads it with every list (one more key in the same round trip).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import redis
from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver

from . import keys, strategies
from .conf import reco_settings
from .redis_client import get_work_redis
from .scoring import PipelineSettings

logger = logging.getLogger(__name__)


def active() -> Any:
    """The active tuning version (the newest that is not a draft), or None
    before the first."""
    from .models import Tuning

    return Tuning.objects.filter(draft=False).order_by("-pk").first()


@functools.cache
def effective_settings() -> PipelineSettings:
    """Defaults, under ``RECO_PLUGIN["PIPELINE"]``, under the active version."""
    base = PipelineSettings.from_mapping(reco_settings.PIPELINE)
    version = active()
    if version is None:
        return base
    try:
        return base.tuned(version.pipeline())
    except ValueError as exc:  # saved under older limits
        logger.error("reco: tuning version %s is not applied: %s", version.pk, exc)
        return base


def check(pipeline: dict[str, Any], strategy_choices: dict[str, Any]) -> list[str]:
    """What is wrong with a version's values, in words staff can act on."""
    problems = []
    try:
        PipelineSettings.from_mapping(reco_settings.PIPELINE).tuned(pipeline)
    except (ValueError, TypeError) as exc:
        problems.append(str(exc).replace("_", " "))
    try:
        strategies.check_overrides(strategy_choices)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def publish(version: Any = None) -> bool:
    """Write ``version`` (the active one by default) to Redis; False when
    Redis did not answer (the periodic catalog sync publishes it again)."""
    version = version if version is not None else active()
    effective_settings.cache_clear()
    if version is None:
        return True
    try:
        get_work_redis().set(keys.tuning(), json.dumps(version.published(), sort_keys=True))
    except (redis.RedisError, OSError) as exc:
        logger.error(
            "reco: tuning version %s not published, Redis unavailable (%s)", version.pk, exc
        )
        return False
    logger.info("reco: tuning version %s published", version.pk)
    return True


def publish_rules() -> bool:
    """Write the enabled merchandising rules to Redis; False when Redis did not answer."""
    from . import rules
    from .models import Rule

    enabled = [rule.as_rule() for rule in Rule.objects.filter(enabled=True).order_by("pk")]
    try:
        get_work_redis().set(keys.rules(), rules.dumps(enabled))
    except (redis.RedisError, OSError) as exc:
        logger.error("reco: rules not published, Redis unavailable (%s)", exc)
        return False
    return True


def current_experiment() -> Any:
    """The experiment running now, else the next one scheduled; None if neither."""
    from django.db.models import Q
    from django.utils import timezone

    from .models import Experiment

    now = timezone.now()
    not_over = Experiment.objects.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
    return (
        not_over.filter(starts_at__lte=now).order_by("-starts_at").first()
        or not_over.filter(starts_at__gt=now).order_by("starts_at").first()
    )


def publish_experiment() -> bool:
    """Write the current experiment (or nothing) to Redis; False when Redis did not answer."""
    experiment = current_experiment()
    try:
        r = get_work_redis()
        if experiment is None or experiment.arms.count() < 2:
            r.delete(keys.experiment())
        else:
            r.set(keys.experiment(), json.dumps(experiment.definition().as_dict(), sort_keys=True))
    except (redis.RedisError, OSError) as exc:
        logger.error("reco: experiment not published, Redis unavailable (%s)", exc)
        return False
    return True


def rules_changed(**kwargs: Any) -> None:
    """``post_save``/``post_delete`` of a rule: publish them all once the change commits."""
    transaction.on_commit(publish_rules)


def differences(before: Any, after: Any) -> str:
    """What ``after`` changes from ``before`` (either may be None), one line per field."""
    old = before.values() if before is not None else {}
    lines = []
    for name, value in after.values().items():
        if old.get(name) != value and not (name not in old and value in (None, "", {})):
            lines.append(f"{name.replace('_', ' ')}: {_shown(old.get(name))} → {_shown(value)}")
    return "\n".join(lines) or "no change"


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "default"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "all learnt"
    return str(value)


def save_version(version: Any, user: Any = None) -> Any:
    """Save ``version`` as the new active one (unless it is a draft), noting
    what it changes from the active one. The caller publishes it
    (:func:`publish`), at once so it can tell staff whether Redis took it; the
    periodic task publishes the active version again in any case."""
    with transaction.atomic():
        version.changes = differences(active(), version)
        version.created_by = user if user is not None and user.is_authenticated else None
        version.save()
    effective_settings.cache_clear()
    return version


def roll_back(to: Any, user: Any = None) -> Any:
    """A new active version with the values of ``to``."""
    from .models import Tuning

    copy = Tuning(note=f"rolled back to version {to.pk}", draft=False, **to.values())
    return save_version(copy, user)


@receiver(setting_changed)
def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting == "RECO_PLUGIN":
        effective_settings.cache_clear()
