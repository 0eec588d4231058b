"""replay_quality: HR@10 of the system on the MovieLens-100k ratings replayed as
page views (``manage.py reco_replay``, SPEC §8) through real Kafka, Spark and
Redis, against a popularity baseline scored in the same run.

``value`` = the system's HR@10, ``peer`` = popularity, ``ratio`` = value /
popularity; the report's other recommenders (an in-process item-kNN, each
strategy alone) and MRR@10 come along. The tick (events between two waits for
the pipeline) is SPEC §8's 50 unless ``RECO_REPLAY_TICK`` says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import kafka_and_redis
from stack.services import PYTHON, REPO

TICK = int(os.environ.get("RECO_REPLAY_TICK", "50"))
# pipeline settings to try (JSON), e.g. a longer co-visitation window
CONFIG = os.environ.get("RECO_REPLAY_CONFIG")


def write_ratings(path: Path) -> int:
    from demo_shop import movielens

    ratings = movielens.ratings()
    with path.open("w") as out:
        out.write("visitor_id,product_id,type,ts\n")
        for r in ratings:
            out.write(f"{r.user_id},{r.item_id},page_view,{r.ts}\n")
    return len(ratings)


def run(log=print, tick: int = TICK) -> dict:
    with kafka_and_redis(log) as (stack, state):
        events = write_ratings(state / "ml-100k.csv")
        log(f"replaying {events} MovieLens-100k ratings as page views, {tick} per tick...")
        report_path = state / "report.json"
        result = subprocess.run(
            [
                PYTHON,
                "manage.py",
                "reco_replay",
                str(state / "ml-100k.csv"),
                "--tick-events",
                str(tick),
                "--report",
                str(report_path),
                *(["--config", CONFIG] if CONFIG else []),
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
        "tick_events": tick,
        "pipeline": report["pipeline"],
        "mrr@10": report["system"]["mrr@10"],
        "item_knn_hr@10": report["item_knn"]["hr@10"],
        "strategies_hr@10": {
            name: report[name]["hr@10"] for name in ("personal", "similar", "trending")
        },
        "trials": report["trials"],
        "seconds": report["seconds"],
    }
