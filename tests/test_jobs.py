"""The Spark jobs ship in the distribution and take the shop's settings."""

import json
import shlex
import subprocess
import sys
import zipfile
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from reco_plugin import jobs
from stack.services import REPO


def value(argv, option):
    return argv[argv.index(option) + 1]


def confs(command):
    """The ``--conf`` settings of a command line, in order."""
    return [command[i + 1] for i, a in enumerate(command) if a == "--conf"]


def test_the_streaming_command_comes_from_the_shops_settings(settings):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "KAFKA": {"bootstrap.servers": "kafka-1:9092,kafka-2:9092"},
        "REDIS_URL": "redis://cache:6379/3",
        "KEY_PREFIX": "shop2",
        "TOPICS": {**settings.RECO_PLUGIN.get("TOPICS", {}), "page_views": "shop2.page_views"},
        "PIPELINE": {"half_life": 3600, "shuffle_partitions": 4},
        "SPARK": {
            "CHECKPOINT": "/var/reco/ckpt",
            "MASTER": "spark://m:7077",
            "CONF": {"spark.driver.memory": "4g"},
        },
    }
    argv = jobs.stream_command(config={"shuffle_partitions": 2})
    assert argv[1:3] == ["-m", "spark_jobs.recommend"]
    assert value(argv, "--bootstrap") == "kafka-1:9092,kafka-2:9092"
    assert value(argv, "--redis") == "redis://cache:6379/3"
    assert value(argv, "--key-prefix") == "shop2"
    assert value(argv, "--checkpoint") == "/var/reco/ckpt"
    assert value(argv, "--topics").split(",")[0] == "shop2.page_views"
    assert json.loads(value(argv, "--config")) == {"half_life": 3600, "shuffle_partitions": 2}
    assert value(argv, "--master") == "spark://m:7077"
    assert value(argv, "--spark-conf") == "spark.driver.memory=4g"
    # on a cluster: the connector from Maven, the job's own Spark options left to spark-submit
    submit = jobs.submit_command(argv)
    assert submit[:5] == [
        "spark-submit",
        "--master",
        "spark://m:7077",
        "--packages",
        "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0",
    ]
    assert dict(c.split("=", 1) for c in confs(submit)) == {
        "spark.driver.memory": "4g",
        # the streaming job's JVMs compile with C1 alone (spark_jobs.session)
        "spark.driver.defaultJavaOptions": "-XX:TieredStopAtLevel=1",
        "spark.executor.defaultJavaOptions": "-XX:TieredStopAtLevel=1",
    }
    script = next(i for i, a in enumerate(submit) if a.endswith("spark_jobs/recommend.py"))
    assert not [a for a in submit[script + 1 :] if a == "--conf"]
    assert "--spark-conf" not in submit and value(submit, "--key-prefix") == "shop2"


def test_a_shops_own_java_options_stay_beside_the_streaming_jobs(settings):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "SPARK": {
            "CHECKPOINT": "/tmp/c",
            "CONF": {
                "spark.executor.extraJavaOptions": "-XX:+UseG1GC",
                "spark.driver.defaultJavaOptions": "-Dshop=1",
            },
        },
    }
    # Spark puts the default options before the extra ones: the shop's stay,
    # and the shop's own defaults replace the job's
    assert confs(jobs.submit_command(jobs.stream_command())) == [
        "spark.driver.defaultJavaOptions=-Dshop=1",
        "spark.executor.defaultJavaOptions=-XX:TieredStopAtLevel=1",
        "spark.executor.extraJavaOptions=-XX:+UseG1GC",
    ]
    # the retraining job over the lake keeps the JVM's own compilers
    assert confs(jobs.submit_command(jobs.retrain_command("/lake", 7))) == [
        "spark.executor.extraJavaOptions=-XX:+UseG1GC",
        "spark.driver.defaultJavaOptions=-Dshop=1",
    ]


def test_the_job_parses_the_command_the_launcher_builds(settings):
    from spark_jobs import recommend

    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "KEY_PREFIX": "shop3",
        "SPARK": {"CHECKPOINT": "/tmp/c", "CONF": {"spark.x": "1"}, "KAFKA_CONNECTOR": "/opt/jars"},
    }
    argv = jobs.stream_command(starting_offsets="latest")
    args = recommend.parse_args(argv[3:])
    assert args.settings.key_prefix == "shop3" and args.starting_offsets == "latest"
    assert args.spark == {"master": None, "connector": "/opt/jars", "conf": {"spark.x": "1"}}


