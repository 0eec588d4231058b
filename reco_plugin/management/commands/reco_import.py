import datetime as dt
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from reco_plugin.conf import reco_settings
from reco_plugin.importing import CsvEvents, HistoryError, Import, OrderLines
from reco_plugin.progress import ProgressBar
from reco_plugin.scoring import PipelineSettings


class Command(BaseCommand):
    help = (
        "Warm the recommendations from the shop's history: its order lines "
        "(RECO_PLUGIN['ORDER_LINE_MODEL'] with TIME) and CSV files of events "
        "(visitor_id,product_id,type,ts[,category,price]), sent to Kafka with their "
        "original times for the streaming job to learn. Safe to run again: a finished "
        "source is not sent twice, and an interrupted one goes on where it stopped."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--orders", action="store_true", help="import the shop's order lines (purchases)"
        )
        parser.add_argument(
            "--csv", action="append", default=[], metavar="FILE", help="import a CSV of events"
        )
        parser.add_argument(
            "--until",
            help="import what happened before this time (ISO 8601; default: the first run's "
            "time). Set it to when the plugin went live if you import after that day.",
        )

    def handle(self, *args, orders=False, csv=(), until=None, **options):
        if not orders and not csv:
            raise CommandError("nothing to import: give --orders and/or --csv FILE")
        try:
            settings = PipelineSettings.from_mapping(reco_settings.PIPELINE)
            sources = ([OrderLines(reco_settings.ORDER_LINE_MODEL, settings)] if orders else []) + [
                CsvEvents(path) for path in csv
            ]
            limit = _time(until) if until else None
            for source in sources:
                bars: list[ProgressBar] = []  # made at the first row read

                def progress(done, total, bars=bars, name=source.name):
                    if not bars:
                        bars.append(ProgressBar(total, f"importing {name}", stream=sys.stderr))
                    bars[0].update(done)

                outcome = Import(
                    source, until=limit, settings=settings, log=self.stderr.write, progress=progress
                ).run()
                for bar in bars:
                    bar.finish()
                self.stdout.write(f"{source.name}: {outcome.describe()}")
        except HistoryError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(
                "interrupted: the import is recorded up to the last events Kafka acknowledged; "
                "run the same command again to go on from there (events sent after those go "
                "again, with the same ids: the job drops the copies)"
            ) from None


def _time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--until {text!r} is not an ISO 8601 time") from None
    return value if timezone.is_aware(value) else timezone.make_aware(value)
