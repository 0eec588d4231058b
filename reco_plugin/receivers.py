"""Model signal receivers, connected in ``AppConfig.ready``."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)


def product_changed(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Re-sync a product's display fields once its transaction commits."""
    if raw:  # fixtures: the catalog sync will pick these up
        return
    product_id = str(instance.pk)

    def enqueue() -> None:
        from .catalog import sync_products as sync_now
        from .compat import celery_configured

        try:
            if celery_configured():
                from kombu.exceptions import LimitExceeded
                from kombu.exceptions import OperationalError as BrokerUnavailable

                from .conf import reco_settings
                from .tasks import sync_products

                try:
                    # one quick try: a broker that refuses is answered at once,
                    # not after kombu's default retries (seconds, in the request)
                    with sync_products.app.pool.acquire(block=True, timeout=2) as connection:
                        connection.ensure_connection(max_retries=0, timeout=2)
                        sync_products.apply_async(
                            ([product_id],),
                            # which shop sent it: another shop's worker on the same
                            # broker database refuses it (tasks.refuse_another_shops)
                            {"shop": reco_settings.KEY_PREFIX},
                            retry=False,
                            connection=connection,
                        )
                    return
                except (BrokerUnavailable, LimitExceeded) as exc:
                    # the broker is down: sync here rather than lose the change
                    logger.warning(
                        "reco: the Celery broker is unavailable (%s); syncing product %s now",
                        exc,
                        product_id,
                    )
            sync_now([product_id])
        except Exception:
            # The periodic full sync repairs what a lost hand-over missed.
            logger.exception("reco: could not sync product %s", product_id)

    transaction.on_commit(enqueue)
