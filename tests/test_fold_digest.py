"""The whole state the job folds from fixed traffic, held to a recorded digest.

Work on the job's speed must leave what it computes alone, to the bit: the
co-visits, popularity, trending, memories, the bandit's evidence, the ranker's
weights and every list. This test folds 12,000 events of the throughput
bench's traffic (a fixed clock and event ids) in three batches, through the
same scoring, commit and list steps as the job's driver path, on a real Redis,
and compares a digest of everything Redis then holds (``redis_state``: the
job's bookkeeping and de-duplication ids left out) with the one recorded here.
The executors' path is held equal to the driver's in
``tests/test_spark_transforms.py``.

A change that means to change what is learnt (a new signal, another
weighting) records the new digest, and says so in the CHANGELOG. The digest is
of CPython 3.11's floating-point sums, the version ``make setup`` installs.
"""

import hashlib
import itertools
import json

from bench.spark_throughput import traffic
from reco_plugin import keys, schema
from stack.pipeline import redis_state
from tests.test_batch import Batches

DIGEST = "a402b645ee169876"
BATCHES = 3
BATCH_EVENTS = 4000
NOW_MS = 1_780_000_000_000


def fold(redis_url, monkeypatch) -> dict:
    monkeypatch.setattr(schema, "now_ms", lambda: NOW_MS)
    ids = itertools.count()
    monkeypatch.setattr(schema, "new_event_id", lambda: f"e{next(ids):08d}")
    batches = Batches(redis_url)
    events = list(traffic(BATCHES * BATCH_EVENTS))
    for start in range(0, len(events), BATCH_EVENTS):
        rows = []
        for event in events[start : start + BATCH_EVENTS]:
            batches.offset += 1
            rows.append(
                (
                    "page_views",
                    0,
                    batches.offset,
                    event["schema"],
                    event["type"],
                    event["event_id"],
                    event["visitor_id"],
                    event["product_id"],
                    event["ts"],
                    None,
                    event.get("category"),
                    None,
                    None,
                )
            )
        batches.run(rows)
    return redis_state(batches.r)


def test_fixed_traffic_folds_to_the_recorded_state(redis_url, monkeypatch):
    folded = fold(redis_url, monkeypatch)
    # what the digest covers, so that it cannot pass by covering nothing
    assert json.loads(folded[keys.ranker_weights()]), "no ranker weights learnt"
    assert sum(1 for key in folded if key.endswith(":recs")) > 4000, "personal lists missing"
    assert any(key.endswith(":next") for key in folded), "no next lists"
    counters = folded[keys.pipeline_counters()]
    assert int(counters["page_views:applied"]) == BATCHES * BATCH_EVENTS, counters
    digest = hashlib.sha256(json.dumps(folded, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == DIGEST, (
        f"the folded state ({len(folded)} keys) is not the recorded one: digest {digest}, "
        f"recorded {DIGEST}. A speed-up must not change it; a change meant to change "
        "what the job learns records the new digest here and says so in the CHANGELOG."
    )
