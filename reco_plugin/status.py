"""Health of the pipeline for operators: ``manage.py reco_status``.

Everything here is read from Redis (what the streaming job records) and Kafka
(the topics' end offsets); nothing is computed on the request path.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from django.utils.module_loading import import_string

from . import jobs, keys, pipeline, scoring, strategies, topology
from .conf import reco_settings
from .redis_client import get_work_redis as get_redis
from .redis_client import shown_url

logger = logging.getLogger(__name__)

COUNTERS = ("read", *scoring.STATUSES)


def _counters(raw: dict[str, str]) -> dict[str, dict[str, int]]:
    topics: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        topic, _, name = field.rpartition(":")
        topics.setdefault(topic, dict.fromkeys(COUNTERS, 0))[name] = int(value)
    return dict(sorted(topics.items()))


def _last_batch(raw: dict[str, str]) -> dict[str, Any] | None:
    if not raw:
        return None
    result: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            result[name] = json.loads(value)
        except ValueError:
            result[name] = value
    return result


# reco_status's throughput: the records the batches that finished in the last
# minute read a second (the job's batch history, ``keys.pipeline_history``)
THROUGHPUT_WINDOW_S = 60.0
HISTORY_READ = 300


def _throughput(history: list[str], now: float) -> dict[str, Any] | None:
    """Records read a second by the batches that finished in the last
    ``THROUGHPUT_WINDOW_S`` (from the start of the first to the end of the
    last), how many batches, and over how long; None with fewer than two."""
    recent = []
    for line in history:
        try:
            batch = json.loads(line)
            finished, seconds = float(batch["finished_at"]), float(batch["seconds"])
            rows = int(batch["rows"])
        except (ValueError, TypeError, KeyError):
            continue  # a line of an earlier version, or damaged
        if now - finished <= THROUGHPUT_WINDOW_S:
            recent.append((finished - seconds, finished, rows))
    if len(recent) < 2:
        return None
    start = min(begun for begun, _, _ in recent)
    end = max(finished for _, finished, _ in recent)
    if end <= start:
        return None
    return {
        "events_per_s": round(sum(rows for _, _, rows in recent) / (end - start)),
        "batches": len(recent),
        "seconds": round(end - start, 1),
    }


def _duration(seconds: float) -> str:
    """``seconds`` as people say it: 45 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# What the shop's processes did with the events they emitted (summed over processes).
PRODUCER_COUNTS = ("delivered", "failed", "dropped")


