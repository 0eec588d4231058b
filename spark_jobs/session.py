"""A SparkSession sized for a small machine, with Spark's Kafka connector on the classpath."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONNECTOR_ENV = "RECO_SPARK_KAFKA_CONNECTOR"
# where the jobs find the Redis URL when it is not on their command line
REDIS_URL_ENV = "RECO_JOB_REDIS_URL"
FORGET_SECRET_ENV = "RECO_FORGET_SECRET"  # reco_plugin.keys.FORGET_SECRET_ENV

# The streaming job's JVMs (driver and executors) compile with C1 alone: their
# work is short bursts of fresh code each micro-batch (the scoring is Python),
# where the optimising compiler (C2) cost more CPU than it saved, which a driver
# started again felt most (CHANGELOG, "a driver started again is fresh
# sooner"). Set as the default options, which Spark puts before the
# ``extraJavaOptions``: a shop's own options stay, and ``-XX:TieredStopAtLevel=4``
# among them undoes this. The batch jobs over the lake keep the JVM's default.
STREAMING_JAVA_OPTIONS = {
    "spark.driver.defaultJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.defaultJavaOptions": "-XX:TieredStopAtLevel=1",
}


def connector_coordinates() -> str:
    """Maven coordinates of Spark's Kafka connector matching the installed PySpark."""
    import pyspark

    return f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"


def connector_config(connector: str | None = None) -> dict[str, str]:
    """Spark configuration that puts the Kafka connector on the classpath.

    ``connector`` (else ``$RECO_SPARK_KAFKA_CONNECTOR``) is a directory of jars
    (an offline copy, e.g. fetched by Maven) or Maven coordinates; by default
    Spark fetches the coordinates matching PySpark from Maven Central once
    (``spark.jars.packages``, cached in ``~/.ivy2``).
    """
    connector = connector or os.environ.get(CONNECTOR_ENV) or connector_coordinates()
    if os.path.isdir(connector):
        jars = sorted(glob.glob(os.path.join(connector, "*.jar")))
        if not jars:
            raise FileNotFoundError(f"no jars in {connector} (Spark's Kafka connector)")
        return {"spark.jars": ",".join(jars)}
    if connector.count(":") != 2 or "/" in connector:
        raise FileNotFoundError(
            f"Spark's Kafka connector {connector!r} is neither a directory of jars nor "
            "Maven coordinates (group:artifact:version)"
        )
    return {"spark.jars.packages": connector}


def add_spark_arguments(parser) -> None:
    """The Spark options every job takes (``reco_stream`` and ``reco_retrain`` pass the shop's)."""
    parser.add_argument(
        "--master", default=None, help="Spark master (default local[<cores>] or $RECO_SPARK_MASTER)"
    )
    parser.add_argument(
        "--kafka-connector",
        default=None,
        help="directory of the Kafka connector's jars, or its Maven coordinates "
        "(default: the coordinates matching PySpark, fetched by Spark)",
    )
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting (repeatable), e.g. spark.driver.memory=4g",
    )


def spark_options(parser, args) -> dict:
    """``build_session`` keywords from the options of :func:`add_spark_arguments`."""
    conf = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--spark-conf takes KEY=VALUE, not {item!r}")
        conf[key.strip()] = value
    return {"master": args.master, "connector": args.kafka_connector, "conf": conf}


def build_session(
    app_name: str,
    *,
    shuffle_partitions: int | None = None,
    kafka: bool = True,
    local_checkpoint: bool = True,
    connector: str | None = None,
    conf: dict[str, str] | None = None,
    master: str | None = None,
    java_options: dict[str, str] | None = None,
):
    """A local SparkSession. ``shuffle_partitions`` defaults to the number of cores:
    the default of 200 makes every micro-batch take seconds on two cores.
    ``local_checkpoint``: the checkpoint is on a local disk (or HDFS), where a
    rename is atomic. ``connector``: see :func:`connector_config`; ``conf``: more
    Spark settings, applied last. ``java_options``: the driver's and executors'
    default JVM options (the driver's takes effect where the JVM is started
    here, not under spark-submit)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The Python workers import reco_plugin's Django-free modules from where this is installed.
    paths = [str(PACKAGE_ROOT)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    from pyspark.sql import SparkSession

    cores = os.cpu_count() or 2
    # under spark-submit the master and the jars are spark-submit's to set
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    builder = SparkSession.builder.appName(app_name)
    if master or not submitted:
        builder = builder.master(master or os.environ.get("RECO_SPARK_MASTER", f"local[{cores}]"))
    defaults = {
        "spark.sql.shuffle.partitions": str(shuffle_partitions or cores),
        "spark.default.parallelism": str(cores),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("RECO_SPARK_DRIVER_MEMORY", "2g"),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "false",
        # collect() with a limit reads every partition in one job, not 1, 4, 16...
        "spark.sql.limit.initialNumPartitions": "100000",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.PYTHONPATH": os.environ["PYTHONPATH"],
        **(java_options or {}),
    }
    # the executors check tombstones by the shop's digests (Spark redacts the value)
    if os.environ.get(FORGET_SECRET_ENV):
        defaults[f"spark.executorEnv.{FORGET_SECRET_ENV}"] = os.environ[FORGET_SECRET_ENV]
    if submitted:
        # spark-submit's --conf (and the cluster's defaults) win over these
        from pyspark import SparkConf

        given = SparkConf()
        defaults = {k: v for k, v in defaults.items() if not given.contains(k)}
        if shuffle_partitions:
            defaults["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    for key, value in defaults.items():
        builder = builder.config(key, value)
    if kafka and (connector or not submitted):
        for key, value in connector_config(connector).items():
            builder = builder.config(key, value)
    if local_checkpoint:
        # Checkpoint files are renamed into place with FileSystem.rename: the
        # default FileContext path asks Hadoop for the link status, which on a
        # local disk forks `readlink` for every offset and commit log entry
        # (~35 ms each, two per batch). Not for object stores (no atomic rename).
        builder = builder.config(
            "spark.sql.streaming.checkpointFileManagerClass",
            "org.apache.spark.sql.execution.streaming.checkpointing."
            "FileSystemBasedCheckpointFileManager",
        )
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("RECO_SPARK_LOG_LEVEL", "WARN"))
    return spark
