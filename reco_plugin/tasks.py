"""Celery tasks: thin wrappers around plain functions, taking ids."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task
from kombu.exceptions import OperationalError as BrokerUnavailable

from . import catalog, retraining
from .conf import reco_settings

logger = logging.getLogger(__name__)

# Redis or the broker not answering (redis-py's and kombu's own exception
# types, not the builtins)
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, BrokerUnavailable, OSError)
# how often a task that another shop sent is put back on the queue for that shop's workers
ANOTHER_SHOPS_RETRIES = 5


def refuse_another_shops(task: Any, shop: str | None) -> None:
    """``shop``: the ``KEY_PREFIX`` of the shop that sent the task (None from
    senders older than this check). Another shop's task reached this worker:
    the two shops share a Celery broker database (docs/install.md, "Two shops
    on one Kafka and Redis"). Run here it would sync this shop's products
    under those ids, or forget the visitor here and not in that shop; so it is
    logged and put back on the queue a few times, for that shop's workers."""
    if shop is None or shop == reco_settings.KEY_PREFIX:
        return
    logger.error(
        "reco: task %s of the shop with KEY_PREFIX %r reached this worker (KEY_PREFIX %r): "
        "the two shops share a Celery broker database; give each its own (docs/install.md)",
        task.name,
        shop,
        reco_settings.KEY_PREFIX,
    )
    raise task.retry(countdown=5, max_retries=ANOTHER_SHOPS_RETRIES)


@shared_task(
    name="reco_plugin.sync_catalog",
    ignore_result=True,
    acks_late=True,  # a sync lost with its worker is done again (it is idempotent)
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
)
def sync_catalog() -> dict[str, int]:
    return catalog.sync_catalog()


@shared_task(
    name="reco_plugin.sync_products",
    ignore_result=True,
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    bind=True,
)
def sync_products(self: Any, product_ids: list[str], shop: str | None = None) -> int:
    refuse_another_shops(self, shop)
    return catalog.sync_products(product_ids)


@shared_task(name="reco_plugin.retrain", ignore_result=True, acks_late=True)
def retrain(days: int = 30) -> dict:
    """The batch retraining job (nightly with ``schedule.beat_schedule()``)."""
    return retraining.retrain(days)


@shared_task(name="reco_plugin.publish_tuning", ignore_result=True)
def publish_tuning() -> bool:
    """Publish the active tuning version, the rules and the current experiment
    again (Redis may have lost them; an experiment's start and end pass)."""
    from . import tuning

    return all([tuning.publish(), tuning.publish_rules(), tuning.publish_experiment()])


@shared_task(
    name="reco_plugin.forget",
    ignore_result=True,
    acks_late=True,  # a forget lost with its worker is done again
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=10,
    bind=True,
)
def forget(self: Any, visitor_id: str, recorded: bool = False, shop: str | None = None) -> dict:
    """Forget a visitor (``privacy.forget``); retried while Redis does not
    answer. Listed in the admin's "Forgotten visitors" unless ``recorded``
    there already (the admin queues it when Redis does not answer). ``shop``:
    see :func:`refuse_another_shops`."""
    from . import privacy

    refuse_another_shops(self, shop)

    result = privacy.forget(visitor_id)
    if not recorded:
        privacy.record(visitor_id, result["keys_deleted"])
    return result


@shared_task(name="reco_plugin.roll_up", ignore_result=True, autoretry_for=TRANSIENT, max_retries=2)
def roll_up() -> dict:
    """A sample for the admin's dashboard (lag, CTR by strategy and arm, beliefs)."""
    from . import dashboard

    return dashboard.roll_up()


@shared_task(name="reco_plugin.cleanup", ignore_result=True, autoretry_for=TRANSIENT, max_retries=3)
def cleanup(days: int = 30) -> dict:
    """Delete the per-visitor sets of experiments that ended ``days`` ago."""
    from . import privacy

    return privacy.cleanup(days)
