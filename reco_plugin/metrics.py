"""Prometheus metrics at ``GET /reco/metrics`` (staff session or ``METRICS_TOKEN``).

Two kinds, in one registry of the plugin's own (the shop's default registry is
left alone):

- this process's: API latency per endpoint, websocket pushes, events handed to
  the producer by type. With several processes behind one address a scrape
  sees the process that answered; set ``PROMETHEUS_MULTIPROC_DIR`` for
  prometheus_client's multiprocess mode, or scrape each process;
- the shop's, read from Redis at scrape time (the same figures ``reco_status``
  shows): the pipeline's record counts by topic and outcome, the producers'
  delivered / failed / dropped counts summed over every process, the last
  batch (duration, records, when), the job's heartbeat and input rate, the
  bandit's current share per strategy, and the Kafka lag per topic.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from . import strategies
from .conf import reco_settings

REGISTRY = CollectorRegistry(auto_describe=True)

API_SECONDS = Histogram(
    "reco_api_request_seconds",
    "Time the recommendation API took to answer, in this process.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
PUSHES = Counter(
    "reco_pushes",
    "Lists pushed to websockets by this process (sent, or not sent because Redis did not answer).",
    ["outcome"],
    registry=REGISTRY,
)
EMITTED = Counter(
    "reco_events_emitted",
    "Events this process handed to the producer, by type.",
    ["type"],
    registry=REGISTRY,
)


class ShopCollector:
    """Figures every process of the shop shares, read from Redis (and Kafka for the lag)."""

    def describe(self) -> list[Metric]:
        # Nothing to describe ahead: registering must not read Redis and Kafka
        # (every process imports this module when it starts).
        return []

    def collect(self) -> Iterator[Metric]:
        from .status import PRODUCER_COUNTS, pipeline_status

        # a scrape reports Redis, Kafka and the job: no Celery ping or
        # channel-layer round trip on every scrape
        report = pipeline_status(kafka_timeout=1.0, services=False)
        up = GaugeMetricFamily(
            "reco_up", "Whether each service answers (1) or not (0).", labels=["service"]
        )
        up.add_metric(["redis"], float(bool(report.get("redis", {}).get("ok"))))
        up.add_metric(["kafka"], float(bool(report.get("kafka", {}).get("ok"))))
        up.add_metric(["job"], float(bool(report.get("job", {}).get("ok"))))
        yield up
        queries = GaugeMetricFamily(
            "reco_spark_query_ok",
            "Whether each Spark query is well (1): the streaming one runs, the last "
            "retraining did not fail.",
            labels=["query", "kind"],
        )
        for query in report.get("queries") or ():
            queries.add_metric([query["name"], query["kind"]], float(bool(query.get("ok"))))
        yield queries
        records = CounterMetricFamily(
            "reco_pipeline_records",
            "Kafka records the streaming job read, by topic and what it did with them.",
            labels=["topic", "status"],
        )
        for topic, counts in (report.get("counters") or {}).items():
            for status, value in counts.items():
                records.add_metric([topic, status], value)
        yield records
        producers = CounterMetricFamily(
            "reco_events",
            "Events the shop's producers delivered to Kafka, failed to, or dropped (queue full), "
            "summed over every process.",
            labels=["outcome"],
        )
        for outcome in PRODUCER_COUNTS:
            producers.add_metric([outcome], (report.get("producers") or {}).get(outcome, 0))
        yield producers
        yield from _batch(report.get("last_batch") or {}, report.get("job") or {})
        lag = GaugeMetricFamily(
            "reco_kafka_lag",
            "Events in Kafka the job has not processed, by topic.",
            labels=["topic"],
        )
        for topic, parts in ((report.get("lag") or {}).get("topics") or {}).items():
            lag.add_metric([topic], sum(parts.values()))
        yield lag
        share = GaugeMetricFamily(
            "reco_bandit_share",
            "The blend's current belief per strategy (posterior mean of its success rate).",
            labels=["strategy"],
        )
        for name, belief in (report.get("bandit") or {}).items():
            if name in strategies.STRATEGIES and belief.get("mean") is not None:
                share.add_metric([name], float(belief["mean"]))
        yield share
        recovery = report.get("recovery") or {}
        for name, text in (
            ("rewinds", "Times the job rewound to rebuild state Redis had lost."),
            ("records_reapplied", "Records applied again from Kafka by rewinds."),
        ):
            yield CounterMetricFamily(f"reco_{name}", text, value=recovery.get(name, 0))


def _batch(last: dict[str, Any], job: dict[str, Any]) -> Iterator[Metric]:
    def gauge(name: str, text: str, value: Any) -> Iterator[Metric]:
        if isinstance(value, int | float):
            yield GaugeMetricFamily(name, text, value=float(value))

    yield from gauge("reco_batch_id", "The last micro-batch the job finished.", last.get("batch"))
    yield from gauge("reco_batch_records", "Records in the last micro-batch.", last.get("rows"))
    yield from gauge(
        "reco_batch_duration_seconds", "How long the last micro-batch took.", last.get("seconds")
    )
    yield from gauge(
        "reco_batch_finished_timestamp_seconds",
        "When the last micro-batch finished (epoch seconds).",
        last.get("finished_at"),
    )
    yield from gauge(
        "reco_job_input_rows_per_second",
        "Spark's input rate over the last trigger.",
        job.get("input_rows_per_second"),
    )


REGISTRY.register(ShopCollector())


def allowed(request: HttpRequest) -> bool:
    """A staff session, or ``Authorization: Bearer <METRICS_TOKEN>``; never anonymous."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = reco_settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        body = {"error": "metrics need a staff session or the METRICS_TOKEN bearer token"}
        return HttpResponse(json.dumps(body), status=403, content_type="application/json")
    started = time.perf_counter()
    output = generate_latest(REGISTRY)
    response = HttpResponse(output, content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    response["X-Scrape-Seconds"] = f"{time.perf_counter() - started:.3f}"
    return response
