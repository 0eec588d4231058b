"""reco_status when things are down (no services needed: nothing listens on the ports)."""

import json
import os

import pytest
from django.core.management import call_command
from django.test import override_settings

from stack.services import free_port


@pytest.fixture
def nothing_running(settings):
    with override_settings(
        RECO_PLUGIN={
            **settings.RECO_PLUGIN,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "KAFKA": {"bootstrap.servers": f"127.0.0.1:{free_port()}"},
        }
    ):
        from reco_plugin import redis_client

        redis_client.reset()
        yield
    redis_client.reset()


def test_status_names_what_is_down_and_exits_1(nothing_running, capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command("reco_status", "--json", "--timeout", "1")
    assert exit_.value.code == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] is False
    assert report["redis"]["ok"] is False and report["kafka"]["ok"] is False
    assert any("Redis is unreachable" in p for p in report["problems"])
    assert any("Kafka is unreachable" in p for p in report["problems"])


def test_status_for_people(nothing_running, capsys):
    with pytest.raises(SystemExit):
        call_command("reco_status", "--timeout", "1")
    out = capsys.readouterr().out
    assert "redis      DOWN" in out and "kafka      DOWN" in out and "PROBLEM:" in out


ALERTS = []


def record_alert(problems, report):
    ALERTS.append((problems, report["ok"]))


def test_status_covers_the_channel_layer_and_celery_and_alerts_when_behind(
    settings, redis_url, r, caplog
):
    import time

    from reco_plugin import keys, status

    r.hset(
        keys.pipeline_last_batch(),
        mapping={"batch": 3, "finished_at": time.time(), "seconds": 0.2, "freshness_ms": 95_000},
    )
    report = status.pipeline_status(kafka_timeout=0.5)
    assert report["channel_layer"] == {
        "ok": True,
        "configured": True,
        "backend": "InMemoryChannelLayer",
    }
    assert report["celery"]["configured"] is False  # the tests run without a broker
    assert report["freshness_ms"] == 95_000
    assert any("95 s after its newest event" in p for p in report["problems"])
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "ALERT_HOOK": "tests.test_status.record_alert"}
    ALERTS.clear()
    with caplog.at_level("ERROR", logger="reco_plugin.status"):
        assert status.alert(report, r) is True
        assert status.alert(report, r) is False  # the same incident, just raised
    assert ALERTS == [(report["problems"], False)]
    assert status.alert({"problems": []}, r) is False and not r.exists(keys.alerted_at())
    assert status.alert(report, r) is True  # a new incident is raised at once
    assert len(ALERTS) == 2
    assert any("95 s after its newest event" in m for m in caplog.messages)
    text = status.format_status(report)
    assert "channels" in text and "InMemoryChannelLayer" in text


def test_a_failed_retraining_is_recorded_and_reported_until_a_run_succeeds(
    redis_url, r, monkeypatch, settings
):
    import time

    from reco_plugin import keys, status
    from spark_jobs import retrain

    class Session:
        stopped = False

        def stop(self):
            Session.stopped = True

    def no_lake(spark, args):
        assert json.loads(r.get(keys.retrain_running()))["pid"]  # marked while it runs
        raise retrain.LakeMissing("the event lake /nowhere does not exist yet")

    def retraining():
        report = status.pipeline_status(kafka_timeout=0.5, services=False)
        (query,) = [q for q in report["queries"] if q["kind"] == "batch"]
        return report, query

    monkeypatch.setattr(retrain, "build_session", lambda *a, **k: Session())
    monkeypatch.setattr(retrain, "retrain", no_lake)
    assert retrain.main(["--lake", "/nowhere", "--redis", redis_url]) == 0  # nothing to do
    assert Session.stopped and not r.exists(keys.retrain_running())
    # no events yet: skipped, which is not a problem
    report, query = retraining()
    assert query["ok"] and query["skipped"] and "/nowhere does not exist" in query["error"]
    assert not any("retraining" in p for p in report["problems"])
    assert "reco-retrain (batch): idle, skipped" in status.format_status(report)

    def no_java(*args, **kwargs):
        raise RuntimeError("Java gateway process exited before sending its port number")

    monkeypatch.setattr(retrain, "build_session", no_java)
    with pytest.raises(RuntimeError):
        retrain.main(["--lake", "/nowhere", "--redis", redis_url])
    report, query = retraining()
    assert query["ok"] is False and "Java gateway" in query["error"]
    assert any(p.startswith("the last retraining failed: RuntimeError") for p in report["problems"])
    assert "reco-retrain (batch): idle, FAILED" in status.format_status(report)
    # a run that succeeds after it clears the problem
    r.set(keys.retrain_last(), json.dumps({"finished_at": time.time() + 1, "products": 3}))
    report, query = retraining()
    assert query["ok"] and not any("retraining" in p for p in report["problems"])
    # a run that started 7 hours ago and never ended (killed) is reported
    r.set(keys.retrain_running(), json.dumps({"pid": 42, "started_at": time.time() - 7 * 3600}))
    report, query = retraining()
    assert query["state"] == "running" and not query["ok"]
    assert any("started 7.0 h ago (pid 42)" in p for p in report["problems"])


