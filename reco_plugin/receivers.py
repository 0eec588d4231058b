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
        from .compat import celery_configured

        try:
            if celery_configured():
                from .tasks import sync_products

                sync_products.delay([product_id])
            else:
                from .catalog import sync_products as sync_now

                sync_now([product_id])
        except Exception:
            # The periodic full sync repairs what a lost hand-over missed.
            logger.exception("reco: could not queue the sync of product %s", product_id)

    transaction.on_commit(enqueue)
