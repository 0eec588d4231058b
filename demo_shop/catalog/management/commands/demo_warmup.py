import json
import time
import uuid

from django.core.management.base import BaseCommand, CommandError

from demo_shop import movielens
from reco_plugin import keys, pipeline, schema
from reco_plugin.backends import get_backend
from reco_plugin.events import send
from reco_plugin.progress import ProgressBar
from reco_plugin.redis_client import get_redis

# A deterministic namespace, so the same history sent twice carries the same
# event ids and is de-duplicated downstream.
HISTORY_NAMESPACE = uuid.UUID("6f1d7a0e-5d0c-4c55-9b3f-2a8e61f3c1a4")


def history_events(ratings, span_seconds, now_ms):
    """Turn ratings into shop events in time order, the history ending now.

    Every rating is a product view by that MovieLens user; a rating of 4 or 5
    is also an add-to-cart a second later. The history's time span is mapped
    onto the last ``span_seconds`` so it falls inside the pipeline's windows.
    """
    if not ratings:
        return
    first, last = ratings[0].ts, ratings[-1].ts
    scale = span_seconds / max(last - first, 1)
    start_ms = now_ms - span_seconds * 1000
    for rating in ratings:
        ts = start_ms + int((rating.ts - first) * scale * 1000)
        visitor_id = f"s:ml-{rating.user_id}"
        product_id = str(rating.item_id)
        kinds = [(schema.PAGE_VIEW, 0)]
        if rating.rating >= 4:
            kinds.append((schema.ADD_TO_CART, 1))
        for kind, offset in kinds:
            event_id = str(uuid.uuid5(HISTORY_NAMESPACE, f"{visitor_id}/{product_id}/{kind}"))
            yield schema.make_event(
                kind,
                visitor_id,
                product_id,
                ts=ts + offset,
                quantity=1 if kind == schema.ADD_TO_CART else None,
                event_id=event_id,
                context={"page": f"/products/{product_id}/", "source": "history"},
            )


class Command(BaseCommand):
    help = "Replay the MovieLens history into Kafka and wait until the pipeline has learnt it."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=None, help="only the first N ratings")
        parser.add_argument("--span-hours", type=float, default=6.0)
        parser.add_argument("--timeout", type=float, default=900.0)
        parser.add_argument("--force", action="store_true", help="even if already warmed")

    def handle(self, *args, limit=None, span_hours=6.0, timeout=900.0, force=False, **options):
        r = get_redis()
        done = r.get(keys.warmup_done())
        if done and not force:
            self.stdout.write(f"already warmed: {done}")
            return
        ratings = movielens.ratings()
        if limit:
            ratings = ratings[:limit]
        events = list(history_events(ratings, int(span_hours * 3600), schema.now_ms()))
        backend = get_backend()
        bar = ProgressBar(len(events), "sending history to Kafka", self.stdout)
        for n, event in enumerate(events, 1):
            send(event)
            if n % 2000 == 0:
                bar.update(n)
        if backend.flush(60):
            raise CommandError("Kafka did not take all events within 60 s")
        bar.finish()
        targets = pipeline.end_offsets()
        start = pipeline.remaining(targets, pipeline.processed_offsets())
        bar = ProgressBar(start, "pipeline learning the history", self.stdout)
        started = time.monotonic()
        if not pipeline.wait_until_processed(
            targets, timeout=timeout, progress=lambda left: bar.update(start - left), interval=0.5
        ):
            raise CommandError(f"the pipeline did not catch up within {timeout:.0f} s")
        bar.finish()
        summary = {
            "ratings": len(ratings),
            "events": len(events),
            "seconds": round(time.monotonic() - started, 1),
        }
        r.set(keys.warmup_done(), json.dumps(summary))
        self.stdout.write(f"warm: {summary}")
