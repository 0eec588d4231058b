import json

from django.core.management.base import BaseCommand

from reco_plugin.status import format_status, pipeline_status


class Command(BaseCommand):
    help = (
        "Health of Kafka, Redis and the streaming job; pipeline counters, lag per partition "
        "and the last batch. Exits 1 when something is down or behind."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--timeout", type=float, default=5.0, help="Kafka timeout (s)")

    def handle(self, *args, json=False, timeout=5.0, **options):
        try:
            report = pipeline_status(kafka_timeout=timeout)
        except KeyboardInterrupt:  # Ctrl-C: the checks are left to their threads
            self.stderr.write("interrupted")
            raise SystemExit(130) from None
        if json:
            self.stdout.write(_dumps(report))
        else:
            self.stdout.write(format_status(report))
        if not report["ok"]:
            raise SystemExit(1)


def _dumps(report):
    return json.dumps(report, sort_keys=True)