def test_status_never_shows_the_redis_password(settings, capsys):
    from reco_plugin.redis_client import reset, shown_url

    assert shown_url("redis://default:s3cret@db:6379/0") == "redis://default:***@db:6379/0"
    assert shown_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert shown_url("redis://db:6379/0") == "redis://db:6379/0"
    assert shown_url("redis://db/0?password=s3cret&db=1") == "redis://db/0?password=***&db=1"
    url = f"redis://default:s3cret@127.0.0.1:{free_port()}/0"
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "REDIS_URL": url}):
        reset()
        with pytest.raises(SystemExit):
            call_command("reco_status", "--timeout", "1")
        with pytest.raises(SystemExit):
            call_command("reco_status", "--json", "--timeout", "1")
    reset()
    out = capsys.readouterr().out
    assert "s3cret" not in out and "default:***@127.0.0.1" in out


def test_status_shows_the_lease_the_copies_waiting_and_the_rewinds(redis_url, r):
    from reco_plugin import status
    from spark_jobs import recovery, state

    holder = recovery.Lease(state.connect(redis_url))
    waiting = recovery.Lease(state.connect(redis_url))
    assert holder.acquire() and not waiting.acquire()
    waiting.standby({"pid": 4242, "waiting_since": 0})
    recovery.record_rewind(r, "Redis holds less than the query has read", 1234, {("v", 0): 7})
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["lease"]["owner"] == holder.token
    assert [w["pid"] for w in report["lease"]["waiting"]] == [4242]
    assert report["recovery"]["rewinds"] == 1 and report["recovery"]["records_reapplied"] == 1234
    assert report["recovery"]["last_rewind"]["from"] == {"v:0": 7}
    text = status.format_status(report)
    assert f"held by {holder.token}" in text and f"waiting for it: {waiting.token}" in text
    assert "1 rewinds, 1234 records applied again from Kafka" in text
    # a rewind is not a problem in itself (the state was rebuilt)
    assert not any("rewind" in p for p in report["problems"])
    holder.release()
    assert waiting.acquire()


def test_status_counts_the_product_lists_owed(redis_url, r):
    from reco_plugin import keys, status

    r.zadd(keys.pipeline_owed("similar"), {"1": 3, "2": 4})
    r.zadd(keys.pipeline_owed("session"), {"2": 4})
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["product_lists_owed"] == {
        "similar": 2,
        "fbt": 0,
        "next": 0,
        "after": 0,
        "session": 1,
    }
    assert (
        "product lists owed (written by the next batches, or while the job is idle): "
        "similar 2, session 1" in status.format_status(report)
    )
    # lists owed are the job's ordinary work, not a problem
    assert not any("owed" in p for p in report["problems"])
    assert report["visitor_lists_owed"] == 0
    assert "visitors' lists owed" not in status.format_status(report)


def test_status_counts_the_visitors_lists_owed(redis_url, r):
    from reco_plugin import keys, status

    r.zadd(keys.pipeline_visitors_owed(), {"s:a": 1, "u:2": 2})
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["visitor_lists_owed"] == 2
    assert (
        "visitors' lists owed: 2 (left by batches catching up a backlog; written once the job "
        "has caught up, or once the oldest has waited 5 commits)" in status.format_status(report)
    )
    assert not any("owed" in p for p in report["problems"])


