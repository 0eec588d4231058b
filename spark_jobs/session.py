"""A SparkSession sized for a small machine, with Spark's Kafka connector on the classpath."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAFKA_CONNECTOR_DIR = REPO / "jvm" / "lib" / "spark-kafka"


def connector_jars() -> list[str]:
    jars = sorted(glob.glob(str(KAFKA_CONNECTOR_DIR / "*.jar")))
    if not jars:
        raise FileNotFoundError(
            f"Spark's Kafka connector is missing from {KAFKA_CONNECTOR_DIR}: run `make setup`"
        )
    return jars


def build_session(
    app_name: str,
    *,
    shuffle_partitions: int | None = None,
    kafka: bool = True,
    local_checkpoint: bool = True,
):
    """A local SparkSession. ``shuffle_partitions`` defaults to the number of cores:
    the default of 200 makes every micro-batch take seconds on two cores.
    ``local_checkpoint``: the checkpoint is on a local disk (or HDFS), where a
    rename is atomic."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The Python workers import reco_plugin's Django-free modules from the repo.
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    from pyspark.sql import SparkSession

    cores = os.cpu_count() or 2
    builder = (
        SparkSession.builder.appName(app_name)
        .master(os.environ.get("RECO_SPARK_MASTER", f"local[{cores}]"))
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions or cores))
        .config("spark.default.parallelism", str(cores))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", os.environ.get("RECO_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.adaptive.enabled", "false")
        # collect() with a limit reads every partition in one job, not 1, 4, 16...
        .config("spark.sql.limit.initialNumPartitions", "100000")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
    )
    if kafka:
        builder = builder.config("spark.jars", ",".join(connector_jars()))
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
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("RECO_SPARK_LOG_LEVEL", "WARN"))
    return spark
