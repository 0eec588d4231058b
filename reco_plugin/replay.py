"""Prequential replay evaluation (SPEC §8): an event file through the real
Kafka -> Spark -> Redis path, scored as it goes.

The file's events are sent ``tick`` at a time, in time order, to topics of the
replay's own namespace; after each tick the replay waits until the streaming
job (started for the namespace, under its own Redis key prefix) has processed
them. Before a tick is sent, each of its events is a *trial* if it is the
visitor's first on that product and falls in the last 20% of the file's time
span: a hit when the product is in the visitor's top-10 list as it stands (the
system's blended list, as the API would serve it on the visitor's previous
product page). Beside it, in the same run and with the same freshness (they
learn each tick after it is scored): a popularity baseline (most events so
far), an in-process item-kNN (co-occurrence in visitors' recent items, cosine
normalised), and each of the system's strategies alone (personal, similar to
the previous product, trending).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import heapq
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import keys, redis_url, schema, strategies
from .scoring import PipelineSettings

REQUIRED_COLUMNS = ("visitor_id", "product_id", "type", "ts")
REPLAY_TYPES = (
    schema.PAGE_VIEW,
    schema.CLICK,
    schema.ADD_TO_CART,
    schema.REMOVE_FROM_CART,
    schema.PURCHASE,
)
K = 10
EVALUATED_SHARE = 0.2  # the trials in the last 20% of the time span count
# the product lists a replay's batch may write: more than any file's products,
# so each batch writes all it changes
REPLAY_PRODUCT_LISTS = 1_000_000
PEER_RECENT = 5  # the item-kNN scores from the visitor's last items
# a ts this large is milliseconds (or microseconds) given as seconds
LATEST_SECONDS = 1e11


class ReplayError(ValueError):
    """The file or the run cannot be replayed; the message says why."""


@dataclass(frozen=True)
class Row:
    visitor_id: str
    product_id: str
    type: str
    ts_ms: int
    category: str | None = None
    price: float | None = None


def read_rows(path: str | Path) -> list[Row]:
    """The file's events in time order, or :class:`ReplayError` naming the
    first bad line."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot be read ({exc.strerror})") from None
    rows: list[Row] = []
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing:
                raise ReplayError(
                    f"{path}: the header lacks {', '.join(missing)} "
                    f"(it needs {','.join(REQUIRED_COLUMNS)}; category and price are optional)"
                )
            reader.fieldnames = header
            for line, record in enumerate(reader, start=2):
                rows.append(_row(path, line, record))
        except UnicodeDecodeError:
            raise ReplayError(f"{path}: not UTF-8 text") from None
        except csv.Error as exc:
            raise ReplayError(f"{path}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise ReplayError(f"{path}: no events after the header")
    rows.sort(key=lambda row: row.ts_ms)  # stable: ties keep the file's order
    return rows


def ranker_summary(r: Any) -> dict[str, Any]:
    """What the ranker learnt: examples, its weights, and its prequential log
    loss and AUC (each batch scored before it was learnt), over all batches
    and over the last 50."""
    raw = r.get(keys.ranker_weights())
    value = json.loads(raw) if raw else {}
    entries = [json.loads(entry) for entry in r.lrange(keys.ranker_metrics(), 0, -1)]

    def mean(name: str, among: list[dict[str, Any]]) -> float | None:
        total = sum(e["examples"] for e in among)
        return round(sum(e[name] * e["examples"] for e in among) / total, 4) if total else None

    return {
        "examples": value.get("examples", 0),
        "weights": {
            name: round(weight, 4)
            for name, weight in zip(
                value.get("features", ()), value.get("weights", ()), strict=True
            )
            if weight
        },
        "log_loss": mean("log_loss", entries),
        "auc": mean("auc", entries),
        "log_loss_last_50": mean("log_loss", entries[:50]),
        "auc_last_50": mean("auc", entries[:50]),
    }


def _row(path: Path, line: int, record: dict[str, Any]) -> Row:
    def bad(what: str) -> ReplayError:
        return ReplayError(f"{path}, line {line}: {what}")

    if None in record:
        raise bad("more fields than the header names")
    visitor = (record.get("visitor_id") or "").strip()
    product = (record.get("product_id") or "").strip()
    kind = (record.get("type") or "").strip()
    if not visitor or len(visitor) > schema.MAX_ID_LENGTH - 2:
        raise bad(f"visitor_id must be 1-{schema.MAX_ID_LENGTH - 2} characters")
    if not product or len(product) > schema.MAX_ID_LENGTH:
        raise bad(f"product_id must be 1-{schema.MAX_ID_LENGTH} characters")
    if kind not in REPLAY_TYPES:
        raise bad(f"type {kind!r} is not one of {', '.join(REPLAY_TYPES)}")
    try:
        ts = float(record.get("ts") or "")
    except ValueError:
        raise bad(f"ts {record.get('ts')!r} is not epoch seconds") from None
    if not math.isfinite(ts) or ts <= 0:
        raise bad(f"ts {record.get('ts')!r} is not epoch seconds")
    if ts >= LATEST_SECONDS:
        raise bad(
            f"ts {record.get('ts')!r} is after the year 5000: give epoch seconds, not milliseconds"
        )
    price = None
    if (record.get("price") or "").strip():
        try:
            price = float(record["price"])
        except ValueError:
            raise bad(f"price {record['price']!r} is not a number") from None
        if not (math.isfinite(price) and price >= 0):
            raise bad("price must be a non-negative number")
    if not visitor.startswith(("u:", "s:")):
        visitor = f"u:{visitor}"
    category = (record.get("category") or "").strip() or None
    return Row(visitor, product, kind, int(ts * 1000), category, price)


# -- scoring --------------------------------------------------------------------


@dataclass
class Score:
    """Hits and reciprocal ranks of one recommender over the trials."""

    hits: int = 0
    reciprocal_ranks: float = 0.0

    def add(self, product_id: str, items: Sequence[str]) -> None:
        top = list(items[:K])
        if product_id in top:
            self.hits += 1
            self.reciprocal_ranks += 1.0 / (top.index(product_id) + 1)

    def report(self, trials: int) -> dict[str, float]:
        return {
            "hr@10": round(self.hits / trials, 4) if trials else 0.0,
            "mrr@10": round(self.reciprocal_ranks / trials, 4) if trials else 0.0,
            "hits": self.hits,
        }


@dataclass
class Baselines:
    """Popularity and item-kNN, learning each tick after it has been scored."""

    counts: Counter[str] = field(default_factory=Counter)
    together: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    recent: dict[str, deque[str]] = field(default_factory=dict)

    def learn(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.counts[row.product_id] += 1
            recent = self.recent.setdefault(row.visitor_id, deque(maxlen=20))
            if row.product_id in recent:
                continue
            for other in recent:
                self.together[row.product_id][other] += 1
                self.together[other][row.product_id] += 1
            recent.append(row.product_id)

    def popular(self, seen: set[str]) -> list[str]:
        top: list[str] = []
        for product_id, _ in self.counts.most_common(K + len(seen)):
            if product_id not in seen:
                top.append(product_id)
                if len(top) == K:
                    break
        return top

    def item_knn(self, visitor_id: str, previous: str | None, seen: set[str]) -> list[str]:
        """From what the system knows of the visitor too: their items as of the
        last tick, and the product whose page they are on; co-occurrences as
        learnt so far."""
        scores: dict[str, float] = defaultdict(float)
        counts = self.counts
        items = list(self.recent.get(visitor_id, ()))
        if previous is not None and previous not in items:
            items.append(previous)
        for item in items[-PEER_RECENT:]:
            own = counts[item] or 1
            for other, n in self.together.get(item, {}).items():
                if other not in seen:
                    scores[other] += n / math.sqrt(own * (counts[other] or 1))
        return [p for p, _ in heapq.nlargest(K, scores.items(), key=lambda kv: (kv[1], kv[0]))]


# -- the run --------------------------------------------------------------------


@dataclass
class Namespace:
    """Where a replay lives: its own topics and Redis key prefix."""

    name: str

    @property
    def prefix(self) -> str:
        return f"reco-replay:{self.name}"

    def topics(self) -> dict[str, str]:
        return {role: f"reco-replay.{self.name}.{role}" for role in schema.DEFAULT_TOPICS}


class Replay:
    """One replay of ``rows`` on the shop's Kafka and Redis."""

    def __init__(
        self,
        rows: Sequence[Row],
        *,
        tick: int,
        bootstrap: str,
        redis_url: str,
        log: Callable[[str], None] = print,
        progress: Callable[[int, int], None] | None = None,
        job_timeout: float = 180.0,
        pipeline: dict[str, Any] | None = None,
        spark_arguments: Sequence[str] = (),
    ) -> None:
        if tick < 1:
            raise ReplayError("--tick-events must be at least 1")
        self.rows = list(rows)
        self.tick = tick
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.log = log
        self.progress = progress or (lambda done, total: None)
        self.job_timeout = job_timeout
        # the shop's pipeline settings (or those to try), partial
        self.pipeline = dict(pipeline or {})
        # the job's Spark options (master, Kafka connector, conf): the shop's
        self.spark_arguments = list(spark_arguments)
        self.namespace = Namespace(uuid.uuid4().hex[:10])
        # the blend's draws: the same for the same file and pipeline
        self.rng = random.Random(0)
        self.blend_rng = random.Random(1)
        first, last = self.rows[0].ts_ms, self.rows[-1].ts_ms
        self.evaluated_from = last - int((last - first) * EVALUATED_SHARE)
        # The file's times are moved so that its last event is a minute ago:
        # the job judges event times against its clock.
        self.shift = schema.now_ms() - 60_000 - last
        self.span_s = max(1, (last - first) // 1000)
        config = self.job_config = {
            "shuffle_partitions": 2,
            "max_offsets_per_trigger": max(20_000, 2 * self.tick),
            # each tick is judged against every list its events change, so
            # every batch writes them all (none is left owed to an idle job)
            "product_lists_per_batch": REPLAY_PRODUCT_LISTS,
            **self.pipeline,
            # every event of the file is within reach
            "horizon": max(self.pipeline.get("horizon", 0), self.span_s + 2 * 86_400),
        }
        config.pop("key_prefix", None)
        # the replay's events never reach the shop's event lake
        config["lake_path"] = None
        try:
            PipelineSettings.from_mapping(config)
        except (TypeError, ValueError) as exc:
            raise ReplayError(f"invalid pipeline settings: {exc}") from None

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> dict[str, Any]:

        previous_prefix = keys.PREFIX
        workdir = Path(tempfile.mkdtemp(prefix="reco-replay-"))
        job = None
        self.redis = redis_url.connect(self.redis_url, decode_responses=True, socket_timeout=30)
        try:
            keys.use_prefix(self.namespace.prefix)
            self._create_topics()
            self._load_catalog()
            job = self._start_job(workdir)
            started = time.monotonic()
            report = self._replay(job)
            report["seconds"] = round(time.monotonic() - started, 1)
            return report
        finally:
            if job is not None:
                self._stop_job(job)
            self._clean_up(workdir)
            keys.use_prefix(previous_prefix)

    def _create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in self._topics()]
        )
        for topic, future in futures.items():
            try:
                future.result(30)
            except Exception as exc:
                raise ReplayError(f"cannot create the replay topic {topic}: {exc}") from None

    def _topics(self) -> list[str]:
        return sorted(set(self.namespace.topics().values()))

    def _load_catalog(self) -> None:
        """Every product in the file is available (SPEC §8)."""
        categories: dict[str, str] = {}
        prices: dict[str, float] = {}
        for row in self.rows:
            if row.category:
                categories[row.product_id] = row.category
            if row.price is not None:
                prices[row.product_id] = row.price
        products = sorted({row.product_id for row in self.rows})
        pipe = self.redis.pipeline(transaction=False)
        for n, product_id in enumerate(products, 1):
            pipe.hset(
                keys.catalog_product(product_id),
                mapping={
                    "title": product_id,
                    "url": "",
                    "price": str(prices.get(product_id, "")),
                    "category": categories.get(product_id, ""),
                    "image": "",
                    "in_stock": "1",
                },
            )
            pipe.sadd(keys.catalog_index(), product_id)
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()

    def _start_job(self, workdir: Path) -> subprocess.Popen:
        config = self.job_config
        argv = [
            sys.executable,
            "-m",
            "spark_jobs.recommend",
            "--bootstrap",
            self.bootstrap,
            "--redis",
            self.redis_url,
            "--checkpoint",
            str(workdir / "checkpoint"),
            "--topics",
            ",".join(self._topics()),
            "--key-prefix",
            self.namespace.prefix,
            "--config",
            json.dumps(config),
            *self.spark_arguments,
        ]
        self.job_log = workdir / "job.log"
        env = {**os.environ}
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        with open(self.job_log, "ab") as handle:
            job = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.log("starting the streaming job for the replay...")
        deadline = time.monotonic() + self.job_timeout
        while not self.redis.exists(keys.pipeline_heartbeat()):
            if job.poll() is not None:
                raise ReplayError(f"the streaming job exited:\n{self._job_tail()}")
            if time.monotonic() > deadline:
                raise ReplayError(f"the streaming job did not start:\n{self._job_tail()}")
            time.sleep(0.2)
        return job

    def _job_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.job_log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _stop_job(self, job: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            job.send_signal(signal.SIGTERM)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)

    def _clean_up(self, workdir: Path) -> None:
        with contextlib.suppress(Exception):
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for future in admin.delete_topics(self._topics()).values():
                with contextlib.suppress(Exception):
                    future.result(30)
        with contextlib.suppress(Exception):
            batch = []
            for key in self.redis.scan_iter(f"{self.namespace.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.redis.delete(*batch)
                    batch = []
            if batch:
                self.redis.delete(*batch)
        shutil.rmtree(workdir, ignore_errors=True)

    # -- the replay itself ------------------------------------------------------

    def _replay(self, job: subprocess.Popen) -> dict[str, Any]:
        from confluent_kafka import Producer

        topics = self.namespace.topics()
        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        baselines = Baselines()
        names = (
            "system",
            "blend",
            "popularity",
            "item_knn",
            *strategies.STRATEGIES,
            "popularity_all_seen",
            "item_knn_all_seen",
        )
        scores = {name: Score() for name in names}
        seen: dict[str, set[str]] = defaultdict(set)
        known: dict[str, set[str]] = defaultdict(set)
        last_product: dict[str, str] = {}
        sent: Counter[str] = Counter()
        trials = 0
        total = len(self.rows)
        for start in range(0, total, self.tick):
            chunk = self.rows[start : start + self.tick]
            for row in chunk:
                visitor_seen = seen[row.visitor_id]
                if row.ts_ms >= self.evaluated_from and row.product_id not in visitor_seen:
                    trials += 1
                    previous = last_product.get(row.visitor_id)
                    # What every recommender may leave out: what the visitor
                    # had done as of the last tick (all the pipeline knows),
                    # and the page they are on.
                    exclude = known[row.visitor_id] | ({previous} if previous else set())
                    self._score(row, previous, exclude, scores)
                    scores["popularity"].add(row.product_id, baselines.popular(exclude))
                    scores["item_knn"].add(
                        row.product_id, baselines.item_knn(row.visitor_id, previous, exclude)
                    )
                    # The same two told every event before this one (the tick's
                    # too): more than the pipeline can know, for reference.
                    scores["popularity_all_seen"].add(
                        row.product_id, baselines.popular(visitor_seen)
                    )
                    scores["item_knn_all_seen"].add(
                        row.product_id, baselines.item_knn(row.visitor_id, previous, visitor_seen)
                    )
                visitor_seen.add(row.product_id)
                last_product[row.visitor_id] = row.product_id
            for row in chunk:
                event = schema.make_event(
                    row.type,
                    row.visitor_id,
                    row.product_id,
                    ts=row.ts_ms + self.shift,
                    category=row.category,
                    price=row.price,
                )
                topic = schema.topic_for(row.type, topics)
                producer.produce(topic, schema.encode(event), row.visitor_id.encode())
                sent[topic] += 1
                producer.poll(0)
            if producer.flush(60):
                raise ReplayError("Kafka did not take the replay's events within 60 s")
            self._wait_processed(sent, job)
            baselines.learn(chunk)
            for row in chunk:
                known[row.visitor_id].add(row.product_id)
            self.progress(min(start + self.tick, total), total)
        report: dict[str, Any] = {
            # the settings tried (the replay's job never has an event lake)
            "pipeline": {k: v for k, v in self.pipeline.items() if k != "lake_path"},
            "events": total,
            "tick_events": self.tick,
            "trials": trials,
            "evaluated_from_ts": self.evaluated_from // 1000,
            "k": K,
        }
        for name in names:
            report[name] = scores[name].report(trials)
        pop = report["popularity"]["hr@10"]
        report["ratio_to_popularity"] = round(report["system"]["hr@10"] / pop, 3) if pop else None
        report["counters"] = self.redis.hgetall(keys.pipeline_counters())
        # what the blend learnt: each strategy's discounted Beta belief
        report["bandit"] = strategies.describe(
            strategies.evidence_from(self.redis.hgetall(keys.bandit()))
        )
        report["ranker"] = ranker_summary(self.redis)
        return report

    def _score(
        self, row: Row, previous: str | None, exclude: set[str], scores: dict[str, Score]
    ) -> None:
        from . import store

        found = store.strategy_lists(row.visitor_id, previous)
        system = store.blend(found, K, self.rng)
        scores["system"].add(row.product_id, [str(i["product_id"]) for i in system])
        # the blend beside it, in the same run (the system's own list before
        # the ranker has learnt enough, or when the settings choose it)
        blended = system
        if found.model is not None:
            blended = store.blend(dataclasses.replace(found, model=None), K, self.blend_rng)
        scores["blend"].add(row.product_id, [str(i["product_id"]) for i in blended])
        for strategy, items in found.lists:
            scores[strategy].add(row.product_id, strategies.top(items, exclude))

    def _wait_processed(self, sent: Counter[str], job: subprocess.Popen) -> None:
        """Until the job's processed offsets reach what was sent (1 partition a
        topic) and it owes no list."""
        deadline = time.monotonic() + self.job_timeout
        wanted = {f"{topic}:0": n for topic, n in sent.items()}
        while True:
            done = self.redis.hmget(keys.pipeline_offsets(), list(wanted))
            if all(
                int(d or 0) >= n for d, n in zip(done, wanted.values(), strict=True)
            ) and not strategies.lists_owed(self.redis):
                return
            if job.poll() is not None:
                raise ReplayError(f"the streaming job exited:\n{self._job_tail()}")
            if time.monotonic() > deadline:
                raise ReplayError(f"the streaming job fell behind:\n{self._job_tail()}")
            time.sleep(0.02)
