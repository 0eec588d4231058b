"""The Kafka backend's behaviour without a broker, and its counts reaching reco_status."""

import logging
import time

import pytest

from reco_plugin import keys
from reco_plugin.backends import StatsReporter
from reco_plugin.backends.kafka import KafkaBackend, RateLimitedLog
from stack.services import free_port


def test_rate_limited_log_says_how_many_it_held_back(caplog):
    log = RateLimitedLog(logging.getLogger("t"), interval=0.2)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(50):
            log.emit("refused", logging.WARNING, "connect to %s refused", "x:1")
        log.emit("other", logging.WARNING, "something else")
        time.sleep(0.25)
        log.emit("refused", logging.WARNING, "connect to %s refused", "x:1")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "connect to x:1 refused"
    assert messages[1] == "something else"
    assert messages[2].startswith("connect to x:1 refused (49 more like this in the last")
    assert len(messages) == 3


def test_a_wrong_broker_address_logs_a_few_lines_not_several_per_second(caplog):
    backend = KafkaBackend({"bootstrap.servers": f"127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.DEBUG, logger="reco_plugin"):
        deadline = time.monotonic() + 4
        sent = 0
        while time.monotonic() < deadline:
            backend.send("page_views", "s:a", {"type": "page_view"})
            sent += 1
            time.sleep(0.01)
    lines = [r for r in caplog.records if r.name.startswith("reco_plugin")]
    assert sent > 100
    assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]
    assert backend.stats()["queued"] == sent
    backend.producer.purge()
    backend.producer.flush(0)


def test_the_counts_of_each_process_add_up_in_redis(r):
    class Counting:
        def __init__(self):
            self.counts = {"delivered": 0, "failed": 0, "dropped": 0, "queued": 0}

        def stats(self):
            return dict(self.counts)

    first, second = Counting(), Counting()
    reporters = [StatsReporter(first), StatsReporter(second)]
    first.counts.update(delivered=10, dropped=1)
    second.counts.update(delivered=5, failed=2, queued=7)
    for reporter in reporters:
        reporter.publish()
    first.counts["delivered"] = 12
    for reporter in reporters:
        reporter.publish()  # only what changed since the last publish is added
        reporter.stop(publish=False)
    assert r.hgetall(keys.producer_stats()) == {"delivered": "17", "failed": "2", "dropped": "1"}


@pytest.mark.django_db
def test_reco_status_shows_the_producer_counts(r):
    from reco_plugin.status import format_status, pipeline_status

    r.hset(keys.producer_stats(), mapping={"delivered": 40, "failed": 1, "dropped": 2})
    report = pipeline_status(kafka_timeout=0.5)
    assert report["producers"] == {"delivered": 40, "failed": 1, "dropped": 2}
    assert "40 delivered, 1 failed, 2 dropped" in format_status(report)


def test_a_forked_child_builds_its_own_backend(settings, redis_url):
    import os

    from reco_plugin.backends import get_backend

    parent = get_backend()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new backend, not the parent's
        os.write(write, b"new" if get_backend() is not parent else b"same")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"new"
