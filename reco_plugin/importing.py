"""Warming the pipeline from the shop's own history (``manage.py reco_import``).

Two sources: the shop's order lines (``RECO_PLUGIN["ORDER_LINE_MODEL"]``, with
``TIME``: when each was placed), and CSV files in the replay format (an
analytics export of page views, carts and purchases). Their events go to Kafka
like live ones, with their original times, and the streaming job learns them
like live traffic: what is older than its ``horizon`` is counted here and not
sent (the job would count it too old).

Each event's id is derived from what it records (an order line's model and
key; a CSV row's fields), so the same history sent twice carries the same ids.
How far each source was sent is kept in the shop's database
(:class:`~reco_plugin.models.ImportProgress`) after every chunk Kafka
acknowledged: a run that stops resumes there, and a finished source is not
sent again. A source is imported up to the time of its first run (or
``--until``): order lines placed since the plugin went live were sent by its
signals, with the same ids (de-duplicated by the job within ``dedup_records``
of their partition).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db.models import Q
from django.utils import timezone

from . import schema
from .conf import reco_settings
from .scoring import PipelineSettings

# ids of imported events: uuid5 in this namespace of what the event records
NAMESPACE = uuid.UUID("5d0f3b8e-2b7c-4f53-9a53-0c2f3e1b7a44")
# events sent between two acknowledgements (and records of progress)
CHUNK = 5000
# how long Kafka may take to acknowledge a chunk
ACK_TIMEOUT_SECONDS = 60.0


class HistoryError(ValueError):
    """The history cannot be imported; the message says why and what to do."""


def order_line_event_id(label: str, pk: Any) -> str:
    """The purchase event's id of one order line, the same from the live
    signal and from an import."""
    return str(uuid.uuid5(NAMESPACE, f"order-line:{label.lower()}:{pk}"))


@dataclass
class Outcome:
    """What a run did with the rows it read."""

    sent: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows not sent

    def describe(self) -> str:
        parts = [f"{self.sent} events sent"]
        parts += [f"{n} {reason}" for reason, n in sorted(self.skipped.items()) if n]
        return ", ".join(parts)


# reasons a row is not sent
TOO_OLD = "older than the horizon"
FUTURE = "stamped in the future"
AFTER_UNTIL = "at or after --until (reported by the live tracking)"
NO_CUSTOMER = "without a customer"
INVALID = "invalid"


class Source:
    """Rows of history in a fixed order; a position names the last one sent."""

    name: str

    def remaining(self, position: Mapping[str, Any], until: dt.datetime) -> int:
        raise NotImplementedError

    def rows(
        self, position: Mapping[str, Any], until: dt.datetime
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | str]]:
        """(position after the row, its event or the reason it is not sent)."""
        raise NotImplementedError


class OrderLines(Source):
    """The shop's order lines, in the order they were placed."""

    def __init__(self, config: Mapping[str, Any] | None, settings: PipelineSettings):
        if not config:
            raise HistoryError(
                "RECO_PLUGIN['ORDER_LINE_MODEL'] is not set: name the order line model "
                "(docs/events.md) to import the shop's orders"
            )
        if not config.get("TIME"):
            raise HistoryError(
                "RECO_PLUGIN['ORDER_LINE_MODEL'] has no TIME: add the path to when the "
                'line\'s order was placed, e.g. "TIME": "order.created"'
            )
        self.config = config
        try:
            self.model = apps.get_model(config["MODEL"])
        except (LookupError, ValueError) as exc:
            raise HistoryError(
                f"RECO_PLUGIN['ORDER_LINE_MODEL'] names a model that is not installed ({exc})"
            ) from None
        self.label = self.model._meta.label
        self.name = f"orders:{self.label.lower()}"
        self.time = _lookup(config["TIME"])
        try:
            self.model._default_manager.filter(**{f"{self.time}__lt": timezone.now()}).exists()
        except (FieldError, ValueError, TypeError) as exc:
            raise HistoryError(
                f"RECO_PLUGIN['ORDER_LINE_MODEL']['TIME'] = {config['TIME']!r} does not lead "
                f"to a date or time of {self.label} ({exc})"
            ) from None
        self.settings = settings
        self.oldest = timezone.now() - dt.timedelta(seconds=settings.horizon)

    def _queryset(self, position: Mapping[str, Any], until: dt.datetime):
        rows = self.model._default_manager.filter(**{f"{self.time}__lt": until})
        if position:
            at = dt.datetime.fromisoformat(position["time"])
            rows = rows.filter(
                Q(**{f"{self.time}__gt": at}) | Q(**{self.time: at, "pk__gt": position["pk"]})
            )
        return rows

    def remaining(self, position: Mapping[str, Any], until: dt.datetime) -> int:
        return self._queryset(position, until).count()

    def rows(self, position, until):
        from .tracking import _number, _path, _product_id, _quantity

        rows = self._queryset(position, until)
        # counted, not read: the horizon is against the wall clock
        older = rows.filter(**{f"{self.time}__lt": self.oldest})
        for row in older.order_by(self.time, "pk").values_list(self.time, "pk").iterator():
            yield {"time": row[0].isoformat(), "pk": row[1]}, TOO_OLD
        related = _related(self.model, self.config)
        rows = rows.filter(**{f"{self.time}__gte": self.oldest}).order_by(self.time, "pk")
        for line in rows.select_related(*related).iterator(chunk_size=2000):
            placed = _aware(_path(line, self.config["TIME"]))
            at = {"time": placed.isoformat(), "pk": line.pk}
            user = _path(line, self.config.get("USER")) if self.config.get("USER") else None
            order = _path(line, self.config.get("ORDER")) if self.config.get("ORDER") else None
            if user is not None:
                visitor = f"u:{getattr(user, 'pk', user)}"
            elif order is not None:
                # a guest's order: its lines were still bought together
                visitor = f"s:order-{getattr(order, 'pk', order)}"
            else:
                yield at, NO_CUSTOMER
                continue
            price = _path(line, self.config.get("PRICE")) if self.config.get("PRICE") else None
            try:
                event = schema.make_event(
                    schema.PURCHASE,
                    visitor,
                    _product_id(_path(line, self.config["PRODUCT"])),
                    ts=int(placed.timestamp() * 1000),
                    quantity=_quantity(line, self.config),
                    price=_number(price),
                    event_id=order_line_event_id(self.label, line.pk),
                )
            except (schema.InvalidEvent, TypeError, ValueError):
                yield at, INVALID
                continue
            yield at, event


