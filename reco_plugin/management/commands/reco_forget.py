"""``python manage.py reco_forget VISITOR``: delete every trace of a visitor in Redis."""

from __future__ import annotations

import json

import redis
from django.core.management.base import BaseCommand, CommandError

from reco_plugin import privacy
from reco_plugin.pipeline import ForgetNotRecorded
from reco_plugin.redis_client import shown_url


class Command(BaseCommand):
    help = (
        "Delete every list and profile of a visitor in Redis and leave a tombstone so the "
        "pipeline does not learn them again from older events. VISITOR is a visitor id "
        "(u:<user pk>, s:<id>) or a username."
    )

    def add_arguments(self, parser):
        parser.add_argument("visitor", help="u:<user pk>, s:<id>, or a username")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, **options):
        try:
            visitor_id = privacy.visitor_id_of(options["visitor"])
            result = privacy.forget(visitor_id)
            # listed in the admin's "Forgotten visitors" like the admin's own
            privacy.record(result["visitor"], result["keys_deleted"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except ForgetNotRecorded as exc:
            # forgotten in Redis already: kept in the admin's list, and said
            privacy.record(visitor_id, 0)
            raise CommandError(
                f"{visitor_id} is forgotten in Redis, but {exc}: a Redis restored from an "
                "older snapshot would bring them back. Run the command again when Kafka "
                "answers."
            ) from None
        except (redis.RedisError, OSError) as exc:
            raise CommandError(f"Redis at {shown_url()} failed: {exc}") from None
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"forgot {result['visitor']}: {result['keys_deleted']} keys deleted; "
                    "their earlier events will not be learnt again"
                )
            )
