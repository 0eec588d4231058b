"""``python manage.py reco_retrain [--days N]``: run the batch retraining job now."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from reco_plugin.retraining import RetrainError, retrain


class Command(BaseCommand):
    help = (
        "Recompute the item neighbours from the event lake's last N days (the "
        "'retrained' strategy); the nightly Celery task runs the same job."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=30, help="days of events to read")

    def handle(self, *args, days: int, **options):
        if days < 1:
            raise CommandError("--days must be at least 1")
        try:
            summary = retrain(days, log=lambda line: self.stdout.write(line))
        except RetrainError as exc:
            raise CommandError(str(exc)) from None
        if summary.get("skipped"):
            self.stdout.write(self.style.WARNING(f"skipped: {summary['skipped']}"))
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"retrained: {summary['products']} products, {summary['neighbours']} "
                f"neighbours from {days} days in {summary['seconds']} s"
            )
        )
        self.stdout.write(json.dumps(summary))