def test_reco_stream_prints_its_command_and_refuses_without_a_checkpoint(settings):
    out = StringIO()
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "SPARK": {"CHECKPOINT": "/tmp/ckpt"}}
    call_command("reco_stream", "--print", "--config", '{"half_life": 86400}', stdout=out)
    local, submit = (shlex.split(line) for line in out.getvalue().splitlines())
    assert (
        local[1:3] == ["-m", "spark_jobs.recommend"] and value(local, "--checkpoint") == "/tmp/ckpt"
    )
    assert json.loads(value(local, "--config"))["half_life"] == 86400
    assert submit[0] == "spark-submit"
    with pytest.raises(CommandError, match="unknown pipeline settings: half_lif"):
        call_command("reco_stream", "--print", "--config", '{"half_lif": 60}')
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "SPARK": {}}
    with pytest.raises(CommandError, match=r'RECO_PLUGIN\["SPARK"\]\["CHECKPOINT"\]'):
        call_command("reco_stream")


def test_the_kafka_connector_is_a_directory_or_maven_coordinates(tmp_path):
    from spark_jobs.session import connector_config

    (tmp_path / "a.jar").write_bytes(b"")
    assert connector_config(str(tmp_path)) == {"spark.jars": str(tmp_path / "a.jar")}
    assert connector_config("g:a:1") == {"spark.jars.packages": "g:a:1"}
    with pytest.raises(FileNotFoundError, match="neither a directory of jars nor Maven"):
        connector_config(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no jars in"):
        connector_config(str(_empty(tmp_path)))


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_the_wheel_ships_the_jobs_without_the_demo(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("django_reco_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "spark_jobs/recommend.py",
        "spark_jobs/retrain.py",
        "spark_jobs/batch.py",
        "reco_plugin/jobs.py",
        "reco_plugin/static/reco_plugin/widget.js",
        "reco_plugin/management/commands/reco_stream.py",
    ):
        assert module in names
    assert not [n for n in names if n.startswith(("demo_shop/", "stack/", "tests/", "bench/"))]


def test_a_redis_password_stays_off_the_command_line(settings, monkeypatch):
    from spark_jobs import recommend
    from spark_jobs.session import REDIS_URL_ENV

    url = "redis://:s3cret@cache:6379/0"
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "REDIS_URL": url,
        "SPARK": {"CHECKPOINT": "/tmp/c"},
    }
    argv = jobs.stream_command()
    assert "--redis" not in argv and not any("s3cret" in a for a in argv)
    env = jobs.environment()
    assert env[REDIS_URL_ENV] == url
    monkeypatch.setenv(REDIS_URL_ENV, url)
    assert recommend.parse_args(argv[3:]).redis == url
    out = StringIO()
    call_command("reco_stream", "--print", stdout=out, stderr=StringIO())
    assert "s3cret" not in out.getvalue()


def test_a_failed_query_is_reported_by_the_exception_it_died_of():
    from spark_jobs.recommend import cause

    wrapped = RuntimeError(
        "[STREAM_FAILED] Query [id = 1, runId = 2] terminated with exception: An exception "
        "was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
        '  File "/site/spark_jobs/state.py", line 43, in to_units\n'
        "    return round(weight * WEIGHT_UNITS)\n"
        "OverflowError: cannot convert float infinity to integer\n"
    )
    assert cause(wrapped) == "OverflowError: cannot convert float infinity to integer"
    assert cause(RuntimeError("Kafka topic gone\nat ...")) == "Kafka topic gone"
    assert cause(None) == "query stopped"


def test_one_beat_schedule_has_the_retraining_and_the_old_one_is_a_deprecated_alias():
    from celery.schedules import crontab

    from reco_plugin import retraining
    from reco_plugin.schedule import beat_schedule

    schedule = beat_schedule(retrain_hour=4, retrain_minute=15, retrain_days=7)
    nightly = schedule["reco-retrain-nightly"]
    assert nightly["task"] == "reco_plugin.retrain" and nightly["kwargs"] == {"days": 7}
    assert nightly["schedule"] == crontab(hour=4, minute=15)
    assert {"reco-sync-catalog", "reco-publish-tuning", "reco-roll-up", "reco-cleanup"} < set(
        schedule
    )
    with pytest.warns(DeprecationWarning, match=r"reco_plugin\.schedule\.beat_schedule"):
        old = retraining.beat_schedule(hour=4, minute=15, days=7)
    assert old == {"reco-retrain-nightly": nightly}


def test_reco_stream_with_a_connector_directory_passes_its_jars_not_maven_coordinates(
    settings, tmp_path, monkeypatch
):
    connector = tmp_path / "spark-kafka"
    connector.mkdir()
    for jar in ("spark-sql-kafka-0-10_2.13-4.2.0.jar", "kafka-clients-3.9.2.jar"):
        (connector / jar).write_bytes(b"")
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "SPARK": {"CHECKPOINT": "/tmp/c", "KAFKA_CONNECTOR": str(connector)},
    }
    out = StringIO()
    call_command("reco_stream", "--print", stdout=out)
    local, submit = (shlex.split(line) for line in out.getvalue().splitlines())
    assert value(local, "--kafka-connector") == str(connector)
    assert "--packages" not in submit
    assert value(submit, "--jars").split(",") == [
        str(connector / "kafka-clients-3.9.2.jar"),
        str(connector / "spark-sql-kafka-0-10_2.13-4.2.0.jar"),
    ]
    # a directory that is not on the server that runs the job: said before Spark starts
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "SPARK": {"CHECKPOINT": "/tmp/c", "KAFKA_CONNECTOR": str(tmp_path / "missing")},
    }
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the job was started"))
    with pytest.raises(CommandError, match="--fetch-connector"):
        call_command("reco_stream")


