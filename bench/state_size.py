"""state_size: the Redis memory the streaming job's state takes at the default
pipeline settings, per product, per visitor and per event (SPEC §10).

Two data sets go through real Kafka, the real streaming job and a real Redis,
one after the other on one stack (each on its own topics and Redis database):

* ``ml-100k``: the demo's MovieLens history as ``demo_warmup`` sends it (every
  rating a page view, a rating of 4 or 5 also an add-to-cart; the seven months
  mapped onto the last six hours), each event carrying the film's genre;
* ``synthetic``: a shop of 100,000 products in 200 categories and 1,000,000
  visitors, each with 1 to 3 events a few minutes apart over the last four
  hours (products drawn with probability ~1/rank, half of a visitor's later
  events in the category of their first; mostly page views, some add-to-carts
  and purchases).

Once the job has applied every record and stopped, every key of the database
is measured with ``MEMORY USAGE key SAMPLES 0`` and put in a family by its
name (``family_of``): ``product`` (a product's co-visits, bought-with and lists,
its member of the popularity, purchases and clock hashes), ``visitor`` (recent
and seen items, purchases, personal and affinity lists), ``event`` (the
de-duplication sets of event ids, which keep the ids of the last
``dedup_records`` offsets of each partition), ``trending`` (window buckets and
lists, global and per category: bounded by the windows, not by the history)
and ``fixed`` (bookkeeping, the bandit, the popular list). Bytes per product =
``product`` / products with events, per visitor = ``visitor`` / visitors, per
event = ``event`` / events applied. ``INFO memory``'s ``used_memory`` less its
value before the job started is reported beside the sum of the keys: Redis's
own tables (hash-table buckets, the expiry table) come on top of the keys.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import redis

from reco_plugin import keys, schema
from reco_plugin.scoring import STATUS_APPLIED

if TYPE_CHECKING:
    from stack.services import Stack

# Topic names of each data set's events (their roles' default names after the prefix).
TOPIC_PREFIX = {"ml-100k": "ml100k-", "synthetic": "shop-"}
DATABASES = {"ml-100k": 1, "synthetic": 2}
FAMILIES = ("product", "visitor", "event", "trending", "fixed")
SYNTHETIC_CATEGORIES = 200
SYNTHETIC_SPAN_MS = 4 * 3600 * 1000


def _head(key_of_id: Callable[..., str], *rest: Any) -> str:
    """What a family's key names start with, from its key function in ``keys``."""
    return key_of_id("\0", *rest).partition("\0")[0]


def family_of(key: str) -> tuple[str, str]:
    """(family, kind) of one of the pipeline's keys, by its name."""
    if keys.visitor_of(key):
        return "visitor", key.rpartition(":")[2]
    if key in (keys.product_clock(), keys.fbt_clock(), keys.popularity(), keys.purchases()):
        return "product", key.rpartition(":")[2]
    if key.startswith(_head(keys.product_covisits)):
        return "product", key.rpartition(":")[2]
    if key == keys.seen_index():
        return "event", "dedup-index"
    if key.startswith(_head(keys.seen_events, 0, 0)):
        return "event", "dedup-ids"
    if key == keys.trending() or key.startswith(_head(keys.trending_window_bucket, 0)):
        per_category = ":cat:" in key
        kind = "bucket" if ":bucket:" in key else "list"
        return "trending", f"category-{kind}" if per_category else kind
    if key.startswith(_head(keys.visitor_forgotten)):
        return "visitor", "forgotten"
    return "fixed", key[len(keys.PREFIX) + 1 :].partition(":")[0]


def product_of(key: str) -> str | None:
    """The product whose own key (``product:<id>:<kind>``) this is; None for another key."""
    head = _head(keys.product_covisits)
    if not key.startswith(head):
        return None
    product, _, _ = key[len(head) :].rpartition(":")
    return product or None


# -- the data sets -----------------------------------------------------------------


def movielens_events(ratings: int | None = None) -> Iterator[dict[str, Any]]:
    """The demo's warm-up history (``demo_warmup``), each event with its film's genre."""
    from demo_shop import movielens
    from demo_shop.catalog.management.commands.demo_warmup import history_events

    genre = {film.id: film.category for film in movielens.films()}
    chosen = movielens.ratings()[:ratings] if ratings else movielens.ratings()
    for event in history_events(chosen, 6 * 3600, schema.now_ms()):
        event["category"] = genre.get(int(event["product_id"]), "unknown")
        yield event


