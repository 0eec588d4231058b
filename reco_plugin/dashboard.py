"""The admin dashboard's data: the job's batch history and what its ranker
learnt, and samples of what only a look from outside shows (Kafka lag, CTR by
strategy, the bandit's beliefs, the running experiment), taken by the
``reco_plugin.roll_up`` task."""

from __future__ import annotations

import json
import time
from typing import Any

from . import experiments, keys, ranker, store, strategies
from .redis_client import get_work_redis

SAMPLES_KEPT = 720
# the dashboard takes a sample itself when the newest is older than this
STALE_SECONDS = 60


def roll_up() -> dict[str, Any]:
    """One sample of the lag, CTR and conversion by strategy and by arm, and
    the bandit's beliefs, added to ``keys.stats_history``."""
    from .status import alert, pipeline_status
    from .tuning import current_experiment

    report = pipeline_status(kafka_timeout=2.0)
    r = get_work_redis()
    alert(report, r)
    shares = blend_shares(r)
    lag = report.get("lag") or {}
    sample: dict[str, Any] = {
        "at": time.time(),
        "lag": lag.get("total"),
        "lag_by_topic": {t: sum(p.values()) for t, p in (lag.get("topics") or {}).items()},
        "strategies": {
            name: {
                "belief": belief.get("mean"),
                "impressions": belief.get("all_impressions", 0),
                "clicks": belief.get("all_clicks", 0),
                "carts": belief.get("all_carts", 0),
                "purchases": belief.get("all_purchases", 0),
                "share": shares.get(name),
            }
            for name, belief in (report.get("bandit") or {}).items()
        },
    }
    experiment = current_experiment()
    if experiment is not None and experiment.arms.count() >= 2:
        result = experiments.read_report(r, experiment.definition())
        sample["experiment"] = {
            "name": experiment.name,
            "arms": [
                {
                    "name": arm["name"],
                    "ctr": arm["ctr"],
                    "conversion": arm["conversion"][0] if arm["conversion"] else None,
                }
                for arm in result["arms"]
            ],
        }
    pipe = r.pipeline(transaction=False)
    pipe.lpush(keys.stats_history(), json.dumps(sample))
    pipe.ltrim(keys.stats_history(), 0, SAMPLES_KEPT - 1)
    pipe.execute()
    return sample


def blend_shares(r: Any) -> dict[str, float]:
    """The bandit's current weights: the chance that each strategy fills a
    slot of a list, under the published policy and the staff's strategy
    choices, when every strategy has candidates."""
    policy = store.current_policy(r)
    live = [s for s in strategies.STRATEGIES if policy.enabled(s)]
    return dict(zip(live, policy.chances(live), strict=True))


def data(points: int = 240) -> dict[str, Any]:
    """What the dashboard's charts draw, oldest first."""
    r = get_work_redis()
    samples = [json.loads(v) for v in r.lrange(keys.stats_history(), 0, points - 1)]
    if not samples or time.time() - float(samples[0].get("at", 0)) > STALE_SECONDS:
        samples.insert(0, roll_up())
    batches = [json.loads(v) for v in r.lrange(keys.pipeline_history(), 0, points)]
    batches.reverse()
    samples.reverse()
    topics = sorted({t for b in batches for t in (b.get("applied_by_topic") or {})})
    series: dict[str, Any] = {"batches": [], "topics": topics}
    previous = None
    for batch in batches:
        at = float(batch.get("finished_at") or 0)
        interval = at - float(previous["finished_at"]) if previous else None
        applied = batch.get("applied_by_topic") or {}
        series["batches"].append(
            {
                "at": at,
                "seconds": batch.get("seconds"),
                "rows": batch.get("rows"),
                "rows_per_second": (batch.get("rows") or 0) / interval if interval else None,
                "freshness_ms": batch.get("freshness_ms"),
                "events_per_second": {
                    t: applied.get(t, 0) / interval if interval else None for t in series["topics"]
                },
            }
        )
        previous = batch
    latest = samples[-1] if samples else {}
    series["lag"] = [{"at": s["at"], "total": s.get("lag")} for s in samples]
    series["strategies"] = {
        name: {
            "belief": v.get("belief"),
            "ctr": v["clicks"] / v["impressions"] if v.get("impressions") else None,
            # purchases of products clicked in its lists, per click
            "conversion": v.get("purchases", 0) / v["clicks"] if v.get("clicks") else None,
            "carts_per_click": v.get("carts", 0) / v["clicks"] if v.get("clicks") else None,
            "share": v.get("share"),
        }
        for name, v in (latest.get("strategies") or {}).items()
    }
    series["experiment"] = latest.get("experiment")
    series["sampled_at"] = latest.get("at")
    series["ranker"] = ranker_progress(r, points)
    return series


def ranker_progress(r: Any, points: int = 240) -> dict[str, Any] | None:
    """What the streaming job's ranker learnt (None before it learnt
    anything): its prequential log loss and AUC per commit, oldest first
    (``keys.ranker_metrics``: each batch's examples scored before the model
    learnt them; ``at``: the batch's event-time clock, in seconds), and its
    weights (``keys.ranker_weights``): each strategy's three (listed by it,
    1/(1 + rank) in its list, score over the list's best), then the other
    features'."""
    from .preview import feature_label

    pipe = r.pipeline(transaction=False)
    pipe.get(keys.ranker_weights())
    pipe.lrange(keys.ranker_metrics(), 0, points - 1)
    raw, entries = pipe.execute()
    model = json.loads(raw) if raw else {}
    if not model and not entries:
        return None
    metrics = [json.loads(entry) for entry in reversed(entries)]
    weights = dict(zip(model.get("features", ()), model.get("weights", ()), strict=True))
    by_strategy = [
        {
            "strategy": name,
            "listed": weights.get(name),
            "rank": weights.get(f"{name}:rank"),
            "score": weights.get(f"{name}:score"),
        }
        for name in strategies.STRATEGIES
        if name in weights
    ]
    mine = {f"{s['strategy']}{part}" for s in by_strategy for part in ("", ":rank", ":score")}
    return {
        "examples": model.get("examples", 0),
        "warm_examples": ranker.WARM_EXAMPLES,
        "ranking": model.get("ranking"),
        "metrics": [
            {
                "at": m["clock"] / 1000 if m.get("clock") else None,
                "examples": m.get("examples"),
                "log_loss": m.get("log_loss"),
                "auc": m.get("auc"),
            }
            for m in metrics
        ],
        "strategies": by_strategy,
        "features": [
            {"feature": name, "label": feature_label(name), "weight": weight}
            for name, weight in weights.items()
            if name not in mine
        ],
    }