class CsvEvents(Source):
    """A CSV file in the replay format (visitor_id,product_id,type,ts
    [,category,price]), in time order; named by its content, so the same
    export under another name is the same source."""

    def __init__(self, path: str | Path):
        from .replay import ReplayError, read_rows

        try:
            self.rows_read = read_rows(path)
        except ReplayError as exc:
            raise HistoryError(str(exc)) from None
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.name = f"csv:{digest[:32]}"

    def _start(self, position: Mapping[str, Any]) -> int:
        return int(position.get("row", 0)) if position else 0

    def remaining(self, position, until):
        return len(self.rows_read) - self._start(position)

    def rows(self, position, until):
        limit = int(until.timestamp() * 1000)
        seen: Counter = Counter()
        start = self._start(position)
        for index, row in enumerate(self.rows_read):
            what = (row.visitor_id, row.product_id, row.type, row.ts_ms)
            seen[what] += 1  # the n-th identical row is another event
            if index < start:
                continue
            if row.ts_ms >= limit:
                yield {"row": index + 1}, AFTER_UNTIL
                continue
            event = schema.make_event(
                row.type,
                row.visitor_id,
                row.product_id,
                ts=row.ts_ms,
                price=row.price,
                category=row.category,
                event_id=str(
                    uuid.uuid5(NAMESPACE, "csv:" + ":".join(map(str, what)) + f":{seen[what]}")
                ),
            )
            yield {"row": index + 1}, event


