"""Forgetting a visitor: every key of theirs in Redis, and a tombstone so the
pipeline does not learn them again from events it reads later (Kafka keeps
events for its retention; a checkpoint may be read again).

Lists and counts of products (co-visitation, trending, popularity) are sums
over many visitors and name nobody; they stay. Events the visitor sends after
being forgotten are new data, unless they opt out (``OPT_OUT``).
"""

from __future__ import annotations

from typing import Any

from . import experiments, keys, schema
from .redis_client import get_work_redis
from .tuning import effective_settings


def cleanup(days: int = 30) -> dict[str, int]:
    """Delete the sets of visitors (digests) of experiments that ended more
    than ``days`` ago: their reports keep the impression and click counts,
    no longer the per-visitor rates. How many experiments and sets."""
    from datetime import timedelta

    from django.utils import timezone

    from .models import Experiment

    ended = Experiment.objects.filter(ends_at__lt=timezone.now() - timedelta(days=days))
    names = [key for _, key in _visitor_sets(ended)]
    deleted = get_work_redis().delete(*names) if names else 0
    return {"experiments": ended.count(), "sets_deleted": int(deleted)}


def _visitor_sets(queryset: Any) -> list[tuple[int, str]]:
    """(experiment id, key) of every set of visitors of these experiments' arms."""
    from django.db.models import Count

    return [
        (experiment_id, keys.experiment_visitors(experiment_id, arm, name))
        for experiment_id, arms in queryset.annotate(n=Count("arms")).values_list("pk", "n")
        for arm in range(arms)
        for name in experiments.VISITOR_SETS
    ]


def visitor_id_of(who: str) -> str:
    """A visitor id (``u:<pk>``, ``s:<id>``), or a user's username: their id.
    Raises ValueError for anything else."""
    who = who.strip()
    if schema.is_visitor_id(who):
        return who
    from django.contrib.auth import get_user_model

    user = (
        get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: who}).first()
    )
    if user is None:
        raise ValueError(f"{who!r} is neither a visitor id (u:<pk>, s:<id>) nor a username")
    return f"u:{user.pk}"


def record(visitor_id: str, keys_deleted: int, user: Any = None) -> Any:
    """The admin's record of a forget (a digest of the id, never the id)."""
    from .models import ForgottenVisitor

    return ForgottenVisitor().record(visitor_id, keys_deleted, user)


def forget_secret() -> str:
    """The key of the digests forgotten visitors are known by: derived from
    SECRET_KEY (``reco_stream`` gives it to the job as ``RECO_FORGET_SECRET``),
    or that variable where it is set (a job started by other means)."""
    import os

    from django.utils.crypto import salted_hmac

    return os.environ.get(keys.FORGET_SECRET_ENV) or (
        salted_hmac("reco_plugin.forget", "tombstones").hexdigest()
    )


def forget(visitor_id: str) -> dict[str, Any]:
    """Delete everything of ``visitor_id`` in Redis, leave the tombstone, and
    record the forget in Kafka (so a Redis restored from an older snapshot
    forgets them again); what was deleted. Raises ValueError for a malformed
    id, Redis's errors when it does not answer and
    ``pipeline.ForgetNotRecorded`` when Kafka does not (the task retries)."""
    if not schema.is_visitor_id(visitor_id):
        raise ValueError(f"{visitor_id!r} is not a visitor id (u:<pk> or s:<id>)")
    settings = effective_settings()
    now_ms = schema.now_ms()
    digest = keys.visitor_digest(visitor_id, forget_secret())
    r = get_work_redis()
    pipe = r.pipeline(transaction=True)
    # the tombstone first: a batch reading their events from now on drops them;
    # a batch that read them before sweeps what it wrote when it ends
    pipe.set(
        keys.visitor_forgotten(digest),
        now_ms,
        ex=settings.horizon + settings.future_tolerance,
    )
    visitor_keys = keys.visitor_keys(visitor_id)
    for key in visitor_keys:
        pipe.exists(key)
    pipe.delete(*visitor_keys)
    # out of the lists the job owes (a batch catching up left theirs owed)
    pipe.zrem(keys.pipeline_visitors_owed(), visitor_id)
    # and out of every experiment's sets of visitors (kept as digests)
    from .models import Experiment

    for experiment_id, key in _visitor_sets(Experiment.objects.all()):
        pipe.srem(key, experiments.member(experiment_id, visitor_id))
    replies = pipe.execute()
    deleted = [
        key
        for key, found in zip(visitor_keys, replies[1 : 1 + len(visitor_keys)], strict=True)
        if found
    ]
    from .pipeline import record_forget

    recorded = record_forget(digest, now_ms)
    return {
        "visitor": visitor_id,
        "keys_deleted": len(deleted),
        "forgotten_at_ms": now_ms,
        "recorded_in_kafka": recorded,
    }