def test_the_bandit_table_keeps_its_columns_for_a_long_strategy_name():
    from reco_plugin import status

    belief = {
        "mean": 0.2,
        "trials": 10.0,
        "click_rate": None,
        "impressions": 0.0,
        "all_trials": 12,
        "all_successes": 3,
        "all_impressions": 0,
        "all_clicks": 0,
    }
    report = {"problems": [], "bandit": {"trending_long": belief, "fbt": belief}}
    text = status.format_status(report)
    table = text[text.index("strategy") :].splitlines()[:3]
    header, rows = table[0], table[1:]
    assert {row.split()[0] for row in rows} == {"trending_long", "fbt"}
    # each row's hit rate ends where the header's does
    end = header.index("hit rate") + len("hit rate")
    assert all(row[end - 5 : end] == "0.200" for row in rows), table


def _beat(r, ttl_ms: int, **info) -> None:
    from reco_plugin import keys

    beat = {"pid": os.getpid(), "active": True, "message": "Waiting for data to arrive", **info}
    r.set(keys.pipeline_heartbeat(), json.dumps(beat), px=ttl_ms)


def test_a_job_whose_process_is_gone_is_down_at_once(redis_url, r):
    """Its heartbeat outlives it by seconds; where the job ran on this host
    (the same process space), its pid says at once that it is gone."""
    import subprocess

    from reco_plugin import keys, status

    if not keys.process_space():
        pytest.skip("no process space to compare here (no /proc)")
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process
    dead_pid = child.pid
    _beat(r, keys.HEARTBEAT_TTL * 1000, pid=dead_pid, process_space=keys.process_space())
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert not report["job"]["ok"]
    assert f"the streaming job's process (pid {dead_pid}) is gone" in " ".join(report["problems"])
    assert f"job        DOWN  last heartbeat 0 s ago from pid {dead_pid}," in (
        status.format_status(report)
    )
    # another host's (or container's) pid says nothing here
    _beat(r, keys.HEARTBEAT_TTL * 1000, pid=dead_pid, process_space="elsewhere/boot/pid:[1]")
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["job"]["ok"] and not any("job" in p for p in report["problems"])
    # a live process of this host is up
    _beat(r, keys.HEARTBEAT_TTL * 1000, process_space=keys.process_space())
    assert status.pipeline_status(kafka_timeout=0.5, services=False)["job"]["ok"]


def test_a_heartbeat_not_written_for_ten_seconds_is_a_job_down(redis_url, r):
    from reco_plugin import keys, status

    # written 12 s ago, by the TTL left (Redis's clock)
    _beat(r, (keys.HEARTBEAT_TTL - 12) * 1000, pid=4242)
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert not report["job"]["ok"] and report["job"]["heartbeat_age_s"] >= 11.9
    assert any(
        p.startswith("the streaming job's heartbeat stopped 12 s ago (pid 4242)")
        for p in report["problems"]
    ), report["problems"]
    text = status.format_status(report)
    assert "job        DOWN  last heartbeat 12 s ago from pid 4242" in text
    # the query line says what the job said last as that, not as what it does
    query = next(line for line in text.splitlines() if line.startswith("query "))
    assert ": no heartbeat for 12 s (last: waiting for events)" in query, query
    # written 2 s ago: up
    _beat(r, (keys.HEARTBEAT_TTL - 2) * 1000, pid=4242)
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["job"]["ok"] and report["job"]["heartbeat_age_s"] <= 2.1


def test_a_restarting_query_is_down_without_a_heartbeat_history(redis_url, r):
    """A live job whose query restarts writes its heartbeat every second: it
    is down for its query, not a process last heard of seconds ago."""
    from reco_plugin import keys, status

    _beat(
        r,
        keys.HEARTBEAT_TTL * 1000,
        pid=4242,
        active=False,
        message="restarting",
        last_error="Kafka unavailable",
    )
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert not report["job"]["ok"] and not report["job"]["silent"]
    assert "the streaming job's query is restarting: Kafka unavailable" in report["problems"]
    line = next(x for x in status.format_status(report).splitlines() if x.startswith("job "))
    assert line.startswith("job        DOWN  pid 4242, restarting, query restarts"), line