def synthetic_events(
    visitors: int = 1_000_000, products: int = 100_000, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """A shop's last four hours: ``visitors`` visitors arriving one after the
    other, each with 1 to 3 events 10 s to 5 min apart. A product is drawn
    with probability ~1/rank (``products ** u``); half of a visitor's later
    events are in the category of their first product. The first event is a
    page view, a later one a page view (75 %), an add-to-cart (17 %) or a
    purchase (8 %) of a product the visitor has seen."""
    rng = random.Random(seed)
    start = schema.now_ms() - SYNTHETIC_SPAN_MS - 15 * 60 * 1000

    def draw() -> int:
        return min(products, int(products ** rng.random()))

    for n in range(visitors):
        visitor = f"s:{rng.getrandbits(96):024x}"
        ts = start + n * SYNTHETIC_SPAN_MS // visitors
        product = draw()
        seen = [product]
        kind = schema.PAGE_VIEW
        for step in range(rng.randint(1, 3)):
            if step:
                ts += rng.randint(10_000, 300_000)
                roll = rng.random()
                if roll < 0.75:
                    kind = schema.PAGE_VIEW
                    if rng.random() < 0.5:
                        same_category = product % SYNTHETIC_CATEGORIES or SYNTHETIC_CATEGORIES
                        span = (products - same_category) // SYNTHETIC_CATEGORIES
                        product = same_category + SYNTHETIC_CATEGORIES * rng.randint(0, span)
                    else:
                        product = draw()
                    seen.append(product)
                else:
                    kind = schema.ADD_TO_CART if roll < 0.92 else schema.PURCHASE
                    product = rng.choice(seen)
            yield schema.make_event(
                kind,
                visitor,
                product,
                ts=ts,
                quantity=None if kind == schema.PAGE_VIEW else 1,
                price=None if kind == schema.PAGE_VIEW else 5 + product % 50,
                category=f"c{product % SYNTHETIC_CATEGORIES}",
                context={"page": f"/products/{product}/"},
            )


class Tally:
    """The products, visitors and events of a stream going by."""

    def __init__(self) -> None:
        self.products: set[str] = set()
        self.visitors: set[str] = set()
        self.events = 0

    def count(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            self.products.add(event["product_id"])
            self.visitors.add(event["visitor_id"])
            self.events += 1
            yield event


# -- measuring -----------------------------------------------------------------------


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def wait_for_background_saves(r: redis.Redis, timeout: float = 300) -> None:
    """Until no snapshot or AOF rewrite is running (their buffers are in used_memory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("rdb_bgsave_in_progress"):
            return
        time.sleep(0.5)


def key_sizes(r: redis.Redis, chunk: int = 2000) -> Iterator[tuple[str, int]]:
    """(key, MEMORY USAGE with SAMPLES 0: every element counted) of every key of the database."""
    batch: list[str] = []

    def sized(names: list[str]) -> Iterator[tuple[str, int]]:
        pipe = r.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
        for name, size in zip(names, pipe.execute(), strict=True):
            if size is not None:  # expired since the scan
                yield name, int(size)

    for name in r.scan_iter(count=chunk):
        batch.append(name)
        if len(batch) >= chunk:
            yield from sized(batch)
            batch = []
    yield from sized(batch)


def measure(r: redis.Redis) -> dict[str, Any]:
    """Bytes and keys by family and kind, with the products and visitors owning keys
    and the event ids the de-duplication sets hold."""
    families: dict[str, dict[str, Any]] = {
        name: {"bytes": 0, "keys": 0, "kinds": {}} for name in FAMILIES
    }
    products: set[str] = set()
    visitors: set[str] = set()
    dedup_sets: list[str] = []
    for name, size in key_sizes(r):
        family, kind = family_of(name)
        entry = families[family]
        entry["bytes"] += size
        entry["keys"] += 1
        by_kind = entry["kinds"].setdefault(kind, {"bytes": 0, "keys": 0})
        by_kind["bytes"] += size
        by_kind["keys"] += 1
        if family == "visitor":
            visitors.add(keys.visitor_of(name) or "")
        elif kind == "dedup-ids":
            dedup_sets.append(name)
        else:
            product = product_of(name)
            if product:
                products.add(product)
    pipe = r.pipeline(transaction=False)
    for name in dedup_sets:
        pipe.scard(name)
    dedup_ids = sum(pipe.execute()) if dedup_sets else 0
    return {
        "families": families,
        "keys_bytes": sum(f["bytes"] for f in families.values()),
        "products_with_keys": len(products),
        "visitors_with_keys": len(visitors),
        "dedup_ids_held": dedup_ids,
    }


def _mb(n: float) -> float:
    return round(n / 1e6, 2)


def _per(n: int, d: int) -> float | None:
    return round(n / d, 1) if d else None


def one_data_set(
    stack: Stack, name: str, events: Iterable[dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    """Produce ``events`` to the data set's own topics, let the job apply them
    into its own database at the default settings, and measure that database."""
    from stack.pipeline import JobRun, create_topic, end_offsets, produce

    bootstrap = f"127.0.0.1:{stack.ports.kafka}"
    topics = {role: f"{TOPIC_PREFIX[name]}{role}" for role in schema.DEFAULT_TOPICS}
    for topic in topics.values():
        create_topic(bootstrap, topic)
    tally = Tally()
    started = time.monotonic()
    log(f"{name}: producing the events...")
    records = (
        (schema.topic_for(e["type"], topics), None, e["visitor_id"].encode(), schema.encode(e))
        for e in tally.count(events)
    )
    produce(bootstrap, records)
    targets = end_offsets(bootstrap, topics.values())
    produced = time.monotonic()
    log(
        f"{name}: {tally.events} events of {len(tally.visitors)} visitors on "
        f"{len(tally.products)} products in {produced - started:.0f} s; the streaming job..."
    )
    job = JobRun(stack, name, db=DATABASES[name], topics=topics.values())
    # flushing or scanning millions of keys takes longer than the job's client waits
    r = redis.Redis.from_url(job.redis_url, decode_responses=True, socket_timeout=900)
    r.flushdb()
    baseline = used_memory(r)
    job.start()
    try:
        job.wait_processed(targets, timeout=600 + tally.events / 200)
        applied_at = time.monotonic()
    finally:
        job.stop()
    counters = job.counters()
    log(f"{name}: applied in {applied_at - produced:.0f} s; measuring Redis...")
    wait_for_background_saves(r)
    used = used_memory(r) - baseline
    sizes = measure(r)
    measured = time.monotonic()
    applied = sum(v for k, v in counters.items() if k.endswith(f":{STATUS_APPLIED}"))
    not_applied: dict[str, int] = {}
    for field, n in counters.items():
        status = field.rpartition(":")[2]
        if n and status not in (STATUS_APPLIED, "read"):
            not_applied[status] = not_applied.get(status, 0) + n
    families = sizes["families"]
    products, visitors = len(tally.products), len(tally.visitors)
    result = {
        "events": tally.events,
        "applied": applied,
        "not_applied": not_applied,
        "products": products,
        "visitors": visitors,
        "bytes_per_product": _per(families["product"]["bytes"], products),
        "bytes_per_visitor": _per(families["visitor"]["bytes"], visitors),
        "bytes_per_event": _per(families["event"]["bytes"], applied),
        "dedup_ids_held": sizes["dedup_ids_held"],
        "bytes_per_dedup_id": _per(families["event"]["bytes"], sizes["dedup_ids_held"]),
        "total_mb": _mb(sizes["keys_bytes"]),
        "keys_bytes": sizes["keys_bytes"],
        "used_memory_mb": _mb(used),
        "used_memory_bytes": used,
        "used_memory_per_key_bytes": round(used / sizes["keys_bytes"], 3)
        if sizes["keys_bytes"]
        else None,
        "products_with_keys": sizes["products_with_keys"],
        "visitors_with_keys": sizes["visitors_with_keys"],
        "families": {
            family: {
                "mb": _mb(entry["bytes"]),
                "bytes": entry["bytes"],
                "keys": entry["keys"],
                "kinds": dict(sorted(entry["kinds"].items(), key=lambda kv: -kv[1]["bytes"])),
            }
            for family, entry in families.items()
        },
        "seconds": round(measured - started, 1),
        "produce_seconds": round(produced - started, 1),
        "job_seconds": round(applied_at - produced, 1),
        "measure_seconds": round(measured - applied_at, 1),
    }
    log(
        f"{name}: {result['bytes_per_product']} bytes/product, "
        f"{result['bytes_per_visitor']} bytes/visitor, {result['bytes_per_event']} bytes/event "
        f"({result['bytes_per_dedup_id']} per id held); keys {result['total_mb']} MB, "
        f"used_memory +{result['used_memory_mb']} MB"
    )
    for family, entry in result["families"].items():
        kinds = ", ".join(f"{k} {_mb(v['bytes'])} MB" for k, v in entry["kinds"].items())
        log(f"  {family:<9} {entry['mb']:>9} MB in {entry['keys']} keys ({kinds})")
    r.flushdb()
    return result


def run(
    log=print,
    visitors: int = 1_000_000,
    products: int = 100_000,
    ratings: int | None = None,
    data_sets: Iterable[str] = ("ml-100k", "synthetic"),
) -> dict[str, Any]:
    """Measure the data sets named in ``data_sets``: the synthetic shop of
    ``visitors`` visitors over ``products`` products, and the first ``ratings``
    MovieLens ratings (all 100,000 by default)."""
    from bench import kafka_and_redis

    sources: Mapping[str, Callable[[], Iterable[dict[str, Any]]]] = {
        "ml-100k": lambda: movielens_events(ratings),
        "synthetic": lambda: synthetic_events(visitors, products),
    }
    results: dict[str, Any] = {}
    with kafka_and_redis(log) as (stack, _):
        stack.manage("reco_topics", quiet=True)
        for name in data_sets:
            results[name] = one_data_set(stack, name, sources[name](), log)
    headline = results.get("synthetic") or next(iter(results.values()))
    return {
        "name": "state_size",
        "value": headline["bytes_per_visitor"],
        "unit": "bytes/visitor",
        "data_set": "synthetic" if "synthetic" in results else next(iter(results)),
        "settings": "defaults (scoring.PipelineSettings)",
        "measured_with": "MEMORY USAGE key SAMPLES 0, summed by key family",
        **{name.replace("-", "_"): results[name] for name in results},
    }
