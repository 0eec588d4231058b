"""replay_quality: HR@10 of the system on the MovieLens-100k ratings replayed as
page views (``manage.py reco_replay``, SPEC §8) through real Kafka, Spark and
Redis, against a popularity baseline scored in the same run.

``value`` = the system's HR@10, ``peer`` = popularity, ``ratio`` = value /
popularity; the report's other recommenders (an in-process item-kNN, each
strategy alone) and MRR@10 come along. The tick (events between two waits for
the pipeline) is SPEC §8's 50 unless ``RECO_REPLAY_TICK`` says otherwise.

``RECO_REPLAY_DATASET=ta-feng`` replays the Ta Feng grocery baskets instead
(``bench.datasets``; the first ``RECO_REPLAY_DAYS`` days, default 30), and
``RECO_REPLAY_CONFIG`` (JSON) overrides the pipeline settings. Each data set
has settings that fit its time scale (``DATASET_CONFIG``), stated in the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import kafka_and_redis
from reco_plugin import strategies
from stack.services import PYTHON, REPO

TICK = int(os.environ.get("RECO_REPLAY_TICK", "50"))
DATASET = os.environ.get("RECO_REPLAY_DATASET", "ml-100k")
DAYS = int(os.environ.get("RECO_REPLAY_DAYS", "30"))
# Pipeline settings for each data set's time scale. MovieLens ratings come in
# sessions spread over seven months, and a film's audience builds over months:
# co-visits within a day, fading with a 30-day half-life, and where viewers go
# next from a film remembered for a year. Ta Feng is bought in weekly baskets:
# co-visits within a week.
DATASET_CONFIG = {
    "ml-100k": {
        "covisit_window": 86_400,
        "half_life": 30 * 86_400,
        "next_half_life": 365 * 86_400,
    },
    "ta-feng": {"covisit_window": 7 * 86_400, "half_life": 30 * 86_400},
}


def write_ratings(path: Path) -> int:
    from demo_shop import movielens

    films = {film.id: film for film in movielens.films()}
    ratings = movielens.ratings()
    with path.open("w") as out:
        out.write("visitor_id,product_id,type,ts,category\n")
        for r in ratings:
            category = films[r.item_id].category if r.item_id in films else ""
            out.write(f"{r.user_id},{r.item_id},page_view,{r.ts},{category}\n")
    return len(ratings)


def write_dataset(path: Path, log) -> int:
    if DATASET == "ml-100k":
        events = write_ratings(path)
        log(f"replaying {events} MovieLens-100k ratings as page views")
    elif DATASET == "ta-feng":
        from bench import datasets

        events = datasets.events(path, days=DAYS)
        log(f"replaying {events} Ta Feng purchases ({DAYS} days)")
    else:
        raise SystemExit(f"RECO_REPLAY_DATASET: unknown data set {DATASET!r}")
    return events


def run(log=print, tick: int = TICK) -> dict:
    config = {
        **DATASET_CONFIG.get(DATASET, {}),
        **json.loads(os.environ.get("RECO_REPLAY_CONFIG") or "{}"),
    }
    with kafka_and_redis(log) as (stack, state):
        data = state / f"{DATASET}.csv"
        write_dataset(data, log)
        log(f"{tick} events per tick, pipeline settings {json.dumps(config)}")
        report_path = state / "report.json"
        result = subprocess.run(
            [
                PYTHON,
                "manage.py",
                "reco_replay",
                str(data),
                "--tick-events",
                str(tick),
                "--report",
                str(report_path),
                "--config",
                json.dumps(config),
            ],
            cwd=REPO,
            env=stack.env(),
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"reco_replay exited with {result.returncode}")
        report = json.loads(report_path.read_text())
    system, popularity = report["system"]["hr@10"], report["popularity"]["hr@10"]
    return {
        "name": "replay_quality",
        "value": system,
        "unit": "HR@10",
        "peer": "popularity",
        "peer_value": popularity,
        "ratio": round(system / popularity, 3) if popularity else None,
        "dataset": DATASET,
        "tick_events": tick,
        "pipeline": report["pipeline"],
        "mrr@10": report["system"]["mrr@10"],
        "blend_hr@10": report["blend"]["hr@10"],
        "blend_mrr@10": report["blend"]["mrr@10"],
        "ranker": report.get("ranker"),
        "item_knn_hr@10": report["item_knn"]["hr@10"],
        "item_knn_mrr@10": report["item_knn"]["mrr@10"],
        "popularity_mrr@10": report["popularity"]["mrr@10"],
        "all_seen": {name: report[f"{name}_all_seen"] for name in ("popularity", "item_knn")},
        "strategies": {name: report[name] for name in strategies.STRATEGIES},
        "bandit": report.get("bandit"),
        "trials": report["trials"],
        "seconds": report["seconds"],
    }