def test_kafka_celery_and_the_channel_layer_are_asked_at_once(nothing_running, monkeypatch):
    """Each down, each taking its timeout: the report takes the longest, not the sum."""
    import time

    from reco_plugin import status

    def slow(result):
        def check(*args, **kwargs):
            time.sleep(1.0)
            if isinstance(result, Exception):
                raise result
            return result

        return check

    monkeypatch.setattr(status.pipeline, "end_offsets", slow(TimeoutError("no broker answered")))
    monkeypatch.setattr(
        status, "celery_status", slow({"ok": False, "configured": True, "workers": 0})
    )
    monkeypatch.setattr(
        status,
        "channel_layer_status",
        slow({"ok": False, "configured": True, "error": "refused"}),
    )
    started = time.monotonic()
    report = status.pipeline_status(kafka_timeout=1.0)
    took = time.monotonic() - started
    assert report["ok"] is False
    assert report["kafka"] == {"ok": False, "error": "no broker answered"}
    assert report["problems"][-3:] == [
        "Kafka is unreachable: no broker answered",
        "no Celery worker answers: catalog syncs and retraining do not run",
        "the channel layer does not answer: no live updates (refused)",
    ]
    assert any("Redis is unreachable" in p for p in report["problems"])
    assert 1.0 <= took < 2.5, took  # one after the other: 3 s


def test_a_celery_broker_that_is_down_is_reported_at_once(nothing_running):
    """The shop's app as the caller's thread knows it (a new thread knows only
    Celery's default app), its broker tried once, not for kombu's ~6 s."""
    import time

    from celery import Celery, current_app

    from reco_plugin import status

    before = current_app._get_current_object()
    Celery("shop", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=True)
    try:
        started = time.monotonic()
        report = status.pipeline_status(kafka_timeout=0.5)
        took = time.monotonic() - started
    finally:
        before.set_current()
    assert report["celery"]["configured"] is True and report["celery"]["ok"] is False
    assert "Connection refused" in report["celery"]["error"]
    assert "no Celery worker answers: catalog syncs and retraining do not run" in report["problems"]
    assert took < 3.0, took


# reco_status with a broker that accepts connections and never answers (the
# client waits in C, where Ctrl-C does not reach Python), Celery and the
# channel layer slow: says when it is asking
CTRL_C = """
import socket
import time

import django

django.setup()
from django.conf import settings

silent = socket.create_server(("127.0.0.1", 0))
broker = "127.0.0.1:%d" % silent.getsockname()[1]
settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "KAFKA": {"bootstrap.servers": broker}}
from reco_plugin import status

def slow(*args, **kwargs):
    time.sleep(60)

status.celery_status = status.channel_layer_status = slow
print("asking", flush=True)
from django.core.management import call_command

call_command("reco_status", timeout=60)
"""


def test_ctrl_c_ends_reco_status_at_once_whatever_it_waits_for(tmp_path):
    """Ctrl-C while the checks wait out their timeouts: the command ends at
    once, not when the checks asked in the background give up, and says so
    without a traceback."""
    import signal
    import subprocess
    import sys
    import time

    from stack.services import REPO

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(REPO),
        "RECO_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    asking = subprocess.Popen(
        [sys.executable, "-c", CTRL_C],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert asking.stdout.readline() == "asking\n", asking.stderr.read()
        time.sleep(2.0)  # Redis refused, Kafka waited on, Celery and the layer asked
        interrupted = time.monotonic()
        asking.send_signal(signal.SIGINT)
        asking.wait(30)
        took = time.monotonic() - interrupted
    finally:
        asking.kill()
    assert took < 2.0, took  # the checks' own waits: ~58 s more
    # said, not a traceback; the shell's exit status for SIGINT
    assert asking.stderr.read() == "interrupted\n"
    assert asking.returncode == 130


def _history(r, batches):
    """The job's batch history (newest first), as ``state.record_batch`` writes it."""
    from reco_plugin import keys

    for finished_at, seconds, rows in batches:
        line = {"batch": 0, "finished_at": finished_at, "seconds": seconds, "rows": rows}
        r.lpush(keys.pipeline_history(), json.dumps(line))