class Import:
    """Sends one source's history through the shop's event backend."""

    def __init__(
        self,
        source: Source,
        until: dt.datetime | None = None,
        settings: PipelineSettings | None = None,
        log: Callable[[str], None] = print,
        progress: Callable[[int, int], None] | None = None,
        now: Callable[[], float] = time.time,
    ):
        self.source = source
        self.requested_until = until
        self.settings = settings or PipelineSettings.from_mapping(reco_settings.PIPELINE)
        self.log = log
        self.progress = progress
        self.now = now

    def record(self):
        """This source's record of progress, made on its first run."""
        from .models import ImportProgress

        record, made = ImportProgress.objects.get_or_create(
            source=self.source.name,
            defaults={"until": self.requested_until or timezone.now()},
        )
        if not made and self.requested_until and record.until != self.requested_until:
            raise HistoryError(
                f"{self.source.name} is imported until {record.until.isoformat()} (its first "
                "run); --until cannot change it"
            )
        return record

    def run(self) -> Outcome:
        from .backends import get_backend
        from .events import send

        record = self.record()
        outcome = Outcome()
        if record.finished:
            self.log(
                f"{self.source.name}: imported before (until {record.until.isoformat()}, "
                f"{record.events_sent} events); nothing to send"
            )
            return outcome
        total = self.source.remaining(record.position, record.until)
        self.log(
            f"{self.source.name}: {total} rows to import until {record.until.isoformat()}"
            + (f", going on after {record.position}" if record.position else "")
        )
        backend = get_backend()
        self._recorded = Outcome()  # what of this run the record holds
        # events the backend failed or dropped before this run: a failure
        # reported while a chunk is sent counts against it, not only one
        # reported while it is flushed
        self._lost_before = _lost(backend.stats())
        oldest = (self.now() - self.settings.horizon) * 1000
        newest = (self.now() + self.settings.future_tolerance) * 1000
        done = 0
        chunk = 0
        position = record.position
        for position, event in self.source.rows(record.position, record.until):
            done += 1
            if isinstance(event, str):
                outcome.skipped[event] += 1
            elif event["ts"] < oldest:
                outcome.skipped[TOO_OLD] += 1
            elif event["ts"] > newest:
                outcome.skipped[FUTURE] += 1
            else:
                send(event, backend)
                outcome.sent += 1
                chunk += 1
            if chunk >= CHUNK:
                self._acknowledged(backend, record, position, outcome, chunk)
                chunk = 0
            if self.progress:
                self.progress(done, total)
        self._acknowledged(backend, record, position, outcome, chunk, finished=True)
        return outcome

    def _acknowledged(self, backend, record, position, outcome, sent, finished=False) -> None:
        """Wait until Kafka has acknowledged what was sent, then record the
        position; raise if it did not."""
        waiting = backend.flush(ACK_TIMEOUT_SECONDS) if sent else 0
        lost = _lost(backend.stats()) - self._lost_before
        if waiting or lost:
            raise HistoryError(
                f"Kafka did not acknowledge {waiting + lost} of the last {sent} events "
                f"({waiting} still waiting, {lost} refused): is it reachable? The import is "
                f"recorded up to {record.position or 'its start'}; run the same command again "
                "to go on from there"
            )
        record.position = position
        record.events_sent += outcome.sent - self._recorded.sent
        counts = Counter(record.counts)
        counts.update(outcome.skipped - self._recorded.skipped)
        record.counts = dict(counts)
        record.finished = finished
        record.save()
        self._recorded = Outcome(outcome.sent, Counter(outcome.skipped))


def _lost(stats: Mapping[str, int]) -> int:
    return stats.get("failed", 0) + stats.get("dropped", 0)


def _lookup(path: str) -> str:
    return path.replace(".", "__")


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value)
    if isinstance(value, dt.date):
        return timezone.make_aware(dt.datetime.combine(value, dt.time()))
    raise HistoryError(f"TIME must lead to a date or datetime, not {type(value).__name__}")


def _related(model: Any, config: Mapping[str, Any]) -> list[str]:
    """The relations the paths of ``config`` follow, to read in one query."""
    related = set()
    for key in ("PRODUCT", "QUANTITY", "PRICE", "USER", "TIME", "ORDER"):
        parts = (config.get(key) or "").replace("__", ".").split(".")
        if len(parts) > 1:
            try:
                if model._meta.get_field(parts[0]).is_relation:
                    related.add(parts[0])
            except FieldDoesNotExist:  # a property or method: read as it is
                continue
    return sorted(related)