def test_the_connector_is_resolved_without_what_pyspark_ships():
    from reco_plugin import connector

    assert connector.split_jar_name("spark-sql-kafka-0-10_2.13-4.2.0.jar") == (
        "spark-sql-kafka-0-10_2.13",
        "4.2.0",
    )
    assert connector.split_jar_name("zstd-jni-1.5.7-7.jar") == ("zstd-jni", "1.5.7-7")
    assert connector.split_jar_name("log4j-1.2-api-2.24.3.jar") == ("log4j-1.2-api", "2.24.3")
    shipped = {connector.artifact_of(p.name) for p in connector.pyspark_jars().glob("*.jar")}
    assert {"scala-library", "slf4j-api", "zstd-jni", "spark-core_2.13"} <= shipped
    assert not {"kafka-clients", "commons-pool2"} & shipped
    module = connector._ivy_module("org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0", shipped)
    assert 'name="spark-sql-kafka-0-10_2.13" rev="4.2.0"' in module
    assert '<exclude module="scala-library"/>' in module
    assert '<exclude module="kafka-clients"/>' not in module
    # the local Maven repository first (when there is one), then Maven Central or the mirrors given
    assert connector.repositories_for()[-1] == connector.MAVEN_CENTRAL
    mirror = connector.repositories_for(["https://nexus.example/maven"])
    assert mirror[-1] == "https://nexus.example/maven/" and connector.MAVEN_CENTRAL not in mirror


def test_fetch_connector_resolves_the_jars_into_a_directory_the_job_can_use(settings, tmp_path):
    """Offline: from the local Maven repository only (set-up's `mvn package`
    filled it), as a mirror would serve them."""
    import shutil
    from pathlib import Path

    from reco_plugin import connector
    from spark_jobs.session import connector_config, connector_coordinates

    group, artifact, version = connector_coordinates().split(":")
    local = connector.local_maven_repository()
    if not (local / "org/apache/spark" / artifact / version).is_dir() or not shutil.which("java"):
        pytest.skip("the connector is not in ~/.m2 (set-up's mvn package puts it there)")
    target = tmp_path / "spark-kafka"
    target.mkdir()
    (target / "spark-sql-kafka-0-10_2.13-3.5.1.jar").write_bytes(b"")  # an older fetch
    out = StringIO()
    call_command(
        "reco_stream", "--fetch-connector", str(target), "--repository", local.as_uri(), stdout=out
    )
    names = sorted(p.name for p in target.glob("*.jar"))
    assert names == [
        "commons-pool2-" + names[0].split("-", 2)[2],
        "kafka-clients-" + names[1].split("-", 2)[2],
        f"{artifact}-{version}.jar",
        f"spark-token-provider-kafka-0-10_2.13-{version}.jar",
    ]
    for name in names:
        assert name in out.getvalue()
    assert f'RECO_PLUGIN["SPARK"]["KAFKA_CONNECTOR"] = \'{target}\'' in out.getvalue()
    assert connector.directory_problem(target) is None
    assert connector_config(str(target))["spark.jars"].split(",") == [
        str(Path(target) / n) for n in names
    ]


