from django.core.management.base import BaseCommand, CommandError

from reco_plugin.topics import ensure_topics


class Command(BaseCommand):
    help = "Create the plugin's Kafka topics, or with --check report which are missing."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="only check, create nothing")
        parser.add_argument("--timeout", type=float, default=15.0)

    def handle(self, *args, check=False, timeout=15.0, **options):
        try:
            replication, report = ensure_topics(create=not check, timeout=timeout)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(f"cannot reach Kafka: {exc}") from exc
        self.stdout.write(f"topics: {replication.describe()}")
        for topic, state in sorted(report.items()):
            self.stdout.write(f"{topic}: {state}")
        if check and any(
            state == "missing" or "not compacted" in state for state in report.values()
        ):
            raise CommandError("some topics are missing or wrong: run manage.py reco_topics")