def _bandit(evidence: dict[str, str], outcomes: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per strategy: the blend's current beliefs (posterior means of its
    next-item success rate and click rate, with the discounted evidence) and
    its all-time trials, successes, impressions, clicks, and the add-to-carts
    and purchases of products clicked in its lists."""
    result: dict[str, dict[str, Any]] = {}
    for name, belief in strategies.describe(strategies.evidence_from(evidence)).items():
        result[name] = {
            **belief,
            **{
                f"all_{kind}": int(outcomes.get(f"{name}:{kind}", 0))
                for kind in ("trials", "successes", "impressions", "clicks", "carts", "purchases")
            },
        }
    return result


def _recovery(raw: dict[str, str]) -> dict[str, Any]:
    """What the job re-applied from Kafka after Redis lost state (rewinds), left
    out as read again, and the last records Kafka deleted before it read them."""
    result: dict[str, Any] = {
        name: int(raw.get(name, 0)) for name in ("rewinds", "records_reapplied", "records_skipped")
    }
    for name in ("last_rewind", "last_expired"):
        result[name] = json.loads(raw[name]) if raw.get(name) else None
    return result


# How long records Kafka deleted before the job read them stay a problem
EXPIRED_PROBLEM_HOURS = 24

# The job writes its heartbeat every second, from a thread of its own
# (spark_jobs.recommend: whatever its query waits on); one not written for
# this long is of a job that died or hangs.
HEARTBEAT_STALE_SECONDS = 10.0


def _process_gone(job: dict[str, Any]) -> bool:
    """Whether the job's process is known to be gone: it ran where this
    runs (the same :func:`keys.process_space`) and its pid names no process."""
    space = job.get("process_space")
    if not space or space != keys.process_space():
        return False
    try:
        os.kill(int(job["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False  # it exists (not ours to signal), or the pid is not one
    return False


def _heartbeat_age(ttl_ms: int | None) -> float | None:
    """Seconds since the heartbeat was written, from its remaining TTL (Redis's
    clock: no skew between this host's and the job's)."""
    if ttl_ms is None or ttl_ms < 0:
        return None
    return round(max(0.0, keys.HEARTBEAT_TTL - ttl_ms / 1000), 1)


def _lease(owner: str | None, info: str | None, standby: dict[str, str]) -> dict[str, Any]:
    """Which copy of the job holds the lease, and which wait for it."""
    details = json.loads(info) if info else {}
    waiting = []
    for token, raw in sorted(standby.items()):
        entry = json.loads(raw)
        if time.time() - float(entry.get("at", 0)) < 15:  # still waiting
            waiting.append({"token": token, **entry})
    return {
        "owner": owner,
        "since": details.get("since") if details.get("owner") == owner else None,
        "waiting": waiting,
    }


# The memory policies under which Redis never evicts the pipeline's keys.
SAFE_MEMORY_POLICIES = frozenset({"noeviction"})


def redis_durability(r: Any) -> dict[str, Any]:
    """Redis's persistence and memory policy, and the problems they pose: an
    evicting policy drops the pipeline's state (offsets, counters) without a word."""
    found: dict[str, Any] = {"problems": []}
    try:
        config = r.config_get("maxmemory*")
        snapshots = r.config_get("save").get("save", "")
        persistence = r.info("persistence")
    except Exception as exc:  # CONFIG may be renamed or refused (a managed Redis)
        found["config"] = f"not readable: {exc}"
        return found
    policy = config.get("maxmemory-policy")
    maxmemory = int(config.get("maxmemory") or 0)
    aof = bool(persistence.get("aof_enabled"))
    found.update(
        maxmemory=maxmemory,
        maxmemory_policy=policy,
        aof=aof,
        persistence="aof" if aof else ("snapshots" if snapshots.strip() else "none"),
    )
    if maxmemory and policy not in SAFE_MEMORY_POLICIES:
        found["problems"].append(
            f"Redis evicts keys when full (maxmemory-policy {policy}): the pipeline's state "
            "can be dropped; set maxmemory-policy noeviction (docs/production.md)"
        )
    return found