def test_the_job_is_caught_up_when_its_last_trigger_read_all_kafka_had():
    from spark_jobs.recommend import caught_up

    def progress(end, latest):
        return {"sources": [{"endOffset": json.dumps(end), "latestOffset": latest}]}

    read = {"page_views": {"0": 40, "1": 12}}
    assert caught_up(progress(read, json.dumps(read)))
    assert caught_up(progress(read, read))  # parsed already
    assert not caught_up(progress(read, json.dumps({"page_views": {"0": 40, "1": 13}})))
    assert not caught_up(progress(read, None))
    # before its first trigger, or a progress without its source
    assert not caught_up(None) and not caught_up({}) and not caught_up({"sources": []})


def test_the_job_beats_every_second_from_a_thread_of_its_own_once_it_holds_a_query(redis_url):
    """Whatever the supervising loop waits on, a live job beats: a heartbeat
    that stops says the process died or hangs. It says where its pid means
    something (``process_space``), and a copy without the lease is silent."""
    import os
    import threading
    import time
    import types

    from reco_plugin import keys
    from spark_jobs import state
    from spark_jobs.recommend import Supervisor

    job = Supervisor.__new__(Supervisor)  # its parts, without Spark or Kafka
    job.redis = state.connect(redis_url)
    job.stopping = threading.Event()
    job.query = None
    job.lease = types.SimpleNamespace(since=None, token="host:1:abc")
    job.processor = types.SimpleNamespace(query_id="q", waiting_for_redis=False, last={})
    job.restarts = job.rewinds = 0
    job.last_error, job.last_error_at = "Kafka is away", time.time()
    job.process_space = keys.process_space()
    job.spark_cluster = lambda: {"master": "local[2]", "executors": []}

    def heartbeat():
        found = job.redis.get(keys.pipeline_heartbeat())
        return json.loads(found) if found else None

    beater = threading.Thread(target=job.keep_beating, daemon=True)
    beater.start()
    try:
        time.sleep(1.5)
        assert heartbeat() is None  # no query yet
        # a query that failed (a backoff, a rewind under way)
        job.query = types.SimpleNamespace(isActive=False, status={}, lastProgress=None)
        time.sleep(1.5)
        assert heartbeat() is None  # another copy holds the lease
        job.lease.since = time.time()
        deadline = time.monotonic() + 3
        while heartbeat() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        first = heartbeat()
        assert first["pid"] == os.getpid() and first["process_space"] == keys.process_space()
        assert (first["active"], first["message"], first["last_error"]) == (
            False,
            "restarting",
            "Kafka is away",
        )
        time.sleep(1.5)
        assert heartbeat()["at"] > first["at"]  # every second
    finally:
        job.stopping.set()
        beater.join(3)


def test_the_idle_job_writes_owed_lists_while_the_trigger_looks_for_records():
    """The trigger asks Kafka for new records most of the time the query
    waits (``isTriggerActive``); only a batch makes the idle writer (and the
    forget records' reader) give way."""
    import threading
    import time
    import types

    from spark_jobs.recommend import Supervisor

    job = Supervisor.__new__(Supervisor)  # its parts, without Spark or Kafka
    job.stopping, job.lease_lost = threading.Event(), threading.Event()
    job.lists_failed_at = 0.0
    rounds = []

    def write_owed_lists(busy, visitors=True):
        while not busy() and len(rounds) < 3:
            rounds.append(visitors)
        if len(rounds) == 3:
            # a batch begins: the writer gives way at once
            job.processor.in_batch = True
            assert busy()
        return 45

    job.processor = types.SimpleNamespace(
        ended=time.monotonic() - 5, in_batch=False, write_owed_lists=write_owed_lists
    )
    query = types.SimpleNamespace(status={"isTriggerActive": True}, lastProgress=None)
    job._lists_when_idle(query)
    assert rounds == [False, False, False]  # not caught up: the products' lists only
    # a batch that ended less than a second ago: nothing is written
    rounds.clear()
    job.processor.in_batch, job.processor.ended = False, time.monotonic()
    job._lists_when_idle(query)
    assert rounds == []
    # the forget records are read between batches too, not only while the
    # trigger rests
    read = []
    job.redis = "redis"
    job.processor.settings = "settings"
    job.processor.forgets = types.SimpleNamespace(
        catch_up=lambda r, settings, wait: read.append((r, settings, wait))
    )
    job._forgets_when_idle()
    job.processor.in_batch = True
    job._forgets_when_idle()
    assert read == [("redis", "settings", False)]
