"""``python manage.py reco_stream``: run the streaming job with this shop's settings."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys

from django.core.management.base import BaseCommand, CommandError

from reco_plugin import connector, jobs
from reco_plugin.scoring import PipelineSettings


class Command(BaseCommand):
    help = (
        "Start the streaming job (Kafka -> Spark -> Redis) with this shop's topics, "
        "Redis, key prefix and pipeline settings. It runs in the foreground until "
        "stopped (SIGTERM or Ctrl-C lets the running batch finish)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--checkpoint", help='checkpoint directory (default RECO_PLUGIN["SPARK"]["CHECKPOINT"])'
        )
        parser.add_argument(
            "--config",
            help='JSON merged over RECO_PLUGIN["PIPELINE"] for this run, e.g. {"shuffle_partitions": 4}',
        )
        parser.add_argument(
            "--starting-offsets",
            choices=["earliest", "latest"],
            help="where a partition Redis holds nothing of is read from: earliest (default; "
            "an empty Redis is rebuilt from all Kafka retains) or latest (history is not read)",
        )
        parser.add_argument(
            "--print",
            action="store_true",
            dest="print_only",
            help="print the job's command line, and its spark-submit form, instead of running it",
        )
        parser.add_argument(
            "--fetch-connector",
            metavar="DIR",
            help="instead of running the job: resolve Spark's Kafka connector for the installed "
            "PySpark into DIR (where Maven Central is reachable), for a server without that "
            'access to use with RECO_PLUGIN["SPARK"]["KAFKA_CONNECTOR"] = DIR',
        )
        parser.add_argument(
            "--repository",
            action="append",
            metavar="URL",
            help="with --fetch-connector: a Maven repository to resolve from instead of Maven "
            "Central (repeatable; e.g. the company's mirror); ~/.m2/repository is tried first",
        )

    def execute(self, *args, **options):
        if options.get("fetch_connector"):
            # the connector is what is being installed: its check (E014) need not pass yet
            options["skip_checks"] = True
        return super().execute(*args, **options)

    def handle(self, *args, checkpoint, config, starting_offsets, print_only, **options):
        if options["fetch_connector"]:
            return self.fetch_connector(options["fetch_connector"], options["repository"])
        try:
            argv = jobs.stream_command(
                checkpoint=checkpoint,
                config=json.loads(config) if config else {},
                starting_offsets=starting_offsets,
            )
        except jobs.JobConfigError as exc:
            raise CommandError(str(exc)) from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise CommandError(f"--config must be a JSON object: {exc}") from None
        try:
            PipelineSettings.from_mapping(json.loads(argv[argv.index("--config") + 1]))
        except (ValueError, TypeError) as exc:
            raise CommandError(f"invalid pipeline settings: {exc}") from None
        if print_only:
            self.stdout.write(shlex.join(argv))
            self.stdout.write(shlex.join(jobs.submit_command(argv)))
            if "--redis" not in argv:
                self.stderr.write(
                    "(the Redis URL holds a password: set it in $RECO_JOB_REDIS_URL for the job)"
                )
            return
        if importlib.util.find_spec("pyspark") is None:
            raise CommandError(
                "PySpark is not installed: pip install 'django-reco-plugin[spark]' (it needs Java 17)"
            )
        if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
            raise CommandError("Spark needs Java 17: no `java` on PATH and no JAVA_HOME")
        named = jobs.spark_settings()["KAFKA_CONNECTOR"]
        if connector.names_path(named) and not os.path.isdir(str(named)):
            raise CommandError(
                f'RECO_PLUGIN["SPARK"]["KAFKA_CONNECTOR"] = {named!r} is not a directory here: '
                "fill it with `manage.py reco_stream --fetch-connector DIR` where Maven Central "
                "is reachable, and copy it to this server"
            )
        self.stdout.write(f"starting the streaming job: {shlex.join(argv[2:])}")
        self.stdout.flush()
        sys.stderr.flush()
        # the job replaces this process: signals reach it directly
        os.execve(argv[0], argv, jobs.environment())

    def fetch_connector(self, directory, repositories):
        coordinates = jobs.spark_settings()["KAFKA_CONNECTOR"]
        # the setting may already name Maven coordinates to fetch (not a directory)
        if connector.names_path(coordinates) or str(coordinates).count(":") != 2:
            coordinates = None
        try:
            where = connector.repositories_for(repositories)
            self.stdout.write(
                f"resolving {coordinates or connector.default_coordinates()} from {', '.join(where)}"
            )
            jars = connector.fetch(directory, coordinates=coordinates, repositories=repositories)
        except connector.ConnectorError as exc:
            raise CommandError(str(exc)) from None
        for jar in jars:
            self.stdout.write(f"  {jar.name} ({jar.stat().st_size // 1024} KiB)")
        self.stdout.write(
            f"{len(jars)} jars in {os.path.abspath(directory)}. On the server that runs the job, "
            "with a copy of it there:\n"
            f'  RECO_PLUGIN["SPARK"]["KAFKA_CONNECTOR"] = {os.path.abspath(directory)!r}'
        )