def _asked(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """``function`` run in a daemon thread: its result, or what it raised,
    in the future returned. Ctrl-C ends ``reco_status`` at once, without
    waiting for a check that waits out its timeout (the main thread waits on
    the future, which a signal interrupts)."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as exc:  # the caller's .result() raises it
            future.set_exception(exc)

    threading.Thread(target=run, name="reco-status", daemon=True).start()
    return future


def pipeline_status(kafka_timeout: float = 5.0, *, services: bool = True) -> dict[str, Any]:
    """One JSON-ready dict: components, counters, lag, last batch, and
    ``problems``; with ``services``, also a ping of the Celery workers and a
    round trip through the channel layer (a second or two when one is down).

    The Celery ping and the channel layer are asked while Redis and then
    Kafka are read: with all of them down the report takes the longest of
    their timeouts, not their sum."""
    # (the shop's Celery app, as this thread knows it: a new thread may know
    # only Celery's default app)
    celery = _asked(celery_status, app=_celery_app()) if services else None
    layer = _asked(channel_layer_status) if services else None
    report, processed = _redis_status()
    # Kafka's end offsets after Redis's: the job commits on meanwhile, so the
    # lag may come out high, never low (read in a thread too: its client
    # waits in C, where Ctrl-C would not reach this one until it gives up)
    _judge_kafka(report, processed, _asked(_kafka_status, kafka_timeout).result())
    if celery is not None and layer is not None:
        _judge_services(report, celery.result(), layer.result())
    report["ok"] = not report["problems"]
    return report


def _redis_status() -> tuple[dict[str, Any], dict[str, int]]:
    """The report's parts read from Redis and their problems, and the
    offsets the job processed (for the lag)."""
    report: dict[str, Any] = {"ok": True, "problems": [], "checked_at": time.time()}
    problems: list[str] = report["problems"]
    processed: dict[str, int] = {}
    try:
        r = get_redis()
        r.ping()
        pipe = r.pipeline(transaction=False)
        pipe.get(keys.pipeline_heartbeat())
        pipe.pttl(keys.pipeline_heartbeat())
        pipe.hgetall(keys.pipeline_last_batch())
        pipe.hgetall(keys.pipeline_counters())
        pipe.hgetall(keys.pipeline_offsets())
        pipe.get(keys.pipeline_clock())
        pipe.hgetall(keys.producer_stats())
        pipe.hgetall(keys.bandit())
        pipe.hgetall(keys.bandit_stats())
        pipe.get(keys.retrain_last())
        pipe.get(keys.retrain_running())
        pipe.get(keys.retrain_failed())
        pipe.hgetall(keys.pipeline_recovery())
        pipe.mget(keys.pipeline_lease(), keys.pipeline_lease_info())
        pipe.hgetall(keys.pipeline_standby())
        pipe.lrange(keys.pipeline_history(), 0, HISTORY_READ - 1)
        (
            heartbeat,
            heartbeat_ttl_ms,
            last_batch,
            counters,
            offsets,
            clock,
            producers,
            beliefs,
            outcomes,
            retrained,
            retraining,
            retrain_failed,
            recovered,
            (lease, lease_info),
            standby,
            history,
        ) = pipe.execute()
        report["redis"] = {"ok": True, "url": shown_url(), **redis_durability(r)}
        problems.extend(report["redis"].pop("problems"))
        report["redis"].update(topology.redis_roles(r))
        problems.extend(report["redis"].pop("problems"))
        report["recovery"] = _recovery(recovered)
        report["lease"] = _lease(lease, lease_info, standby)
        processed = {k: int(v) for k, v in offsets.items()}
        job = json.loads(heartbeat) if heartbeat else None
        beat_age = _heartbeat_age(heartbeat_ttl_ms) if job else None
        gone = bool(job) and _process_gone(job)
        stale = beat_age is not None and beat_age > HEARTBEAT_STALE_SECONDS
        # the process is dead or hangs: what it last wrote is history
        silent = gone or stale
        report["job"] = {
            "ok": bool(job and job.get("active") and not silent),
            **(job or {}),
            "heartbeat_age_s": beat_age,
            "silent": silent,
        }
        report["last_batch"] = _last_batch(last_batch)
        report["throughput"] = _throughput(history, report["checked_at"])
        # product lists whose pair weights changed since they were written
        report["product_lists_owed"] = strategies.product_lists_owed(r)
        # visitors' lists left unwritten by batches catching up a backlog
        report["visitor_lists_owed"] = strategies.visitor_lists_owed(r)
        report["counters"] = _counters(counters)
        report["clock_ms"] = int(clock) if clock else None
        report["producers"] = {name: int(producers.get(name, 0)) for name in PRODUCER_COUNTS}
        report["bandit"] = _bandit(beliefs, outcomes)
        report["retrain"] = json.loads(retrained) if retrained else None
        report["retrain_running"] = json.loads(retraining) if retraining else None
        report["retrain_failed"] = json.loads(retrain_failed) if retrain_failed else None
        last_expired = report["recovery"]["last_expired"]
        if last_expired and time.time() - float(last_expired.get("at", 0)) < (
            EXPIRED_PROBLEM_HOURS * 3600
        ):
            total = sum(
                int(v) for k, v in counters.items() if k.endswith(f":{scoring.STATUS_EXPIRED}")
            )
            problems.append(
                "events were deleted by Kafka's retention before the job read them: "
                f"{total} in all, the last {_ago(last_expired['at'])} ("
                + ", ".join(f"{t} {n}" for t, n in last_expired["topics"].items())
                + ")"
            )
        if job is None:
            problems.append("the streaming job is down (no heartbeat in Redis)")
        elif gone:
            written = (
                "" if beat_age is None else f"; its heartbeat was written {beat_age:.0f} s ago"
            )
            problems.append(f"the streaming job's process (pid {job.get('pid')}) is gone{written}")
        elif stale:
            problems.append(
                f"the streaming job's heartbeat stopped {beat_age:.0f} s ago (pid "
                f"{job.get('pid')}): it died or hangs"
            )
        elif not job.get("active"):
            cause = f": {job['last_error']}" if job.get("last_error") else ""
            problems.append(f"the streaming job's query is restarting{cause}")
        elif job.get("waiting_for_redis"):
            problems.append("the streaming job is waiting for Redis")
    except Exception as exc:
        report["redis"] = {"ok": False, "url": shown_url(), "error": str(exc)}
        problems.append(f"Redis is unreachable: {exc}")
    return report, processed


def _kafka_status(timeout: float) -> tuple[dict[str, int] | None, dict[str, Any], list[str]]:
    """The topics' end offsets (None when Kafka does not answer), the
    report's ``kafka`` part, and its problems."""
    problems: list[str] = []
    try:
        ends = pipeline.end_offsets(timeout=timeout)
        part = {"ok": True, **topology.kafka_brokers(timeout=timeout)}
        problems.extend(part.pop("problems"))
        if not ends:
            problems.append("none of the topics exist: run manage.py reco_topics")
    except Exception as exc:
        ends = None
        part = {"ok": False, "error": str(exc)}
        problems.append(f"Kafka is unreachable: {exc}")
    return ends, part, problems


def _judge_kafka(
    report: dict[str, Any],
    processed: dict[str, int],
    kafka: tuple[dict[str, int] | None, dict[str, Any], list[str]],
) -> None:
    """Kafka's part, the lag, the Spark master, the queries and the
    freshness, with their problems."""
    problems: list[str] = report["problems"]
    ends, report["kafka"], found = kafka
    problems.extend(found)
    if ends is not None and report.get("redis", {}).get("ok"):
        lag: dict[str, dict[str, int]] = {}
        for tp, end in sorted(ends.items()):
            topic, _, partition = tp.rpartition(":")
            lag.setdefault(topic, {})[partition] = max(0, end - processed.get(tp, 0))
        total = sum(sum(parts.values()) for parts in lag.values())
        report["lag"] = {"total": total, "topics": lag}
        rate = (report.get("throughput") or {}).get("events_per_s")
        if total and rate:
            # at the last minute's rate; new events arrive meanwhile
            report["lag"]["eta_s"] = round(total / rate)
        if total > reco_settings.STATUS_MAX_LAG:
            problems.append(
                f"the pipeline is behind: {total} events not processed "
                f"(STATUS_MAX_LAG is {reco_settings.STATUS_MAX_LAG})"
                + (
                    f"; at the last minute's {rate} events/s, "
                    f"~{_duration(report['lag']['eta_s'])} to catch up, more as new ones arrive"
                    if rate
                    else ""
                )
            )
        elif total and report.get("last_batch"):
            age = time.time() - float(report["last_batch"].get("finished_at", 0))
            if age > reco_settings.STATUS_MAX_STALL_SECONDS:
                problems.append(f"{total} events wait and no batch has finished for {age:.0f} s")
    master_ui = jobs.spark_settings().get("MASTER_UI")
    if master_ui:
        try:
            report["spark"] = {"ok": True, **topology.spark_workers(master_ui)}
        except Exception as exc:
            report["spark"] = {"ok": False, "error": f"{master_ui}: {exc}", "problems": []}
            problems.append(f"the Spark master does not answer ({master_ui}: {exc})")
        problems.extend(report["spark"].pop("problems"))
    report["queries"] = _queries(report)
    for query in report["queries"]:
        if query.get("problem"):
            problems.append(query["problem"])
    batch = report.get("last_batch") or {}
    freshness = batch.get("freshness_ms")
    if isinstance(freshness, int | float):
        report["freshness_ms"] = freshness
        if freshness > reco_settings.STATUS_MAX_FRESHNESS_SECONDS * 1000:
            problems.append(
                f"the last batch wrote lists {freshness / 1000:.0f} s after its newest event "
                f"(STATUS_MAX_FRESHNESS_SECONDS is {reco_settings.STATUS_MAX_FRESHNESS_SECONDS})"
            )


def _judge_services(
    report: dict[str, Any], celery: dict[str, Any], channel_layer: dict[str, Any]
) -> None:
    report["celery"], report["channel_layer"] = celery, channel_layer
    if celery.get("configured") and not celery["ok"]:
        report["problems"].append(
            "no Celery worker answers: catalog syncs and retraining do not run"
        )
    if channel_layer.get("configured") and not channel_layer["ok"]:
        report["problems"].append(
            f"the channel layer does not answer: no live updates ({channel_layer.get('error')})"
        )


# a retraining running longer than this is reported (killed without a word?)
RETRAIN_HOURS = 6


def _queries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each Spark query of the shop: the streaming one (from its heartbeat, the
    last batch and the lag), and the retraining (a batch job) when it has run."""
    job = report.get("job") or {}
    batch = report.get("last_batch") or {}
    found = [
        {
            "name": job.get("name") or "reco_recommend",
            "kind": "streaming",
            "ok": bool(job.get("ok")),
            "state": job.get("message") if job.get("pid") else "down",
            "id": job.get("query"),
            "run_id": job.get("run_id"),
            "last_batch": batch.get("batch"),
            "last_batch_at": batch.get("finished_at"),
            "lag": (report.get("lag") or {}).get("total"),
            "behind_latest": job.get("behind_latest"),
            "input_rows_per_second": job.get("input_rows_per_second"),
            "silent": bool(job.get("silent")),
            "heartbeat_age_s": job.get("heartbeat_age_s"),
        }
    ]
    last, running, failed = (
        report.get(k) for k in ("retrain", "retrain_running", "retrain_failed")
    )
    if last or running or failed:
        retrain: dict[str, Any] = {"name": "reco-retrain", "kind": "batch", "ok": True}
        if last:
            retrain.update(
                last_run_at=last.get("finished_at"),
                seconds=last.get("seconds"),
                products=last.get("products"),
            )
        if running:
            retrain.update(state="running", started_at=running.get("started_at"))
            hours = (time.time() - float(running.get("started_at", 0))) / 3600
            if hours > RETRAIN_HOURS:
                retrain["ok"] = False
                retrain["problem"] = (
                    f"the retraining started {hours:.1f} h ago (pid {running.get('pid')}) and "
                    "has not finished: was it killed?"
                )
        else:
            retrain["state"] = "idle"
        if failed and float(failed.get("at", 0)) > float((last or {}).get("finished_at", 0)):
            retrain.update(failed_at=failed.get("at"), error=failed.get("error"))
            if failed.get("skipped"):
                retrain["skipped"] = True
            else:
                retrain["ok"] = False
                retrain["problem"] = f"the last retraining failed: {failed.get('error')}"
        found.append(retrain)
    return found


def _celery_app() -> Any:
    """The shop's Celery app (when Celery is set up with a broker), else None."""
    from .compat import celery, celery_configured

    return celery.current_app._get_current_object() if celery_configured() else None


def celery_status(timeout: float = 1.0, app: Any = None) -> dict[str, Any]:
    """Whether the shop's Celery workers answer a ping (when Celery is set
    up; ``app``: the shop's app, found here when not given)."""
    app = app or _celery_app()
    if app is None:
        return {"ok": True, "configured": False}
    try:
        with app.connection_for_write() as connection:
            # each of the broker's URLs once (kombu moves on to the next
            # between retries), not kombu's ~6 s of retries of one that is down
            connection.ensure_connection(
                max_retries=max(0, len(connection.alt) - 1), interval_start=0, interval_step=0.2
            )
            replies = app.control.ping(timeout=timeout, connection=connection) or []
    except Exception as exc:  # the broker is down
        return {"ok": False, "configured": True, "workers": 0, "error": str(exc)}
    return {"ok": bool(replies), "configured": True, "workers": len(replies)}


def channel_layer_status(timeout: float = 2.0) -> dict[str, Any]:
    """A message through the channel layer and back (what every push relies on)."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return {"ok": False, "configured": False}

    async def round_trip() -> bool:
        import asyncio

        channel = await layer.new_channel()
        await layer.send(channel, {"type": "reco.status"})
        message = await asyncio.wait_for(layer.receive(channel), timeout)
        return message.get("type") == "reco.status"

    try:
        ok = async_to_sync(round_trip)()
    except Exception as exc:
        return {"ok": False, "configured": True, "backend": type(layer).__name__, "error": str(exc)}
    return {"ok": ok, "configured": True, "backend": type(layer).__name__}


# While problems last, they are raised again at most this often (a periodic
# check must not page someone every few seconds about the same incident).
ALERT_EVERY_SECONDS = 300


def alert(report: dict[str, Any], r: Any = None) -> bool:
    """When ``report`` has problems: log them at error level and call
    ``ALERT_HOOK`` (a dotted path to ``hook(problems, report)``), if set.
    With Redis (``r``), an incident is raised when it starts and then at most
    every ``ALERT_EVERY_SECONDS`` while it lasts; whether it was raised now."""
    if not report.get("problems"):
        if r is not None:
            r.delete(keys.alerted_at())
        return False
    if r is not None:
        # SET NX with a TTL: the first caller in the period raises it
        if not r.set(keys.alerted_at(), time.time(), nx=True, ex=ALERT_EVERY_SECONDS):
            return False
    logger.error("reco: %s", "; ".join(report["problems"]))
    path = reco_settings.ALERT_HOOK
    if not path:
        return True
    try:
        import_string(path)(list(report["problems"]), report)
    except Exception:
        logger.exception("reco: the ALERT_HOOK %s failed", path)
    return True


def _ago(moment: Any) -> str:
    seconds = time.time() - float(moment)
    return f"{seconds:.0f} s ago" if seconds < 5400 else f"{seconds / 3600:.1f} h ago"


# What Spark says its streaming query is doing (its status message, by how it
# begins), in the words of the rest of the report; another message is shown as
# Spark wrote it.
SPARK_ACTIVITY = (
    ("Waiting for data to arrive", "waiting for events"),
    ("Waiting for next trigger", "waiting for its next batch"),
    ("Getting offsets from", "asking Kafka for new events"),
    ("Processing new data", "processing a batch"),
    ("Initializing", "starting"),
    ("Stopped", "stopped"),
)


def _activity(message: Any) -> str:
    """Spark's status message for people: ``Getting offsets from
    KafkaV2[Subscribe[page_views, ...]]`` is asking Kafka for new events."""
    text = str(message or "")
    for begins, words in SPARK_ACTIVITY:
        if text.startswith(begins):
            return words
    return text


def _query_line(query: dict[str, Any]) -> str:
    """One Spark query, for people."""
    text = f"{query['name']} ({query['kind']}"
    if query.get("id"):
        text += f", id {query['id']}"
    if query["kind"] == "streaming":
        # (Spark's input rate of its last trigger is in --json only: a batch of
        # one record after a quiet second reads as 125 records/s; the report's
        # throughput line gives the rate over the last minute, once two
        # batches have finished in it)
        doing = _activity(query.get("state")) or "down"
        if query.get("silent") and query.get("heartbeat_age_s") is not None:
            # what it said last, not what it does: it has not said since
            doing = f"no heartbeat for {query['heartbeat_age_s']:.0f} s (last: {doing})"
        text += f"): {doing}"
        if query.get("last_batch_at"):
            text += f", batch {query.get('last_batch')} finished {_ago(query['last_batch_at'])}"
        if query.get("lag") is not None:
            text += f", lag {query['lag']}"
        return text
    text += f"): {query.get('state') or 'down'}"
    if query.get("started_at"):
        text += f" since {_ago(query['started_at'])}"
    if query.get("last_run_at"):
        text += (
            f", last run {_ago(query['last_run_at'])}: {query.get('products')} products "
            f"in {query.get('seconds')} s"
        )
    if query.get("error"):
        outcome = "skipped" if query.get("skipped") else "FAILED"
        text += f", {outcome} {_ago(query['failed_at'])}: {query['error']}"
    return text


def format_status(report: dict[str, Any]) -> str:
    """The report for people."""
    lines = []

    def component(name: str, part: dict[str, Any] | None, detail: str) -> None:
        state = "ok" if part and part.get("ok") else "DOWN"
        lines.append(f"{name:<10} {state:<5} {detail}")

    redis_part = report.get("redis") or {}
    redis_detail = redis_part.get("error") or redis_part.get("url", "")
    if redis_part.get("maxmemory_policy"):
        redis_detail += (
            f", {'AOF' if redis_part.get('aof') else 'no AOF'}, "
            f"maxmemory-policy {redis_part['maxmemory_policy']}"
        )
    if redis_part.get("role"):
        redis_detail += f", {redis_part['role']}"
        if redis_part.get("primary"):
            redis_detail += f" {redis_part['primary']} (as the Sentinels say)"
    component("redis", redis_part, redis_detail)
    for replica in redis_part.get("replicas") or ():
        lines.append(
            f"{'':<16} replica {replica['address']} {replica['state']}, "
            f"{replica['behind_bytes']} bytes behind"
        )
    for sentinel in redis_part.get("sentinels") or ():
        says = f"names {sentinel.get('primary')} primary" if sentinel["up"] else sentinel["error"]
        lines.append(f"{'':<16} sentinel {sentinel['address']} {says}")
    kafka = report.get("kafka") or {}
    partitions = kafka.get("partitions") or {}
    component(
        "kafka",
        kafka,
        kafka.get("error")
        or f"{partitions.get('total', 0)} partitions, {partitions.get('offline', 0)} without a "
        f"leader, {partitions.get('under_replicated', 0)} short of copies",
    )
    for broker in kafka.get("brokers") or ():
        lines.append(
            f"{'':<16} broker {broker['id']} {'up' if broker['up'] else 'DOWN'}"
            + (f" at {broker['address']}" if broker["address"] else "")
        )
    spark = report.get("spark")
    if spark:
        component(
            "spark",
            spark,
            spark.get("error")
            or f"master {spark.get('master')} {spark.get('status')}, "
            f"{len(spark.get('workers') or ())} workers alive",
        )
        for worker in spark.get("workers") or ():
            lines.append(
                f"{'':<16} worker {worker['address']}: {worker['cores_used']}/{worker['cores']} "
                f"cores used, {worker['memory_mb']} MB"
            )
    job = report.get("job") or {}
    detail = "no heartbeat"
    if job.get("pid"):
        detail = (
            f"pid {job['pid']}, {_activity(job.get('message'))}, "
            f"query restarts {job.get('restarts', 0)}"
        )
        if job.get("silent") and job.get("heartbeat_age_s") is not None:
            detail = f"last heartbeat {job['heartbeat_age_s']:.0f} s ago from {detail}"
        spark = job.get("spark") or {}
        if spark.get("master") and not spark["master"].startswith("local"):
            detail += f", {len(spark.get('executors') or ())} executors of {spark['master']}"
        if job.get("last_error"):
            when = f" {_ago(job['last_error_at'])}" if job.get("last_error_at") else ""
            detail += f", last error{when}: {job['last_error']}"
    component("job", job, detail)
    lease = report.get("lease") or {}
    if lease.get("owner") or lease.get("waiting"):
        since = f" since {_ago(lease['since'])}" if lease.get("since") else ""
        lines.append(f"{'lease':<16} held by {lease.get('owner') or 'nobody'}{since}")
        for waiting in lease.get("waiting") or ():
            lines.append(
                f"{'':<16} waiting for it: {waiting['token']} "
                f"(since {_ago(waiting.get('waiting_since') or waiting['at'])})"
            )
    recovery = report.get("recovery") or {}
    if recovery.get("rewinds") or recovery.get("records_skipped"):
        text = (
            f"{recovery['rewinds']} rewinds, {recovery['records_reapplied']} records applied "
            f"again from Kafka, {recovery['records_skipped']} read again and left out"
        )
        last = recovery.get("last_rewind")
        if last:
            text += f"; last rewind {_ago(last['at'])}: {last['reason']}"
        lines.append(f"{'recovery':<16} {text}")
    for query in report.get("queries") or ():
        component("query", query, _query_line(query))
    celery_part = report.get("celery") or {}
    if celery_part.get("configured"):
        component(
            "celery",
            celery_part,
            celery_part.get("error") or f"{celery_part.get('workers')} workers",
        )
    layer = report.get("channel_layer") or {}
    if layer.get("configured"):
        component("channels", layer, layer.get("error") or layer.get("backend", ""))
    batch = report.get("last_batch")
    if batch:
        age = time.time() - float(batch.get("finished_at", 0))
        lines.append(
            f"last batch {batch.get('batch')}: {batch.get('rows')} "
            f"record{'' if batch.get('rows') == 1 else 's'} in "
            f"{float(batch.get('seconds', 0)):.3f} s on the {batch.get('path')}, {age:.0f} s ago"
        )
        steps = batch.get("steps") or {}
        if steps:
            lines.append("  steps: " + ", ".join(f"{k} {float(v):.3f} s" for k, v in steps.items()))
    throughput = report.get("throughput")
    if throughput:
        lines.append(
            f"throughput: {throughput['events_per_s']} events/s read by the last "
            f"{throughput['batches']} batches ({throughput['seconds']} s)"
        )
    owed = {kind: n for kind, n in (report.get("product_lists_owed") or {}).items() if n}
    if owed:
        lines.append(
            "product lists owed (written by the next batches, or while the job is idle): "
            + ", ".join(f"{kind} {n}" for kind, n in owed.items())
        )
    if report.get("visitor_lists_owed"):
        lines.append(
            f"visitors' lists owed: {report['visitor_lists_owed']} (left by batches catching up "
            "a backlog; written once the job has caught up, or once the oldest has waited "
            f"{strategies.VISITOR_LISTS_DEFERRED_COMMITS} commits)"
        )
    producers = report.get("producers")
    if producers:
        lines.append(
            "events emitted by the shop: "
            + ", ".join(f"{producers[name]} {name}" for name in PRODUCER_COUNTS)
        )
    bandit = report.get("bandit")
    if bandit:
        width = max(11, *(len(name) + 2 for name in bandit))
        lines.append("")
        lines.append(
            "bandit (next-item hit rate and click rate believed now, over the discounted "
            "evidence; all-time counts)"
        )
        lines.append(
            f"{'strategy':<{width}}{'hit rate':>9}{'over':>7}{'CTR':>8}{'over':>7}"
            f"{'trials':>9}{'hits':>8}{'shown':>8}{'clicks':>8}"
        )
        for name, b in sorted(bandit.items(), key=lambda kv: -kv[1]["mean"]):
            ctr = f"{b['click_rate']:.3f}" if b["click_rate"] is not None else "-"
            lines.append(
                f"{name:<{width}}{b['mean']:>9.3f}{b['trials']:>7.0f}{ctr:>8}{b['impressions']:>7.0f}"
                f"{b['all_trials']:>9}{b['all_successes']:>8}{b['all_impressions']:>8}"
                f"{b['all_clicks']:>8}"
            )
    counters = report.get("counters") or {}
    if counters:
        lines.append("")
        lines.append(f"{'topic':<18}" + "".join(f"{name:>11}" for name in COUNTERS))
        for topic, values in counters.items():
            lines.append(f"{topic:<18}" + "".join(f"{values.get(n, 0):>11}" for n in COUNTERS))
    lag = report.get("lag")
    if lag:
        lines.append("")
        eta = (
            f" (~{_duration(lag['eta_s'])} to go at the last minute's rate)"
            if "eta_s" in lag
            else ""
        )
        lines.append(f"lag: {lag['total']} events{eta}")
        for topic, parts in lag["topics"].items():
            behind = {p: n for p, n in parts.items() if n}
            detail = ", ".join(f"{p}: {n}" for p, n in behind.items()) if behind else "none"
            lines.append(f"  {topic:<16} {sum(parts.values()):>8}  ({detail})")
    lines.append("")
    if report["problems"]:
        lines.extend(f"PROBLEM: {p}" for p in report["problems"])
    else:
        lines.append("all good")
    return "\n".join(lines)
