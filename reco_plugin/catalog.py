"""Syncing the shop's products' display fields into Redis.

The API and the widget show products from these hashes, so serving a list never
touches the shop's database. Run periodically (Celery beat) and on product save.

Two sets follow the hashes for the pipeline's rules: ``catalog:unavailable``
(out of stock or ``blocked``: never listed) and ``catalog:repeatable``
(may be recommended again after a purchase). Map ``blocked`` and
``repeatable`` in ``PRODUCT_FIELDS`` to the shop's own fields to use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.apps import apps
from django.db import models

from . import keys
from .conf import reco_settings
from .redis_client import get_work_redis as get_redis

BATCH_SIZE = 500


def product_model() -> type[models.Model]:
    return apps.get_model(reco_settings.PRODUCT_MODEL)


def display_fields(product: models.Model) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, attribute in reco_settings.PRODUCT_FIELDS.items():
        value: Any = getattr(product, attribute, None)
        if callable(value):
            value = value()
        if isinstance(value, bool):
            value = "1" if value else "0"
        fields[name] = "" if value is None else str(value)
    return fields


def _write(products: Iterable[models.Model], progress: Callable[[int], None] | None = None) -> int:
    r = get_redis()
    pipe = r.pipeline(transaction=False)
    count = 0
    for product in products:
        product_id = str(product.pk)
        fields = display_fields(product)
        pipe.delete(keys.catalog_product(product_id))
        pipe.hset(keys.catalog_product(product_id), mapping=fields)
        pipe.sadd(keys.catalog_index(), product_id)
        # the sets the pipeline reads to keep its lists clean (rules)
        if fields.get("in_stock") == "0" or fields.get("blocked") == "1":
            pipe.sadd(keys.catalog_unavailable(), product_id)
        else:
            pipe.srem(keys.catalog_unavailable(), product_id)
        if fields.get("repeatable") == "1":
            pipe.sadd(keys.catalog_repeatable(), product_id)
        else:
            pipe.srem(keys.catalog_repeatable(), product_id)
        count += 1
        if count % BATCH_SIZE == 0:
            pipe.incr(keys.catalog_version())
            pipe.execute()
            if progress:
                progress(count)
    # after the hashes: serving drops what it read under the previous version
    pipe.incr(keys.catalog_version())
    pipe.execute()
    return count


def _remove(r, product_ids: set[str]) -> None:
    """Products gone from the shop: out of the catalog (so never served) and
    out of the rule sets (which would otherwise only grow)."""
    r.delete(*(keys.catalog_product(pk) for pk in product_ids))
    r.srem(keys.catalog_index(), *product_ids)
    r.srem(keys.catalog_repeatable(), *product_ids)
    r.srem(keys.catalog_unavailable(), *product_ids)
    r.incr(keys.catalog_version())


def sync_products(product_ids: Iterable[Any]) -> int:
    """Sync the given products; ids that no longer exist are removed from Redis."""
    ids = [str(pk) for pk in product_ids]
    found = list(product_model()._default_manager.filter(pk__in=ids))
    count = _write(found)
    gone = set(ids) - {str(p.pk) for p in found}
    if gone:
        _remove(get_redis(), gone)
    return count


def sync_catalog(progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Sync every product and drop the hashes of deleted ones; ``progress`` is
    called with the count so far every ``BATCH_SIZE`` products."""
    model = product_model()
    synced = _write(model._default_manager.order_by("pk").iterator(chunk_size=BATCH_SIZE), progress)
    r = get_redis()
    present = {str(pk) for pk in model._default_manager.values_list("pk", flat=True)}
    stale = set(r.smembers(keys.catalog_index())) - present
    if stale:
        _remove(r, stale)
    return {
        "synced": synced,
        "removed": len(stale),
        "unavailable": r.scard(keys.catalog_unavailable()),
    }
