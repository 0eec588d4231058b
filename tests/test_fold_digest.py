"""The state the job folds from fixed traffic, held to a recorded digest.

Work on the job's speed must leave what it computes alone, to the bit: the
co-visits, baskets, popularity, trending, memories, logins, the bandit's
evidence, the ranker's weights and the lists. This test folds 12,000 fixed
events in three batches: page views, add-to-carts, purchases, impressions and
clicks on recommendations, logins, and copies of events sent twice (in the
same batch and in the next). They go through the same scoring, commit and list
steps as the job's driver path, on a real Redis, and a digest of what Redis
then holds (``redis_state``: every key's value, without TTLs; the job's
bookkeeping and de-duplication ids left out) is compared with the one recorded
here. There is no catalog, so the features of categories and prices are not
exercised (``tests/test_ranker_pipeline.py`` covers them). The executors' path
is held equal to the driver's in ``tests/test_spark_transforms.py``.

A change that means to change what is learnt (a new signal, another
weighting) records the new digest, and says so in the CHANGELOG. A second
digest is of the same state with every JSON value parsed (``PARSED_DIGEST``):
a change of how values are written (compact JSON) changes the first only. The
digests are of CPython 3.11's floating-point arithmetic and C maths library,
as ``make setup`` installs them.
"""

import hashlib
import json
import random

from reco_plugin import keys, schema
from stack.pipeline import redis_state
from tests.test_batch import Batches

DIGEST = "5b609b8e28cc20a0"
PARSED_DIGEST = "7d66d35bdd348c64"
BATCHES = 3
BATCH_EVENTS = 4000
NOW_MS = 1_780_000_000_000
SHOWN_BY = ("similar", "next", "personal", "popular")
# keys with content of each kind, at least (this traffic fills 3,004 personal
# lists, 63 next, 63 after, 36 session and 7 fbt lists, 341 bought sets, 473
# clicked hashes)
FILLED = {
    ":recs": 2000,
    ":next": 30,
    ":after": 30,
    ":session": 20,
    ":fbt": 5,
    ":bought": 200,
    ":clicked": 200,
}


def traffic(n: int, seed: int = 11):
    """``Batches.row``'s arguments of ``n`` events of 3,000 visitors over 500
    products (a few popular ones) in 12 categories, over six hours; every
    200th is a copy of an event sent a moment before, or (every other time)
    250 events before, which crosses into the batch before at each batch's
    start."""
    rng = random.Random(seed)
    span_ms = 6 * 3600 * 1000
    sent = []
    for i in range(n):
        if i % 200 == 199:
            sent.append(sent[-250] if len(sent) >= 250 and i // 200 % 2 == 0 else sent[-3])
            yield sent[-1]
            continue
        ts = NOW_MS - span_ms + i * span_ms // n
        visitor = f"s:d{rng.randint(1, 3000)}"
        product = str(int(rng.paretovariate(1.2)) % 500 + 1)
        category = f"c{int(product) % 12}"
        previous = strategy = reco_id = None
        roll = rng.random()
        if roll < 0.01:
            type_, previous, visitor, product, category = (
                schema.IDENTIFY,
                visitor,
                f"u:{rng.randint(1, 400)}",
                None,
                None,
            )
        elif roll < 0.04:
            type_ = schema.PURCHASE
        elif roll < 0.12:
            type_ = schema.ADD_TO_CART
        elif roll < 0.24:
            type_ = schema.IMPRESSION if roll < 0.20 else schema.CLICK
            strategy, reco_id = rng.choice(SHOWN_BY), f"r{rng.randint(1, 2000)}"
        else:
            type_ = schema.PAGE_VIEW
        sent.append(
            {
                "type_": type_,
                "visitor_id": visitor,
                "product_id": product,
                "previous": previous,
                "category": category,
                "strategy": strategy,
                "reco_id": reco_id,
                "event_id": f"e{i:08d}",
                "ts": ts,
            }
        )
        yield sent[-1]


def fold(redis_url, monkeypatch) -> dict:
    monkeypatch.setattr(schema, "now_ms", lambda: NOW_MS)
    batches = Batches(redis_url)
    events = list(traffic(BATCHES * BATCH_EVENTS))
    first = {}
    for at, event in enumerate(events):
        first.setdefault(event["event_id"], at)
    crossing = [
        at
        for at, e in enumerate(events)
        if first[e["event_id"]] // BATCH_EVENTS < at // BATCH_EVENTS
    ]
    assert len(crossing) == BATCHES - 1, crossing  # a copy of an event of the batch before
    for start in range(0, len(events), BATCH_EVENTS):
        batches.run([batches.row(**event) for event in events[start : start + BATCH_EVENTS]])
    return redis_state(batches.r)


def parsed(value):
    """``value`` with every JSON array or object in its strings parsed."""
    if isinstance(value, str):
        try:
            found = json.loads(value)
        except ValueError:
            return value
        return ["json", found] if isinstance(found, list | dict) else value
    if isinstance(value, dict):
        return {k: parsed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [parsed(v) for v in value]
    return value


def digest_of(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def test_fixed_traffic_folds_to_the_recorded_state(redis_url, monkeypatch):
    folded = fold(redis_url, monkeypatch)
    # what the digest covers, so that it cannot pass by covering nothing
    assert json.loads(folded[keys.ranker_model()])["examples"] > 1000, "the ranker learnt little"
    for suffix in FILLED:
        filled = [k for k in folded if k.endswith(suffix) and folded[k] not in ("[]", [], {})]
        assert len(filled) >= FILLED[suffix], f"{len(filled)} {suffix} keys with content"
    # logins: users' memories hold what their anonymous visitors did before
    users = [key for key in folded if ":visitor:u:" in key and key.endswith(":recent")]
    assert sum(1 for key in users if json.loads(folded[key])) > 50, "logins moved no memories"
    counters = folded[keys.pipeline_counters()]
    assert int(counters["page_views:duplicate"]) == BATCHES * BATCH_EVENTS // 200, counters
    assert int(counters["page_views:applied"]) == BATCHES * BATCH_EVENTS * 199 // 200, counters
    assert digest_of(parsed(folded)) == PARSED_DIGEST, (
        f"the folded state, its JSON values parsed, is not the recorded one: digest "
        f"{digest_of(parsed(folded))}, recorded {PARSED_DIGEST}"
    )
    digest = digest_of(folded)
    assert digest == DIGEST, (
        f"the folded state ({len(folded)} keys) is not the recorded one: digest {digest}, "
        f"recorded {DIGEST}. A speed-up must not change it; a change meant to change "
        "what the job learns records the new digest here and says so in the CHANGELOG."
    )
