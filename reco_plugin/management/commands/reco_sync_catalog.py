"""``python manage.py reco_sync_catalog``: copy the catalog's display fields and stock to Redis."""

from __future__ import annotations

import redis
from django.core.management.base import BaseCommand, CommandError

from reco_plugin import catalog
from reco_plugin.redis_client import shown_url


class Command(BaseCommand):
    help = (
        "Copy every product's display fields (PRODUCT_FIELDS) and stock to Redis once, "
        "and drop products that no longer exist. Celery beat repeats it "
        "(reco_plugin.schedule.beat_schedule); product saves sync one product."
    )

    def handle(self, *args, **options):
        try:
            result = catalog.sync_catalog(progress=self._progress)
        except LookupError as exc:
            raise CommandError(f"RECO_PLUGIN['PRODUCT_MODEL'] is not usable: {exc}") from None
        except redis.RedisError as exc:
            raise CommandError(f"Redis at {shown_url()} failed: {exc}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"synced {result['synced']} products, removed {result['removed']}, "
                f"{result['unavailable']} unavailable (out of stock or blocked)"
            )
        )

    def _progress(self, done: int) -> None:
        self.stderr.write(f"  {done} products...")
