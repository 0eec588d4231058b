"""Command lines of the Spark jobs, built from the shop's own settings.

The jobs (``spark_jobs.recommend``, ``spark_jobs.retrain``) ship in the same
distribution and never import Django; ``manage.py reco_stream`` and
``manage.py reco_retrain`` give them the shop's Kafka, Redis, topics, key
prefix and pipeline settings so nothing is configured twice.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .conf import reco_settings

# where ``spark_jobs`` and ``reco_plugin`` are importable from (site-packages, or a checkout)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

SPARK_DEFAULTS: dict[str, Any] = {
    # Spark master; None: local[<cores>]
    "MASTER": None,
    # a standalone master's web UI (http://HOST:8080): reco_status lists its workers
    "MASTER_UI": None,
    # a directory holding Spark's Kafka connector jars (`manage.py reco_stream
    # --fetch-connector DIR` fills one: reco_plugin.connector), or Maven coordinates;
    # None: Spark fetches the coordinates matching PySpark from Maven Central once
    "KAFKA_CONNECTOR": None,
    # the streaming job's checkpoint directory (local path, hdfs:// or s3a://)
    "CHECKPOINT": None,
    # more Spark settings, e.g. {"spark.driver.memory": "4g"}
    "CONF": {},
}


class JobConfigError(ValueError):
    """The shop's settings do not say enough to run a job; the message says what to set."""


def spark_settings() -> dict[str, Any]:
    """``RECO_PLUGIN["SPARK"]`` over its defaults (a partial dict is fine)."""
    return {**SPARK_DEFAULTS, **(reco_settings.SPARK or {})}


def kafka_bootstrap() -> str:
    servers = (reco_settings.KAFKA or {}).get("bootstrap.servers")
    if not servers:
        raise JobConfigError('RECO_PLUGIN["KAFKA"] has no "bootstrap.servers"')
    return str(servers)


def redis_arguments(url: str) -> list[str]:
    """``--redis URL``, unless the URL holds a password: then the job reads it
    from the environment (:func:`environment`), not from a command line that
    ``ps`` shows."""
    return [] if urlsplit(url).password else ["--redis", url]


def spark_arguments() -> list[str]:
    spark = spark_settings()
    argv: list[str] = []
    if spark["MASTER"]:
        argv += ["--master", str(spark["MASTER"])]
    if spark["KAFKA_CONNECTOR"]:
        argv += ["--kafka-connector", str(spark["KAFKA_CONNECTOR"])]
    for key, value in (spark["CONF"] or {}).items():
        argv += ["--spark-conf", f"{key}={value}"]
    return argv


def stream_command(
    *,
    checkpoint: str | None = None,
    config: dict[str, Any] | None = None,
    starting_offsets: str | None = None,
    bootstrap: str | None = None,
    redis_url: str | None = None,
    topics: list[str] | None = None,
    key_prefix: str | None = None,
) -> list[str]:
    """The streaming job's command line; keywords override the shop's settings."""
    checkpoint = checkpoint or spark_settings()["CHECKPOINT"]
    if not checkpoint:
        raise JobConfigError(
            'the streaming job needs a checkpoint directory: set RECO_PLUGIN["SPARK"]'
            '["CHECKPOINT"] (a path the job keeps across restarts) or pass --checkpoint'
        )
    argv = [
        sys.executable,
        "-m",
        "spark_jobs.recommend",
        "--bootstrap",
        bootstrap or kafka_bootstrap(),
        *redis_arguments(redis_url or reco_settings.REDIS_URL),
        "--checkpoint",
        str(checkpoint),
        "--topics",
        ",".join(topics or reco_settings.TOPICS.values()),
        "--key-prefix",
        key_prefix or reco_settings.KEY_PREFIX,
        "--forgotten-topic",
        reco_settings.FORGOTTEN_TOPIC,
        "--config",
        json.dumps({**(reco_settings.PIPELINE or {}), **dict(config or {})}),
    ]
    if starting_offsets:
        argv += ["--starting-offsets", starting_offsets]
    return argv + spark_arguments()


def retrain_command(lake: str, days: int) -> list[str]:
    """The retraining job's command line over the event lake at ``lake``."""
    pipeline = {k: v for k, v in (reco_settings.PIPELINE or {}).items() if k != "lake_path"}
    return [
        sys.executable,
        "-m",
        "spark_jobs.retrain",
        "--lake",
        lake,
        *redis_arguments(reco_settings.REDIS_URL),
        "--days",
        str(days),
        "--key-prefix",
        reco_settings.KEY_PREFIX,
        "--config",
        json.dumps(pipeline),
        *spark_arguments(),
    ]


def environment(redis_url: str | None = None) -> dict[str, str]:
    """The environment a job runs in: this one, with the packages importable
    and the Redis URL (see :func:`redis_arguments`)."""
    from spark_jobs.session import REDIS_URL_ENV

    from . import keys
    from .privacy import forget_secret

    env = {
        **os.environ,
        REDIS_URL_ENV: redis_url or reco_settings.REDIS_URL,
        # forgotten visitors are known by digests under the shop's secret
        keys.FORGET_SECRET_ENV: forget_secret(),
    }
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys(
            [str(PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        )
    )
    return env


def submit_command(argv: list[str]) -> list[str]:
    """The same job as a ``spark-submit`` command line, for a cluster whose
    driver and executors have ``django-reco-plugin[spark]`` installed (the
    executors score large batches with its code)."""
    import spark_jobs

    module = argv[2]
    script = Path(spark_jobs.__file__).parent / f"{module.rsplit('.', 1)[1]}.py"
    rest = argv[3:]
    spark = spark_settings()
    submit = ["spark-submit"]
    if spark["MASTER"]:
        submit += ["--master", str(spark["MASTER"])]
    connector = spark["KAFKA_CONNECTOR"]
    conf = dict(spark["CONF"] or {})
    if module == "spark_jobs.recommend":
        from spark_jobs.session import STREAMING_JAVA_OPTIONS, connector_coordinates

        if connector and os.path.isdir(str(connector)):
            jars = sorted(str(p) for p in Path(str(connector)).glob("*.jar"))
            submit += ["--jars", ",".join(jars)]
        else:
            submit += ["--packages", str(connector or connector_coordinates())]
        conf = {**STREAMING_JAVA_OPTIONS, **conf}
    for key, value in conf.items():
        submit += ["--conf", f"{key}={value}"]
    # the job's own Spark options are for local runs: spark-submit has set them
    job_args: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg in ("--master", "--kafka-connector", "--spark-conf"):
            skip = True
            continue
        job_args.append(arg)
    return [*submit, str(script), *job_args]