def test_status_says_how_long_the_job_needs_to_catch_up(redis_url, r, monkeypatch):
    """The records the batches of the last minute read a second (from the
    start of the first to the end of the last), and the lag over that."""
    import time

    from reco_plugin import keys, status

    now = time.time()
    # two minutes ago (left out), then three batches of 20,000 in 5 s
    _history(r, [(now - 120, 2.0, 90_000), (now - 6, 2.0, 20_000), (now - 4, 1.5, 20_000)])
    r.lpush(keys.pipeline_history(), "not JSON")
    _history(r, [(now - 1, 2.5, 20_000)])
    r.hset(keys.pipeline_offsets(), mapping={"page_views:0": 1_000})
    monkeypatch.setattr(status.pipeline, "end_offsets", lambda timeout: {"page_views:0": 1_501_000})
    monkeypatch.setattr(status.topology, "kafka_brokers", lambda timeout: {"problems": []})
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    # 60,000 records from now - 8 s to now - 1 s
    assert report["throughput"] == {"events_per_s": 8571, "batches": 3, "seconds": 7.0}
    assert report["lag"]["total"] == 1_500_000 and report["lag"]["eta_s"] == 175
    assert (
        "the pipeline is behind: 1500000 events not processed (STATUS_MAX_LAG is 10000); at the "
        "last minute's 8571 events/s, ~3 min to catch up, more as new ones arrive"
    ) in report["problems"]
    text = status.format_status(report)
    assert "throughput: 8571 events/s read by the last 3 batches (7.0 s)" in text
    assert "lag: 1500000 events (~3 min to go at the last minute's rate)" in text


def test_status_gives_no_throughput_without_two_batches_in_the_last_minute(redis_url, r):
    import time

    from reco_plugin import status

    now = time.time()
    assert status._throughput([], now) is None
    _history(r, [(now - 200, 2.0, 20_000), (now - 3, 2.0, 20_000)])
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["throughput"] is None
    assert "throughput" not in status.format_status(report)


class _MovingLeader:
    """A consumer whose partition's leadership moves for ``moving`` answers."""

    def __init__(self, moving: int, code: int = 6):
        self.moving, self.code, self.asked = moving, code, 0

    def get_watermark_offsets(self, tp, timeout):
        from confluent_kafka import KafkaError, KafkaException

        self.asked += 1
        if self.asked <= self.moving:
            raise KafkaException(KafkaError(self.code))
        return 0, 42


def test_an_end_offset_is_asked_again_while_a_leader_moves():
    import time

    from reco_plugin.pipeline import high_watermark

    consumer = _MovingLeader(moving=2)
    assert high_watermark(consumer, ("page_views", 0), time.monotonic() + 5) == 42
    assert consumer.asked == 3

    # other errors, and a leader still moving at the deadline, reach the caller
    with pytest.raises(Exception, match="UNKNOWN_TOPIC_OR_PART"):
        high_watermark(_MovingLeader(moving=1, code=3), ("page_views", 0), time.monotonic() + 5)
    with pytest.raises(Exception, match="NOT_LEADER"):
        high_watermark(_MovingLeader(moving=100), ("page_views", 0), time.monotonic() + 0.5)


def test_what_spark_is_doing_is_said_in_plain_words(redis_url, r):
    """Spark's status message and its input rate of one trigger stay in --json;
    the text says what the job is doing, and no rate a one-record batch makes up."""
    from reco_plugin import keys, status

    message = "Getting offsets from KafkaV2[Subscribe[page_views, user_clicks]]"
    _beat(
        r,
        keys.HEARTBEAT_TTL * 1000,
        message=message,
        input_rows_per_second=125.0,
        process_space=keys.process_space(),
    )
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert report["job"]["message"] == message
    assert report["queries"][0]["input_rows_per_second"] == 125.0
    lines = status.format_status(report).splitlines()
    job = next(line for line in lines if line.startswith("job "))
    query = next(line for line in lines if line.startswith("query "))
    assert f"pid {os.getpid()}, asking Kafka for new events, query restarts" in job, job
    assert "asking Kafka for new events" in query and "KafkaV2" not in query, query
    assert "records/s" not in query, query

    # a message Spark has not been known to write is shown as it is
    _beat(r, keys.HEARTBEAT_TTL * 1000, message="Resharding", process_space=keys.process_space())
    report = status.pipeline_status(kafka_timeout=0.5, services=False)
    assert "Resharding" in next(
        line for line in status.format_status(report).splitlines() if line.startswith("job ")
    )
