import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from reco_plugin import jobs
from reco_plugin.conf import reco_settings
from reco_plugin.progress import ProgressBar
from reco_plugin.replay import Replay, ReplayError, read_rows


class Command(BaseCommand):
    help = (
        "Replay an event file (CSV: visitor_id,product_id,type,ts[,category,price]; ts in "
        "epoch seconds) through Kafka -> Spark -> Redis in its own namespace and score it "
        "prequentially: HR@10 and MRR@10 of the system, a popularity baseline, an item-kNN "
        "and each strategy alone."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="the event file (CSV with a header)")
        parser.add_argument(
            "--tick-events",
            type=int,
            default=500,
            help="events sent before waiting for the pipeline (the freshness granted; default 500)",
        )
        parser.add_argument("--report", help="write the report (JSON) to this file")
        parser.add_argument(
            "--config",
            help="pipeline settings to try, JSON over the shop's RECO_PLUGIN['PIPELINE'] "
            "(e.g. '{\"half_life\": 2592000}')",
        )

    def handle(self, *args, file, tick_events, report=None, config=None, **options):
        try:
            try:
                tried = json.loads(config) if config else {}
            except ValueError as exc:
                raise ReplayError(f"--config is not JSON: {exc}") from None
            if not isinstance(tried, dict):
                raise ReplayError("--config is a JSON object of pipeline settings")
            rows = read_rows(file)
            self.stderr.write(f"{len(rows)} events from {file}, {tick_events} per tick")
            bar = ProgressBar(len(rows), "replaying", stream=sys.stderr)
            replay = Replay(
                rows,
                tick=tick_events,
                bootstrap=reco_settings.KAFKA.get("bootstrap.servers", "127.0.0.1:9092"),
                redis_url=reco_settings.REDIS_URL,
                log=self.stderr.write,
                progress=lambda done, total: bar.update(done),
                pipeline={**reco_settings.PIPELINE, **tried},
                spark_arguments=jobs.spark_arguments(),
            )
            result = replay.run()
            bar.finish()
        except ReplayError as exc:
            raise CommandError(str(exc)) from None
        result["file"] = str(file)
        text = json.dumps(result, indent=2, sort_keys=True)
        if report:
            Path(report).write_text(text + "\n")
        self.stdout.write(text)
